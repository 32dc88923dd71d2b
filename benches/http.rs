//! The HTTP proxy's sans-IO pieces (`src/http_proxy/`): parsing a response from the local
//! server as it arrives in socket-sized reads (Content-Length and chunked bodies), and parsing
//! an `http-proxy-request` message. Throughput is in response bytes.
//!
//! Run: `cargo bench --bench http`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ma_webrtc_gateway::http_proxy::client::{HttpConn, Progress};
use ma_webrtc_gateway::http_proxy::request;

const REQUEST: &str = r#"{"type":"http-proxy-request","id":"req_1712345678_abc123","method":"GET","path":"/imageproxy?path=https%3A%2F%2Fi.scdn.co%2Fimage%2Fab67616d0000b273&provider=spotify&size=256","headers":{"Accept":"image/avif,image/webp,*/*","Accept-Encoding":"gzip, deflate","If-None-Match":"\"abc\"","User-Agent":"Mozilla/5.0"}}"#;

const HEAD: &str = "HTTP/1.1 200 OK\r\nServer: Python/3.12 aiohttp/3.9.5\r\n\
Date: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Type: image/jpeg\r\n\
Cache-Control: max-age=31536000\r\nETag: \"5f3c-abc\"\r\n\
Last-Modified: Sun, 31 Dec 2023 00:00:00 GMT\r\nAccept-Ranges: bytes\r\n\
Access-Control-Allow-Origin: *\r\nX-Frame-Options: SAMEORIGIN\r\n";

fn body(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 31 % 251) as u8).collect()
}

fn with_length(size: usize) -> Vec<u8> {
    let mut r = format!("{HEAD}Content-Length: {size}\r\n\r\n").into_bytes();
    r.extend_from_slice(&body(size));
    r
}

/// Chunked as aiohttp streams a file: 64 KiB chunks.
fn chunked(size: usize) -> Vec<u8> {
    let mut r = format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n").into_bytes();
    let b = body(size);
    for c in b.chunks(64 * 1024) {
        r.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        r.extend_from_slice(c);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

fn parse_response(c: &mut Criterion) {
    let req = request::parse(REQUEST).unwrap();
    let mut g = c.benchmark_group("http/response");
    for size in [2 * 1024, 256 * 1024, 4 * 1024 * 1024] {
        for (framing, bytes) in [("length", with_length(size)), ("chunked", chunked(size))] {
            g.throughput(Throughput::Bytes(bytes.len() as u64));
            g.bench_with_input(
                BenchmarkId::new(framing, format!("{}KiB", size / 1024)),
                &bytes,
                |b, bytes| {
                    let mut conn = HttpConn::new("127.0.0.1:8095".into(), true);
                    b.iter(|| {
                        conn.start(&req);
                        // As the driver reads a socket: 16 KiB at a time.
                        for part in bytes.chunks(16 * 1024) {
                            if let Progress::Done(resp) = conn.feed(part).unwrap() {
                                return black_box(resp.body.len());
                            }
                        }
                        panic!("response not complete");
                    })
                },
            );
        }
    }
    g.finish();
}

fn parse_request(c: &mut Criterion) {
    let mut g = c.benchmark_group("http/request");
    g.throughput(Throughput::Bytes(REQUEST.len() as u64));
    g.bench_function("parse", |b| {
        b.iter(|| request::parse(black_box(REQUEST)).unwrap())
    });
    // Every ma-api text passes this test first.
    let command = r#"{"message_id":"42","command":"music/albums/library_items","args":{"limit":50,"offset":0}}"#;
    g.throughput(Throughput::Bytes(command.len() as u64));
    g.bench_function("classify/not-a-request", |b| {
        b.iter(|| request::classify(black_box(command)).is_none())
    });
    g.finish();
}

criterion_group!(benches, parse_response, parse_request);
criterion_main!(benches);
