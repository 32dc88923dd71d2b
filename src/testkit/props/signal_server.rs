//! The signaling server's relay (`signaling::server::SignalServer`;
//! docs/protocol.md#relay-rules) fed operations over several sockets and IPs. Written
//! against the current API and kept apart so it is easy to adapt as the server changes.
//!
//! Input: operations until the bytes run out, on 6 connection ids from 3 IPs: a socket opens
//! or closes, sends a message (`register-server` or `connect-request` for one of two Remote
//! IDs, a relay message for a session id it saw or an arbitrary one, arbitrary text), sends a
//! binary frame; time passes (then the timeout is handled); an IP checks a Remote ID.
//!
//! Properties:
//! - nothing is sent to a connection that is not open, or after the server closed it;
//! - no cross-gateway delivery: a message with a `sessionId` reaches a gateway only for a
//!   session a client opened to that gateway's Remote ID, and reaches a client only for its
//!   own session;
//! - bounded: registered gateways and sessions never outnumber the open connections, and a
//!   gateway never holds more pending clients than its cap.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{chunk_bytes, Input};
use crate::machine::{Machine, Next};
use crate::signaling::server::{ConnId, Output, ServerConfig, SignalServer};

const IDS: [&str; 2] = ["QCPJJTJMI3IDBNURU6XJJENRYU", "ABCDEFGHIJKL"];
const CONNS: u8 = 6;
const MAX_PENDING: usize = 2;

#[derive(Default)]
struct Model {
    open: HashMap<ConnId, IpAddr>,
    /// Gateways: connection → Remote ID (from `registered`).
    gateways: HashMap<ConnId, String>,
    /// Clients: connection → (session id, Remote ID) (from `connected`).
    clients: HashMap<ConnId, (String, String)>,
    /// Sessions ever opened: session id → the Remote ID the client asked for (from
    /// `connected`, learnt before the step's other outputs are checked).
    owners: HashMap<String, String>,
    /// Session ids seen, in order.
    sessions: Vec<String>,
}

impl Model {
    fn forget(&mut self, conn: ConnId) {
        self.open.remove(&conn);
        self.gateways.remove(&conn);
        self.clients.remove(&conn);
    }

    /// Learns the session a `connect-request` for `requested` opened: the `client-connected`
    /// the step sent names it (the gateway hears of it before its client is `connected`).
    fn learn(&mut self, requested: Option<&str>, outs: &[Output]) {
        let Some(requested) = requested else { return };
        for out in outs {
            let Output::Send { text, .. } = out else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if v["type"] == "client-connected" {
                if let Some(sid) = v["sessionId"].as_str() {
                    self.owners.insert(sid.to_string(), requested.to_string());
                }
            }
        }
    }

    fn output(&mut self, out: Output) {
        match out {
            Output::Close { conn, .. } => {
                assert!(self.open.contains_key(&conn), "Close for a closed {conn}");
                self.forget(conn);
            }
            Output::Send { conn, text, .. } => {
                assert!(self.open.contains_key(&conn), "Send to a closed {conn}");
                let v: Value = serde_json::from_str(&text).expect("the server sent non-JSON");
                let kind = v["type"].as_str().unwrap_or_default();
                let sid = v.get("sessionId").and_then(Value::as_str);
                match kind {
                    "registered" => {
                        let id = v["remoteId"].as_str().unwrap_or_default().to_string();
                        self.clients.remove(&conn);
                        self.gateways.insert(conn, id);
                        return;
                    }
                    "connected" => {
                        let sid = sid.expect("connected without a sessionId").to_string();
                        let id = v["remoteId"].as_str().unwrap_or_default().to_string();
                        self.gateways.remove(&conn);
                        self.sessions.push(sid.clone());
                        self.clients.insert(conn, (sid, id));
                        return;
                    }
                    _ => {}
                }
                let Some(sid) = sid else { return };
                if let Some(gw_id) = self.gateways.get(&conn) {
                    let owner = self
                        .clients
                        .values()
                        .find(|(s, _)| s == sid)
                        .map(|(_, id)| id.clone());
                    let owner = owner.or_else(|| self.owners.get(sid).cloned());
                    let Some(owner) = owner else {
                        panic!("{kind} of an unknown session {sid} sent to gateway {gw_id}")
                    };
                    assert!(
                        owner.eq_ignore_ascii_case(gw_id),
                        "{kind} of a session of {owner} sent to gateway {gw_id}"
                    );
                } else if let Some((own, _)) = self.clients.get(&conn) {
                    assert_eq!(sid, own, "{kind} of another session sent to a client");
                }
            }
        }
    }
}

