//! A sans-IO HTTP/1.1 client connection: builds the request bytes, parses the response as
//! bytes arrive. No sockets, no clock (timeouts belong to the [`super::ProxyPool`]).
//!
//! One request at a time per connection (no pipelining). After a response that leaves the
//! connection reusable ([`HttpResponse::reusable`]), [`HttpConn::start`] may send the next
//! request on it.
//!
//! Response handling:
//! - the head is parsed with `httparse`, at most [`Limits::max_head`] bytes and
//!   [`MAX_HEADERS`] headers; `1xx` interim responses are skipped (at most [`MAX_INTERIM`]);
//!   `101` is an error (we never ask to switch protocols);
//! - the body is delimited by `Transfer-Encoding: chunked` (extensions ignored, trailers read
//!   and dropped), else `Content-Length`, else the end of the connection
//!   ([`HttpConn::feed_eof`]); any other transfer coding is refused; a response to `HEAD`, a
//!   `204` and a `304` have no body;
//! - the body is capped at [`Limits::max_body`] (a larger `Content-Length` fails at once);
//! - redirects are not followed: a `3xx` is a response like any other;
//! - only the response headers of [`PASSED_BACK_HEADERS`] are kept for the client, plus a
//!   `Content-Length` of what is sent (for `HEAD`: the server's value), so hop-by-hop headers,
//!   cookies and server internals never reach the client.

use std::fmt;

use super::request::{Method, ProxyRequest};

/// Most headers in a response head.
pub const MAX_HEADERS: usize = 64;
/// Most interim (`1xx`) responses before the final one.
pub const MAX_INTERIM: usize = 8;
/// Longest chunk-size line (with extensions).
const MAX_CHUNK_LINE: usize = 1024;
/// Most bytes of trailers after the last chunk.
const MAX_TRAILERS: usize = 16 * 1024;

/// Response headers passed back to the client (canonical spelling, in this order after
/// `Content-Type` and `Content-Length`). What a client needs to show an image or play a
/// preview, cache it, and make sense of ranges, conditional requests and redirects.
pub const PASSED_BACK_HEADERS: [&str; 10] = [
    "Content-Type",
    "Cache-Control",
    "ETag",
    "Last-Modified",
    "Expires",
    "Content-Range",
    "Accept-Ranges",
    "Content-Encoding",
    "Content-Disposition",
    "Location",
];

/// Headers whose repeated fields are joined with `, ` (list-valued); for the others the first
/// one wins.
const LIST_HEADERS: [&str; 2] = ["Cache-Control", "Content-Encoding"];

/// Size limits of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest response head (status line and headers), interim responses included.
    pub max_head: usize,
    /// Largest body.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 16 * 1024,
            max_body: 16 * 1024 * 1024,
        }
    }
}

/// Why a response could not be read. Every one of them leaves the connection unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The connection ended before any byte of a response (a stale keep-alive connection:
    /// the request may be retried on a new one).
    ClosedBeforeResponse,
    /// The connection ended in the middle of the response.
    Truncated,
    /// Bytes arrived while no request was outstanding.
    Unsolicited,
    /// The response head is larger than the limit.
    HeadTooLarge { limit: usize },
    /// The response head is malformed.
    BadHead(String),
    /// A `Content-Length` that is not a number, or several different ones.
    BadContentLength,
    /// A transfer coding other than `chunked`.
    UnsupportedTransferEncoding(String),
    /// A malformed chunked body.
    BadChunk(&'static str),
    /// The body is larger than the limit.
    BodyTooLarge { limit: usize },
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::ClosedBeforeResponse => write!(f, "connection closed before a response"),
            HttpError::Truncated => write!(f, "connection closed in the middle of the response"),
            HttpError::Unsolicited => write!(f, "data received with no request outstanding"),
            HttpError::HeadTooLarge { limit } => {
                write!(f, "response head larger than {limit} bytes")
            }
            HttpError::BadHead(e) => write!(f, "malformed response head: {e}"),
            HttpError::BadContentLength => write!(f, "invalid Content-Length"),
            HttpError::UnsupportedTransferEncoding(te) => {
                write!(f, "unsupported Transfer-Encoding {te:?}")
            }
            HttpError::BadChunk(why) => write!(f, "malformed chunked body: {why}"),
            HttpError::BodyTooLarge { limit } => {
                write!(f, "response body larger than {limit} bytes")
            }
        }
    }
}

impl std::error::Error for HttpError {}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// The headers to pass back (see [`PASSED_BACK_HEADERS`]), `Content-Length` included.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// The connection may carry another request.
    pub reusable: bool,
}

/// What [`HttpConn::feed`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The response is not complete yet.
    NeedMore,
    /// The response is complete; the connection is idle again.
    Done(HttpResponse),
}

