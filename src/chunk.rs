//! `__chunk__` framing of large server → client `ma-api` text messages
//! (docs/protocol.md#chunk-framing).
//! Sans-IO: no sockets, no clocks.
//!
//! A data channel message above the peer's `a=max-message-size` is never delivered, so a text
//! message that does not fit is sent as frames
//!
//! ```text
//! {"type":"__chunk__","id":<n>,"seq":<0..count-1>,"count":<n>,"b64":"<base64 of a slice>"}
//! ```
//!
//! (compact JSON, keys in that order). The slices cut the message's UTF-8 bytes (possibly inside
//! a code point: clients reassemble bytes, then decode) into [`DEFAULT_SLICE_SIZE`] bytes, as
//! Music Assistant 2.10 does, or smaller when a frame would otherwise exceed the limit. `id` is
//! a gateway-wide counter (clients key their reassembly on it across channels), kept below
//! 2^53 so JavaScript reads it exactly.
//!
//! - [`Chunker`] (gateway side) decides whole vs chunked and produces the frames lazily.
//! - [`Reassembler`] (client side: the diagnostic client and tests) undoes it, with bounded
//!   memory.
//! - [`send_limit`] turns the peer's advertised limit and our send budget into the `limit`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};

use data_encoding::BASE64;
use serde::Deserialize;
use serde_json::Value;

use crate::webrtc::session::DEFAULT_REMOTE_MAX_MESSAGE_SIZE;

/// Slice size of Music Assistant's framing: 64 KiB of message bytes per frame
/// (87 384 base64 characters, the most current clients accept in one frame).
pub const DEFAULT_SLICE_SIZE: usize = 64 * 1024;
/// The slice size the gateway uses: 12 000 bytes, a multiple of 3, so base64 padding never
/// lands in the middle of the joined payload (some clients join the parts before decoding,
/// others decode each; both work), and small enough that a frame (16 060 bytes with a short id)
/// fits three times in the smallest send window (48 KiB, docs/design.md#the-send-window):
/// frames larger than a third of the window turned large replies into bursts of one frame at
/// a time.
pub const GATEWAY_SLICE_SIZE: usize = 12_000;
/// The gateway sends API text whole up to this (or the peer's smaller limit) and chunks it
/// above, as MA 2.10 does: 64 KiB whole are what clients older than chunking received from
/// MA, and a whole message larger than the send window goes alone in one burst that a
/// browser's receive buffer may not hold.
pub const GATEWAY_WHOLE_MAX: usize = 64 * 1024;
/// Highest id before the counter wraps to 1 (`Number.MAX_SAFE_INTEGER`).
const MAX_ID: u64 = (1 << 53) - 1;

const PREFIX: &str = r#"{"type":"__chunk__","id":"#;
const SEQ: &str = r#","seq":"#;
const COUNT: &str = r#","count":"#;
const B64: &str = r#","b64":""#;
const SUFFIX: &str = r#""}"#;
/// Bytes of a frame that are neither numbers nor base64.
const FIXED_LEN: usize = PREFIX.len() + SEQ.len() + COUNT.len() + B64.len() + SUFFIX.len();

/// The largest message we may send to a peer: its `a=max-message-size` (`None` when absent:
/// 65 536; `0` means "any size" per RFC 8841), capped by our own send budget (str0m refuses a
/// message larger than its buffered-amount budget).
pub fn send_limit(peer_max_message_size: Option<usize>, send_budget: usize) -> usize {
    match peer_max_message_size {
        None => DEFAULT_REMOTE_MAX_MESSAGE_SIZE.min(send_budget),
        Some(0) => send_budget,
        Some(n) => n.min(send_budget),
    }
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

fn base64_len(bytes: usize) -> usize {
    bytes.div_ceil(3) * 4
}

/// Exact length in bytes of the frame `seq` of `count` carrying `slice_len` message bytes.
pub fn frame_len(id: u64, seq: u64, count: u64, slice_len: usize) -> usize {
    FIXED_LEN + digits(id) + digits(seq) + digits(count) + base64_len(slice_len)
}

/// Why a message cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    /// Not even a frame carrying one byte fits in `limit`.
    LimitTooSmall {
        /// The limit given.
        limit: usize,
        /// The smallest frame that would have been needed.
        needed: usize,
    },
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkError::LimitTooSmall { limit, needed } => write!(
                f,
                "message size limit {limit} is too small for __chunk__ frames (at least {needed} \
                 bytes needed)"
            ),
        }
    }
}

