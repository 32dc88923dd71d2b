//! `__chunk__` framing (`crate::chunk`; docs/protocol.md#chunk-framing).
//!
//! Input: a mode byte.
//! - Round trip (mode even): a `u16` limit, a `u16` slice size, a byte of reordering, then
//!   the message text. Properties: a text that fits comes back whole; otherwise every frame
//!   is at most `limit` bytes, says `count` frames and is exactly `frame_len` long, and the
//!   frames, delivered in any order, reassemble to the text, with nothing left buffered. A
//!   `LimitTooSmall` only for a text over the limit, naming a need above it.
//! - Reassembly (mode odd): a `u16` byte cap, a pending-message cap, then frames, each either
//!   arbitrary text or a `__chunk__` object with small ids, seqs and counts and a `b64` of
//!   arbitrary bytes (or arbitrary text). Properties: the bytes buffered never exceed the
//!   cap, the messages in progress never exceed theirs, a text that is not a frame comes back
//!   unchanged, and `clear` leaves nothing buffered.

use data_encoding::BASE64;
use serde_json::json;

use super::{chunk_bytes, Input};
use crate::chunk::{frame_len, ChunkError, Chunker, Frames, Reassembler, ReassemblyLimits};

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    if input.u8().is_multiple_of(2) {
        round_trip(&mut input);
    } else {
        reassembly(&mut input);
    }
}

fn round_trip(input: &mut Input) {
    let limit = usize::from(input.u16());
    let configured = usize::from(input.u16());
    let order = input.u8();
    let text = String::from_utf8_lossy(input.rest()).into_owned();
    let mut chunker = Chunker::with_slice_size(configured);
    let frames = match chunker.frame(text.as_str(), limit) {
        Ok(f) => f,
        Err(ChunkError::LimitTooSmall { limit: l, needed }) => {
            assert_eq!(l, limit);
            assert!(needed > limit && text.len() > limit, "refused needlessly");
            return;
        }
    };
    let Frames::Chunked(frames) = frames else {
        assert!(text.len() <= limit, "a text over the limit sent whole");
        return;
    };
    assert!(text.len() > limit, "a text that fits was chunked");
    let (id, count, slice) = (frames.id(), frames.frame_count(), frames.slice_size());
    assert!(
        slice >= 1 && slice <= configured.max(1),
        "slice {slice} over {configured}"
    );
    let all: Vec<String> = frames.collect();
    assert_eq!(all.len() as u64, count);
    for (seq, f) in all.iter().enumerate() {
        assert!(f.len() <= limit, "frame of {} bytes over {limit}", f.len());
        let part = text.len().min((seq + 1) * slice) - seq * slice;
        assert_eq!(f.len(), frame_len(id, seq as u64, count, part));
    }
    // Deliver in an order the input picks: rotated, and reversed when bit 0 is set.
    let mut order_idx: Vec<usize> = (0..all.len()).collect();
    order_idx.rotate_left(usize::from(order) % all.len().max(1));
    if order & 1 == 1 {
        order_idx.reverse();
    }
    let mut r = Reassembler::new(ReassemblyLimits::default());
    for (n, i) in order_idx.iter().enumerate() {
        let got = r.push(all[*i].clone()).expect("our own frame refused");
        if n + 1 < all.len() {
            assert_eq!(got, None, "completed early");
        } else {
            assert_eq!(
                got.as_deref(),
                Some(text.as_str()),
                "round trip changed the text"
            );
        }
    }
    assert_eq!((r.pending_ids(), r.buffered_bytes()), (0, 0));
}

fn reassembly(input: &mut Input) {
    let limits = ReassemblyLimits {
        max_buffered_bytes: usize::from(input.u16()),
        max_pending_ids: usize::from(input.u8() % 8),
    };
    let mut r = Reassembler::new(limits);
    while !input.is_empty() {
        let kind = input.u8();
        let text = match kind % 4 {
            0 => input.text(512),
            _ => {
                let id = u64::from(input.u8() % 4);
                let seq = u64::from(input.u8() % 5);
                let count = u64::from(input.u8() % 5);
                let b64 = if kind % 4 == 1 {
                    input.text(64)
                } else {
                    BASE64.encode(input.chunk(300))
                };
                json!({"type": "__chunk__", "id": id, "seq": seq, "count": count, "b64": b64})
                    .to_string()
            }
        };
        let is_frame = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .is_some_and(|v| v.get("type").and_then(|t| t.as_str()) == Some("__chunk__"));
        let got = r.push(text.clone());
        if !is_frame {
            assert_eq!(
                got,
                Ok(Some(text)),
                "a text that is not a frame was changed"
            );
        }
        assert!(
            r.buffered_bytes() <= limits.max_buffered_bytes,
            "{} bytes buffered over the cap {}",
            r.buffered_bytes(),
            limits.max_buffered_bytes
        );
        assert!(
            r.pending_ids() <= limits.max_pending_ids,
            "too many in progress"
        );
    }
    r.clear();
    assert_eq!((r.pending_ids(), r.buffered_bytes()), (0, 0));
}

/// Messages as MA sends them on `ma-api` (long ones get chunked), and frames as the gateway
/// sends them.
pub fn seeds() -> Vec<Vec<u8>> {
    let long = format!(
        r#"{{"message_id":"1","result":[{}]}}"#,
        (0..40)
            .map(|i| format!(
                r#"{{"item_id":"{i}","name":"Track {i} – é ✓","provider":"library"}}"#
            ))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut out = Vec::new();
    for (limit, slice, order) in [(200u16, 65535u16, 0u8), (120, 30, 1), (60000, 64, 7)] {
        let mut s = vec![0];
        s.extend_from_slice(&limit.to_be_bytes());
        s.extend_from_slice(&slice.to_be_bytes());
        s.push(order);
        s.extend_from_slice(long.as_bytes());
        out.push(s);
    }
    // Reassembly: two frames of one message, a stray text, a bad base64.
    let mut s = vec![1, 0x10, 0x00, 4];
    for (seq, part) in [(0u8, &b"{\"a\":"[..]), (1, b"1}")] {
        s.extend_from_slice(&[2, 1, seq, 2]);
        chunk_bytes(&mut s, part);
    }
    s.push(0);
    chunk_bytes(&mut s, br#"{"message_id":"2","result":null}"#);
    s.extend_from_slice(&[1, 3, 0, 2]);
    chunk_bytes(&mut s, b"QQ==QQ==");
    out.push(s);
    out
}