#[derive(Debug)]
enum State {
    /// No request outstanding.
    Idle,
    /// Reading the response head (`buf` holds what arrived).
    Head,
    /// Reading the body.
    Body(Framing),
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    /// This many bytes to go.
    Length(u64),
    Chunked(Chunk),
    /// Until the connection ends.
    Close,
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// Reading a chunk-size line into `line`.
    Size,
    /// This many bytes of chunk data to go.
    Data(u64),
    /// Reading the CRLF after chunk data into `line`.
    DataEnd,
    /// Reading trailer lines into `line`, this many bytes so far.
    Trailers(usize),
}

/// The parts of a final response head that matter.
#[derive(Debug)]
struct Head {
    status: u16,
    headers: Vec<(&'static str, String)>,
    /// The server's Content-Length (kept for HEAD responses).
    content_length: Option<u64>,
    /// The connection may stay open after the response (as far as the head says).
    keep_alive: bool,
}

/// One HTTP/1.1 connection to the local server, one request at a time.
#[derive(Debug)]
pub struct HttpConn {
    host: String,
    keep_alive_ok: bool,
    limits: Limits,
    state: State,
    method: Method,
    /// Head bytes (state Head), or the current line (chunked body).
    buf: Vec<u8>,
    /// Head bytes already consumed by interim responses.
    interim_bytes: usize,
    interim_count: usize,
    head: Option<Head>,
    body: Vec<u8>,
    /// Any byte of a response arrived for the current request.
    received: bool,
    /// Whether the connection can be reused once the body is complete.
    reusable: bool,
}

impl HttpConn {
    /// A connection to the server named `host_header` (`host:port`, sent as `Host`).
    /// `keep_alive_ok`: ask to keep the connection open after the response.
    pub fn new(host_header: String, keep_alive_ok: bool) -> HttpConn {
        HttpConn::with_limits(host_header, keep_alive_ok, Limits::default())
    }

    pub fn with_limits(host_header: String, keep_alive_ok: bool, limits: Limits) -> HttpConn {
        // The host comes from our own configuration; still, never let it break the head.
        let host = host_header
            .chars()
            .filter(|c| !c.is_ascii_control() && *c != ' ')
            .collect();
        HttpConn {
            host,
            keep_alive_ok,
            limits,
            state: State::Idle,
            method: Method::Get,
            buf: Vec::new(),
            interim_bytes: 0,
            interim_count: 0,
            head: None,
            body: Vec::new(),
            received: false,
            reusable: false,
        }
    }