impl std::error::Error for ChunkError {}

/// Frames large messages; holds the gateway-wide id counter (one per gateway, not per session).
#[derive(Debug, Clone)]
pub struct Chunker {
    next_id: u64,
    slice_size: usize,
}

impl Default for Chunker {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunker {
    /// A chunker with [`DEFAULT_SLICE_SIZE`] slices, ids starting at 1.
    pub fn new() -> Self {
        Self::with_slice_size(DEFAULT_SLICE_SIZE)
    }

    /// A chunker with at most `slice_size` message bytes per frame (at least 1).
    pub fn with_slice_size(slice_size: usize) -> Self {
        Chunker {
            next_id: 1,
            slice_size: slice_size.max(1),
        }
    }

    /// Frames `text` for a peer that accepts messages of at most `limit` bytes (see
    /// [`send_limit`]).
    ///
    /// A text of at most `limit` bytes comes back untouched as [`Frames::Whole`] (no copy).
    /// Otherwise [`Frames::Chunked`] yields the frames in order, each encoded only when asked
    /// for and never longer than `limit`; the slice size shrinks below the configured one when
    /// needed (then to a multiple of 3, so no slice but the last carries base64 padding). Takes
    /// a new id only when chunking.
    pub fn frame<T: AsRef<str>>(&mut self, text: T, limit: usize) -> Result<Frames<T>, ChunkError> {
        let len = text.as_ref().len();
        if len <= limit {
            return Ok(Frames::Whole(text));
        }
        let id = self.next_id;
        let mut slice = self.slice_size.min(len);
        let count = loop {
            let count = len.div_ceil(slice) as u64;
            let overhead = FIXED_LEN + digits(id) + digits(count - 1) + digits(count);
            if overhead + base64_len(slice) <= limit {
                break count;
            }
            let avail = limit.saturating_sub(overhead);
            if avail < 4 {
                return Err(ChunkError::LimitTooSmall {
                    limit,
                    needed: overhead + 4,
                });
            }
            // Strictly smaller than `slice`, since base64_len(slice) > avail.
            slice = avail / 4 * 3;
        };
        self.next_id = if id >= MAX_ID { 1 } else { id + 1 };
        Ok(Frames::Chunked(ChunkFrames {
            text,
            id,
            slice,
            count,
            next: 0,
        }))
    }
}

/// What to send for one message: see [`Chunker::frame`].
#[derive(Debug)]
pub enum Frames<T> {
    /// The message fits: send it as it is.
    Whole(T),
    /// Send these frames, in order, on the same channel.
    Chunked(ChunkFrames<T>),
}

impl<T: AsRef<str>> Frames<T> {
    /// Whether the message had to be chunked.
    pub fn is_chunked(&self) -> bool {
        matches!(self, Frames::Chunked(_))
    }

    /// Number of messages still to send.
    pub fn len(&self) -> usize {
        match self {
            Frames::Whole(_) => 1,
            Frames::Chunked(frames) => frames.len(),
        }
    }

    /// Whether nothing is left to send (only for a drained [`Frames::Chunked`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All messages as strings (copies a whole message; for tests and diagnostics).
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Frames::Whole(text) => vec![text.as_ref().to_string()],
            Frames::Chunked(frames) => frames.collect(),
        }
    }
}

/// The frames of one chunked message, produced on demand. Owns the message, so it can be kept
/// as the pending state of a backed-up channel.
#[derive(Debug, Clone)]
pub struct ChunkFrames<T> {
    text: T,
    id: u64,
    slice: usize,
    count: u64,
    next: u64,
}

impl<T: AsRef<str>> ChunkFrames<T> {
    /// The `id` of every frame of this message.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The `count` of every frame of this message (named so as not to shadow
    /// [`Iterator::count`]).
    pub fn frame_count(&self) -> u64 {
        self.count
    }

    /// Message bytes per frame (the last frame may carry fewer).
    pub fn slice_size(&self) -> usize {
        self.slice
    }

    /// The `seq` of the next frame.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// The message being framed.
    pub fn message(&self) -> &T {
        &self.text
    }
}

