//! Encoding proxy responses in the two forms of docs/protocol.md#proxy-responses.
//!
//! - On `ma-api`: one compact JSON text, keys in exactly this order (the mobile app has a fast
//!   path that depends on it):
//!   `{"type":"http-proxy-response","id":..,"status":..,"headers":{..},"body":"<lower-case hex>"}`
//!   ([`ProxyResponse::to_json`]). The caller frames it with `__chunk__` when it is too large.
//! - On `http_proxy`: a text header
//!   `{"type":"http-proxy-response","id":..,"status":..,"headers":{..},"size":N}`
//!   ([`ProxyResponse::binary_header`]) followed by binary messages carrying the N body bytes,
//!   each at most the peer's limit ([`BodyFrames`], zero-copy slices of the body). With N = 0
//!   no binary message follows.
//!
//! Header values are JSON strings (`"Content-Length":"1234"`), names in their canonical
//! spelling, in the order the response carries them.

use std::ops::Range;

use data_encoding::HEXLOWER;
use tungstenite::Bytes;

use super::client::HttpResponse;

/// The `type` of a proxy response message.
pub const RESPONSE_TYPE: &str = "http-proxy-response";

/// A response ready to be encoded for its requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyResponse {
    /// The request's id.
    pub id: String,
    pub status: u16,
    /// Headers for the client: canonical name and value.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl ProxyResponse {
    /// The response fetched from Music Assistant.
    pub fn from_http(id: String, resp: HttpResponse) -> ProxyResponse {
        ProxyResponse {
            id,
            status: resp.status,
            headers: resp.headers,
            body: resp.body,
        }
    }

    /// A response made up by the gateway: `text/plain`, the message as the body. Statuses in
    /// use: 400 (invalid request), 500 (fetch failed), 503 (too many requests queued),
    /// 504 (fetch timed out).
    pub fn error(id: String, status: u16, message: &str) -> ProxyResponse {
        ProxyResponse {
            id,
            status,
            headers: vec![
                ("Content-Type", "text/plain".to_string()),
                ("Content-Length", message.len().to_string()),
            ],
            body: message.as_bytes().to_vec(),
        }
    }

    /// The `ma-api` form: one JSON text with the body in lower-case hex.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(self.prefix_len_estimate() + 2 * self.body.len() + 12);
        self.push_prefix(&mut out);
        out.push_str(",\"body\":\"");
        HEXLOWER.encode_append(&self.body, &mut out);
        out.push_str("\"}");
        out
    }

    /// The header of the `http_proxy` form; the body follows as [`BodyFrames`].
    pub fn binary_header(&self) -> String {
        let mut out = String::with_capacity(self.prefix_len_estimate() + 32);
        self.push_prefix(&mut out);
        out.push_str(",\"size\":");
        out.push_str(&self.body.len().to_string());
        out.push('}');
        out
    }

    /// The `http_proxy` form: the header text and the body's binary messages, each at most
    /// `max_frame` bytes (the peer's message size limit, see `crate::chunk::send_limit`).
    pub fn into_binary(self, max_frame: usize) -> (String, BodyFrames) {
        let header = self.binary_header();
        (header, BodyFrames::new(Bytes::from(self.body), max_frame))
    }

    fn prefix_len_estimate(&self) -> usize {
        64 + self.id.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 6)
                .sum::<usize>()
    }

    /// `{"type":..,"id":..,"status":..,"headers":{..}` (no closing brace).
    fn push_prefix(&self, out: &mut String) {
        out.push_str("{\"type\":\"");
        out.push_str(RESPONSE_TYPE);
        out.push_str("\",\"id\":");
        push_json_string(out, &self.id);
        out.push_str(",\"status\":");
        out.push_str(&self.status.to_string());
        out.push_str(",\"headers\":{");
        for (i, (name, value)) in self.headers.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_string(out, name);
            out.push(':');
            push_json_string(out, value);
        }
        out.push('}');
    }
}

/// Append `s` as a JSON string literal (quotes and escapes included).
fn push_json_string(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        // Serializing a str cannot fail; keep the JSON valid regardless.
        Err(_) => out.push_str("\"\""),
    }
}

/// The binary messages of a body: consecutive slices of at most `max_frame` bytes, sharing
/// the body's buffer (no copy). Owns the body, so it can be kept as the pending state of a
/// channel that is backed up.
#[derive(Debug, Clone)]
pub struct BodyFrames {
    body: Bytes,
    pos: usize,
    max_frame: usize,
}

impl BodyFrames {
    /// Frames of `body`, each at most `max_frame` bytes (at least 1).
    pub fn new(body: Bytes, max_frame: usize) -> BodyFrames {
        BodyFrames {
            body,
            pos: 0,
            max_frame: max_frame.max(1),
        }
    }

    /// Total body bytes (the `size` of the header).
    pub fn size(&self) -> usize {
        self.body.len()
    }

