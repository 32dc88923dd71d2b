//! Parsing and validation of `http-proxy-request` messages
//! (docs/protocol.md#proxy-requests, #proxy-hardening).
//!
//! ```text
//! {"type":"http-proxy-request","id":"req_...","method":"GET","path":"/imageproxy?...","headers":{...}}
//! ```
//!
//! The request comes from a remote, possibly unauthenticated client and is turned into an HTTP
//! request to the local Music Assistant server, so everything is checked here before anything
//! is fetched:
//!
//! - `path` must be an origin-form request target: it starts with exactly one `/`, consists of
//!   printable ASCII only (no space, no control character, no CR/LF, no non-ASCII: percent-encode
//!   those), contains no `\` (some URL parsers read it as `/`) and no `#`, is at most
//!   [`MAX_PATH_LEN`] bytes, has only valid percent escapes, and its path component (before
//!   `?`) holds neither an `@` nor a scheme separator `://`, nor, once each segment is
//!   percent-decoded, a dot segment (`.`, `..`, `%2e%2e`, …), an encoded `/` or `\`, or an
//!   encoded control character. The query is opaque to us and may hold `@`, `:` or `%2F` (the
//!   target host is fixed; only the request line's framing matters there). The whole rule
//!   is [`check_path`].
//! - `method` is `GET` or `HEAD`, compared case-sensitively as HTTP does (RFC 9110 §9.1):
//!   `get` is refused. A missing `method` means `GET`.
//! - Only the request headers of [`FORWARDED_HEADERS`] are kept (names compared
//!   case-insensitively, sent with their canonical spelling); the others are dropped silently.
//!   A kept header with a value that is not a string, holds a control character (CR/LF) or
//!   non-ASCII, or is longer than [`MAX_HEADER_VALUE_LEN`] makes the whole request invalid.
//!   `Host` is never taken from the client: the HTTP client sets it.
//! - `id` must be a non-empty string of at most [`MAX_ID_LEN`] bytes; it is echoed back in the
//!   response.
//!
//! A refused request yields a [`RequestError`]. With an id, the caller answers it with a 400
//! response ([`RequestError::status`]); without one there is nobody to address the answer to:
//! log it and drop the message (the client's own request timeout fires).

use std::fmt;

use serde_json::Value;

/// The `type` of a proxy request message.
pub const REQUEST_TYPE: &str = "http-proxy-request";
/// Longest accepted request target, in bytes.
pub const MAX_PATH_LEN: usize = 8 * 1024;
/// Longest accepted request id, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Longest accepted value of a forwarded header, in bytes.
pub const MAX_HEADER_VALUE_LEN: usize = 1024;
/// Largest message parsed as a proxy request (a request is a few hundred bytes).
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// The request headers forwarded to Music Assistant, with their canonical spelling.
pub const FORWARDED_HEADERS: [&str; 6] = [
    "Accept",
    "Accept-Encoding",
    "Accept-Language",
    "If-None-Match",
    "If-Modified-Since",
    "Range",
];

/// The methods the proxy serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
        }
    }
}

/// A validated proxy request: safe to put on a request line as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRequest {
    /// The client's request id, echoed in the response.
    pub id: String,
    pub method: Method,
    /// Origin-form request target (`/path?query`), validated.
    pub path: String,
    /// Forwarded headers: canonical name (from [`FORWARDED_HEADERS`]) and validated value, at
    /// most one per name, in the order of [`FORWARDED_HEADERS`].
    pub headers: Vec<(&'static str, String)>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Not a JSON object (or larger than [`MAX_MESSAGE_LEN`]).
    NotJson,
    /// `type` is not `http-proxy-request`.
    NotProxyRequest,
    /// No usable `id`.
    BadId,
    /// `method` is not `GET` or `HEAD` (or not a string).
    Method(String),
    /// `path` is missing or not a string.
    MissingPath,
    /// `path` is not an acceptable origin-form target.
    Path(&'static str),
    /// `headers` is not an object.
    HeadersNotObject,
    /// A forwarded header has an unacceptable value.
    Header(&'static str),
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::NotJson => write!(f, "not a JSON object"),
            Invalid::NotProxyRequest => write!(f, "not an http-proxy-request"),
            Invalid::BadId => write!(f, "missing or invalid id"),
            Invalid::Method(m) => {
                let shown: String = m.chars().take(16).collect();
                write!(f, "method {shown:?} not allowed (only GET and HEAD)")
            }
            Invalid::MissingPath => write!(f, "missing path"),
            Invalid::Path(why) => write!(f, "invalid path: {why}"),
            Invalid::HeadersNotObject => write!(f, "headers must be an object"),
            Invalid::Header(name) => write!(f, "invalid value for header {name}"),
        }
    }
}

