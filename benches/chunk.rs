//! `__chunk__` framing (gateway side) and reassembly (client side) of large `ma-api` text
//! messages. Throughput is in message bytes.
//!
//! Run: `cargo bench --bench chunk`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ma_webrtc_gateway::chunk::{send_limit, Chunker, Frames, Reassembler, ReassemblyLimits};

/// A JSON-like text of `size` bytes with some multi-byte characters (like MA's library lists).
fn message(size: usize) -> String {
    let mut s = String::with_capacity(size);
    s.push_str(r#"{"message_id":"1","result":""#);
    for c in "abcdefghijklmnopqrstuvwxyz0123456789é€".chars().cycle() {
        if s.len() + c.len_utf8() + 2 > size {
            break;
        }
        s.push(c);
    }
    while s.len() + 2 < size {
        s.push('.');
    }
    s.push_str("\"}");
    s
}

/// The limit the gateway uses towards a browser (max-message-size 256 KiB, send budget
/// 512 KiB / 2) and towards a peer without `a=max-message-size` (64 KiB).
const LIMITS: [(&str, Option<usize>); 2] = [("mms256k", Some(256 * 1024)), ("mms64k", None)];

fn frame(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunk/frame");
    for size in [100 * 1024, 1024 * 1024, 8 * 1024 * 1024] {
        let text = message(size);
        g.throughput(Throughput::Bytes(size as u64));
        for (name, mms) in LIMITS {
            let limit = send_limit(mms, 256 * 1024);
            if size <= limit {
                // Sent whole: no work at all (see whole/2KiB).
                continue;
            }
            g.bench_with_input(
                BenchmarkId::new(name, format!("{}KiB", size / 1024)),
                &text,
                |b, text| {
                    // As the gateway does: 65 535-byte slices, frames produced one at a time.
                    let mut chunker = Chunker::with_slice_size(65_535);
                    b.iter(|| {
                        let mut bytes = 0usize;
                        match chunker.frame(text.as_str(), limit).unwrap() {
                            Frames::Whole(t) => bytes += t.len(),
                            Frames::Chunked(frames) => {
                                for f in frames {
                                    bytes += black_box(f).len();
                                }
                            }
                        }
                        bytes
                    })
                },
            );
        }
    }
    // The common case: a small message that fits (no copy, no id taken).
    let small = message(2048);
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function("whole/2KiB", |b| {
        let mut chunker = Chunker::with_slice_size(65_535);
        b.iter(|| {
            chunker
                .frame(black_box(small.as_str()), 256 * 1024)
                .unwrap()
                .len()
        })
    });
    g.finish();
}

fn reassemble(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunk/reassemble");
    for size in [100 * 1024, 1024 * 1024, 8 * 1024 * 1024] {
        let text = message(size);
        let frames = Chunker::with_slice_size(65_535)
            .frame(text.as_str(), 64 * 1024)
            .unwrap()
            .into_vec();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{}KiB", size / 1024)),
            &frames,
            |b, frames| {
                let mut r = Reassembler::new(ReassemblyLimits::default());
                b.iter_batched(
                    || frames.clone(),
                    |frames| {
                        let mut whole = None;
                        for f in frames {
                            if let Some(t) = r.push(f).unwrap() {
                                whole = Some(t);
                            }
                        }
                        let whole = whole.expect("reassembled");
                        assert_eq!(whole.len(), size);
                        whole
                    },
                    criterion::BatchSize::LargeInput,
                )
            },
        );
    }
    // A plain message passes through the reassembler too (every ma-api text does).
    let plain = message(2048);
    g.throughput(Throughput::Bytes(plain.len() as u64));
    g.bench_function("passthrough/2KiB", |b| {
        let mut r = Reassembler::new(ReassemblyLimits::default());
        b.iter_batched(
            || plain.clone(),
            |t| r.push(t).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, frame, reassemble);
criterion_main!(benches);
