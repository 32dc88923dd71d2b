//! The HTTP side of the signaling port: parse one request head (bounded), route it, and build
//! the small fixed responses. Every connection serves one request (`Connection: close`),
//! except a WebSocket upgrade, which turns the connection into a WebSocket.

use std::net::{IpAddr, SocketAddr};

use tungstenite::handshake::derive_accept_key;

/// Largest request head accepted (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Most headers accepted in a request.
const MAX_HEADERS: usize = 32;
/// Most forwarding hops read from `X-Forwarded-For` / `Forwarded`.
const MAX_HOPS: usize = 16;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /health`.
    Health { head_only: bool },
    /// `GET /api/check/<ID>`.
    Check { id: String, head_only: bool },
    /// `GET /ws` with a valid WebSocket upgrade: send [`upgrade_response`] with this accept key.
    Upgrade { accept_key: String },
    /// Anything else: this complete response.
    Respond(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed (the caller enforces [`MAX_HEAD`]).
    Partial,
    /// A complete head of `head_len` bytes; what follows belongs to the WebSocket.
    /// `forwarded`: the addresses its forwarding headers name, leftmost (the original client)
    /// first, `None` for one that cannot be read; believed only from a trusted proxy
    /// (docs/protocol.md#trusted-proxies).
    Done {
        route: Route,
        head_len: usize,
        forwarded: Vec<Option<IpAddr>>,
    },
}

fn header<'a>(req: &'a httparse::Request, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Parse the bytes received so far.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Done {
                route: Route::Respond(error_response(431, "Request Header Fields Too Large")),
                head_len: buf.len(),
                forwarded: Vec::new(),
            }
        }
        Err(_) => {
            return Parsed::Done {
                route: Route::Respond(error_response(400, "Bad Request")),
                head_len: buf.len(),
                forwarded: Vec::new(),
            }
        }
    };
    Parsed::Done {
        route: route(&req),
        head_len,
        forwarded: forwarded(&req),
    }
}

/// The hops of `X-Forwarded-For` (every such header, in order), or of `Forwarded` (its `for=`
/// parameters) when there is no `X-Forwarded-For`: the header reverse proxies append to by
/// default comes first, so a client cannot slip in an address through the other one.
fn forwarded(req: &httparse::Request) -> Vec<Option<IpAddr>> {
    let values = |name: &'static str| {
        req.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| std::str::from_utf8(h.value).ok())
    };
    let mut hops = Vec::new();
    if values("X-Forwarded-For").next().is_some() {
        for value in values("X-Forwarded-For") {
            match value {
                Some(v) => hops.extend(v.split(',').map(hop_address)),
                None => hops.push(None),
            }
        }
    } else {
        for value in values("Forwarded") {
            let Some(v) = value else {
                hops.push(None);
                continue;
            };
            for element in v.split(',') {
                let for_param = element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then_some(v)
                });
                hops.push(for_param.and_then(hop_address));
            }
        }
    }
    // Only the rightmost hops matter (the walk starts there).
    let excess = hops.len().saturating_sub(MAX_HOPS);
    hops.drain(..excess);
    hops
}

/// One hop: `192.0.2.1`, `192.0.2.1:443`, `2001:db8::1`, `[2001:db8::1]:443`, quoted or not.
fn hop_address(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .and_then(|h| h.parse().ok())
        })
}

/// The response for a head that did not fit in [`MAX_HEAD`].
pub fn head_too_large() -> Vec<u8> {
    error_response(431, "Request Header Fields Too Large")
}

fn route(req: &httparse::Request) -> Route {
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if method == "OPTIONS" {
        return Route::Respond(response(204, "No Content", None, b"", &[], false));
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return Route::Respond(response(
            405,
            "Method Not Allowed",
            Some("text/plain"),
            b"Method Not Allowed\n",
            &[("Allow", "GET, HEAD, OPTIONS")],
            false,
        ));
    }
    if path == "/health" {
        return Route::Health { head_only };
    }
    if let Some(id) = path.strip_prefix("/api/check/") {
        if !id.is_empty() && !id.contains('/') {
            return Route::Check {
                id: id.to_string(),
                head_only,
            };
        }
    }
    if path == "/ws" {
        return upgrade(req, head_only);
    }
    Route::Respond(error_response(404, "Not Found"))
}

fn upgrade(req: &httparse::Request, head_only: bool) -> Route {
    if head_only
        || !has_token(header(req, "Upgrade"), "websocket")
        || !has_token(header(req, "Connection"), "upgrade")
    {
        return Route::Respond(response(
            426,
            "Upgrade Required",
            Some("text/plain"),
            b"This is a WebSocket endpoint.\n",
            &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
            false,
        ));
    }
    if header(req, "Sec-WebSocket-Version") != Some("13") {
        return Route::Respond(response(
            426,
            "Upgrade Required",
            Some("text/plain"),
            b"Unsupported WebSocket version.\n",
            &[("Sec-WebSocket-Version", "13")],
            false,
        ));
    }
    match header(req, "Sec-WebSocket-Key").filter(|k| !k.is_empty() && k.len() <= 64) {
        Some(key) => Route::Upgrade {
            accept_key: derive_accept_key(key.as_bytes()),
        },
        None => Route::Respond(error_response(400, "Bad Request")),
    }
}

/// The `101 Switching Protocols` answer to a WebSocket upgrade.
pub fn upgrade_response(accept_key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\n\r\n"
    )
    .into_bytes()
}

/// A JSON response (`head_only`: headers only, for `HEAD`).
pub fn json_response(
    status: u16,
    reason: &str,
    body: &str,
    extra: &[(&str, &str)],
    head_only: bool,
) -> Vec<u8> {
    response(
        status,
        reason,
        Some("application/json"),
        body.as_bytes(),
        extra,
        head_only,
    )
}

fn error_response(status: u16, reason: &str) -> Vec<u8> {
    response(
        status,
        reason,
        Some("text/plain"),
        format!("{reason}\n").as_bytes(),
        &[],
        false,
    )
}

fn response(
    status: u16,
    reason: &str,
    content_type: Option<&str>,
    body: &[u8],
    extra: &[(&str, &str)],
    head_only: bool,
) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nConnection: close\r\nCache-Control: no-store\r\n\
         Access-Control-Allow-Origin: *\r\nAccess-Control-Allow-Methods: GET, HEAD, OPTIONS\r\n\
         Access-Control-Allow-Headers: Content-Type\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = content_type {
        head.push_str(&format!("Content-Type: {t}\r\n"));
    }
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(raw: &str) -> Route {
        match parse(raw.as_bytes()) {
            Parsed::Done { route, .. } => route,
            Parsed::Partial => panic!("partial: {raw:?}"),
        }
    }

    fn status(route: &Route) -> String {
        match route {
            Route::Respond(bytes) => String::from_utf8_lossy(bytes)
                .lines()
                .next()
                .unwrap()
                .to_string(),
            other => panic!("not a fixed response: {other:?}"),
        }
    }

    #[test]
    fn routes() {
        assert_eq!(
            routed("GET /health HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Health { head_only: false }
        );
        assert_eq!(
            routed("HEAD /health?x=1 HTTP/1.1\r\n\r\n"),
            Route::Health { head_only: true }
        );
        assert_eq!(
            routed("GET /api/check/abc HTTP/1.1\r\n\r\n"),
            Route::Check {
                id: "abc".into(),
                head_only: false
            }
        );
        assert_eq!(
            status(&routed("GET /api/check/ HTTP/1.1\r\n\r\n")),
            "HTTP/1.1 404 Not Found"
        );
        assert_eq!(
            status(&routed("GET /api/check/a/b HTTP/1.1\r\n\r\n")),
            "HTTP/1.1 404 Not Found"
        );
        assert_eq!(
            status(&routed("GET / HTTP/1.1\r\n\r\n")),
            "HTTP/1.1 404 Not Found"
        );
        assert_eq!(
            status(&routed("POST /health HTTP/1.1\r\n\r\n")),
            "HTTP/1.1 405 Method Not Allowed"
        );
        assert_eq!(
            status(&routed("OPTIONS /health HTTP/1.1\r\n\r\n")),
            "HTTP/1.1 204 No Content"
        );
        assert_eq!(
            status(&routed("GET /ws HTTP/1.1\r\n\r\n")),
            "HTTP/1.1 426 Upgrade Required"
        );
        assert_eq!(
            status(&routed("\x16\x03\x01garbage\r\n\r\n")),
            "HTTP/1.1 400 Bad Request"
        );
        assert_eq!(parse(b"GET /health HTTP/1.1\r\nHost:"), Parsed::Partial);
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            status(&routed(&format!("GET /health HTTP/1.1\r\n{many}\r\n"))),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
    }

    #[test]
    fn websocket_upgrade() {
        let raw = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nab";
        match parse(raw.as_bytes()) {
            Parsed::Done {
                route: Route::Upgrade { accept_key },
                head_len,
                ..
            } => {
                // RFC 6455's example.
                assert_eq!(accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
                assert_eq!(head_len, raw.len() - 2);
            }
            other => panic!("{other:?}"),
        }
        let old = raw.replace("Version: 13", "Version: 8");
        assert_eq!(status(&routed(&old)), "HTTP/1.1 426 Upgrade Required");
        let keyless = raw.replace("Sec-WebSocket-Key", "X-Key");
        assert_eq!(status(&routed(&keyless)), "HTTP/1.1 400 Bad Request");
    }

    fn hops(headers: &str) -> Vec<Option<IpAddr>> {
        let raw = format!("GET /ws HTTP/1.1\r\n{headers}\r\n");
        match parse(raw.as_bytes()) {
            Parsed::Done { forwarded, .. } => forwarded,
            Parsed::Partial => panic!("partial"),
        }
    }

    #[test]
    fn forwarding_headers() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!(hops("Host: x\r\n").is_empty());
        assert_eq!(
            hops("X-Forwarded-For: 203.0.113.5, 10.0.0.2\r\nX-Forwarded-For: 10.0.0.3:8080\r\n"),
            vec![ip("203.0.113.5"), ip("10.0.0.2"), ip("10.0.0.3")]
        );
        assert_eq!(
            hops("X-Forwarded-For: unknown, [2001:db8::1]:443, 2001:db8::2\r\n"),
            vec![None, ip("2001:db8::1"), ip("2001:db8::2")]
        );
        assert_eq!(
            hops("Forwarded: for=192.0.2.60;proto=http;by=203.0.113.43, For=\"[2001:db8:cafe::17]:4711\"\r\n"),
            vec![ip("192.0.2.60"), ip("2001:db8:cafe::17")]
        );
        assert_eq!(
            hops("Forwarded: for=_hidden, proto=https\r\n"),
            vec![None, None]
        );
        // X-Forwarded-For wins over Forwarded.
        assert_eq!(
            hops("Forwarded: for=192.0.2.1\r\nX-Forwarded-For: 198.51.100.1\r\n"),
            vec![ip("198.51.100.1")]
        );
        // Only the rightmost hops are kept.
        let long: Vec<String> = (0..40).map(|i| format!("10.0.0.{i}")).collect();
        let got = hops(&format!("X-Forwarded-For: {}\r\n", long.join(",")));
        assert_eq!(got.len(), MAX_HOPS);
        assert_eq!(got.last().copied().flatten(), ip("10.0.0.39"));
    }

    #[test]
    fn json_and_head_responses() {
        let r = String::from_utf8(json_response(200, "OK", "{}", &[], false)).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(r.contains("Content-Length: 2\r\n"));
        assert!(r.contains("Access-Control-Allow-Origin: *\r\n"));
        assert!(r.ends_with("\r\n\r\n{}"));
        let h = String::from_utf8(json_response(200, "OK", "{}", &[], true)).unwrap();
        assert!(h.contains("Content-Length: 2\r\n") && h.ends_with("\r\n\r\n"));
    }
}