    /// Whether a request is outstanding.
    pub fn is_busy(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    /// Whether any byte of the current response has arrived.
    pub fn response_started(&self) -> bool {
        self.received
    }

    /// Body bytes of the current response buffered so far.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    /// Start a request: returns the bytes to write. Any previous exchange is forgotten.
    pub fn start(&mut self, req: &ProxyRequest) -> Vec<u8> {
        let mut out = String::with_capacity(128 + req.path.len());
        out.push_str(req.method.as_str());
        out.push(' ');
        out.push_str(&req.path);
        out.push_str(" HTTP/1.1\r\nHost: ");
        out.push_str(&self.host);
        out.push_str("\r\n");
        let mut encoding = false;
        for (name, value) in &req.headers {
            // Validated by the request parser; re-checked so a hand-built request cannot inject.
            if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                continue;
            }
            encoding |= name.eq_ignore_ascii_case("Accept-Encoding");
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
        if !encoding {
            // Without Accept-Encoding a server may pick any coding; clients that build a
            // response from the raw bytes cannot decode one they did not ask for.
            out.push_str("Accept-Encoding: identity\r\n");
        }
        out.push_str(if self.keep_alive_ok {
            "Connection: keep-alive\r\n\r\n"
        } else {
            "Connection: close\r\n\r\n"
        });
        self.method = req.method;
        self.state = State::Head;
        self.buf.clear();
        self.interim_bytes = 0;
        self.interim_count = 0;
        self.head = None;
        self.body = Vec::new();
        self.received = false;
        self.reusable = false;
        out.into_bytes()
    }

    /// Bytes from the connection.
    pub fn feed(&mut self, data: &[u8]) -> Result<Progress, HttpError> {
        if data.is_empty() {
            return Ok(Progress::NeedMore);
        }
        match self.state {
            State::Idle => Err(HttpError::Unsolicited),
            State::Head => {
                self.received = true;
                self.feed_head(data)
            }
            State::Body(_) => self.feed_body(data),
        }
    }

    /// The connection ended (the server closed it).
    pub fn feed_eof(&mut self) -> Result<Progress, HttpError> {
        match self.state {
            State::Idle => Err(HttpError::ClosedBeforeResponse),
            State::Head if !self.received => {
                self.state = State::Idle;
                Err(HttpError::ClosedBeforeResponse)
            }
            State::Head => {
                // Bytes that came without a line feed were never parsed (see `feed_head`):
                // say what is wrong with them, as when they arrive with the rest of the head.
                let error = self.head_error().unwrap_or(HttpError::Truncated);
                self.fail(error)
            }
            State::Body(Framing::Close) => {
                self.reusable = false;
                Ok(self.finish())
            }
            State::Body(_) => {
                self.state = State::Idle;
                Err(HttpError::Truncated)
            }
        }
    }

    fn fail<T>(&mut self, e: HttpError) -> Result<T, HttpError> {
        self.state = State::Idle;
        self.buf = Vec::new();
        self.body = Vec::new();
        Err(e)
    }

    fn feed_head(&mut self, data: &[u8]) -> Result<Progress, HttpError> {
        self.buf.extend_from_slice(data);
        // A head ends with an empty line: nothing to parse until a line feed arrives.
        if !data.contains(&b'\n') {
            return self.check_head_size();
        }
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            let parsed = match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => return self.check_head_size(),
                Err(e) => return self.fail(HttpError::BadHead(e.to_string())),
            };
            if self.interim_bytes + parsed > self.limits.max_head {
                return self.fail(HttpError::HeadTooLarge {
                    limit: self.limits.max_head,
                });
            }
            let status = resp.code.unwrap_or(0);
            // httparse takes any three digits; valid codes are 100 to 599 (RFC 9110 §15),
            // and a client cannot even build a response with another (`new Response` throws).
            if !(100..=599).contains(&status) {
                return self.fail(HttpError::BadHead(format!(
                    "invalid status code {status:03}"
                )));
            }
            if status == 101 {
                return self.fail(HttpError::BadHead(
                    "unexpected 101 Switching Protocols".into(),
                ));
            }
            if (100..200).contains(&status) {
                self.interim_count += 1;
                if self.interim_count > MAX_INTERIM {
                    return self.fail(HttpError::BadHead("too many interim responses".into()));
                }
                self.interim_bytes += parsed;
                self.buf.drain(..parsed);
                continue;
            }
            let version = resp.version.unwrap_or(0);
            let head = match interpret_head(status, version, resp.headers) {
                Ok(h) => h,
                Err(e) => return self.fail(e),
            };
            let rest = self.buf.split_off(parsed);
            self.buf.clear();
            return self.begin_body(head, &rest);
        }
    }

