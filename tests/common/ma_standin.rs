//! A stand-in for Music Assistant's local WebSocket API, for integration tests.
//!
//! On connect it sends a `server_info` message first (as MA does), then echoes every message
//! back with its type (text or binary) preserved. A few test commands make it act:
//! `{"command":"standin/send","size":N,"message_id":..}` sends one text message of exactly N
//! bytes; `{"command":"standin/close"}` closes the socket; `{"command":"standin/stall",
//! "seconds":S}` stops reading for S seconds. It answers MA's `auth` command as MA does: the
//! tokens `good-admin`, `good-user` and `good-guest` log in with that role, any other gets an
//! error reply (see [`auth_reply`]).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::handshake::server::{Request, Response};
use tungstenite::{Message, WebSocket};

/// What the stand-in saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A connection, with the request path and query.
    Connected(String),
    /// A message received (before echoing).
    Text(String),
    Binary(usize),
    Closed(String),
    /// A plain HTTP request: method and target, and the request head as received.
    Http {
        method: String,
        target: String,
        head: String,
    },
}

pub struct MaStandin {
    pub port: u16,
    /// Sends `server_info` on connect (MA) or nothing (a plain echo peer, e.g. Sendspin).
    pub greets: bool,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

/// The `server_info` message the stand-in sends first.
pub fn server_info() -> Value {
    json!({
        "server_id": "standin0000",
        "server_version": "2.10.0",
        "schema_version": 28,
        "min_supported_schema_version": 24,
        "base_url": "http://127.0.0.1:8095",
        "homeassistant_addon": false,
        "onboard_done": true,
    })
}

/// MA's answer to `{"command":"auth","args":{"token":T},"message_id":M}`.
pub fn auth_reply(cmd: &Value) -> Value {
    let message_id = cmd.get("message_id").cloned().unwrap_or(Value::Null);
    let token = cmd.pointer("/args/token").and_then(Value::as_str);
    match token.and_then(|t| t.strip_prefix("good-")) {
        Some(role @ ("admin" | "user" | "guest")) => json!({
            "message_id": message_id,
            "result": {"authenticated": true, "user": {
                "user_id": format!("{role}-id"), "username": role, "role": role,
                "display_name": null, "enabled": true}},
        }),
        _ => json!({"message_id": message_id, "error_code": 20, "details": "Invalid token"}),
    }
}

/// A text message of exactly `size` bytes that is valid JSON.
pub fn sized_json(size: usize, message_id: &Value) -> String {
    let head = json!({"message_id": message_id, "result": ""}).to_string();
    let pad = size.saturating_sub(head.len());
    // {"message_id":..,"result":"<pad>"}: fill the empty string with a repeating pattern,
    // including multi-byte characters so byte-exactness is really tested.
    let mut body = String::with_capacity(pad);
    for c in "abcdefghijklmnopqrstuvwxyz0123456789é€".chars().cycle() {
        if body.len() + c.len_utf8() > pad {
            break;
        }
        body.push(c);
    }
    while body.len() < pad {
        body.push('.');
    }
    let out = format!("{}{}\"}}", &head[..head.len() - 2], body);
    debug_assert_eq!(out.len(), size.max(head.len()));
    out
}

impl MaStandin {
    /// MA: greets with `server_info`, then echoes.
    pub fn start() -> MaStandin {
        Self::start_with(true)
    }

    /// A plain echo WebSocket server (stands in for Sendspin).
    pub fn start_echo() -> MaStandin {
        Self::start_with(false)
    }

    fn start_with(greets: bool) -> MaStandin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let seen = seen2.clone();
                std::thread::spawn(move || serve(stream, seen, greets));
            }
        });
        MaStandin { port, greets, seen }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Wait until `pred` holds for what was seen.
    pub fn wait_until(&self, what: &str, pred: impl Fn(&[Seen]) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if pred(&self.seen.lock().unwrap()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("stand-in never saw {what}; saw {:?}", self.seen());
    }
}