impl<T: AsRef<str>> Iterator for ChunkFrames<T> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        if self.next >= self.count {
            return None;
        }
        let seq = self.next;
        let bytes = self.text.as_ref().as_bytes();
        let start = usize::try_from(seq).ok()?.checked_mul(self.slice)?;
        let end = start.saturating_add(self.slice).min(bytes.len());
        let part = bytes.get(start..end)?;
        self.next += 1;
        let mut out = String::with_capacity(frame_len(self.id, seq, self.count, part.len()));
        out.push_str(PREFIX);
        // Writing to a String cannot fail.
        let _ = write!(out, "{}{SEQ}{seq}{COUNT}{}{B64}", self.id, self.count);
        BASE64.encode_append(part, &mut out);
        out.push_str(SUFFIX);
        Some(out)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::try_from(self.count.saturating_sub(self.next)).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}

impl<T: AsRef<str>> ExactSizeIterator for ChunkFrames<T> {}

/// Memory bounds of a [`Reassembler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// Decoded bytes buffered across all incomplete messages.
    pub max_buffered_bytes: usize,
    /// Incomplete messages (distinct ids) at the same time.
    pub max_pending_ids: usize,
}

impl Default for ReassemblyLimits {
    /// 32 MiB across 32 messages.
    fn default() -> Self {
        ReassemblyLimits {
            max_buffered_bytes: 32 * 1024 * 1024,
            max_pending_ids: 32,
        }
    }
}

/// Why a frame was refused. An error about a message that was being collected also discards
/// what was collected for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReassemblyError {
    /// A `__chunk__` frame with a missing or invalid field.
    Malformed {
        /// The frame's id, if it had a valid one.
        id: Option<u64>,
        /// What is wrong.
        reason: String,
    },
    /// `count` differs from earlier frames of the same id.
    CountMismatch {
        /// Message id.
        id: u64,
        /// `count` of the earlier frames.
        expected: u64,
        /// `count` of this frame.
        got: u64,
    },
    /// A second frame with the same `seq`.
    DuplicateSeq {
        /// Message id.
        id: u64,
        /// The repeated `seq`.
        seq: u64,
    },
    /// `b64` is not canonical, padded standard base64.
    BadBase64 {
        /// Message id.
        id: u64,
        /// The frame's `seq`.
        seq: u64,
    },
    /// Starting another message would exceed [`ReassemblyLimits::max_pending_ids`].
    TooManyPending {
        /// The refused message's id.
        id: u64,
        /// The limit.
        max: usize,
    },
    /// Buffering this frame would exceed [`ReassemblyLimits::max_buffered_bytes`].
    TooLarge {
        /// Message id.
        id: u64,
        /// The limit.
        max: usize,
    },
    /// The reassembled bytes are not UTF-8.
    InvalidUtf8 {
        /// Message id.
        id: u64,
    },
}

impl fmt::Display for ReassemblyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReassemblyError::Malformed {
                id: Some(id),
                reason,
            } => {
                write!(f, "malformed __chunk__ frame (id {id}): {reason}")
            }
            ReassemblyError::Malformed { id: None, reason } => {
                write!(f, "malformed __chunk__ frame: {reason}")
            }
            ReassemblyError::CountMismatch { id, expected, got } => write!(
                f,
                "__chunk__ {id}: count {got} differs from the earlier frames' {expected}"
            ),
            ReassemblyError::DuplicateSeq { id, seq } => {
                write!(f, "__chunk__ {id}: seq {seq} received twice")
            }
            ReassemblyError::BadBase64 { id, seq } => {
                write!(f, "__chunk__ {id}: seq {seq} is not valid base64")
            }
            ReassemblyError::TooManyPending { id, max } => write!(
                f,
                "__chunk__ {id}: more than {max} chunked messages in progress"
            ),
            ReassemblyError::TooLarge { id, max } => write!(
                f,
                "__chunk__ {id}: more than {max} bytes of incomplete messages buffered"
            ),
            ReassemblyError::InvalidUtf8 { id } => {
                write!(f, "__chunk__ {id}: reassembled message is not UTF-8")
            }
        }
    }
}

impl std::error::Error for ReassemblyError {}