    /// The error `httparse` finds in the head bytes received so far, if any.
    fn head_error(&self) -> Option<HttpError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(&self.buf)
            .err()
            .map(|e| HttpError::BadHead(e.to_string()))
    }

    fn check_head_size(&mut self) -> Result<Progress, HttpError> {
        if self.interim_bytes + self.buf.len() > self.limits.max_head {
            return self.fail(HttpError::HeadTooLarge {
                limit: self.limits.max_head,
            });
        }
        Ok(Progress::NeedMore)
    }

    fn begin_body(&mut self, head: HeadParts, rest: &[u8]) -> Result<Progress, HttpError> {
        let HeadParts {
            head,
            framing_te,
            both_te_and_cl,
        } = head;
        let no_body = self.method == Method::Head || head.status == 204 || head.status == 304;
        self.reusable = self.keep_alive_ok && head.keep_alive && !both_te_and_cl;
        let framing = if no_body {
            None
        } else if let Some(te) = framing_te {
            if !te.eq_ignore_ascii_case("chunked") {
                return self.fail(HttpError::UnsupportedTransferEncoding(te));
            }
            Some(Framing::Chunked(Chunk::Size))
        } else if let Some(len) = head.content_length {
            if len > self.limits.max_body as u64 {
                return self.fail(HttpError::BodyTooLarge {
                    limit: self.limits.max_body,
                });
            }
            // Bounded by max_body.
            self.body.reserve_exact(len as usize);
            Some(Framing::Length(len))
        } else {
            self.reusable = false;
            Some(Framing::Close)
        };
        self.head = Some(head);
        match framing {
            None => {
                if !rest.is_empty() {
                    self.reusable = false;
                }
                Ok(self.finish())
            }
            Some(Framing::Length(0)) => {
                if !rest.is_empty() {
                    self.reusable = false;
                }
                Ok(self.finish())
            }
            Some(framing) => {
                self.state = State::Body(framing);
                if rest.is_empty() {
                    Ok(Progress::NeedMore)
                } else {
                    self.feed_body(rest)
                }
            }
        }
    }

    fn feed_body(&mut self, mut data: &[u8]) -> Result<Progress, HttpError> {
        loop {
            let State::Body(framing) = self.state else {
                return Ok(Progress::NeedMore);
            };
            match framing {
                Framing::Close => {
                    if self.body.len() + data.len() > self.limits.max_body {
                        return self.fail(HttpError::BodyTooLarge {
                            limit: self.limits.max_body,
                        });
                    }
                    self.body.extend_from_slice(data);
                    return Ok(Progress::NeedMore);
                }
                Framing::Length(remaining) => {
                    let take = (data.len() as u64).min(remaining) as usize;
                    self.body.extend_from_slice(&data[..take]);
                    let remaining = remaining - take as u64;
                    if remaining > 0 {
                        self.state = State::Body(Framing::Length(remaining));
                        return Ok(Progress::NeedMore);
                    }
                    if take < data.len() {
                        // More than announced: the server is confused; do not reuse.
                        self.reusable = false;
                    }
                    return Ok(self.finish());
                }
                Framing::Chunked(chunk) => {
                    let (consumed, next) = match self.chunk_step(chunk, data) {
                        Ok(step) => step,
                        Err(e) => return self.fail(e),
                    };
                    data = &data[consumed..];
                    match next {
                        Some(chunk) => {
                            self.state = State::Body(Framing::Chunked(chunk));
                            if data.is_empty() {
                                return Ok(Progress::NeedMore);
                            }
                        }
                        None => {
                            if !data.is_empty() {
                                self.reusable = false;
                            }
                            return Ok(self.finish());
                        }
                    }
                }
            }
        }
    }

    /// Advance the chunked decoder over `data`: bytes consumed and the next state (`None`: the
    /// body is complete).
    fn chunk_step(
        &mut self,
        chunk: Chunk,
        data: &[u8],
    ) -> Result<(usize, Option<Chunk>), HttpError> {
        match chunk {
            Chunk::Data(remaining) => {
                let take = (data.len() as u64).min(remaining) as usize;
                self.body.extend_from_slice(&data[..take]);
                let remaining = remaining - take as u64;
                let next = if remaining == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(remaining)
                };
                Ok((take, Some(next)))
            }
            Chunk::Size | Chunk::DataEnd | Chunk::Trailers(_) => {
                let (consumed, complete) = self.take_line(data);
                if let Chunk::Trailers(seen) = chunk {
                    if seen + consumed > MAX_TRAILERS {
                        return Err(HttpError::BadChunk("trailers too large"));
                    }
                }
                if !complete {
                    if self.buf.len() > MAX_CHUNK_LINE {
                        return Err(HttpError::BadChunk("line too long"));
                    }
                    let next = match chunk {
                        Chunk::Trailers(seen) => Chunk::Trailers(seen + consumed),
                        other => other,
                    };
                    return Ok((consumed, Some(next)));
                }
                if self.buf.len() > MAX_CHUNK_LINE {
                    return Err(HttpError::BadChunk("line too long"));
                }
                let line = std::mem::take(&mut self.buf);
                let line = line.strip_suffix(b"\r").unwrap_or(&line);
                let next = match chunk {
                    Chunk::Size => {
                        let size = parse_chunk_size(line)?;
                        if size == 0 {
                            Some(Chunk::Trailers(0))
                        } else {
                            if size > (self.limits.max_body - self.body.len()) as u64 {
                                return Err(HttpError::BodyTooLarge {
                                    limit: self.limits.max_body,
                                });
                            }
                            Some(Chunk::Data(size))
                        }
                    }
                    Chunk::DataEnd => {
                        if !line.is_empty() {
                            return Err(HttpError::BadChunk("missing CRLF after chunk data"));
                        }
                        Some(Chunk::Size)
                    }
                    Chunk::Trailers(seen) => {
                        if line.is_empty() {
                            None
                        } else {
                            Some(Chunk::Trailers(seen + consumed))
                        }
                    }
                    // Not reached: chunk data is not read line by line.
                    Chunk::Data(_) => Some(chunk),
                };
                Ok((consumed, next))
            }
        }
    }

    /// Append `data` up to and including the first `\n` to `buf` (the line feed itself is not
    /// kept). Returns the bytes consumed and whether the line is complete.
    fn take_line(&mut self, data: &[u8]) -> (usize, bool) {
        match data.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.buf.extend_from_slice(&data[..i]);
                (i + 1, true)
            }
            None => {
                // Keep at most one byte beyond the limit: enough to notice it was passed.
                let room = (MAX_CHUNK_LINE + 1).saturating_sub(self.buf.len());
                self.buf.extend_from_slice(&data[..data.len().min(room)]);
                (data.len(), false)
            }
        }
    }

    fn finish(&mut self) -> Progress {
        self.state = State::Idle;
        self.buf = Vec::new();
        let head = self.head.take();
        let body = std::mem::take(&mut self.body);
        let Some(head) = head else {
            // Not reachable: finish is only called after a head was read.
            return Progress::Done(HttpResponse {
                status: 502,
                headers: Vec::new(),
                body,
                reusable: false,
            });
        };
        let length = if self.method == Method::Head {
            head.content_length.map(|n| n.to_string())
        } else {
            Some(body.len().to_string())
        };
        // Content-Type first (when present; the table puts it first), then Content-Length,
        // then the others.
        let mut headers = head.headers;
        let at = usize::from(headers.first().is_some_and(|(n, _)| *n == "Content-Type"));
        if let Some(length) = length {
            headers.insert(at, ("Content-Length", length));
        }
        Progress::Done(HttpResponse {
            status: head.status,
            headers,
            body,
            reusable: self.reusable,
        })
    }
}