/// A refused request: answer with a 400 when `id` is known, otherwise log and drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// The request's id when it could be read (and is itself valid).
    pub id: Option<String>,
    pub reason: Invalid,
}

impl RequestError {
    /// The HTTP status of the answer: always 400.
    pub fn status(&self) -> u16 {
        400
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "http-proxy-request {id:?} refused: {}", self.reason),
            None => write!(f, "http-proxy-request refused: {}", self.reason),
        }
    }
}

impl std::error::Error for RequestError {}

/// Whether a text message *might* be a proxy request (a cheap test before parsing: on `ma-api`
/// most messages are API commands for MA and must be forwarded untouched).
pub fn may_be_proxy_request(text: &str) -> bool {
    text.contains(REQUEST_TYPE)
}

/// For a text from `ma-api`: `None` when it is not a proxy request (forward it to MA), otherwise
/// the parsed request or why it was refused. Text that is not JSON, or JSON whose `type` is
/// not `http-proxy-request`, is `None`.
pub fn classify(text: &str) -> Option<Result<ProxyRequest, RequestError>> {
    if !may_be_proxy_request(text) {
        return None;
    }
    let value: Value = serde_json::from_str(text).ok()?;
    if value.get("type").and_then(Value::as_str) != Some(REQUEST_TYPE) {
        return None;
    }
    Some(from_value(&value))
}

/// Parse and validate a message that must be a proxy request (the `http_proxy` channel).
pub fn parse(text: &str) -> Result<ProxyRequest, RequestError> {
    let error = |reason| RequestError { id: None, reason };
    if text.len() > MAX_MESSAGE_LEN {
        return Err(error(Invalid::NotJson));
    }
    let value: Value = serde_json::from_str(text).map_err(|_| error(Invalid::NotJson))?;
    from_value(&value)
}

/// Validate a parsed message.
pub fn from_value(value: &Value) -> Result<ProxyRequest, RequestError> {
    let Some(obj) = value.as_object() else {
        return Err(RequestError {
            id: None,
            reason: Invalid::NotJson,
        });
    };
    let id = obj
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| valid_id(id))
        .map(str::to_string);
    let fail = |reason| RequestError {
        id: id.clone(),
        reason,
    };
    if obj.get("type").and_then(Value::as_str) != Some(REQUEST_TYPE) {
        return Err(fail(Invalid::NotProxyRequest));
    }
    let Some(id) = id.clone() else {
        return Err(fail(Invalid::BadId));
    };
    let method = match obj.get("method") {
        None | Some(Value::Null) => Method::Get,
        Some(Value::String(m)) => {
            parse_method(m).ok_or_else(|| fail(Invalid::Method(m.clone())))?
        }
        Some(other) => return Err(fail(Invalid::Method(other.to_string()))),
    };
    let path = obj
        .get("path")
        .and_then(Value::as_str)
        .ok_or_else(|| fail(Invalid::MissingPath))?;
    check_path(path).map_err(|why| fail(Invalid::Path(why)))?;
    let headers = match obj.get("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(map)) => {
            forwarded_headers(map).map_err(|name| fail(Invalid::Header(name)))?
        }
        Some(_) => return Err(fail(Invalid::HeadersNotObject)),
    };
    Ok(ProxyRequest {
        id,
        method,
        path: path.to_string(),
        headers,
    })
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN
}

/// `GET` or `HEAD`, case-sensitively.
pub fn parse_method(m: &str) -> Option<Method> {
    match m {
        "GET" => Some(Method::Get),
        "HEAD" => Some(Method::Head),
        _ => None,
    }
}