/// The bytes of an image of `size` bytes (a fixed pattern, so tests can compare).
pub fn image(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// Plain HTTP on the WebSocket's port, like MA's image proxy:
/// `/imageproxy?size=N` answers N bytes (Content-Length), `/chunked?size=N` the same with
/// chunked encoding, `/slow?ms=M&size=N` waits M ms first, `/redirect` answers 302.
fn serve_http(mut stream: TcpStream, head: String, seen: &Mutex<Vec<Seen>>) {
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or_default().to_string();
    let target = words.next().unwrap_or_default().to_string();
    seen.lock().unwrap().push(Seen::Http {
        method: method.clone(),
        target: target.clone(),
        head: head.clone(),
    });
    let param = |name: &str| -> Option<u64> {
        target
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    let size = param("size").unwrap_or(1024) as usize;
    let path = target.split('?').next().unwrap_or_default();
    if let Some(ms) = param("ms") {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let body = image(size);
    let send_body = method != "HEAD";
    let _ = match path {
        "/redirect" => stream.write_all(
            b"HTTP/1.1 302 Found\r\nLocation: http://evil.example/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
        "/chunked" => {
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
            if send_body {
                for part in body.chunks(7000) {
                    out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                    out.extend_from_slice(part);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
            stream.write_all(&out)
        }
        "/imageproxy" | "/slow" | "/preview" | "/info" => {
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nCache-Control: max-age=60\r\nSet-Cookie: secret=1\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            if send_body {
                out.extend_from_slice(&body);
            }
            stream.write_all(&out)
        }
        _ => stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    };
    let _ = stream.flush();
}

/// Look at the request head without consuming it; `None` when it is a WebSocket upgrade.
fn http_head(stream: &TcpStream) -> Option<String> {
    let mut buf = [0u8; 8192];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = stream.peek(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end + 4].to_string();
            return (!head.to_ascii_lowercase().contains("upgrade: websocket")).then_some(head);
        }
        if n == buf.len() || std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[allow(clippy::result_large_err)] // the handshake callback type is tungstenite's
fn serve(mut stream: TcpStream, seen: Arc<Mutex<Vec<Seen>>>, greets: bool) {
    if let Some(head) = http_head(&stream) {
        let mut consume = vec![0u8; head.len()];
        if stream.read_exact(&mut consume).is_ok() {
            serve_http(stream, head, &seen);
        }
        return;
    }
    let mut path = String::new();
    let callback = |req: &Request, resp: Response| {
        path = req.uri().to_string();
        Ok(resp)
    };
    let Ok(mut ws) = tungstenite::accept_hdr(stream, callback) else {
        return;
    };
    seen.lock().unwrap().push(Seen::Connected(path.clone()));
    if greets {
        let _ = ws.send(Message::text(server_info().to_string()));
    }
    let why = echo(&mut ws, &seen);
    seen.lock().unwrap().push(Seen::Closed(why));
}

fn echo(ws: &mut WebSocket<TcpStream>, seen: &Mutex<Vec<Seen>>) -> String {
    loop {
        let msg = match ws.read() {
            Ok(m) => m,
            Err(e) => return e.to_string(),
        };
        match msg {
            Message::Text(t) => {
                seen.lock().unwrap().push(Seen::Text(t.to_string()));
                let cmd: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                match cmd.get("command").and_then(Value::as_str) {
                    Some("standin/send") => {
                        let size = cmd["size"].as_u64().unwrap_or(0) as usize;
                        let text = sized_json(size, &cmd["message_id"]);
                        if ws.send(Message::text(text)).is_err() {
                            return "send failed".into();
                        }
                    }
                    Some("standin/stall") => {
                        // Stop reading (and answering) for a while, like an overloaded MA.
                        let secs = cmd["seconds"].as_f64().unwrap_or(5.0);
                        std::thread::sleep(Duration::from_secs_f64(secs));
                    }
                    Some("auth") => {
                        let reply = auth_reply(&cmd).to_string();
                        if ws.send(Message::text(reply)).is_err() {
                            return "send failed".into();
                        }
                    }
                    Some("standin/close") => {
                        let _ = ws.close(None);
                        let _ = ws.flush();
                        return "closed by command".into();
                    }
                    _ => {
                        if ws.send(Message::Text(t)).is_err() {
                            return "send failed".into();
                        }
                    }
                }
            }
            Message::Binary(b) => {
                seen.lock().unwrap().push(Seen::Binary(b.len()));
                if ws.send(Message::Binary(b)).is_err() {
                    return "send failed".into();
                }
            }
            Message::Close(_) => return "client closed".into(),
            _ => {}
        }
    }
}
