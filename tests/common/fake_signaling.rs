//! The signaling server's side played by hand in a test: accept the gateway's WebSocket and
//! read or send its JSON messages one at a time, with generous deadlines.

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::{Message, WebSocket};

/// The gateway's next connection to `listener`, waiting up to `wait` (never forever); reads
/// on it then time out after `wait` too.
pub fn accept(listener: &TcpListener, wait: Duration) -> WebSocket<TcpStream> {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + wait;
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "the gateway did not connect");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    tungstenite::accept(stream).unwrap()
}

/// The gateway's next JSON text (pings skipped); a close is a failure.
pub fn read_json(ws: &mut WebSocket<TcpStream>) -> Value {
    loop {
        match ws.read().expect("read from the gateway") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(_) => panic!("gateway closed the socket"),
            _ => {}
        }
    }
}

pub fn send_json(ws: &mut WebSocket<TcpStream>, v: Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}
