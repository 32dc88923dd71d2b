//! The status port's HTTP, sans-IO: parse one small request head and build the response
//! (docs/design.md#status-and-metrics). One request per connection (`Connection: close`),
//! `GET` (and `HEAD`) only, nothing read beyond the head.

/// Largest request head accepted; a status client sends a few hundred bytes.
pub const MAX_REQUEST: usize = 2048;
/// Most headers accepted in a request.
const MAX_HEADERS: usize = 24;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `/status`: JSON.
    Status,
    /// `/metrics`: Prometheus text format.
    Metrics,
    /// `/healthz`: 200 when registered, 503 otherwise.
    Health,
}

/// The outcome of the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed (and allowed: fewer than [`MAX_REQUEST`] so far).
    Partial,
    /// A page to render; `head_only` for `HEAD`.
    Page { page: Page, head_only: bool },
    /// Answer with this complete response (an error) and close.
    Respond(Vec<u8>),
}

/// Parse the bytes received so far on one connection.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST => return Parsed::Partial,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Respond(text(
                431,
                "Request Header Fields Too Large",
                "request too large\n",
                false,
            ));
        }
        Err(_) => return Parsed::Respond(text(400, "Bad Request", "bad request\n", false)),
    }
    if buf.len() > MAX_REQUEST {
        return Parsed::Respond(text(
            431,
            "Request Header Fields Too Large",
            "request too large\n",
            false,
        ));
    }
    let head_only = match req.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => {
            let mut r = text(405, "Method Not Allowed", "only GET\n", false);
            insert_header(&mut r, "Allow: GET, HEAD");
            return Parsed::Respond(r);
        }
    };
    let path = req.path.unwrap_or("/");
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let page = match path {
        "/status" => Page::Status,
        "/metrics" => Page::Metrics,
        "/healthz" => Page::Health,
        _ => {
            let body = "not found: try /status, /metrics or /healthz\n";
            return Parsed::Respond(text(404, "Not Found", body, head_only));
        }
    };
    Parsed::Page { page, head_only }
}

/// A complete response: status line, the fixed headers, `body` (left out for `HEAD`, its
/// length still announced).
pub fn response(
    code: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// A plain-text response.
pub fn text(code: u16, reason: &str, body: &str, head_only: bool) -> Vec<u8> {
    response(
        code,
        reason,
        "text/plain; charset=utf-8",
        body.as_bytes(),
        head_only,
    )
}

/// Add one header line right after the status line.
fn insert_header(response: &mut Vec<u8>, line: &str) {
    let at = response
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(response.len(), |i| i + 2);
    let line = format!("{line}\r\n");
    response.splice(at..at, line.bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(req: &str) -> Parsed {
        parse(req.as_bytes())
    }

    fn status_of(p: Parsed) -> String {
        match p {
            Parsed::Respond(r) => String::from_utf8(r).unwrap()[9..12].to_string(),
            other => panic!("not a response: {other:?}"),
        }
    }

    #[test]
    fn routes_the_three_pages() {
        let get = |path: &str| page(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(
            get("/status"),
            Parsed::Page {
                page: Page::Status,
                head_only: false
            }
        );
        assert_eq!(
            get("/metrics"),
            Parsed::Page {
                page: Page::Metrics,
                head_only: false
            }
        );
        assert_eq!(
            get("/healthz?x=1"),
            Parsed::Page {
                page: Page::Health,
                head_only: false
            }
        );
        assert_eq!(
            page("HEAD /status HTTP/1.0\r\n\r\n"),
            Parsed::Page {
                page: Page::Status,
                head_only: true
            }
        );
        assert_eq!(status_of(get("/")), "404");
        assert_eq!(status_of(get("/status/../etc")), "404");
    }

    #[test]
    fn partial_until_the_head_ends() {
        assert_eq!(page("GET /status HTTP/1.1\r\nHost:"), Parsed::Partial);
        assert_eq!(page(""), Parsed::Partial);
    }

    #[test]
    fn refuses_other_methods_garbage_and_large_heads() {
        let r = page("POST /status HTTP/1.1\r\n\r\n");
        let Parsed::Respond(bytes) = &r else { panic!() };
        assert!(String::from_utf8_lossy(bytes).contains("\r\nAllow: GET, HEAD\r\n"));
        assert_eq!(status_of(r), "405");
        assert_eq!(status_of(page("\x16\x03\x01garbage\r\n\r\n")), "400");
        let big = format!("GET /status HTTP/1.1\r\nX: {}", "a".repeat(MAX_REQUEST));
        assert_eq!(status_of(page(&big)), "431");
        let many: String = (0..40).map(|i| format!("H{i}: v\r\n")).collect();
        assert_eq!(
            status_of(page(&format!("GET /status HTTP/1.1\r\n{many}\r\n"))),
            "431"
        );
    }

    #[test]
    fn head_announces_the_length_without_the_body() {
        let r = String::from_utf8(response(200, "OK", "text/plain", b"hello", true)).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(r.contains("Content-Length: 5\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
        let r = String::from_utf8(response(200, "OK", "text/plain", b"hello", false)).unwrap();
        assert!(r.ends_with("\r\n\r\nhello"));
    }
}
