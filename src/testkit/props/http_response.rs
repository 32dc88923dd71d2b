//! The HTTP/1.1 response parser of the image proxy (`http_proxy::client::HttpConn`), fed at
//! arbitrary split points (docs/protocol.md#proxy-hardening).
//!
//! Input: a flags byte (bit 0: the request was `HEAD`; bit 1: keep-alive asked for), a byte
//! choosing the body limit, a byte giving the number of split points, that many `u16` split
//! points, then the bytes the server sends.
//!
//! Properties:
//! - the outcome does not depend on how the bytes are split: feeding them in pieces gives
//!   the same response (status, headers, body) or the same error as feeding them at once, and
//!   a connection kept reusable by the split run was reusable at once too (the one-shot run
//!   sees any bytes after the response and must be at least as careful);
//! - a response has a final, valid status (200..=599), at most `max_body` body bytes, none
//!   for `HEAD`, `204` and `304`, only the passed-back headers plus `Content-Length`, each
//!   once, with no CR or LF in a value, and `Content-Length` is the body's length (for
//!   `HEAD`: the server's);
//! - after a response or an error the connection is idle, and bytes with no request
//!   outstanding are refused (`Unsolicited`), never taken as a response.

use super::Input;
use crate::http_proxy::client::{
    HttpConn, HttpError, HttpResponse, Limits, Progress, PASSED_BACK_HEADERS,
};
use crate::http_proxy::request::{Method, ProxyRequest};

/// The terminal outcome of one exchange: a response, an error, or still waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Done(HttpResponse),
    Failed(HttpError),
}

fn request(method: Method) -> ProxyRequest {
    ProxyRequest {
        id: "req_1".into(),
        method,
        path: "/imageproxy?path=x".into(),
        headers: vec![],
    }
}

/// Feeds `pieces` in order, then the end of the connection, and returns the first terminal
/// outcome with the index of the piece that produced it (`pieces.len()`: the end).
fn run<'a>(
    conn: &mut HttpConn,
    method: Method,
    pieces: impl Iterator<Item = &'a [u8]>,
) -> (Outcome, usize) {
    conn.start(&request(method));
    let mut last = 0;
    for (i, piece) in pieces.enumerate() {
        last = i + 1;
        match conn.feed(piece) {
            Ok(Progress::NeedMore) => {}
            Ok(Progress::Done(r)) => return (Outcome::Done(r), i),
            Err(e) => return (Outcome::Failed(e), i),
        }
    }
    match conn.feed_eof() {
        Ok(Progress::Done(r)) => (Outcome::Done(r), last),
        Ok(Progress::NeedMore) => panic!("NeedMore after the end of the connection"),
        Err(e) => (Outcome::Failed(e), last),
    }
}

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let method = if flags & 1 == 1 {
        Method::Head
    } else {
        Method::Get
    };
    let keep_alive = flags & 2 == 2;
    let limits = Limits {
        max_head: 16 * 1024,
        max_body: usize::from(input.u8()) * 64,
    };
    let n = usize::from(input.u8() % 16);
    let mut cuts: Vec<usize> = (0..n).map(|_| usize::from(input.u16())).collect();
    let bytes = input.rest();
    cuts.iter_mut().for_each(|c| *c %= bytes.len() + 1);
    cuts.sort_unstable();

    let mut whole_conn = HttpConn::with_limits("ma.local:8095".into(), keep_alive, limits);
    let (whole, _) = run(&mut whole_conn, method, std::iter::once(bytes));
    let mut pieces = Vec::with_capacity(n + 1);
    let mut from = 0;
    for cut in cuts.into_iter().chain([bytes.len()]) {
        pieces.push(&bytes[from..cut]);
        from = cut;
    }
    let mut split_conn = HttpConn::with_limits("ma.local:8095".into(), keep_alive, limits);
    let (split, at) = run(&mut split_conn, method, pieces.iter().copied());

    match (&whole, &split) {
        (Outcome::Done(a), Outcome::Done(b)) => {
            assert_eq!(
                (a.status, &a.headers, &a.body),
                (b.status, &b.headers, &b.body),
                "the split changed the response"
            );
            assert!(
                !a.reusable || b.reusable || at + 1 < pieces.len(),
                "reusable at once but not when split"
            );
            check_response(a, method, limits);
        }
        (a, b) => assert_eq!(a, b, "the split changed the outcome"),
    }
    for conn in [&mut whole_conn, &mut split_conn] {
        assert!(!conn.is_busy(), "busy after the exchange ended");
        assert_eq!(
            conn.feed(b"HTTP/1.1 200 OK\r\n\r\n"),
            Err(HttpError::Unsolicited)
        );
    }
}

fn check_response(r: &HttpResponse, method: Method, limits: Limits) {
    assert!((200..=599).contains(&r.status), "status {}", r.status);
    assert!(r.body.len() <= limits.max_body, "body over the limit");
    if method == Method::Head || r.status == 204 || r.status == 304 {
        assert!(r.body.is_empty(), "a body where none may be");
    }
    for (i, (name, value)) in r.headers.iter().enumerate() {
        assert!(
            *name == "Content-Length" || PASSED_BACK_HEADERS.contains(name),
            "header {name} passed back"
        );
        assert!(
            r.headers[..i].iter().all(|(n, _)| n != name),
            "{name} twice"
        );
        assert!(
            !value.contains(['\r', '\n']),
            "CR or LF in the value of {name}"
        );
    }
    let length = r.headers.iter().find(|(n, _)| *n == "Content-Length");
    if method == Method::Get {
        assert_eq!(
            length.map(|(_, v)| v.as_str()),
            Some(r.body.len().to_string().as_str()),
            "Content-Length is not the body's length"
        );
    }
}

/// An input: flags, body limit selector, split points, then the server's bytes.
pub fn input(head: bool, keep_alive: bool, max_body_64: u8, cuts: &[u16], bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(head) | (u8::from(keep_alive) << 1), max_body_64];
    out.push(cuts.len() as u8);
    for c in cuts {
        out.extend_from_slice(&c.to_be_bytes());
    }
    out.extend_from_slice(bytes);
    out
}

/// Responses as Music Assistant's server (aiohttp) and the tests' stand-ins send them.
pub fn seeds() -> Vec<Vec<u8>> {
    let responses: [&[u8]; 8] = [
        b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 4\r\nCache-Control: max-age=3600\r\nETag: \"a\"\r\nServer: Python/3.12 aiohttp/3.11\r\nSet-Cookie: s=1\r\n\r\n\x89PNG",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nETag: \"abc\"\r\nCache-Control: public\r\nCache-Control: max-age=60\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Type: audio/mpeg\r\n\r\nID3\x03\x00\x00\x00body until close",
        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-1/10\r\nAccept-Ranges: bytes\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 302 Found\r\nLocation: /imageproxy?size=256\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ];
    let mut out = Vec::new();
    for (i, r) in responses.iter().enumerate() {
        let cuts = [1, 17, (r.len() / 2) as u16];
        out.push(input(false, i % 2 == 0, 64, &cuts[..i % 4], r));
    }
    out.push(input(true, true, 1, &[], responses[0]));
    out.push(input(
        false,
        true,
        0,
        &[5],
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
    ));
    out
}
