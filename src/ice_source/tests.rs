//! The ICE server source in memory, with a simulated clock: each test plays Home Assistant
//! (or the URL's server) by hand.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

/// Unix time at the start of each test (2026-11-29).
const UNIX: u64 = 1_796_000_000;

fn stun_only() -> Value {
    json!([{"urls": "stun:stun.example:3478"}])
}

fn ha() -> Provider {
    Provider::HomeAssistant {
        url: WsUrl::parse("ws://127.0.0.1:8123/api/websocket").unwrap(),
        token: Secret::new("TOKEN".into()),
    }
}

fn turn_list(expiry: u64) -> Value {
    json!([
        {"urls": ["stun:turn.example:3478"]},
        {"urls": ["turn:turn.example:3478?transport=udp"], "username": format!("{expiry}:ma"), "credential": "pw"}
    ])
}

fn drain(s: &mut IceSource) -> Vec<Output> {
    std::iter::from_fn(|| s.poll_output().output()).collect()
}

fn deadline(s: &mut IceSource) -> Option<Instant> {
    match s.poll_output() {
        Next::Timeout(t) => t,
        Next::Output(o) => panic!("undrained output {o:?}"),
    }
}

fn sent(outputs: &[Output]) -> Vec<Value> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::SendText(t) => Some(serde_json::from_str(t).unwrap()),
            _ => None,
        })
        .collect()
}

fn servers_for(outputs: &[Output], id: &str) -> Option<(Value, IceMode)> {
    outputs.iter().find_map(|o| match o {
        Output::Servers {
            session_id,
            servers,
            mode,
        } if session_id == id => Some((servers.clone(), *mode)),
        _ => None,
    })
}

