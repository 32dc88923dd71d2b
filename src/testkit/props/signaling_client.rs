//! The gateway's signaling client (`signaling::client::SignalingClient`;
//! docs/protocol.md#gateway-messages) fed message sequences, with a driver that behaves
//! (opens only a connection it was asked for, reports the close of one it has).
//!
//! Input: operations until the bytes run out: the socket opens, closes (with a close code),
//! a non-text frame arrives, a text arrives (arbitrary, or a server message with a session id
//! from a small pool or arbitrary), time passes (then the timeout is handled), the core
//! replies `session-ready`, sends an answer or a candidate, or changes the ICE servers.
//!
//! Properties:
//! - `Connect` only when the driver has no connection; `Send` and `Ping` only on an open one;
//!   every text sent is a message the server parses;
//! - `Registered` only on an open connection, `Lost` only after one was open;
//! - `session-ready` is accepted only for a session announced by `client-connected` on the
//!   current connection, not yet answered or disconnected, within its window;
//! - after a timeout is handled, the next deadline is in the future (no busy loop).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{chunk_bytes, Input};
use crate::backoff::{Backoff, Jitter};
use crate::machine::{Machine, Next};
use crate::signaling::client::{
    ClientConfig, Event, Output, ReadyError, SignalingClient, SESSION_READY_WINDOW,
};
use crate::signaling::protocol::ToServer;

const REMOTE_ID: &str = "QCPJJTJMI3IDBNURU6XJJENRYU";
const SESSIONS: [&str; 4] = ["AbCdEfGhIjKlMnOp", "s-1", "s_2", "x"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    None,
    Connecting,
    Open,
}

struct Harness {
    client: SignalingClient,
    now: Instant,
    conn: Conn,
    /// Sessions announced on this connection and not answered or gone, with their deadline.
    pending: HashMap<String, Instant>,
    registered: bool,
}

impl Harness {
    fn drain(&mut self) -> Option<Instant> {
        for _ in 0..10_000 {
            match self.client.poll_output() {
                Next::Timeout(t) => return t,
                Next::Output(out) => self.output(out),
            }
        }
        panic!("more than 10 000 outputs for one input");
    }

    fn output(&mut self, out: Output) {
        match out {
            Output::Connect => {
                assert_eq!(self.conn, Conn::None, "Connect with a connection");
                self.conn = Conn::Connecting;
            }
            Output::Send(text) => {
                assert_eq!(self.conn, Conn::Open, "Send without an open connection");
                if let Err(e) = ToServer::parse(&text) {
                    panic!("sent {text:?}, which the server refuses: {e:?}");
                }
            }
            Output::Ping => assert_eq!(self.conn, Conn::Open, "Ping without a connection"),
            Output::Disconnect => self.gone(),
            Output::Event(e) => match e {
                Event::Registered { .. } => {
                    assert_eq!(self.conn, Conn::Open, "registered without a connection");
                    self.registered = true;
                }
                Event::Lost => {}
                Event::ClientConnected { session_id } => {
                    assert_eq!(self.conn, Conn::Open);
                    self.pending
                        .insert(session_id.to_string(), self.now + SESSION_READY_WINDOW);
                }
                Event::ClientDisconnected { session_id } => {
                    self.pending.remove(session_id.as_str());
                }
                Event::Offer { .. } | Event::RemoteCandidate { .. } => {
                    assert_eq!(self.conn, Conn::Open)
                }
            },
        }
    }

    fn gone(&mut self) {
        self.conn = Conn::None;
        self.pending.clear();
        self.registered = false;
    }
}