    /// Body bytes not yet taken.
    pub fn remaining_bytes(&self) -> usize {
        self.body.len() - self.pos
    }

    /// The next frame without taking it (for a write that may be refused: call
    /// [`BodyFrames::advance`] once it was accepted).
    pub fn peek(&self) -> Option<Bytes> {
        let range = self.next_range()?;
        Some(self.body.slice(range))
    }

    /// Take the frame [`BodyFrames::peek`] returned.
    pub fn advance(&mut self) {
        if let Some(range) = self.next_range() {
            self.pos = range.end;
        }
    }

    fn next_range(&self) -> Option<Range<usize>> {
        if self.pos >= self.body.len() {
            return None;
        }
        let end = self.body.len().min(self.pos.saturating_add(self.max_frame));
        Some(self.pos..end)
    }
}

impl Iterator for BodyFrames {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        let frame = self.peek()?;
        self.advance();
        Some(frame)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.remaining_bytes().div_ceil(self.max_frame);
        (n, Some(n))
    }
}

impl ExactSizeIterator for BodyFrames {}

/// Borrowed variant: the frames of `body` as slices of at most `max_frame` bytes.
pub fn body_slices(body: &[u8], max_frame: usize) -> std::slice::Chunks<'_, u8> {
    body.chunks(max_frame.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ProxyResponse {
        ProxyResponse {
            id: "req_1".into(),
            status: 200,
            headers: vec![
                ("Content-Type", "image/png".into()),
                ("Content-Length", "4".into()),
                ("ETag", "\"a\\b\"".into()),
            ],
            body: vec![0x00, 0x7f, 0xab, 0xff],
        }
    }

    #[test]
    fn json_form_exact_bytes() {
        assert_eq!(
            sample().to_json(),
            r#"{"type":"http-proxy-response","id":"req_1","status":200,"headers":{"Content-Type":"image/png","Content-Length":"4","ETag":"\"a\\b\""},"body":"007fabff"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        assert_eq!(v["headers"]["ETag"], "\"a\\b\"");
        // Ids are escaped.
        let r = ProxyResponse {
            id: "a\"b\n\u{1}".into(),
            headers: vec![],
            body: vec![],
            status: 304,
        };
        assert_eq!(
            r.to_json(),
            r#"{"type":"http-proxy-response","id":"a\"b\n\u0001","status":304,"headers":{},"body":""}"#
        );
    }

    #[test]
    fn error_form() {
        let r = ProxyResponse::error("r".into(), 504, "timed out");
        assert_eq!(
            r.to_json(),
            r#"{"type":"http-proxy-response","id":"r","status":504,"headers":{"Content-Type":"text/plain","Content-Length":"9"},"body":"74696d6564206f7574"}"#
        );
    }

    #[test]
    fn binary_form() {
        assert_eq!(
            sample().binary_header(),
            r#"{"type":"http-proxy-response","id":"req_1","status":200,"headers":{"Content-Type":"image/png","Content-Length":"4","ETag":"\"a\\b\""},"size":4}"#
        );
        let body: Vec<u8> = (0..=255u8).cycle().take(100_003).collect();
        for max in [0, 1, 2, 7, 1000, 65_536, 100_003, 1 << 20] {
            let r = ProxyResponse {
                body: body.clone(),
                ..sample()
            };
            let (header, frames) = r.into_binary(max);
            assert!(header.ends_with(",\"size\":100003}"));
            let expected = body.len().div_ceil(max.max(1));
            assert_eq!(frames.len(), expected);
            let mut joined = Vec::new();
            for f in frames {
                assert!(!f.is_empty() && f.len() <= max.max(1));
                joined.extend_from_slice(&f);
            }
            assert_eq!(joined, body);
            let slices: Vec<&[u8]> = body_slices(&body, max).collect();
            assert_eq!(slices.len(), expected);
            assert!(slices.iter().all(|s| s.len() <= max.max(1)));
        }
        let empty = ProxyResponse {
            body: vec![],
            ..sample()
        };
        let (header, mut frames) = empty.into_binary(10);
        assert!(header.ends_with(",\"size\":0}"));
        assert!(frames.next().is_none());
    }

    #[test]
    fn peek_and_advance() {
        let mut f = BodyFrames::new(Bytes::from_static(b"abcdefg"), 3);
        assert_eq!(f.size(), 7);
        assert_eq!(f.peek().unwrap(), &b"abc"[..]);
        assert_eq!(f.peek().unwrap(), &b"abc"[..]);
        f.advance();
        assert_eq!(f.remaining_bytes(), 4);
        assert_eq!(f.next().unwrap(), &b"def"[..]);
        assert_eq!(f.next().unwrap(), &b"g"[..]);
        assert!(f.peek().is_none());
        f.advance();
        assert_eq!(f.remaining_bytes(), 0);
    }
}