/// The fields a frame may have; anything else is ignored.
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "type")]
    kind: Option<Value>,
    id: Option<Value>,
    seq: Option<Value>,
    count: Option<Value>,
    b64: Option<Value>,
}

#[derive(Debug)]
struct Partial {
    count: u64,
    parts: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
}

/// Client-side reassembly of `__chunk__` frames, as the web app does it: a text message that
/// is a JSON object with `"type":"__chunk__"` is a frame; everything else passes through.
/// Frames may arrive in any order and interleaved across ids.
#[derive(Debug, Default)]
pub struct Reassembler {
    limits: ReassemblyLimits,
    pending: HashMap<u64, Partial>,
    buffered: usize,
}

impl Reassembler {
    /// A reassembler with the given bounds.
    pub fn new(limits: ReassemblyLimits) -> Self {
        Reassembler {
            limits,
            pending: HashMap::new(),
            buffered: 0,
        }
    }

    /// Takes one incoming text message. Returns `Some(message)` for a message that is not a
    /// frame (unchanged, no copy) or the completed message of a last frame, `None` for a frame
    /// that was stored.
    pub fn push(&mut self, text: String) -> Result<Option<String>, ReassemblyError> {
        if !text.trim_start().starts_with('{') {
            return Ok(Some(text));
        }
        let Ok(probe) = serde_json::from_str::<Probe>(&text) else {
            return Ok(Some(text));
        };
        if probe.kind.as_ref().and_then(Value::as_str) != Some("__chunk__") {
            return Ok(Some(text));
        }
        self.push_frame(probe)
    }

    fn push_frame(&mut self, frame: Probe) -> Result<Option<String>, ReassemblyError> {
        let number = |v: &Option<Value>| v.as_ref().and_then(Value::as_u64);
        let Some(id) = number(&frame.id) else {
            return Err(ReassemblyError::Malformed {
                id: None,
                reason: "id is not a non-negative integer".to_string(),
            });
        };
        let malformed = |this: &mut Self, reason: &str| {
            this.discard(id);
            ReassemblyError::Malformed {
                id: Some(id),
                reason: reason.to_string(),
            }
        };
        let Some(count) = number(&frame.count).filter(|c| *c >= 1) else {
            return Err(malformed(self, "count is not a positive integer"));
        };
        let Some(seq) = number(&frame.seq).filter(|s| *s < count) else {
            return Err(malformed(self, "seq is not an integer below count"));
        };
        let Some(b64) = frame.b64.as_ref().and_then(Value::as_str) else {
            return Err(malformed(self, "b64 is not a string"));
        };
        if b64.is_empty() {
            return Err(malformed(self, "b64 is empty"));
        }
        if count > self.limits.max_buffered_bytes as u64 {
            self.discard(id);
            return Err(ReassemblyError::TooLarge {
                id,
                max: self.limits.max_buffered_bytes,
            });
        }

        match self.pending.get(&id) {
            Some(p) if p.count != count => {
                let expected = p.count;
                self.discard(id);
                return Err(ReassemblyError::CountMismatch {
                    id,
                    expected,
                    got: count,
                });
            }
            Some(p) if p.parts.contains_key(&seq) => {
                self.discard(id);
                return Err(ReassemblyError::DuplicateSeq { id, seq });
            }
            Some(_) => {}
            None if count > 1 && self.pending.len() >= self.limits.max_pending_ids => {
                return Err(ReassemblyError::TooManyPending {
                    id,
                    max: self.limits.max_pending_ids,
                });
            }
            None => {}
        }

        let upper = b64.len() / 4 * 3;
        if self.buffered.saturating_add(upper) > self.limits.max_buffered_bytes {
            self.discard(id);
            return Err(ReassemblyError::TooLarge {
                id,
                max: self.limits.max_buffered_bytes,
            });
        }
        // `data_encoding` accepts concatenated padded blocks ("QQ==QQ=="); browsers' atob does not.
        let decoded = if b64.trim_end_matches('=').contains('=') {
            None
        } else {
            BASE64.decode(b64.as_bytes()).ok()
        };
        let Some(bytes) = decoded else {
            self.discard(id);
            return Err(ReassemblyError::BadBase64 { id, seq });
        };

        let partial = self.pending.entry(id).or_insert_with(|| Partial {
            count,
            parts: BTreeMap::new(),
            bytes: 0,
        });
        partial.bytes += bytes.len();
        self.buffered += bytes.len();
        partial.parts.insert(seq, bytes);
        if (partial.parts.len() as u64) < count {
            return Ok(None);
        }

        let Some(partial) = self.pending.remove(&id) else {
            return Ok(None);
        };
        self.buffered = self.buffered.saturating_sub(partial.bytes);
        let mut message = Vec::with_capacity(partial.bytes);
        for part in partial.parts.into_values() {
            message.extend_from_slice(&part);
        }
        String::from_utf8(message)
            .map(Some)
            .map_err(|_| ReassemblyError::InvalidUtf8 { id })
    }