/// The one rule for the `path` of a request: an origin-form target on MA's host that, once
/// percent-decoded, names the segments it shows. The error says why it is refused.
///
/// Whole target (path and query):
/// - not empty, at most [`MAX_PATH_LEN`] bytes, starts with exactly one `/` (so no scheme such
///   as `http://`, no authority such as `//host`, no `*`, no bare `?query`);
/// - printable ASCII only: no control character (NUL, CR, LF, tab, DEL), no space, no
///   non-ASCII (clients percent-encode those);
/// - no `\` (some servers read it as `/`), no `#` (a fragment is never sent to a server);
/// - every `%` starts a valid escape: `%` and two hex digits.
///
/// Path component (before the first `?`):
/// - holds neither `@` nor `://`;
/// - each `/`-separated segment, once percent-decoded, is not a dot segment (`.` or `..`,
///   whatever its spelling: `%2e`, `.%2E`, …; also not when followed by `;params`, as in
///   `..;x`), holds no `/` or `\` (`%2f`, `%5c`) and no control character (`%00`, `%0a`).
///
/// The query is otherwise opaque: it may hold `@`, `:` or encoded slashes (the apps pass URLs
/// there, e.g. `/imageproxy?path=https%3A%2F%2F…`). The target host is fixed, so only the
/// path can be used to reach another resource, and the server decodes it once: a path that
/// passes names, after that decoding, exactly the segments it shows.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty");
    }
    if path.len() > MAX_PATH_LEN {
        return Err("too long");
    }
    let bytes = path.as_bytes();
    if bytes[0] != b'/' {
        return Err("must start with /");
    }
    if bytes.get(1) == Some(&b'/') {
        return Err("must not start with //");
    }
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\r' | b'\n' => return Err("CR or LF"),
            0..=0x1f | 0x7f => return Err("control character"),
            b' ' => return Err("space (percent-encode it)"),
            0x80.. => return Err("non-ASCII character (percent-encode it)"),
            b'\\' => return Err("backslash"),
            b'#' => return Err("fragment"),
            b'%' if !is_escape(&bytes[i..]) => return Err("invalid percent escape"),
            _ => {}
        }
    }
    let path_part = path.split('?').next().unwrap_or(path);
    if path_part.contains('@') {
        return Err("@ in the path");
    }
    if path_part.contains("://") {
        return Err("scheme in the path");
    }
    for segment in path_part[1..].split('/') {
        let decoded = percent_decode(segment);
        if decoded.iter().any(|&b| b == b'/' || b == b'\\') {
            return Err("encoded slash or backslash in a segment");
        }
        if decoded.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err("encoded control character");
        }
        let name = decoded.split(|&b| b == b';').next().unwrap_or(&[]);
        if name == b"." || name == b".." {
            return Err("dot segment");
        }
    }
    Ok(())
}

/// Whether `bytes` (starting at a `%`) start with a valid escape: `%` and two hex digits.
fn is_escape(bytes: &[u8]) -> bool {
    bytes.len() >= 3 && bytes[1].is_ascii_hexdigit() && bytes[2].is_ascii_hexdigit()
}

/// Decode the percent escapes of a segment whose escapes are valid (see [`is_escape`]);
/// anything else is kept as it is.
fn percent_decode(segment: &str) -> Vec<u8> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && is_escape(&bytes[i..]) {
            let hex = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hex(bytes[i + 1]) << 4 | hex(bytes[i + 2]));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// The allowlisted headers of the request, canonical names, at most one each. A header named
