//! The signaling server's HTTP head parser (`signaling::server::http`; docs/protocol.md,
//! the HTTP endpoints on the signaling port).
//!
//! Input: a `u16` cut point, then the bytes a client sends.
//!
//! Properties:
//! - a complete head is never longer than what was received, and a head found complete in
//!   a prefix is found complete, with the same route and length, in everything received;
//! - every fixed response is one well-formed HTTP/1.1 response whose `Content-Length` is its
//!   body's length;
//! - a `Check` names a non-empty id without `/`; an `Upgrade` gives a 28-character accept key
//!   and a well-formed `101` answer.

use super::Input;
use crate::signaling::server::http::{head_too_large, parse, upgrade_response, Parsed, Route};

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let cut = usize::from(input.u16());
    let buf = input.rest();
    let whole = parse(buf);
    check_parsed(&whole, buf);
    let prefix = &buf[..cut % (buf.len() + 1)];
    let part = parse(prefix);
    check_parsed(&part, prefix);
    if let Parsed::Done {
        route,
        head_len,
        forwarded,
    } = &part
    {
        match (&whole, route) {
            (Parsed::Partial, _) => panic!("complete in a prefix, partial in the whole"),
            // An error answer covers what was received; the whole may fail differently.
            (_, Route::Respond(_)) => {}
            (
                Parsed::Done {
                    route: r,
                    head_len: n,
                    forwarded: f,
                },
                _,
            ) => {
                assert_eq!(
                    (r, n, f),
                    (route, head_len, forwarded),
                    "the route or the forwarded addresses changed with more bytes"
                )
            }
        }
    }
    check_response(&head_too_large());
}

fn check_parsed(parsed: &Parsed, buf: &[u8]) {
    let Parsed::Done {
        route, head_len, ..
    } = parsed
    else {
        return;
    };
    assert!(*head_len <= buf.len(), "head longer than the input");
    match route {
        Route::Respond(bytes) => check_response(bytes),
        Route::Check { id, .. } => assert!(!id.is_empty() && !id.contains('/'), "id {id:?}"),
        Route::Upgrade { accept_key } => {
            assert_eq!(accept_key.len(), 28, "accept key {accept_key:?}");
            check_response(&upgrade_response(accept_key));
        }
        Route::Health { .. } => {}
    }
}

fn check_response(bytes: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("{other:?}: {:?}", String::from_utf8_lossy(bytes)),
    };
    let length = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("Content-Length"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned());
    match length {
        Some(l) => assert_eq!(l, (bytes.len() - n).to_string(), "Content-Length"),
        None => assert_eq!(resp.code, Some(101), "no Content-Length"),
    }
}

/// Requests as browsers, the apps and monitoring send them.
pub fn seeds() -> Vec<Vec<u8>> {
    let heads: [&[u8]; 6] = [
        b"GET /ws HTTP/1.1\r\nHost: signal.example.org\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://app.music-assistant.io\r\n\r\n\x81\x85",
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
        b"HEAD /api/check/QCPJJTJMI3IDBNURU6XJJENRYU?x=1 HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"OPTIONS /api/check/X HTTP/1.1\r\nOrigin: https://app.music-assistant.io\r\nAccess-Control-Request-Method: GET\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\nSec-WebSocket-Version: 8\r\n\r\n",
        b"POST /health HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    ];
    heads
        .iter()
        .map(|h| {
            let mut s = ((h.len() / 2) as u16).to_be_bytes().to_vec();
            s.extend_from_slice(h);
            s
        })
        .collect()
}