    /// Drops what was collected for `id`.
    pub fn discard(&mut self, id: u64) {
        if let Some(p) = self.pending.remove(&id) {
            self.buffered = self.buffered.saturating_sub(p.bytes);
        }
    }

    /// Drops everything collected (e.g. when the channel closes).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.buffered = 0;
    }

    /// Messages in progress.
    pub fn pending_ids(&self) -> usize {
        self.pending.len()
    }

    /// Decoded bytes buffered for messages in progress.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ascii(len: usize) -> String {
        (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect()
    }

    /// About `len` bytes of mixed 1-4 byte code points.
    fn multibyte(len: usize) -> String {
        let pieces = ["a", "é", "€", "🎵", "ß", "音楽", "\"", "\\"];
        let mut s = String::with_capacity(len + 8);
        let mut i = 0;
        while s.len() < len {
            s.push_str(pieces[i % pieces.len()]);
            i += 1;
        }
        s
    }

    fn reassemble(frames: Vec<String>) -> String {
        let mut r = Reassembler::default();
        let mut out = None;
        for f in frames {
            if let Some(msg) = r.push(f).expect("valid frame") {
                assert!(out.is_none(), "completed twice");
                out = Some(msg);
            }
        }
        assert_eq!(r.pending_ids(), 0);
        assert_eq!(r.buffered_bytes(), 0);
        out.expect("complete")
    }

    fn check(chunker: &mut Chunker, text: &str, limit: usize) -> (bool, usize, Vec<String>) {
        let frames = chunker.frame(text, limit).expect("frames");
        let chunked = frames.is_chunked();
        let n = frames.len();
        if let Frames::Chunked(f) = &frames {
            assert_eq!(f.frame_count() as usize, n);
        }
        let frames = frames.into_vec();
        assert_eq!(frames.len(), n);
        for f in &frames {
            assert!(f.len() <= limit, "frame of {} > limit {limit}", f.len());
        }
        assert_eq!(reassemble(frames.clone()), text);
        (chunked, n, frames)
    }

    fn field(frame: &str, key: &str) -> Value {
        let v: Value = serde_json::from_str(frame).expect("json");
        v[key].clone()
    }

    #[test]
    fn whole_when_it_fits() {
        let mut c = Chunker::new();
        assert!(matches!(c.frame("x", 65_536), Ok(Frames::Whole("x"))));
        let (chunked, n, _) = check(&mut c, &ascii(1), 65_536);
        assert!(!chunked && n == 1);
        let (chunked, _, frames) = check(&mut c, &ascii(65_536), 65_536);
        assert!(!chunked);
        assert_eq!(frames[0], ascii(65_536));
        // Chrome's 262 144: bigger messages still go whole.
        assert!(!check(&mut c, &ascii(65_537), 262_144).0);
        assert!(matches!(c.frame("", 0), Ok(Frames::Whole(""))));
        // No id spent so far.
        assert_eq!(c.next_id, 1);
    }

    #[test]
    fn boundary_65537() {
        let mut c = Chunker::new();
        let (chunked, n, frames) = check(&mut c, &ascii(65_537), 65_536);
        assert!(chunked);
        assert_eq!(n, 2);
        assert!(frames[0].starts_with(r#"{"type":"__chunk__","id":1,"seq":0,"count":2,"b64":""#));
        assert!(frames[1].starts_with(r#"{"type":"__chunk__","id":1,"seq":1,"count":2,"b64":""#));
        assert!(frames[0].ends_with("\"}"));
        // The slice shrank to fit: 3 * floor((65536 - overhead) / 4).
        let overhead = FIXED_LEN + 1 + 1 + 1;
        let slice = (65_536 - overhead) / 4 * 3;
        let b64 = field(&frames[0], "b64");
        let b64 = b64.as_str().expect("b64");
        assert_eq!(b64.len(), base64_len(slice));
        assert!(!b64.ends_with('='));
        assert_eq!(c.next_id, 2);
    }

    #[test]
    fn default_slices_match_music_assistant() {
        let mut c = Chunker::new();
        let text = ascii(1024 * 1024);
        let (chunked, n, frames) = check(&mut c, &text, 262_144);
        assert!(chunked);
        assert_eq!(n, 16);
        // 64 KiB slices: 87 384 base64 characters, as MA 2.10 (whose spacing adds 63 bytes).
        assert_eq!(
            field(&frames[0], "b64").as_str().map(str::len),
            Some(87_384)
        );
        assert_eq!(frames[0].len(), 87_384 + FIXED_LEN + 1 + 1 + 2);
        assert_eq!(frames[0].len(), frame_len(1, 0, 16, 65_536));
        for (seq, f) in frames.iter().enumerate() {
            assert_eq!(field(f, "seq"), Value::from(seq));
            assert_eq!(field(f, "count"), Value::from(16));
            assert_eq!(field(f, "id"), Value::from(1));
            assert_eq!(f.len(), frame_len(1, seq as u64, 16, 65_536));
        }
    }

    #[test]
    fn multibyte_mebibyte_round_trip() {
        let mut c = Chunker::new();
        let text = multibyte(1024 * 1024);
        let (chunked, n, frames) = check(&mut c, &text, 262_144);
        assert!(chunked && n == 17, "{n}");
        // Slices cut code points: at least one frame alone is not UTF-8.
        let cut = frames.iter().any(|f| {
            let b64 = field(f, "b64");
            let bytes = BASE64
                .decode(b64.as_str().unwrap_or("").as_bytes())
                .expect("b64");
            std::str::from_utf8(&bytes).is_err()
        });
        assert!(cut);
        // Small limit too.
        let (_, n, _) = check(&mut c, &text, 16 * 1024);
        assert!(n > 64);
    }

    #[test]
    fn frames_never_exceed_the_limit() {
        let mut c = Chunker::new();
        let text = multibyte(200_000);
        let (_, _, frames) = check(&mut c, &text, 16 * 1024);
        let max = frames.iter().map(String::len).max().unwrap_or(0);
        assert!(max <= 16 * 1024 && max > 16 * 1024 - 8, "{max}");

        // Every limit and length around digit changes of id, seq and count.
        for start_id in [1, 9, 99, 99_999, MAX_ID] {
            for limit in (70..140).step_by(3).chain([999, 1000, 1001, 16_384]) {
                for len in [limit + 1, 2 * limit, 1_000, 9_999, 10_001] {
                    if len <= limit {
                        continue;
                    }
                    let mut c = Chunker {
                        next_id: start_id,
                        ..Chunker::new()
                    };
                    let text = multibyte(len);
                    match c.frame(text.as_str(), limit) {
                        Ok(frames) => {
                            let frames = frames.into_vec();
                            for f in &frames {
                                assert!(f.len() <= limit, "{} > {limit}", f.len());
                            }
                            assert_eq!(reassemble(frames), text);
                        }
                        Err(ChunkError::LimitTooSmall { needed, .. }) => {
                            assert!(needed > limit);
                            assert_eq!(c.next_id, start_id, "no id spent on failure");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn exact_lengths_and_wrap() {
        let mut c = Chunker {
            next_id: MAX_ID,
            ..Chunker::with_slice_size(10)
        };
        let text = ascii(1005);
        let Ok(Frames::Chunked(frames)) = c.frame(text.as_str(), 100) else {
            panic!("chunked");
        };
        let (id, count, slice) = (frames.id(), frames.frame_count(), frames.slice_size());
        assert_eq!((id, count, slice), (MAX_ID, 101, 10));
        for (seq, f) in frames.enumerate() {
            let part = if seq == 100 { 5 } else { 10 };
            assert_eq!(f.len(), frame_len(id, seq as u64, count, part));
        }
        assert_eq!(c.next_id, 1);
    }

    #[test]
    fn tiny_limit_is_an_error() {
        let mut c = Chunker::new();
        let err = c.frame(ascii(100).as_str(), 50).expect_err("too small");
        assert!(matches!(err, ChunkError::LimitTooSmall { limit: 50, .. }));
        assert!(err.to_string().contains("too small"));
        assert!(c.frame(ascii(100).as_str(), 0).is_err());
        assert_eq!(c.next_id, 1);
    }

    #[test]
    fn owned_messages_are_not_copied() {
        let mut c = Chunker::new();
        let text = ascii(1000);
        let ptr = text.as_ptr();
        match c.frame(text, 1000) {
            Ok(Frames::Whole(t)) => assert_eq!(t.as_ptr(), ptr),
            _ => panic!("whole"),
        }
        let Ok(Frames::Chunked(frames)) = c.frame(ascii(1000), 500) else {
            panic!("chunked");
        };
        assert_eq!(frames.message().len(), 1000);
        assert_eq!(frames.next_seq(), 0);
    }

    #[test]
    fn send_limits() {
        assert_eq!(send_limit(None, 1 << 20), 65_536);
        assert_eq!(send_limit(Some(0), 131_072), 131_072);
        assert_eq!(send_limit(Some(262_144), 131_072), 131_072);
        assert_eq!(send_limit(Some(16_384), 131_072), 16_384);
    }

    #[test]
    fn reassembly_out_of_order_and_interleaved() {
        let mut c = Chunker::with_slice_size(1000);
        let a = multibyte(10_000);
        let b = ascii(5_500);
        let fa = c.frame(a.as_str(), 2000).expect("a").into_vec();
        let fb = c.frame(b.as_str(), 2000).expect("b").into_vec();
        assert!(fa.len() > 5 && fb.len() > 3);
        let mut r = Reassembler::default();
        let mut done = Vec::new();
        // a reversed, b rotated, interleaved, with a pass-through message in between.
        let mut rb = fb.clone();
        rb.rotate_left(2);
        let mut ia = fa.iter().rev().cloned();
        let mut ib = rb.into_iter();
        loop {
            let (x, y) = (ia.next(), ib.next());
            if x.is_none() && y.is_none() {
                break;
            }
            for f in [x, y].into_iter().flatten() {
                if let Some(m) = r.push(f).expect("ok") {
                    done.push(m);
                }
            }
            if let Some(m) = r.push(r#"{"message_id":1}"#.to_string()).expect("ok") {
                assert_eq!(m, r#"{"message_id":1}"#);
            }
        }
        done.sort_by_key(String::len);
        assert_eq!(done, vec![b, a]);
        assert_eq!((r.pending_ids(), r.buffered_bytes()), (0, 0));
    }

    #[test]
    fn pass_through() {
        let mut r = Reassembler::default();
        for text in [
            "not json",
            "",
            "[1,2]",
            r#"{"type":"result","data":"__chunk__"}"#,
            r#"{"type":"__chunk_","id":1}"#,
            r#"{"type":"__chunk__" broken"#,
            r#"{"result":{"type":"__chunk__"}}"#,
        ] {
            assert_eq!(
                r.push(text.to_string()),
                Ok(Some(text.to_string())),
                "{text}"
            );
        }
        let owned = "plain".to_string();
        let ptr = owned.as_ptr();
        let back = r.push(owned).expect("ok").expect("some");
        assert_eq!(back.as_ptr(), ptr);
    }

    fn raw(id: &str, seq: &str, count: &str, b64: &str) -> String {
        format!(r#"{{"type":"__chunk__","id":{id},"seq":{seq},"count":{count},"b64":{b64}}}"#)
    }

    #[test]
    fn malformed_frames() {
        let mut r = Reassembler::default();
        let bad = [
            raw("-1", "0", "2", r#""QQ==""#),
            raw("\"x\"", "0", "2", r#""QQ==""#),
            raw("1.5", "0", "2", r#""QQ==""#),
            raw("1", "2", "2", r#""QQ==""#),
            raw("1", "0", "0", r#""QQ==""#),
            raw("1", "0", "2", "7"),
            raw("1", "0", "2", r#""""#),
            r#"{"type":"__chunk__","id":1,"seq":0,"count":2}"#.to_string(),
        ];
        for f in bad {
            let err = r.push(f.clone()).expect_err(&f);
            assert!(
                matches!(err, ReassemblyError::Malformed { .. }),
                "{f}: {err}"
            );
        }
        // Not canonical base64: bad alphabet, missing padding, non-zero trailing bits.
        for b64 in [r#""QQ""#, r#""Q!==""#, r#""QR==""#, r#""QQ==QQ==""#] {
            let err = r.push(raw("7", "0", "2", b64)).expect_err(b64);
            assert_eq!(err, ReassemblyError::BadBase64 { id: 7, seq: 0 });
        }
        assert_eq!(r.pending_ids(), 0);
    }

    #[test]
    fn inconsistent_frames() {
        let mut r = Reassembler::default();
        assert_eq!(r.push(raw("3", "0", "3", r#""QQ==""#)), Ok(None));
        let err = r.push(raw("3", "1", "4", r#""QQ==""#)).expect_err("count");
        assert_eq!(
            err,
            ReassemblyError::CountMismatch {
                id: 3,
                expected: 3,
                got: 4
            }
        );
        assert_eq!((r.pending_ids(), r.buffered_bytes()), (0, 0));

        assert_eq!(r.push(raw("4", "1", "3", r#""QQ==""#)), Ok(None));
        let err = r.push(raw("4", "1", "3", r#""QQ==""#)).expect_err("dup");
        assert_eq!(err, ReassemblyError::DuplicateSeq { id: 4, seq: 1 });
        assert_eq!((r.pending_ids(), r.buffered_bytes()), (0, 0));

        // 0xC3 alone (half of "é"), completed: not UTF-8.
        assert_eq!(r.push(raw("5", "1", "2", r#""ww==""#)), Ok(None));
        let err = r.push(raw("5", "0", "2", r#""QQ==""#)).expect_err("utf8");
        assert_eq!(err, ReassemblyError::InvalidUtf8 { id: 5 });
        assert_eq!((r.pending_ids(), r.buffered_bytes()), (0, 0));
        // A split code point is fine once both halves are there: "é" = C3 A9.
        assert_eq!(r.push(raw("6", "1", "2", r#""qQ==""#)), Ok(None));
        assert_eq!(
            r.push(raw("6", "0", "2", r#""ww==""#)),
            Ok(Some("é".to_string()))
        );
        // A single-frame message completes at once.
        assert_eq!(
            r.push(raw("8", "0", "1", r#""QUI=""#)),
            Ok(Some("AB".to_string()))
        );
    }

    #[test]
    fn bounds() {
        let limits = ReassemblyLimits {
            max_buffered_bytes: 10_000,
            max_pending_ids: 2,
        };
        let mut c = Chunker::with_slice_size(1000);
        let small = |c: &mut Chunker| c.frame(ascii(3000), 1500).expect("f").into_vec();
        let (f1, f2, f3) = (small(&mut c), small(&mut c), small(&mut c));

        let mut r = Reassembler::new(limits);
        assert_eq!(r.push(f1[0].clone()), Ok(None));
        assert_eq!(r.push(f2[0].clone()), Ok(None));
        let err = r.push(f3[0].clone()).expect_err("third id");
        assert_eq!(err, ReassemblyError::TooManyPending { id: 3, max: 2 });
        assert_eq!(r.pending_ids(), 2);
        assert_eq!(r.buffered_bytes(), 2000);
        // The others still complete; then there is room again.
        for f in &f1[1..] {
            let _ = r.push(f.clone()).expect("ok");
        }
        assert_eq!(r.pending_ids(), 1);
        assert_eq!(r.push(f3[0].clone()), Ok(None));

        // Too many bytes in progress: refused, and that message's buffer is freed.
        let mut r = Reassembler::new(limits);
        let big = c.frame(ascii(20_000), 1500).expect("f").into_vec();
        let mut result = Ok(None);
        for f in &big {
            result = r.push(f.clone());
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(
            result,
            Err(ReassemblyError::TooLarge { max: 10_000, .. })
        ));
        assert_eq!((r.pending_ids(), r.buffered_bytes()), (0, 0));

        // A count that could never fit is refused up front.
        let err = r
            .push(raw("9", "0", "10001", r#""QQ==""#))
            .expect_err("count");
        assert!(matches!(err, ReassemblyError::TooLarge { id: 9, .. }));
        r.clear();
    }
}
