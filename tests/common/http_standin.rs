//! HTTP beside Music Assistant's WebSocket, and a Sendspin stand-in, for the browser tests.
//!
//! - [`MaFront`] listens on one port the way MA does: WebSocket upgrades are spliced byte for
//!   byte to an upstream WebSocket server (the [`super::ma_standin`] echo server), plain HTTP
//!   requests are answered here: `GET|HEAD /imageproxy?...` returns [`test_png`] (or, with
//!   `bytes=N` in the query, N bytes of `i % 251`, at most 16 MiB), anything else is a 404. Every HTTP request is recorded (method, target, headers) so a test can check what
//!   the gateway's proxy forwarded.
//! - [`SendspinStandin`] is a WebSocket server that echoes text and binary messages, plus two
//!   benchmark commands: `{"command":"bench/sink","bytes":N}` swallows the next N bytes of
//!   binary messages and then answers `{"sunk":N}`; `{"command":"bench/source","bytes":N,
//!   "frame":F}` sends N bytes as binary messages of F bytes (the last one shorter).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::Message;

/// One HTTP request the front answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSeen {
    pub method: String,
    pub target: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
}

impl HttpSeen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct MaFront {
    pub port: u16,
    pub http: Arc<Mutex<Vec<HttpSeen>>>,
    /// WebSocket connections spliced upstream so far.
    pub upgrades: Arc<Mutex<usize>>,
}

const IMAGE_W: u32 = 512;
const IMAGE_H: u32 = 256;

impl MaFront {
    /// Listen on 127.0.0.1; WebSocket upgrades go to `127.0.0.1:<upstream_ws_port>`.
    pub fn start(upstream_ws_port: u16) -> MaFront {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let http = Arc::new(Mutex::new(Vec::new()));
        let upgrades = Arc::new(Mutex::new(0));
        let (http2, upgrades2) = (http.clone(), upgrades.clone());
        let image = Arc::new(test_png(IMAGE_W, IMAGE_H));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let (http, upgrades, image) = (http2.clone(), upgrades2.clone(), image.clone());
                std::thread::spawn(move || {
                    front_conn(stream, upstream_ws_port, &http, &upgrades, &image)
                });
            }
        });
        MaFront {
            port,
            http,
            upgrades,
        }
    }

    /// `ws://127.0.0.1:<port>/ws`: what the gateway's `MA_LOCAL_WS_URL` should be.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    pub fn http_seen(&self) -> Vec<HttpSeen> {
        self.http.lock().unwrap().clone()
    }

    /// The image `/imageproxy` serves.
    pub fn image() -> Vec<u8> {
        test_png(IMAGE_W, IMAGE_H)
    }

    pub fn image_size() -> (u32, u32) {
        (IMAGE_W, IMAGE_H)
    }
}

/// Read one request head (up to the blank line); returns head bytes and what followed it.
fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(pos + 4);
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn front_conn(
    mut stream: TcpStream,
    upstream: u16,
    http: &Mutex<Vec<HttpSeen>>,
    upgrades: &Mutex<usize>,
    image: &[u8],
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    loop {
        let Some(head_len) = read_head(&mut stream, &mut buf) else {
            return;
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(
            req.parse(&buf[..head_len]),
            Ok(httparse::Status::Complete(_))
        ) {
            let _ = stream.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        }
        let seen = HttpSeen {
            method: req.method.unwrap_or("").to_string(),
            target: req.path.unwrap_or("").to_string(),
            headers: req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
        };
        let is_upgrade = seen
            .header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        if is_upgrade {
            *upgrades.lock().unwrap() += 1;
            splice(stream, upstream, buf);
            return;
        }
        let close = seen
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let head_only = seen.method == "HEAD";
        let (status, ctype, body): (&str, &str, Vec<u8>) =
            if (seen.method == "GET" || head_only) && seen.target.starts_with("/imageproxy") {
                let bytes = seen
                    .target
                    .split(['?', '&'])
                    .find_map(|kv| kv.strip_prefix("bytes=")?.parse::<usize>().ok());
                match bytes {
                    Some(n) => (
                        "200 OK",
                        "image/jpeg",
                        (0..n.min(16 << 20)).map(|i| (i % 251) as u8).collect(),
                    ),
                    None => ("200 OK", "image/png", image.to_vec()),
                }
            } else {
                ("404 Not Found", "text/plain", b"not found".to_vec())
            };
        http.lock().unwrap().push(seen);
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
             Cache-Control: max-age=3600\r\nETag: \"standin-1\"\r\nX-Standin-Internal: secret\r\n\
             Set-Cookie: standin=1\r\n{}\r\n",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(&body);
        }
        if stream.write_all(&out).is_err() || close {
            return;
        }
        buf.drain(..head_len);
    }
}