/// twice with different cases (`accept` and `Accept`) keeps the first in the object's order.
fn forwarded_headers(
    map: &serde_json::Map<String, Value>,
) -> Result<Vec<(&'static str, String)>, &'static str> {
    let mut found: [Option<String>; FORWARDED_HEADERS.len()] = Default::default();
    for (name, value) in map {
        let Some(i) = FORWARDED_HEADERS
            .iter()
            .position(|h| h.eq_ignore_ascii_case(name))
        else {
            continue;
        };
        let canonical = FORWARDED_HEADERS[i];
        let Some(value) = value.as_str() else {
            return Err(canonical);
        };
        let value = check_header_value(value).ok_or(canonical)?;
        if found[i].is_none() {
            found[i] = Some(value.to_string());
        }
    }
    Ok(FORWARDED_HEADERS
        .iter()
        .zip(found)
        .filter_map(|(name, value)| value.map(|v| (*name, v)))
        .collect())
}

/// A header value without surrounding whitespace, if it is acceptable: visible ASCII, spaces
/// and tabs only, bounded.
fn check_header_value(value: &str) -> Option<&str> {
    if value.len() > MAX_HEADER_VALUE_LEN {
        return None;
    }
    if !value
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return None;
    }
    Some(value.trim_matches(|c| c == ' ' || c == '\t'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(path: &str) -> String {
        json!({"type": "http-proxy-request", "id": "req_1", "method": "GET", "path": path, "headers": {}})
            .to_string()
    }

    fn refused(text: &str) -> RequestError {
        parse(text).expect_err("must be refused")
    }

    /// Every refused path of the table, with a word of the reason it must give.
    const REFUSED: &[(&str, &str)] = &[
        // Not origin-form: empty, scheme, authority, relative, asterisk, query only.
        ("", "empty"),
        ("//evil.com/x", "//"),
        ("//", "//"),
        ("http://evil.com/", "start with /"),
        ("https://evil.com/", "start with /"),
        ("https:evil.com", "start with /"),
        ("evil.com/x", "start with /"),
        ("*", "start with /"),
        ("?x", "start with /"),
        (".", "start with /"),
        ("%2f", "start with /"),
        ("/http://evil.com/", "scheme"),
        ("/@evil", "@"),
        ("/x@evil.com/", "@"),
        // Request-line framing and characters.
        ("/\r\nHost: x", "CR or LF"),
        ("/a\nb", "CR or LF"),
        ("/a\rb", "CR or LF"),
        ("/a b", "space"),
        ("/a\tb", "control"),
        ("/a\0b", "control"),
        ("/a\u{7f}", "control"),
        ("/caf\u{e9}", "non-ASCII"),
        ("/x#frag", "fragment"),
        ("/#", "fragment"),
        ("\\\\evil", "start with /"),
        ("/\\evil", "backslash"),
        ("/a\\..\\b", "backslash"),
        // Dot segments, in any spelling and position.
        ("/..", "dot segment"),
        ("/.", "dot segment"),
        ("/../info", "dot segment"),
        ("/a/../b", "dot segment"),
        ("/a/./b", "dot segment"),
        ("/a/..", "dot segment"),
        ("/a/.", "dot segment"),
        ("/a/..?x=1", "dot segment"),
        ("/%2e%2e", "dot segment"),
        ("/%2E%2E/x", "dot segment"),
        ("/%2E.", "dot segment"),
        ("/.%2e", "dot segment"),
        ("/a/%2e/b", "dot segment"),
        ("/a/%2e%2E", "dot segment"),
        ("/..;/x", "dot segment"),
        ("/%2e%2e;jsessionid=1/x", "dot segment"),
        // Encoded separators and controls inside a segment.
        ("/a%2fb", "slash"),
        ("/a%2F..%2Fb", "slash"),
        ("/%2f%2fevil.com", "slash"),
        ("/..%2f", "slash"),
        ("/a%5cb", "slash"),
        ("/%5C..%5C", "slash"),
        ("/a%00b", "control"),
        ("/a%0d%0aHost:x", "control"),
        ("/a%7f", "control"),
        // Invalid escapes, in the path or the query.
        ("/a%", "percent"),
        ("/a%2", "percent"),
        ("/a%zz", "percent"),
        ("/a%%2e", "percent"),
        ("/%.2e", "percent"),
        ("/x?q=%g0", "percent"),
        ("/x?q=100%", "percent"),
    ];

    /// Accepted paths: those the apps use, and near misses of the refused ones.
    const ACCEPTED: &[&str] = &[
        "/imageproxy?path=https%3A%2F%2Fi.scdn.co%2Fimage%2Fab67&provider=spotify--x&size=256&fmt=webp",
        "/imageproxy/abc123?size=512",
        "/preview?item_id=1&provider=library",
        "/info",
        "/",
        // The query is opaque: URLs, @, encoded slashes and dots there cannot change the target.
        "/imageproxy?path=https://example.com/a@2x.png",
        "/imageproxy?path=..%2F..%2Fetc&x=/../",
        "/x?.",
        // Dots that are not whole segments.
        "/...",
        "/.../x",
        "/a..b",
        "/..a",
        "/a.",
        "/.well-known/x",
        "/file.tar.gz",
        "/%2e%2e%2e",
        "/%2ex",
        "/a;..",
        // Other escapes are data.
        "/a%20b",
        "/caf%C3%A9",
        "/a%3Fb",
        "/a%23b",
        "/a%25",
        "/a%252e%252e",
        // Empty segments are not dot segments.
        "/a//b",
        "/a/",
    ];

    #[test]
    fn path_table() {
        for path in ACCEPTED {
            let r = parse(&req(path)).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            assert_eq!(r.path, *path);
        }
        for (path, why) in REFUSED {
            let e = refused(&req(path));
            assert_eq!(e.id.as_deref(), Some("req_1"), "{path:?}");
            let Invalid::Path(reason) = e.reason else {
                panic!("{path:?}: {e}");
            };
            assert!(reason.contains(why), "{path:?}: {reason:?}, wanted {why:?}");
            assert_eq!(e.status(), 400);
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(refused(&req(&long)).reason, Invalid::Path("too long"));
        // Exactly at the limit is fine.
        let max = format!("/{}", "a".repeat(MAX_PATH_LEN - 1));
        assert!(parse(&req(&max)).is_ok());
        // A valid request keeps its id and method.
        let r = parse(&req("/info")).unwrap();
        assert_eq!((r.id.as_str(), r.method), ("req_1", Method::Get));
    }

    /// Independent of the code under test: decode `%XX`, keep everything else.
    fn decode(segment: &str) -> Vec<u8> {
        let b = segment.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(v) if b[i] == b'%' => {
                    out.push(v);
                    i += 3;
                }
                _ => {
                    out.push(b[i]);
                    i += 1;
                }
            }
        }
        out
    }

    /// Generated paths over a small alphabet rich in dots, escapes and separators: whatever
    /// is accepted decodes to plain segments.
    #[test]
    fn accepted_paths_decode_to_plain_segments() {
        const ALPHABET: &[&str] = &[
            "/", ".", "%", "2", "e", "E", "f", "F", "5", "c", "C", "a", "b", "?", "=", ";", "0",
            "%2e", "%2E", "%2f", "%5c", "..", "\\",
        ];
        // xorshift64*: deterministic, no crate.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..5000 {
            let len = 1 + (next() % 10) as usize;
            let mut path = String::from(if next() % 8 == 0 { "" } else { "/" });
            for _ in 0..len {
                path.push_str(ALPHABET[(next() % ALPHABET.len() as u64) as usize]);
            }
            if check_path(&path).is_err() {
                refused += 1;
                continue;
            }
            accepted += 1;
            let path_part = path.split('?').next().unwrap();
            assert!(
                path_part.starts_with('/') && !path_part.starts_with("//"),
                "{path:?}"
            );
            for segment in path_part[1..].split('/') {
                let d = decode(segment);
                assert!(d != b"." && d != b"..", "{path:?}: dot segment {segment:?}");
                assert!(!d.contains(&b'/'), "{path:?}: slash in {segment:?}");
                assert!(!d.contains(&b'\\'), "{path:?}: backslash in {segment:?}");
            }
        }
        // The alphabet exercises both sides of the rule.
        assert!(accepted > 500 && refused > 500, "{accepted} / {refused}");
    }

    #[test]
    fn refuses_methods() {
        for m in [
            "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "get", "Get", "head", "GET ",
            "", "G\r\nET",
        ] {
            let text =
                json!({"type": "http-proxy-request", "id": "r", "method": m, "path": "/info"})
                    .to_string();
            let e = refused(&text);
            assert_eq!(e.id.as_deref(), Some("r"));
            assert!(matches!(e.reason, Invalid::Method(_)), "{m:?}");
        }
        let text = json!({"type": "http-proxy-request", "id": "r", "method": 1, "path": "/info"})
            .to_string();
        assert!(matches!(refused(&text).reason, Invalid::Method(_)));
        let head =
            json!({"type": "http-proxy-request", "id": "r", "method": "HEAD", "path": "/info"})
                .to_string();
        assert_eq!(parse(&head).unwrap().method, Method::Head);
        let missing = json!({"type": "http-proxy-request", "id": "r", "path": "/info"}).to_string();
        assert_eq!(parse(&missing).unwrap().method, Method::Get);
    }

    #[test]
    fn missing_or_bad_id_has_no_id() {
        for text in [
            json!({"type": "http-proxy-request", "path": "/info"}).to_string(),
            json!({"type": "http-proxy-request", "id": "", "path": "/info"}).to_string(),
            json!({"type": "http-proxy-request", "id": 5, "path": "/info"}).to_string(),
            json!({"type": "http-proxy-request", "id": "x".repeat(MAX_ID_LEN + 1), "path": "/info"}).to_string(),
        ] {
            let e = refused(&text);
            assert_eq!(e.id, None);
            assert_eq!(e.reason, Invalid::BadId);
        }
        // Without an id, other faults still report no id.
        let e = refused(&json!({"type": "http-proxy-request", "path": "//evil"}).to_string());
        assert_eq!(e.id, None);
        assert_eq!(refused("not json").id, None);
        assert_eq!(refused("[1,2]").reason, Invalid::NotJson);
        assert_eq!(
            refused(&"x".repeat(MAX_MESSAGE_LEN + 1)).reason,
            Invalid::NotJson
        );
        let e = refused(&json!({"type": "http-proxy-request", "id": "r"}).to_string());
        assert_eq!(
            (e.id.as_deref(), e.reason),
            (Some("r"), Invalid::MissingPath)
        );
        let e = refused(&json!({"type": "other", "id": "r", "path": "/"}).to_string());
        assert_eq!(e.reason, Invalid::NotProxyRequest);
    }

    #[test]
    fn header_allowlist() {
        let text = json!({
            "type": "http-proxy-request", "id": "r", "method": "GET", "path": "/imageproxy?x=1",
            "headers": {
                "accept": "image/webp,*/*",
                "ACCEPT-LANGUAGE": " en-US ",
                "If-None-Match": "\"abc\"",
                "if-modified-since": "Wed, 21 Oct 2015 07:28:00 GMT",
                "Range": "bytes=0-99",
                "Accept-Encoding": "identity",
                "Host": "evil.com",
                "Authorization": "Bearer x",
                "Cookie": "a=b",
                "X-Forwarded-For": "1.2.3.4",
                "Connection": "close",
                "Transfer-Encoding": "chunked",
                "Content-Length": "5",
                "X-Evil": "a\r\nb",
            }
        })
        .to_string();
        let r = parse(&text).unwrap();
        assert_eq!(
            r.headers,
            vec![
                ("Accept", "image/webp,*/*".to_string()),
                ("Accept-Encoding", "identity".to_string()),
                ("Accept-Language", "en-US".to_string()),
                ("If-None-Match", "\"abc\"".to_string()),
                (
                    "If-Modified-Since",
                    "Wed, 21 Oct 2015 07:28:00 GMT".to_string()
                ),
                ("Range", "bytes=0-99".to_string()),
            ]
        );
    }

    #[test]
    fn bad_header_values_are_refused() {
        for value in [
            json!("a\r\nHost: evil"),
            json!("a\nb"),
            json!("caf\u{e9}"),
            json!(5),
            json!("x".repeat(MAX_HEADER_VALUE_LEN + 1)),
        ] {
            let text = json!({"type": "http-proxy-request", "id": "r", "path": "/", "headers": {"Accept": value}}).to_string();
            let e = refused(&text);
            assert_eq!(e.reason, Invalid::Header("Accept"));
            assert_eq!(e.id.as_deref(), Some("r"));
        }
        let text =
            json!({"type": "http-proxy-request", "id": "r", "path": "/", "headers": ["Accept"]})
                .to_string();
        assert_eq!(refused(&text).reason, Invalid::HeadersNotObject);
        let text = json!({"type": "http-proxy-request", "id": "r", "path": "/", "headers": null})
            .to_string();
        assert!(parse(&text).unwrap().headers.is_empty());
    }

    #[test]
    fn classify_on_the_api_channel() {
        assert!(classify(r#"{"command":"players/all","message_id":"1"}"#).is_none());
        // Mentions the type but is an API command: forwarded.
        assert!(classify(r#"{"command":"x","args":{"note":"http-proxy-request"}}"#).is_none());
        assert!(classify("http-proxy-request but not JSON").is_none());
        assert!(classify(&req("/info")).unwrap().is_ok());
        assert!(classify(&req("//evil")).unwrap().is_err());
    }
}
