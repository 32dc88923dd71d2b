//! Proxy request parsing and the HTTP request it produces (`http_proxy::request` and
//! `HttpConn::start`; docs/protocol.md#proxy-requests, #proxy-hardening).
//!
//! Input: a mode byte. Mode even: the rest is the message text. Mode odd: the message is
//! built as JSON from the input: `id`, `method`, `path`, then up to 8 header names and
//! values, each a length-prefixed text (so the path and header rules get arbitrary strings
//! without the JSON syntax in the way).
//!
//! Properties, for every request the parser accepts:
//! - the HTTP request it produces parses with `httparse` as one complete head, every byte of
//!   it, with the request's method and the path unchanged;
//! - `Host` is there exactly once and is the configured one, whatever the client sent;
//! - every other header is an allowlisted one, `Accept-Encoding` or `Connection`, each once;
//! - no CR, LF or other control character but tab in any value, and the path passes
//!   `check_path`;
//! - what `classify` (the `ma-api` form) says agrees with `parse`.

use serde_json::{json, Map, Value};

use super::{chunk_bytes, Input};
use crate::http_proxy::client::HttpConn;
use crate::http_proxy::request::{
    check_path, classify, parse, ProxyRequest, FORWARDED_HEADERS, MAX_MESSAGE_LEN,
};

const HOST: &str = "ma.local:8095";

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let text = if input.u8().is_multiple_of(2) {
        String::from_utf8_lossy(input.rest()).into_owned()
    } else {
        let id = input.text(300);
        let method = input.text(8);
        let path = input.text(9000);
        let mut headers = Map::new();
        for _ in 0..(input.u8() % 9) {
            let name = input.text(40);
            let value = input.text(1100);
            headers.insert(name, Value::String(value));
        }
        let mut msg =
            json!({"type": "http-proxy-request", "id": id, "path": path, "headers": headers});
        if !method.is_empty() {
            msg["method"] = Value::String(method);
        }
        msg.to_string()
    };
    let parsed = parse(&text);
    if text.len() <= MAX_MESSAGE_LEN {
        if let Some(classified) = classify(&text) {
            assert_eq!(classified, parsed, "classify and parse disagree");
        }
    }
    if let Ok(req) = parsed {
        check_request(&req);
    }
}

/// The properties of an accepted request and of the HTTP request built from it.
pub fn check_request(req: &ProxyRequest) {
    assert_eq!(
        check_path(&req.path),
        Ok(()),
        "accepted path {:?}",
        req.path
    );
    let bytes = HttpConn::new(HOST.into(), true).start(req);
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(&bytes) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, bytes.len(), "bytes after the head"),
        other => panic!(
            "{other:?} for the request {:?}",
            String::from_utf8_lossy(&bytes)
        ),
    }
    assert_eq!(parsed.method, Some(req.method.as_str()));
    assert_eq!(parsed.path, Some(req.path.as_str()), "path changed");
    let mut hosts = 0;
    for (i, h) in parsed.headers.iter().enumerate() {
        assert!(
            h.value.iter().all(|b| *b == b'\t' || !b.is_ascii_control()),
            "control character in {}",
            h.name
        );
        assert!(
            parsed.headers[..i]
                .iter()
                .all(|o| !o.name.eq_ignore_ascii_case(h.name)),
            "{} twice",
            h.name
        );
        if h.name.eq_ignore_ascii_case("Host") {
            hosts += 1;
            assert_eq!(h.value, HOST.as_bytes(), "Host is not the configured one");
        } else {
            assert!(
                FORWARDED_HEADERS.contains(&h.name) || h.name == "Connection",
                "header {} is not allowlisted",
                h.name
            );
        }
    }
    assert_eq!(hosts, 1, "Host must be sent once");
}

fn built(id: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = vec![1];
    chunk_bytes(&mut out, id.as_bytes());
    chunk_bytes(&mut out, method.as_bytes());
    chunk_bytes(&mut out, path.as_bytes());
    out.push(headers.len() as u8);
    for (n, v) in headers {
        chunk_bytes(&mut out, n.as_bytes());
        chunk_bytes(&mut out, v.as_bytes());
    }
    out
}

/// Requests as the web app and the mobile apps send them, and the refused ones of the tests.
pub fn seeds() -> Vec<Vec<u8>> {
    let texts = [
        r#"{"type":"http-proxy-request","id":"req_1","method":"GET","path":"/imageproxy?path=https%3A%2F%2Fi.scdn.co%2Fimage%2Fab67&provider=spotify&size=256","headers":{"Accept":"image/avif,image/webp,*/*","If-None-Match":"\"abc\""}}"#,
        r#"{"type":"http-proxy-request","id":"req_2","method":"HEAD","path":"/preview?item_id=1&provider=library","headers":{"Range":"bytes=0-","Host":"evil.com","Cookie":"x"}}"#,
        r#"{"type":"http-proxy-request","id":"r","path":"/a/%2e%2e/b"}"#,
        r#"{"type":"http-proxy-request","id":"r","path":"/\r\nHost: x"}"#,
        r#"{"type":"http-proxy-request","id":"r","method":"get","path":"/"}"#,
        r#"{"type":"http-proxy-request","id":"r","path":"/x","headers":{"accept":"a\r\nX: y"}}"#,
    ];
    let mut out: Vec<Vec<u8>> = texts
        .iter()
        .map(|t| [&[0u8][..], t.as_bytes()].concat())
        .collect();
    out.push(built(
        "req_3",
        "GET",
        "/imageproxy?path=%2Fmedia%2Fcover.jpg&size=0",
        &[
            ("Accept-Encoding", "gzip, br"),
            ("If-Modified-Since", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ],
    ));
    out.push(built(
        "req_4",
        "",
        "/x;..%2F",
        &[("accept-language", " en-US\t")],
    ));
    out
}