fn message(input: &mut Input, model: &Model) -> String {
    let remote_id = match input.u8() % 3 {
        n @ 0..=1 => IDS[usize::from(n)].to_string(),
        _ => input.text(70),
    };
    let sid = match model.sessions.len() {
        0 => input.text(20),
        n => model.sessions[usize::from(input.u8()) % n].clone(),
    };
    match input.u8() % 9 {
        0 => json!({"type": "register-server", "remoteId": remote_id,
                    "iceServers": [{"urls": "stun:stun.l.google.com:19302"}]}),
        1 => json!({"type": "connect-request", "remoteId": remote_id}),
        2 => json!({"type": "session-ready", "sessionId": sid, "iceServers": []}),
        3 => json!({"type": "offer", "sessionId": sid, "remoteId": remote_id,
                    "data": {"type": "offer", "sdp": "v=0"}}),
        4 => json!({"type": "answer", "sessionId": sid, "data": {"type": "answer", "sdp": "v=0"}}),
        5 => json!({"type": "ice-candidate", "sessionId": sid,
                    "data": {"candidate": "candidate:1 1 udp 1 192.0.2.1 9 typ host"}}),
        6 => json!({"type": "ping"}),
        7 => json!({"type": "offer", "remoteId": remote_id, "data": {"sdp": "v=0"}}),
        _ => Value::String(input.text(200)),
    }
    .to_string()
}

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let mut now = Instant::now();
    let config = ServerConfig {
        max_sessions_per_gateway: 4,
        max_pending_per_gateway: MAX_PENDING,
        session_ready_timeout: Duration::from_secs(10),
        ..ServerConfig::default()
    };
    let mut server = SignalServer::new(now, config);
    let mut m = Model::default();
    while !input.is_empty() {
        let op = input.u8();
        let conn = ConnId::from(input.u8() % CONNS);
        let ip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, op >> 6));
        let mut requested = None;
        match op % 8 {
            0 => {
                if let std::collections::hash_map::Entry::Vacant(e) = m.open.entry(conn) {
                    e.insert(ip);
                    server.handle_open(now, conn, ip);
                }
            }
            1 => {
                if m.open.contains_key(&conn) {
                    m.forget(conn);
                    server.handle_closed(now, conn);
                }
            }
            2..=4 => {
                if m.open.contains_key(&conn) {
                    let text = if op % 8 == 4 {
                        input.text(300)
                    } else {
                        message(&mut input, &m)
                    };
                    requested = serde_json::from_str::<Value>(&text)
                        .ok()
                        .filter(|v| v["type"] == "connect-request")
                        .and_then(|v| v["remoteId"].as_str().map(|id| id.trim().to_string()));
                    server.handle_text(now, conn, &text);
                }
            }
            5 => {
                if m.open.contains_key(&conn) {
                    server.handle_binary(now, conn);
                }
            }
            6 => {
                now += Duration::from_millis(u64::from(input.u16()) * 20);
                server.handle_timeout(now);
            }
            _ => {
                let _ = server.handle_check(now, ip, &input.text(70));
            }
        }
        let mut outs = Vec::new();
        while let Next::Output(out) = server.poll_output() {
            outs.push(out);
        }
        m.learn(requested.as_deref(), &outs);
        for out in outs {
            m.output(out);
        }
        for c in 0..ConnId::from(CONNS) {
            assert_eq!(
                server.is_open(c),
                m.open.contains_key(&c),
                "open state of {c}"
            );
        }
        let h = server.health();
        assert!(
            h.servers <= m.open.len(),
            "{h:?} with {} open",
            m.open.len()
        );
        assert!(h.clients + h.pending_clients <= m.open.len(), "{h:?}");
        assert!(h.pending_clients <= MAX_PENDING * h.servers.max(1), "{h:?}");
    }
}

/// A gateway registers, a client connects, session-ready, offer, answer and candidates go
/// both ways, the client leaves (the relay of docs/protocol.md#relay-rules).
pub fn seeds() -> Vec<Vec<u8>> {
    let mut s = vec![0, 0, 0, 1]; // open 0 and 1
    s.extend_from_slice(&[2, 0, 0, 0]); // 0: register-server IDS[0]
    s.extend_from_slice(&[2, 1, 0, 1]); // 1: connect-request IDS[0]
    s.extend_from_slice(&[2, 0, 0, 0, 2]); // 0: session-ready
    s.extend_from_slice(&[2, 1, 0, 0, 3]); // 1: offer
    s.extend_from_slice(&[2, 0, 0, 0, 4]); // 0: answer
    s.extend_from_slice(&[2, 0, 0, 0, 5]); // 0: ice-candidate
    s.extend_from_slice(&[0, 2, 2, 2, 0, 0, 0]); // 2: a second gateway, same ID (replaced)
    s.extend_from_slice(&[4, 3]);
    chunk_bytes(&mut s, b"{\"type\":\"connect-request\"}");
    s.extend_from_slice(&[6, 0, 0xff, 0xff, 1, 1, 7, 0]);
    chunk_bytes(&mut s, IDS[0].as_bytes());
    vec![s]
}