/// Play Home Assistant through auth and status, up to the point where it is asked for the
/// servers (returns what the source sent).
fn ha_up_to_servers(s: &mut IceSource, now: Instant) -> Vec<Value> {
    s.handle_opened(now);
    s.handle_text(now, r#"{"type":"auth_required","ha_version":"2026.11.0"}"#);
    s.handle_text(now, r#"{"type":"auth_ok","ha_version":"2026.11.0"}"#);
    s.handle_text(
        now,
        r#"{"id":1,"type":"result","success":true,"result":{"logged_in":true,"active_subscription":true,"email":"x@example.com"}}"#,
    );
    sent(&drain(s))
}

fn ha_servers(list: &Value) -> String {
    json!({"id": 2, "type": "result", "success": true, "result": list}).to_string()
}

#[test]
fn home_assistant_cloud_servers_reach_the_waiting_session() {
    let t0 = Instant::now();
    let mut s = IceSource::new(t0, UNIX, Some(ha()), stun_only());
    // The start-up probe connects at once.
    let first = drain(&mut s);
    assert_eq!(
        first,
        vec![Output::Connect(Connect::WebSocket(
            WsUrl::parse("ws://127.0.0.1:8123/api/websocket").unwrap()
        ))]
    );
    assert_eq!(s.mode(), IceMode::Basic);
    assert!(!s.mode_known());
    s.handle_session(t0, "s1".into());
    assert_eq!(deadline(&mut s), Some(t0 + FETCH_DEADLINE));

    let sent = ha_up_to_servers(&mut s, t0);
    assert_eq!(
        sent,
        vec![
            json!({"type": "auth", "access_token": "TOKEN"}),
            json!({"id": 1, "type": "cloud/status"}),
            json!({"id": 2, "type": "cloud/webrtc/ice_servers"}),
        ]
    );
    let list = turn_list(UNIX + 86_400);
    s.handle_text(t0, &ha_servers(&list));
    let out = drain(&mut s);
    assert!(out.contains(&Output::Close));
    assert_eq!(
        servers_for(&out, "s1"),
        Some((list.clone(), IceMode::HomeAssistantCloud))
    );
    assert_eq!(s.mode(), IceMode::HomeAssistantCloud);
    assert!(s.mode().is_optimized());
    assert_eq!(
        s.mode().to_string(),
        "optimized (Home Assistant Cloud TURN)"
    );
    assert_eq!(deadline(&mut s), None, "nothing waits any more");
}

#[test]
fn credentials_are_reused_while_valid_then_fetched_again() {
    let t0 = Instant::now();
    let mut s = IceSource::new(t0, UNIX, Some(ha()), stun_only());
    drain(&mut s);
    ha_up_to_servers(&mut s, t0);
    // Valid for one hour: reused for 50 minutes (10 minutes of margin).
    let list = turn_list(UNIX + 3600);
    s.handle_text(t0, &ha_servers(&list));
    drain(&mut s);

    let t1 = t0 + Duration::from_secs(49 * 60);
    s.handle_session(t1, "s2".into());
    let out = drain(&mut s);
    assert_eq!(
        servers_for(&out, "s2"),
        Some((list, IceMode::HomeAssistantCloud)),
        "answered at once from the cache"
    );
    assert!(!out.iter().any(|o| matches!(o, Output::Connect(_))));

    let t2 = t0 + Duration::from_secs(51 * 60);
    s.handle_session(t2, "s3".into());
    let out = drain(&mut s);
    assert!(
        matches!(out.as_slice(), [Output::Connect(_)]),
        "expired: a new fetch, the session waits: {out:?}"
    );
    let fresh = turn_list(UNIX + 51 * 60 + 3600);
    ha_up_to_servers(&mut s, t2);
    s.handle_text(t2, &ha_servers(&fresh));
    assert_eq!(
        servers_for(&drain(&mut s), "s3"),
        Some((fresh, IceMode::HomeAssistantCloud))
    );
}

#[test]
fn cache_rules() {
    let t0 = Instant::now();
    // No expiry in the usernames: a short cache.
    let plain = json!([{"urls": "turn:t.example", "username": "user", "credential": "c"}]);
    assert_eq!(cache_until(t0, UNIX, &plain), Some(t0 + SHORT_CACHE));
    assert_eq!(credential_expiry(&plain), None);
    // Expiring within the margin: not reused at all.
    assert_eq!(cache_until(t0, UNIX, &turn_list(UNIX + 300)), None);
    assert_eq!(cache_until(t0, UNIX, &turn_list(UNIX - 10)), None);
    // A long validity is capped.
    assert_eq!(
        cache_until(t0, UNIX, &turn_list(UNIX + 7 * 86_400)),
        Some(t0 + MAX_CACHE)
    );
    // The earliest expiry of several counts; a number that is no Unix time does not.
    let two = json!([
        {"urls": "turn:a", "username": format!("{}:x", UNIX + 7200), "credential": "c"},
        {"urls": "turn:b", "username": format!("{}:y", UNIX + 3600), "credential": "c"},
        {"urls": "turn:c", "username": "42:z", "credential": "c"}
    ]);
    assert_eq!(credential_expiry(&two), Some(UNIX + 3600));
}

#[test]
fn auth_invalid_is_logged_once_and_sessions_get_the_static_list() {
    let t0 = Instant::now();
    let mut s = IceSource::new(t0, UNIX, Some(ha()), stun_only());
    drain(&mut s);
    s.handle_session(t0, "s1".into());
    s.handle_opened(t0);
    s.handle_text(t0, r#"{"type":"auth_required"}"#);
    s.handle_text(
        t0,
        r#"{"type":"auth_invalid","message":"Invalid access token or password"}"#,
    );
    let out = drain(&mut s);
    assert!(out.contains(&Output::Close));
    assert_eq!(servers_for(&out, "s1"), Some((stun_only(), IceMode::Basic)));
    assert_eq!(
        s.last_error,
        Some(FetchError::AuthInvalid(
            "\"Invalid access token or password\"".into()
        ))
    );
    assert!(s.mode_known());
    assert_eq!(s.mode().to_string(), "basic (STUN only)");

    // Within the retry delay: the static list at once, no new connection.
    s.handle_session(t0 + Duration::from_secs(5), "s2".into());
    let out = drain(&mut s);
    assert_eq!(out.len(), 1);
    assert_eq!(servers_for(&out, "s2"), Some((stun_only(), IceMode::Basic)));

    // After it, one new try; a second failure of the same kind doubles the wait.
    let t1 = t0 + RETRY_MIN;
    s.handle_session(t1, "s3".into());
    assert!(matches!(drain(&mut s).as_slice(), [Output::Connect(_)]));
    s.handle_text(t1, r#"{"type":"auth_required"}"#);
    s.handle_text(t1, r#"{"type":"auth_invalid"}"#);
    drain(&mut s);
    assert_eq!(s.retry_at, Some(t1 + RETRY_MIN * 2));
}

#[test]
fn not_logged_in_or_no_subscription_means_basic_mode() {
    for (status, error) in [
        (
            json!({"logged_in": false, "cloud": "disconnected"}),
            FetchError::NotLoggedIn,
        ),
        (
            json!({"logged_in": true, "active_subscription": false}),
            FetchError::NoSubscription,
        ),
    ] {
        let t0 = Instant::now();
        let mut s = IceSource::new(t0, UNIX, Some(ha()), stun_only());
        drain(&mut s);
        s.handle_session(t0, "s1".into());
        s.handle_text(t0, r#"{"type":"auth_required"}"#);
        s.handle_text(t0, r#"{"type":"auth_ok"}"#);
        let reply = json!({"id": 1, "type": "result", "success": true, "result": status});
        s.handle_text(t0, &reply.to_string());
        let out = drain(&mut s);
        let asked: Vec<_> = sent(&out);
        assert!(
            !asked
                .iter()
                .any(|m| m["type"] == "cloud/webrtc/ice_servers"),
            "not asked for servers: {asked:?}"
        );
        assert_eq!(servers_for(&out, "s1"), Some((stun_only(), IceMode::Basic)));
        assert_eq!(s.last_error, Some(error));
    }
}

#[test]
fn malformed_replies_fall_back() {
    let cases = [
        "not json at all".to_string(),
        json!({"id": 2, "type": "result", "success": true, "result": {"urls": "x"}}).to_string(),
        json!({"id": 2, "type": "result", "success": true, "result": []}).to_string(),
        json!({"id": 2, "type": "result", "success": true, "result": [{"urls": "http://x"}]})
            .to_string(),
        json!({"id": 2, "type": "result", "success": false, "error": {"code": "unknown_command", "message": "Unknown command."}}).to_string(),
    ];
    for case in cases {
        let t0 = Instant::now();
        let mut s = IceSource::new(t0, UNIX, Some(ha()), stun_only());
        drain(&mut s);
        s.handle_session(t0, "s1".into());
        ha_up_to_servers(&mut s, t0);
        s.handle_text(t0, &case);
        let out = drain(&mut s);
        assert_eq!(
            servers_for(&out, "s1"),
            Some((stun_only(), IceMode::Basic)),
            "{case}"
        );
        assert!(
            matches!(
                s.last_error,
                Some(FetchError::Malformed(_) | FetchError::CommandFailed(_))
            ),
            "{case}: {:?}",
            s.last_error
        );
    }
    // Too many servers.
    let many: Vec<Value> = (0..MAX_SERVERS + 1)
        .map(|i| json!({"urls": format!("stun:s{i}.example")}))
        .collect();
    let t0 = Instant::now();
    let mut s = IceSource::new(t0, UNIX, Some(ha()), stun_only());
    drain(&mut s);
    ha_up_to_servers(&mut s, t0);
    s.handle_text(t0, &ha_servers(&Value::Array(many)));
    drain(&mut s);
    assert!(matches!(s.last_error, Some(FetchError::Malformed(_))));
}

#[test]
fn a_stalled_home_assistant_costs_a_session_the_deadline_only() {
    let t0 = Instant::now();
    let mut s = IceSource::new(t0, UNIX, Some(ha()), stun_only());
    drain(&mut s);
    s.handle_opened(t0);
    // HA accepted the connection and says nothing.
    let t1 = t0 + Duration::from_millis(100);
    s.handle_session(t1, "s1".into());
    let t2 = t0 + Duration::from_millis(900);
    s.handle_session(t2, "s2".into());
    assert_eq!(deadline(&mut s), Some(t1 + FETCH_DEADLINE));
    s.handle_timeout(t1 + FETCH_DEADLINE);
    let out = drain(&mut s);
    assert_eq!(servers_for(&out, "s1"), Some((stun_only(), IceMode::Basic)));
    assert_eq!(servers_for(&out, "s2"), None, "s2 still has time");
    assert_eq!(deadline(&mut s), Some(t2 + FETCH_DEADLINE));
    s.handle_timeout(t2 + FETCH_DEADLINE);
    let out = drain(&mut s);
    assert_eq!(servers_for(&out, "s2"), Some((stun_only(), IceMode::Basic)));
    // The fetch itself is abandoned later, and the connection closed.
    assert_eq!(deadline(&mut s), Some(t0 + FETCH_TIMEOUT));
    s.handle_timeout(t0 + FETCH_TIMEOUT);
    assert_eq!(drain(&mut s), vec![Output::Close]);
    assert_eq!(s.last_error, Some(FetchError::TimedOut));
    assert_eq!(deadline(&mut s), None);
}

#[test]
fn a_late_answer_still_serves_later_sessions() {
    let t0 = Instant::now();
    let mut s = IceSource::new(t0, UNIX, Some(ha()), stun_only());
    drain(&mut s);
    s.handle_session(t0, "s1".into());
    s.handle_timeout(t0 + FETCH_DEADLINE);
    assert!(servers_for(&drain(&mut s), "s1").is_some());
    // HA answers after the session gave up, before the fetch's own timeout: cached.
    let t1 = t0 + Duration::from_secs(4);
    ha_up_to_servers(&mut s, t1);
    let list = turn_list(UNIX + 86_400);
    s.handle_text(t1, &ha_servers(&list));
    let out = drain(&mut s);
    assert!(!out.iter().any(|o| matches!(o, Output::Servers { .. })));
    s.handle_session(t1, "s2".into());
    assert_eq!(
        servers_for(&drain(&mut s), "s2"),
        Some((list, IceMode::HomeAssistantCloud))
    );
}

#[test]
fn unreachable_home_assistant_and_recovery_are_each_reported() {
    let t0 = Instant::now();
    let mut s = IceSource::new(t0, UNIX, Some(ha()), stun_only());
    drain(&mut s);
    s.handle_session(t0, "s1".into());
    s.handle_closed(t0, Some("connection refused"));
    let out = drain(&mut s);
    assert!(!out.contains(&Output::Close), "it is closed already");
    assert_eq!(servers_for(&out, "s1"), Some((stun_only(), IceMode::Basic)));
    assert_eq!(
        s.last_error,
        Some(FetchError::Unreachable("connection refused".into()))
    );
    // A clean close before the answer is a failure too.
    let t1 = t0 + RETRY_MIN;
    s.handle_session(t1, "s2".into());
    drain(&mut s);
    s.handle_closed(t1, None);
    assert!(servers_for(&drain(&mut s), "s2").is_some());
    // Back: the error is cleared, the mode changes.
    let t2 = t1 + RETRY_MIN * 2;
    s.handle_session(t2, "s3".into());
    drain(&mut s);
    ha_up_to_servers(&mut s, t2);
    s.handle_text(t2, &ha_servers(&turn_list(UNIX + 86_400)));
    drain(&mut s);
    assert_eq!(s.last_error, None);
    assert_eq!(s.mode(), IceMode::HomeAssistantCloud);
    assert_eq!(s.retry_delay, RETRY_MIN);
}

#[test]
fn without_a_provider_every_session_gets_the_static_list_at_once() {
    let t0 = Instant::now();
    let turn = json!([{"urls": "turn:t.example:3478", "username": "u", "credential": "p"}]);
    let mut s = IceSource::new(t0, UNIX, None, turn.clone());
    assert!(s.mode_known());
    assert_eq!(s.mode(), IceMode::StaticTurn);
    s.handle_session(t0, "s1".into());
    assert_eq!(
        drain(&mut s),
        vec![Output::Servers {
            session_id: "s1".into(),
            servers: turn,
            mode: IceMode::StaticTurn
        }]
    );
    assert_eq!(deadline(&mut s), None);
    let basic = IceSource::new(t0, UNIX, None, stun_only());
    assert_eq!(basic.mode(), IceMode::Basic);
    assert!(!basic.mode().is_optimized());
    assert_eq!(basic.mode().key(), "basic");
    assert_eq!(IceMode::HomeAssistantCloud.key(), "home_assistant_cloud");
}

#[test]
fn waiting_sessions_are_bounded() {
    let t0 = Instant::now();
    let mut s = IceSource::new(t0, UNIX, Some(ha()), stun_only());
    drain(&mut s);
    for i in 0..MAX_WAITING {
        s.handle_session(t0, format!("w{i}"));
    }
    assert!(drain(&mut s).is_empty());
    s.handle_session(t0, "over".into());
    assert_eq!(
        servers_for(&drain(&mut s), "over"),
        Some((stun_only(), IceMode::Basic))
    );
}

fn url_provider() -> Provider {
    Provider::Url {
        url: WsUrl::parse_http("http://127.0.0.1:9/ice").unwrap(),
        shown: "http://127.0.0.1:9/ice".into(),
    }
}

#[test]
fn a_url_provider_is_fetched_with_one_get() {
    let t0 = Instant::now();
    let mut s = IceSource::new(t0, UNIX, Some(url_provider()), stun_only());
    assert!(matches!(
        drain(&mut s).as_slice(),
        [Output::Connect(Connect::Stream(u))] if u.path_and_query == "/ice" && !u.tls
    ));
    s.handle_session(t0, "s1".into());
    s.handle_opened(t0);
    let out = drain(&mut s);
    let [Output::Write(request)] = out.as_slice() else {
        panic!("{out:?}")
    };
    let request = String::from_utf8(request.clone()).unwrap();
    assert!(
        request.starts_with("GET /ice HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"),
        "{request}"
    );
    let list = turn_list(UNIX + 86_400);
    let body = list.to_string();
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // In two pieces, as TCP may deliver it.
    let (a, b) = response.as_bytes().split_at(20);
    s.handle_bytes(t0, a);
    assert!(drain(&mut s).is_empty());
    s.handle_bytes(t0, b);
    let out = drain(&mut s);
    assert_eq!(servers_for(&out, "s1"), Some((list, IceMode::Url)));
    assert_eq!(
        s.mode().to_string(),
        "optimized (TURN from MA_ICE_SERVERS_URL)"
    );
}

#[test]
fn a_url_error_status_or_an_endless_body_falls_back() {
    let t0 = Instant::now();
    let mut s = IceSource::new(t0, UNIX, Some(url_provider()), stun_only());
    drain(&mut s);
    s.handle_session(t0, "s1".into());
    s.handle_opened(t0);
    drain(&mut s);
    s.handle_bytes(t0, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(
        servers_for(&drain(&mut s), "s1"),
        Some((stun_only(), IceMode::Basic))
    );
    assert!(matches!(s.last_error, Some(FetchError::CommandFailed(_))));

    let mut s = IceSource::new(t0, UNIX, Some(url_provider()), stun_only());
    drain(&mut s);
    s.handle_opened(t0);
    drain(&mut s);
    s.handle_bytes(t0, b"HTTP/1.1 200 OK\r\n\r\n[");
    let filler = vec![b' '; url::MAX_BODY];
    s.handle_bytes(t0, &filler);
    drain(&mut s);
    assert!(
        matches!(s.last_error, Some(FetchError::Malformed(_))),
        "{:?}",
        s.last_error
    );

    // A body delimited by the end of the connection.
    let mut s = IceSource::new(t0, UNIX, Some(url_provider()), stun_only());
    drain(&mut s);
    s.handle_session(t0, "s2".into());
    s.handle_opened(t0);
    drain(&mut s);
    let list = stun_only();
    s.handle_bytes(t0, format!("HTTP/1.1 200 OK\r\n\r\n{list}").as_bytes());
    s.handle_closed(t0, None);
    assert_eq!(
        servers_for(&drain(&mut s), "s2"),
        Some((list, IceMode::Url))
    );
}

// Junk from the provider in every state (no panic, every session answered exactly once, by
// its deadline) is the `ice_source` property: `testkit::props::ice_source`, run by
// tests/properties.rs and the fuzz target, with these tests' near misses among its seeds.