/// Copy bytes both ways between the client and the upstream WebSocket server; each direction's
/// end is passed on as a write shutdown.
fn splice(client: TcpStream, upstream: u16, already: Vec<u8>) {
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let _ = client.set_read_timeout(None);
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    if up.write_all(&already).is_err() {
        return;
    }
    let (Ok(mut client_r), Ok(mut up_w)) = (client.try_clone(), up.try_clone()) else {
        return;
    };
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_r, &mut up_w);
        let _ = up_w.shutdown(Shutdown::Write);
    });
    let mut client_w = client;
    let _ = std::io::copy(&mut up, &mut client_w);
    let _ = client_w.shutdown(Shutdown::Write);
    let _ = t.join();
}

/// A Sendspin stand-in: echo plus the benchmark commands (see the module docs).
pub struct SendspinStandin {
    pub port: u16,
    /// The text messages received (the bench commands included), per connection in order.
    pub texts: Arc<Mutex<Vec<String>>>,
    pub connections: Arc<Mutex<Vec<String>>>,
}

impl SendspinStandin {
    pub fn start() -> SendspinStandin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let texts = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (t2, c2) = (texts.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let (texts, conns) = (t2.clone(), c2.clone());
                std::thread::spawn(move || sendspin_conn(stream, &texts, &conns));
            }
        });
        SendspinStandin {
            port,
            texts,
            connections,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/sendspin", self.port)
    }
}

#[allow(clippy::result_large_err)]
fn sendspin_conn(stream: TcpStream, texts: &Mutex<Vec<String>>, conns: &Mutex<Vec<String>>) {
    let _ = stream.set_nodelay(true);
    let mut path = String::new();
    let cb = |req: &tungstenite::handshake::server::Request,
              resp: tungstenite::handshake::server::Response| {
        path = req.uri().to_string();
        Ok(resp)
    };
    let Ok(mut ws) = tungstenite::accept_hdr(stream, cb) else {
        return;
    };
    conns.lock().unwrap().push(path);
    let mut sink_left: usize = 0;
    let mut sink_total: usize = 0;
    loop {
        let msg = match ws.read() {
            Ok(m) => m,
            Err(_) => return,
        };
        match msg {
            Message::Text(t) => {
                texts.lock().unwrap().push(t.to_string());
                let cmd: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                match cmd.get("command").and_then(Value::as_str) {
                    Some("bench/sink") => {
                        sink_left = cmd["bytes"].as_u64().unwrap_or(0) as usize;
                        sink_total = sink_left;
                        if sink_left == 0
                            && ws
                                .send(Message::text(json!({"sunk": 0}).to_string()))
                                .is_err()
                        {
                            return;
                        }
                    }
                    Some("bench/source") => {
                        let total = cmd["bytes"].as_u64().unwrap_or(0) as usize;
                        let frame =
                            (cmd["frame"].as_u64().unwrap_or(16384) as usize).clamp(1, 65535);
                        let block: Vec<u8> = (0..frame).map(|i| (i % 251) as u8).collect();
                        let mut sent = 0;
                        while sent < total {
                            let n = frame.min(total - sent);
                            if ws.write(Message::binary(block[..n].to_vec())).is_err() {
                                return;
                            }
                            sent += n;
                        }
                        if ws.flush().is_err() {
                            return;
                        }
                    }
                    _ => {
                        if ws.send(Message::Text(t)).is_err() {
                            return;
                        }
                    }
                }
            }
            Message::Binary(b) => {
                if sink_left > 0 {
                    sink_left = sink_left.saturating_sub(b.len());
                    if sink_left == 0 {
                        let done = json!({ "sunk": sink_total }).to_string();
                        if ws.send(Message::text(done)).is_err() {
                            return;
                        }
                    }
                } else if ws.send(Message::Binary(b)).is_err() {
                    return;
                }
            }
            Message::Close(_) => return,
            _ => {}
        }
    }
}

// ---- a PNG without a compression library ----------------------------------------------------

/// A `w`×`h` RGBA PNG with a pattern that does not compress to nothing (stored deflate blocks).
pub fn test_png(w: u32, h: u32) -> Vec<u8> {
    let mut raw = Vec::with_capacity(((w * 4 + 1) * h) as usize);
    for y in 0..h {
        raw.push(0); // filter: none
        for x in 0..w {
            raw.extend_from_slice(&[
                (x * 255 / w.max(1)) as u8,
                (y * 255 / h.max(1)) as u8,
                ((x ^ y).wrapping_mul(2_654_435_761) >> 24) as u8,
                255,
            ]);
        }
    }
    // zlib stream of stored blocks.
    let mut z = vec![0x78, 0x01];
    let mut blocks = raw.chunks(65_535).peekable();
    while let Some(block) = blocks.next() {
        z.push(if blocks.peek().is_none() { 1 } else { 0 });
        let len = block.len() as u16;
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(block);
    }
    z.extend_from_slice(&adler32(&raw).to_be_bytes());

    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]); // 8 bit, RGBA, deflate, no filter, no interlace
    png_chunk(&mut png, b"IHDR", &ihdr);
    png_chunk(&mut png, b"IDAT", &z);
    png_chunk(&mut png, b"IEND", &[]);
    png
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + x as u32) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}