struct HeadParts {
    head: Head,
    /// The last transfer coding, when Transfer-Encoding is present (the whole value when
    /// several codings are listed, which we refuse).
    framing_te: Option<String>,
    both_te_and_cl: bool,
}

/// Pull what matters out of a final response head.
fn interpret_head(
    status: u16,
    version: u8,
    raw: &[httparse::Header<'_>],
) -> Result<HeadParts, HttpError> {
    let mut content_length: Option<u64> = None;
    let mut te: Option<String> = None;
    let mut close = false;
    let mut keep_alive = false;
    let mut kept: Vec<(&'static str, String)> = Vec::new();
    for h in raw {
        let value = String::from_utf8_lossy(h.value);
        let value = value.trim();
        if h.name.eq_ignore_ascii_case("Content-Length") {
            let n = parse_content_length(value).ok_or(HttpError::BadContentLength)?;
            if content_length.is_some_and(|m| m != n) {
                return Err(HttpError::BadContentLength);
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("Transfer-Encoding") {
            let joined = match te.take() {
                Some(prev) => format!("{prev}, {value}"),
                None => value.to_string(),
            };
            te = Some(joined);
        } else if h.name.eq_ignore_ascii_case("Connection") {
            for token in value.split(',') {
                let token = token.trim();
                close |= token.eq_ignore_ascii_case("close");
                keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if let Some(name) = PASSED_BACK_HEADERS
            .iter()
            .find(|n| n.eq_ignore_ascii_case(h.name))
        {
            match kept.iter_mut().find(|(n, _)| n == name) {
                Some((_, existing)) if LIST_HEADERS.contains(name) => {
                    existing.push_str(", ");
                    existing.push_str(value);
                }
                Some(_) => {}
                None => kept.push((name, value.to_string())),
            }
        }
    }
    // Order the kept headers as the table does, so the output does not depend on the server.
    kept.sort_by_key(|(name, _)| PASSED_BACK_HEADERS.iter().position(|n| n == name));
    let keep_alive = !close && (version == 1 || keep_alive);
    let both = te.is_some() && content_length.is_some();
    let framing_te = te.map(|te| {
        let codings: Vec<&str> = te
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        if codings.len() == 1 {
            codings[0].to_string()
        } else {
            te
        }
    });
    Ok(HeadParts {
        head: Head {
            status,
            headers: kept,
            content_length,
            keep_alive,
        },
        framing_te,
        both_te_and_cl: both,
    })
}

/// A Content-Length value: digits only (no sign, no spaces inside), no overflow.
fn parse_content_length(value: &str) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// A chunk-size line (without its line ending): hex digits, then optional whitespace and
/// `;extensions`.
fn parse_chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(HttpError::BadChunk("missing chunk size"));
    }
    if digits > 15 {
        return Err(HttpError::BadChunk("chunk size too large"));
    }
    let rest = &line[digits..];
    let rest_trimmed: &[u8] = {
        let start = rest
            .iter()
            .position(|b| *b != b' ' && *b != b'\t')
            .unwrap_or(rest.len());
        &rest[start..]
    };
    if !rest_trimmed.is_empty() && rest_trimmed[0] != b';' {
        return Err(HttpError::BadChunk("invalid chunk size"));
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
        size = size * 16 + d;
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> ProxyRequest {
        ProxyRequest {
            id: "r".into(),
            method: Method::Get,
            path: path.into(),
            headers: vec![],
        }
    }

    fn head_req() -> ProxyRequest {
        ProxyRequest {
            method: Method::Head,
            ..get("/x")
        }
    }

    fn conn() -> HttpConn {
        HttpConn::new("127.0.0.1:8095".into(), true)
    }

    /// Feed all at once; expect a complete response.
    fn run(c: &mut HttpConn, req: &ProxyRequest, resp: &[u8]) -> Result<HttpResponse, HttpError> {
        c.start(req);
        match c.feed(resp)? {
            Progress::Done(r) => Ok(r),
            Progress::NeedMore => match c.feed_eof()? {
                Progress::Done(r) => Ok(r),
                Progress::NeedMore => panic!("no response"),
            },
        }
    }

    /// Feed in two pieces split at every boundary; all must give the same result.
    fn run_split(req: &ProxyRequest, resp: &[u8], eof: bool) -> HttpResponse {
        let mut first: Option<HttpResponse> = None;
        for cut in 0..=resp.len() {
            let mut c = conn();
            c.start(req);
            let mut done = None;
            for part in [&resp[..cut], &resp[cut..]] {
                if let Progress::Done(r) = c.feed(part).unwrap_or_else(|e| panic!("cut {cut}: {e}"))
                {
                    assert!(done.is_none(), "cut {cut}: two responses");
                    done = Some(r);
                }
            }
            if eof && done.is_none() {
                if let Progress::Done(r) = c.feed_eof().unwrap() {
                    done = Some(r);
                }
            }
            let r = done.unwrap_or_else(|| panic!("cut {cut}: incomplete"));
            match &first {
                None => first = Some(r),
                Some(f) => assert_eq!(f, &r, "cut {cut}"),
            }
        }
        first.unwrap()
    }

    /// Feed one byte at a time.
    fn run_bytewise(req: &ProxyRequest, resp: &[u8]) -> HttpResponse {
        let mut c = conn();
        c.start(req);
        let mut done = None;
        for b in resp {
            if let Progress::Done(r) = c.feed(std::slice::from_ref(b)).unwrap() {
                assert!(done.is_none());
                done = Some(r);
            }
        }
        done.expect("complete")
    }

    #[test]
    fn a_status_outside_100_to_599_is_a_malformed_head() {
        // Found by the http_response fuzz target: `HTTP/1.1 000 OK` (httparse takes any
        // three digits) was passed back to the client as a response with status 0.
        for status in ["000", "099", "600", "999"] {
            let resp = format!("HTTP/1.1 {status} OK\r\nContent-Length: 0\r\n\r\n");
            assert_eq!(
                run(&mut conn(), &get("/x"), resp.as_bytes()),
                Err(HttpError::BadHead(format!("invalid status code {status}"))),
            );
        }
        for status in [100, 199, 200, 599] {
            let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
            let mut c = conn();
            c.start(&get("/x"));
            assert!(c.feed(resp.as_bytes()).is_ok(), "{status}");
        }
    }

    #[test]
    fn a_malformed_head_is_reported_as_such_however_it_arrives() {
        // Found by the http_response fuzz target: a status line, then a header line with a
        // control character and no line feed. Fed at once: "malformed head"; split before
        // the bad line, that piece (no line feed) was never parsed and the end of the
        // connection said "truncated".
        let resp = b"HTTP/1.1 204 No Content\r\n\x02Da\x00\x01\x00";
        for cut in 0..=resp.len() {
            let mut c = conn();
            c.start(&get("/x"));
            let mut result = Ok(Progress::NeedMore);
            for part in [&resp[..cut], &resp[cut..]] {
                if result == Ok(Progress::NeedMore) {
                    result = c.feed(part);
                }
            }
            if result == Ok(Progress::NeedMore) {
                result = c.feed_eof();
            }
            assert!(
                matches!(result, Err(HttpError::BadHead(_))),
                "cut {cut}: {result:?}"
            );
            assert!(!c.is_busy());
        }
        // A head that is only cut short is still "truncated".
        let mut c = conn();
        c.start(&get("/x"));
        assert_eq!(
            c.feed(b"HTTP/1.1 200 OK\r\nContent-Ty"),
            Ok(Progress::NeedMore)
        );
        assert_eq!(c.feed_eof(), Err(HttpError::Truncated));
    }

    #[test]
    fn request_bytes() {
        let mut c = HttpConn::new("ma.local:8095".into(), true);
        let req = ProxyRequest {
            id: "r".into(),
            method: Method::Get,
            path: "/imageproxy?a=1".into(),
            headers: vec![("Accept", "image/*".into()), ("Range", "bytes=0-1".into())],
        };
        let bytes = c.start(&req);
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "GET /imageproxy?a=1 HTTP/1.1\r\nHost: ma.local:8095\r\nAccept: image/*\r\nRange: bytes=0-1\r\n\
             Accept-Encoding: identity\r\nConnection: keep-alive\r\n\r\n"
        );
        let mut c = HttpConn::new("h\r\nX: y".into(), false);
        let req = ProxyRequest {
            headers: vec![
                ("Accept-Encoding", "gzip".into()),
                ("Accept", "a\r\nInjected: 1".into()),
            ],
            ..head_req()
        };
        let text = String::from_utf8(c.start(&req)).unwrap();
        assert_eq!(
            text,
            "HEAD /x HTTP/1.1\r\nHost: hX:y\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn content_length() {
        let resp = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 5\r\nServer: x\r\nSet-Cookie: a=b\r\n\
                     Connection: keep-alive\r\nETag: \"e\"\r\nCache-Control: max-age=60\r\nCache-Control: public\r\n\r\nhello";
        let r = run_split(&get("/"), resp, false);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello");
        assert!(r.reusable);
        assert_eq!(
            r.headers,
            vec![
                ("Content-Type", "image/jpeg".to_string()),
                ("Content-Length", "5".to_string()),
                ("Cache-Control", "max-age=60, public".to_string()),
                ("ETag", "\"e\"".to_string()),
            ]
        );
        assert_eq!(run_bytewise(&get("/"), resp), r);
    }

    #[test]
    fn connection_reuse_rules() {
        let mut c = conn();
        let r = run(
            &mut c,
            &get("/"),
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        assert!(!r.reusable);
        let r = run(
            &mut c,
            &get("/"),
            b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
        )
        .unwrap();
        assert!(!r.reusable);
        let r = run(
            &mut c,
            &get("/"),
            b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: Keep-Alive\r\n\r\nx",
        )
        .unwrap();
        assert!(r.reusable);
        // Extra bytes after the body.
        let r = run(
            &mut c,
            &get("/"),
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxy",
        )
        .unwrap();
        assert_eq!(r.body, b"x");
        assert!(!r.reusable);
        // We asked to close.
        let mut nc = HttpConn::new("h".into(), false);
        let r = run(
            &mut nc,
            &get("/"),
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
        )
        .unwrap();
        assert!(!r.reusable);
        // Reused connection works for a second request.
        let r = run(
            &mut c,
            &get("/"),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )
        .unwrap();
        assert!(r.reusable);
        let r = run(
            &mut c,
            &get("/"),
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.len(), r.reusable), (404, 0, true));
        // Data while idle.
        assert_eq!(c.feed(b"x"), Err(HttpError::Unsolicited));
    }

    #[test]
    fn chunked_at_every_boundary() {
        let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: audio/mpeg\r\n\r\n\
                     5;name=value\r\nhello\r\n1 ; ext\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n";
        let r = run_split(&get("/"), resp, false);
        assert_eq!(r.body, b"hello 0123456789");
        assert!(r.reusable);
        assert_eq!(
            r.headers,
            vec![
                ("Content-Type", "audio/mpeg".to_string()),
                ("Content-Length", "16".to_string())
            ]
        );
        assert_eq!(run_bytewise(&get("/"), resp), r);
        // Bare LF line endings are tolerated.
        let r = run_split(
            &get("/"),
            b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n3\nabc\n0\n\n",
            false,
        );
        assert_eq!(r.body, b"abc");
    }

    #[test]
    fn bad_chunks() {
        let cases: [&[u8]; 7] = [
            b"zz\r\n",
            b"\r\n",
            b"5x\r\nhello\r\n0\r\n\r\n",
            b"ffffffffffffffffff\r\nx",
            b"-1\r\n",
            b"3\r\nabcX\r\n",
            b"3\r\nabc\r\n0\r\n",
        ];
        for (i, body) in cases.iter().enumerate() {
            let mut c = conn();
            c.start(&get("/"));
            let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            resp.extend_from_slice(body);
            let r = c.feed(&resp).and_then(|p| match p {
                Progress::NeedMore => c.feed_eof(),
                done => Ok(done),
            });
            assert!(r.is_err(), "case {i}: {r:?}");
        }
        // An endless chunk-size line.
        let mut c = conn();
        c.start(&get("/"));
        c.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1")
            .unwrap();
        let long = vec![b'0'; 4096];
        assert!(matches!(c.feed(&long), Err(HttpError::BadChunk(_))));
        // A long line that arrives whole.
        let mut c = conn();
        c.start(&get("/"));
        let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
        resp.extend(std::iter::repeat_n(b'e', 2000));
        resp.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert!(matches!(c.feed(&resp), Err(HttpError::BadChunk(_))));
        // Endless trailers.
        let mut c = conn();
        c.start(&get("/"));
        c.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n")
            .unwrap();
        let mut err = None;
        for _ in 0..100 {
            if let Err(e) = c.feed(b"X-T: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n") {
                err = Some(e);
                break;
            }
        }
        assert!(matches!(err, Some(HttpError::BadChunk(_))));
    }

    #[test]
    fn transfer_encoding_rules() {
        let mut c = conn();
        c.start(&get("/"));
        let e = c
            .feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
            .unwrap_err();
        assert!(matches!(e, HttpError::UnsupportedTransferEncoding(_)));
        // TE wins over CL, and the connection is not reused.
        let r = run_split(&get("/"), b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n", false);
        assert_eq!(r.body, b"x");
        assert!(!r.reusable);
        let r = run_split(
            &get("/"),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n",
            false,
        );
        assert!(r.body.is_empty());
    }

    #[test]
    fn close_delimited() {
        let resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end";
        let r = run_split(&get("/"), resp, true);
        assert_eq!(r.body, b"until the end");
        assert!(!r.reusable);
        assert_eq!(r.headers[1], ("Content-Length", "13".to_string()));
    }

    #[test]
    fn no_body_responses() {
        // HEAD: Content-Length is the server's, and no body is read.
        let mut c = conn();
        let r = run(
            &mut c,
            &head_req(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: image/png\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body.len(), 0);
        assert_eq!(
            r.headers,
            vec![
                ("Content-Type", "image/png".to_string()),
                ("Content-Length", "1234".to_string())
            ]
        );
        assert!(r.reusable);
        let r = run(
            &mut c,
            &get("/"),
            b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.len(), r.reusable), (304, 0, true));
        let r = run(&mut c, &get("/"), b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!((r.status, r.reusable), (204, true));
        // Redirects are passed back as they are.
        let r = run(
            &mut c,
            &get("/"),
            b"HTTP/1.1 302 Found\r\nLocation: http://evil/\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.status, 302);
        assert_eq!(r.headers[1], ("Location", "http://evil/".to_string()));
    }

    #[test]
    fn interim_responses_are_skipped() {
        let resp = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let r = run_split(&get("/"), resp, false);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        assert_eq!(run_bytewise(&get("/"), resp), r);
        let mut many = Vec::new();
        for _ in 0..=MAX_INTERIM {
            many.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let mut c = conn();
        c.start(&get("/"));
        assert!(matches!(c.feed(&many), Err(HttpError::BadHead(_))));
        let mut c = conn();
        c.start(&get("/"));
        assert!(matches!(
            c.feed(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
            Err(HttpError::BadHead(_))
        ));
    }

    #[test]
    fn oversize_head_and_body() {
        let limits = Limits {
            max_head: 256,
            max_body: 10,
        };
        let mut c = HttpConn::with_limits("h".into(), true, limits);
        c.start(&get("/"));
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', 300));
        assert_eq!(c.feed(&big), Err(HttpError::HeadTooLarge { limit: 256 }));
        // No line feed at all: still bounded.
        c.start(&get("/"));
        assert!(matches!(
            c.feed(&[b'x'; 1000]),
            Err(HttpError::HeadTooLarge { .. })
        ));
        let mut c = HttpConn::with_limits("h".into(), true, limits);
        c.start(&get("/"));
        assert_eq!(
            c.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n"),
            Err(HttpError::BodyTooLarge { limit: 10 })
        );
        c.start(&get("/"));
        c.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .unwrap();
        assert_eq!(c.feed(b"6\r\n"), Err(HttpError::BodyTooLarge { limit: 10 }));
        c.start(&get("/"));
        c.feed(b"HTTP/1.1 200 OK\r\n\r\n0123456789").unwrap();
        assert_eq!(c.feed(b"x"), Err(HttpError::BodyTooLarge { limit: 10 }));
        // Exactly at the limit is fine.
        c.start(&get("/"));
        assert!(matches!(
            c.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"),
            Ok(Progress::Done(_))
        ));
    }

    #[test]
    fn malformed_heads_and_truncation() {
        for resp in [
            &b"NOT HTTP\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        ] {
            let mut c = conn();
            c.start(&get("/"));
            assert!(c.feed(resp).is_err(), "{}", String::from_utf8_lossy(resp));
        }
        let mut too_many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            too_many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        too_many.extend_from_slice(b"\r\n");
        let mut c = conn();
        c.start(&get("/"));
        assert!(matches!(c.feed(&too_many), Err(HttpError::BadHead(_))));
        // Same Content-Length twice is fine.
        let r = run(
            &mut conn(),
            &get("/"),
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        )
        .unwrap();
        assert_eq!(r.body, b"x");
        // EOF cases.
        let mut c = conn();
        c.start(&get("/"));
        assert_eq!(c.feed_eof(), Err(HttpError::ClosedBeforeResponse));
        c.start(&get("/"));
        c.feed(b"HTTP/1.1 200").unwrap();
        assert!(c.response_started());
        assert_eq!(c.feed_eof(), Err(HttpError::Truncated));
        c.start(&get("/"));
        c.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
            .unwrap();
        assert_eq!(c.feed_eof(), Err(HttpError::Truncated));
        c.start(&get("/"));
        c.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
            .unwrap();
        assert_eq!(c.feed_eof(), Err(HttpError::Truncated));
        assert!(!c.is_busy());
    }
}