fn server_message(input: &mut Input) -> String {
    let sid = match input.u8() % 6 {
        n @ 0..=3 => Value::String(SESSIONS[usize::from(n)].into()),
        4 => Value::String(input.text(80)),
        _ => Value::Null,
    };
    match input.u8() % 10 {
        0 => json!({"type": "registered", "remoteId": REMOTE_ID}),
        1 => json!({"type": "registered", "remoteId": input.text(40)}),
        2 => json!({"type": "error", "error": input.text(40)}),
        3 => json!({"type": "ping"}),
        4 => json!({"type": "client-connected", "sessionId": sid}),
        5 => json!({"type": "offer", "sessionId": sid, "remoteId": REMOTE_ID,
                    "data": {"type": "offer", "sdp": input.text(200)}}),
        6 => json!({"type": "ice-candidate", "sessionId": sid,
                    "data": {"candidate": input.text(100), "sdpMid": "0", "sdpMLineIndex": 0}}),
        7 => json!({"type": "client-disconnected", "sessionId": sid}),
        8 => json!({"type": "connected", "sessionId": sid, "remoteId": REMOTE_ID}),
        _ => json!({"type": input.text(20), "sessionId": sid}),
    }
    .to_string()
}

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let start = Instant::now();
    let config = ClientConfig {
        remote_id: REMOTE_ID.into(),
        ping_interval: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(20),
    };
    let backoff = Backoff::new(
        Duration::from_secs(1),
        Duration::from_secs(300),
        Jitter::seeded(7),
    );
    let ice = json!([{"urls": "stun:stun.l.google.com:19302"}]);
    let mut h = Harness {
        client: SignalingClient::new(start, config, ice, backoff),
        now: start,
        conn: Conn::None,
        pending: HashMap::new(),
        registered: false,
    };
    h.drain();
    while !input.is_empty() {
        let now = h.now;
        match input.u8() % 10 {
            0 if h.conn == Conn::Connecting => {
                h.conn = Conn::Open;
                h.client.handle_open(now);
            }
            1 if h.conn != Conn::None => {
                let code = match input.u8() % 5 {
                    0 => None,
                    1 => Some(1000),
                    2 => Some(4000),
                    3 => Some(1006),
                    _ => Some(input.u16()),
                };
                let was_open = h.conn == Conn::Open;
                h.gone();
                h.client.handle_closed(now, code, "");
                let mut lost = false;
                while let Next::Output(o) = h.client.poll_output() {
                    lost |= o == Output::Event(Event::Lost);
                    h.output(o);
                }
                assert_eq!(
                    lost, was_open,
                    "Lost must follow exactly an open connection"
                );
            }
            2 => h.client.handle_frame(now),
            3 => h.client.handle_text(now, &input.text(1000)),
            4 => h.client.handle_text(now, &server_message(&mut input)),
            5 => {
                h.now += Duration::from_millis(u64::from(input.u16()) * 10);
                h.client.handle_timeout(h.now);
                let next = h.drain().expect("the client always has a deadline");
                assert!(next > h.now, "deadline {next:?} not after {:?}", h.now);
            }
            6 => {
                let sid = SESSIONS[usize::from(input.u8() % 4)];
                let expected = h.pending.get(sid).copied();
                let result = h.client.handle_session_ready(now, sid);
                match (&result, expected) {
                    (Ok(()), Some(deadline)) => assert!(now < deadline && h.registered),
                    (Ok(()), None) => panic!("session-ready accepted for unknown {sid}"),
                    (Err(ReadyError::NotConnected), _) => assert!(!h.registered),
                    (Err(ReadyError::TooLate), Some(deadline)) => assert!(now >= deadline),
                    (Err(ReadyError::UnknownSession), None) => {}
                    // Forgotten by the client once its window closed.
                    (Err(ReadyError::UnknownSession), Some(deadline)) if now >= deadline => {}
                    (Err(e), _) => panic!("{e:?} for {sid}, expected {expected:?}"),
                }
                if result.is_ok() || result == Err(ReadyError::TooLate) {
                    h.pending.remove(sid);
                }
            }
            7 => {
                let sid = SESSIONS[usize::from(input.u8() % 4)];
                let sent = h.client.handle_answer(now, sid, &input.text(300));
                assert_eq!(sent, h.conn == Conn::Open);
            }
            8 => {
                let sid = SESSIONS[usize::from(input.u8() % 4)];
                let c = json!({"candidate": input.text(100), "sdpMid": "0", "sdpMLineIndex": 0});
                let sent = h.client.handle_candidate(now, sid, c);
                assert_eq!(sent, h.conn == Conn::Open);
            }
            9 => h
                .client
                .handle_ice_servers(now, json!([{"urls": input.text(60)}])),
            _ => {}
        }
        h.drain();
    }
}

/// A connection and registration, a session announced and answered, an offer and a
/// candidate as the server relays them (texts from docs/protocol.md), time passing, a ping,
/// a replacement (close 4000) and the reconnection.
pub fn seeds() -> Vec<Vec<u8>> {
    let offer = br#"{"type":"offer","sessionId":"AbCdEfGhIjKlMnOp","remoteId":"QCPJJTJMI3IDBNURU6XJJENRYU","data":{"type":"offer","sdp":"v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=setup:actpass\r\na=mid:0\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n"}}"#;
    let candidate = br#"{"type":"ice-candidate","sessionId":"AbCdEfGhIjKlMnOp","data":{"candidate":"candidate:1 1 udp 2122260223 192.168.1.20 54321 typ host generation 0 ufrag abcd","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"abcd"}}"#;
    let mut s = vec![5, 0, 0, 0]; // time 0: Connect; open
    s.extend_from_slice(&[4, 0, 0]); // registered
    s.extend_from_slice(&[4, 0, 4, 6, 0]); // client-connected, session-ready
    s.push(3);
    chunk_bytes(&mut s, offer);
    s.push(3);
    chunk_bytes(&mut s, candidate);
    s.extend_from_slice(&[7, 0, 0, 3, b'v', b'=', b'0']); // answer
    s.extend_from_slice(&[4, 0, 3, 5, 0x0b, 0xb8]); // ping, 30 s pass
    s.extend_from_slice(&[1, 2, 5, 0x27, 0x10, 0]); // close 4000, time passes, open again
    s.extend_from_slice(&[4, 1, 7, 6, 1]); // client-disconnected, late session-ready
    vec![s]
}
