//! The guest's Sendspin `client/hello` rewriter (`gateway::auth::guest_hello`;
//! docs/protocol.md#channels-and-labels).
//!
//! Input: the text a guest's client sends on `sendspin`.
//!
//! Properties:
//! - a text is rewritten exactly when it is a JSON object with `"type":"client/hello"` whose
//!   `payload.supported_roles` is a list, however it is spelled (escapes, key order, spaces);
//! - the rewritten text is JSON equal to the original with `supported_roles` replaced by
//!   exactly `["player@v1"]`, nothing else changed;
//! - rewriting is idempotent.

use serde_json::Value;

use crate::gateway::auth::{guest_hello, GUEST_ROLES};

pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let expected = serde_json::from_str::<Value>(&text).ok().and_then(|mut v| {
        if v.get("type")?.as_str()? != "client/hello" {
            return None;
        }
        let roles = v.get_mut("payload")?.get_mut("supported_roles")?;
        if !roles.is_array() {
            return None;
        }
        *roles = Value::Array(vec![Value::String(GUEST_ROLES.into())]);
        Some(v)
    });
    let got = guest_hello(&text);
    let got_value = got
        .as_deref()
        .map(|t| serde_json::from_str::<Value>(t).expect("the rewritten hello is not JSON"));
    assert_eq!(
        got_value, expected,
        "rewritten when it must not be, or wrongly"
    );
    if let Some(out) = got {
        assert_eq!(
            guest_hello(&out).as_deref(),
            Some(out.as_str()),
            "not idempotent"
        );
    }
}

/// Hellos as the web app's Sendspin client sends them, and look-alikes.
pub fn seeds() -> Vec<Vec<u8>> {
    [
        r#"{"type":"client/hello","payload":{"client_id":"ma_web_1a2b","name":"Chrome on Mac","version":1,"supported_roles":["player@v1","controller@v1","metadata@v1","artwork@v1"],"player_support":{"supported_formats":[{"codec":"opus","channels":2,"sample_rate":48000,"bit_depth":16}],"buffer_capacity":1048576}}}"#,
        r#"{"payload":{"supported_roles":["controller@v1"],"x":[1,{"y":null}]},"type":"client\/hello"}"#,
        r#"{"type":"client\u002fhello","payload":{"supported_roles":[]}}"#,
        r#"{"type":"client/hello","payload":{"supported_roles":"controller@v1"}}"#,
        r#"{"type":"client/time","payload":{"client_transmitted":123456}}"#,
        r#"{"type":"auth","token":"hello"}"#,
        r#"[{"type":"client/hello"}]"#,
    ]
    .iter()
    .map(|t| t.as_bytes().to_vec())
    .collect()
}
