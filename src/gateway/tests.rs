//! The gateway core against our own web-app client, both sans-IO, wired in memory with a
//! simulated clock: no sockets, no threads.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::Message;

use super::bridge::BridgeId;
use super::{CoreConfig, Gateway, Output};
use crate::config::WsUrl;
use crate::identity::Identity;
use crate::machine::{Machine, Next};
use crate::remote_client::{ClientEvent, ClientOutput, RemoteClient};

const SID: &str = "AbCdEfGh12345678";

struct Sim {
    now: Instant,
    gw: Gateway,
    client: RemoteClient,
    gw_addr: SocketAddr,
    client_addr: SocketAddr,
    /// Local WebSockets the gateway asked for: url, and what it sent on them.
    ws: HashMap<BridgeId, (String, Vec<Message>)>,
    closed_ws: Vec<BridgeId>,
    resumed: Vec<BridgeId>,
    session_ready: bool,
    events: Vec<ClientEvent>,
    to_gw: VecDeque<(SocketAddr, Vec<u8>)>,
    to_client: VecDeque<(SocketAddr, Vec<u8>)>,
}

fn url(s: &str) -> WsUrl {
    WsUrl::parse(s).unwrap()
}

impl Sim {
    fn new(max_sessions: usize) -> Sim {
        let identity = Identity::generate().unwrap();
        let now = Instant::now();
        let mut gw = Gateway::new(
            now,
            CoreConfig::new(
                url("ws://127.0.0.1:8095/ws"),
                url("ws://127.0.0.1:8927/sendspin"),
                max_sessions,
            ),
            identity.dtls_cert(),
        );
        let gw_addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let client_addr: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        gw.handle_host_candidate(now, gw_addr);
        Sim {
            now,
            gw,
            client: RemoteClient::new(now, &identity.remote_id, client_addr),
            gw_addr,
            client_addr,
            ws: HashMap::new(),
            closed_ws: Vec::new(),
            resumed: Vec::new(),
            session_ready: false,
            events: Vec::new(),
            to_gw: VecDeque::new(),
            to_client: VecDeque::new(),
        }
    }

    /// Move every output to its destination until both sides are quiet.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Next::Output(o) = self.gw.poll_output() {
                moved = true;
                match o {
                    Output::SessionReady { session_id } => {
                        self.session_ready = true;
                        let msg = json!({"type": "connected", "remoteId": "x", "sessionId": session_id, "iceServers": []});
                        self.client
                            .handle_signaling_text(self.now, &msg.to_string());
                    }
                    Output::Answer { sdp, .. } => {
                        let msg = json!({"type": "answer", "data": {"type": "answer", "sdp": sdp}});
                        self.client
                            .handle_signaling_text(self.now, &msg.to_string());
                    }
                    Output::Candidate { candidate, .. } => {
                        assert!(
                            candidate["sdpMLineIndex"].is_u64() && candidate["sdpMid"].is_string()
                        );
                        let msg = json!({"type": "ice-candidate", "data": candidate});
                        self.client
                            .handle_signaling_text(self.now, &msg.to_string());
                    }
                    Output::Transmit(t) => self.to_client.push_back((self.gw_addr, t.contents)),
                    Output::OpenWs { bridge, url } => {
                        self.ws.insert(bridge, (url.to_url(), Vec::new()));
                    }
                    Output::WsSend { bridge, msg } => self.ws.get_mut(&bridge).unwrap().1.push(msg),
                    Output::CloseWs { bridge } => self.closed_ws.push(bridge),
                    Output::ResumeWsRead { bridge } => self.resumed.push(bridge),
                    Output::SendspinPlayer { .. }
                    | Output::Lookup { .. }
                    | Output::FetchConnect { .. }
                    | Output::FetchWrite { .. }
                    | Output::FetchClose { .. } => {}
                }
            }
            while let Next::Output(o) = self.client.poll_output() {
                moved = true;
                match o {
                    ClientOutput::Signal(text) => {
                        let v: Value = serde_json::from_str(&text).unwrap();
                        match v["type"].as_str().unwrap() {
                            "connect-request" => self.gw.handle_client_connected(self.now, SID),
                            "offer" => self.gw.handle_offer(
                                self.now,
                                SID,
                                v["data"]["sdp"].as_str().unwrap(),
                            ),
                            "ice-candidate" => {
                                self.gw.handle_remote_candidate(self.now, SID, &v["data"])
                            }
                            other => panic!("unexpected {other}"),
                        }
                    }
                    ClientOutput::Transmit { contents, .. } => {
                        self.to_gw.push_back((self.client_addr, contents))
                    }
                    ClientOutput::Event(e) => self.events.push(e),
                }
            }
            while let Some((src, bytes)) = self.to_gw.pop_front() {
                moved = true;
                self.gw.handle_datagram(self.now, src, &bytes);
            }
            while let Some((src, bytes)) = self.to_client.pop_front() {
                moved = true;
                self.client.handle_datagram(self.now, src, &bytes);
            }
            if !moved {
                return;
            }
        }
    }

    /// Pump, then advance the clock to the next timer, `n` times.
    fn run(&mut self, n: usize) {
        for _ in 0..n {
            self.pump();
            let client_timeout = match self.client.poll_output() {
                Next::Timeout(t) => t,
                Next::Output(o) => panic!("pumped, yet the client has {o:?}"),
            };
            let Next::Timeout(gw_next) = self.gw.poll_output() else {
                panic!("pumped, yet the gateway has output");
            };
            let next = gw_next.into_iter().chain(client_timeout).min().unwrap();
            self.now = next.max(self.now + Duration::from_millis(1));
            self.gw.handle_timeout(self.now);
            self.client.handle_timeout(self.now);
        }
        self.pump();
    }

    fn connect(&mut self) -> BridgeId {
        self.client.handle_signaling_open(self.now);
        for _ in 0..200 {
            self.run(1);
            if self.client.is_open() && !self.ws.is_empty() {
                return *self.ws.keys().next().unwrap();
            }
        }
        panic!("never connected; events {:?}", self.events);
    }

    fn texts(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        self.events.retain(|e| match e {
            ClientEvent::Text(t) => {
                out.push(t.clone());
                false
            }
            _ => true,
        });
        out
    }
}

#[test]
fn session_ready_answer_trickle_and_the_api_bridge() {
    let mut sim = Sim::new(4);
    let bridge = sim.connect();
    assert!(sim.session_ready);
    let (url, _) = &sim.ws[&bridge];
    assert_eq!(
        url,
        &format!("ws://127.0.0.1:8095/ws?webrtc_session_id={SID}")
    );

    // The client talks before MA's socket is open: nothing is lost or reordered.
    for i in 0..3 {
        assert!(sim
            .client
            .handle_send_text(sim.now, &format!("early {i}"))
            .unwrap());
    }
    sim.run(3);
    assert!(sim.ws[&bridge].1.is_empty(), "held until the socket opens");
    sim.gw.handle_ws_opened(sim.now, bridge);
    sim.pump();
    let sent: Vec<String> = sim.ws[&bridge]
        .1
        .iter()
        .map(|m| m.to_text().unwrap().to_string())
        .collect();
    assert_eq!(sent, ["early 0", "early 1", "early 2"]);

    // MA -> client: small whole, 1 MiB chunked and reassembled.
    sim.gw
        .handle_ws_message(sim.now, bridge, Message::text("{\"server_info\":1}"));
    let big: String = (0..1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    sim.gw
        .handle_ws_message(sim.now, bridge, Message::text(big.clone()));
    // The driver reads the next message only when the core allows it (backpressure).
    for _ in 0..500 {
        if sim.gw.ws_read_allowed(bridge) {
            break;
        }
        sim.run(1);
    }
    sim.gw
        .handle_ws_message(sim.now, bridge, Message::text("after"));
    sim.run(50);
    assert_eq!(
        sim.texts(),
        vec!["{\"server_info\":1}".to_string(), big, "after".into()]
    );
}

#[test]
fn backpressure_pauses_the_local_socket_and_resumes_it() {
    let mut sim = Sim::new(4);
    let bridge = sim.connect();
    sim.gw.handle_ws_opened(sim.now, bridge);
    // Flood from MA without letting the client read: the bridge must pause reading.
    let chunk = "x".repeat(200_000);
    let mut n = 0;
    while sim.gw.ws_read_allowed(bridge) {
        sim.gw
            .handle_ws_message(sim.now, bridge, Message::text(chunk.clone()));
        n += 1;
        assert!(n < 1000, "never paused");
    }
    // Let the client drain: the gateway resumes the socket, and nothing was lost.
    sim.run(400);
    assert!(sim.resumed.contains(&bridge), "resumed after draining");
    assert!(sim.gw.ws_read_allowed(bridge));
    assert_eq!(sim.texts().len(), n);
}

#[test]
fn the_session_goes_with_its_ma_socket() {
    let mut sim = Sim::new(4);
    let bridge = sim.connect();
    sim.gw.handle_ws_opened(sim.now, bridge);
    sim.gw.handle_ws_closed(sim.now, bridge, "MA went away");
    sim.run(5);
    assert_eq!(sim.gw.session_count(), 0);
    assert!(
        sim.events
            .iter()
            .any(|e| matches!(e, ClientEvent::Failed(w) if w.contains("closed the"))),
        "{:?}",
        sim.events
    );
}

#[test]
fn client_disconnected_frees_everything() {
    let mut sim = Sim::new(4);
    let bridge = sim.connect();
    sim.gw.handle_client_disconnected(sim.now, SID);
    sim.run(5);
    assert_eq!(sim.gw.session_count(), 0);
    assert!(
        sim.gw.sessions.is_empty(),
        "nothing left after the channel resets"
    );
    assert!(sim.closed_ws.contains(&bridge));
    // Datagrams from the old client are dropped, not routed anywhere.
    sim.gw
        .handle_datagram(sim.now, sim.client_addr, b"\x17\xfe\xfd junk");
    assert!(sim.gw.poll_output().output().is_none());
}

#[test]
fn session_limit_and_offer_deadline() {
    let mut sim = Sim::new(1);
    sim.gw.handle_client_connected(sim.now, "one");
    sim.gw.handle_client_connected(sim.now, "two");
    let ready: Vec<String> = std::iter::from_fn(|| sim.gw.poll_output().output())
        .filter_map(|o| match o {
            Output::SessionReady { session_id } => Some(session_id),
            _ => None,
        })
        .collect();
    assert_eq!(ready, ["one"], "the second is refused at MA_MAX_SESSIONS");
    // No offer within 30 s: the session is closed.
    let later = sim.now + Duration::from_secs(31);
    sim.gw.handle_timeout(later);
    assert_eq!(sim.gw.session_count(), 0);
    // Unknown sessions are ignored.
    sim.gw.handle_offer(later, "nobody", "v=0");
    sim.gw
        .handle_remote_candidate(later, "nobody", &json!({"candidate": ""}));
    sim.gw.handle_client_disconnected(sim.now, "nobody");
}

#[test]
fn shutdown_closes_every_session_at_once() {
    let mut sim = Sim::new(4);
    sim.connect();
    sim.gw.handle_shutdown(sim.now, "test shutdown");
    sim.pump();
    assert_eq!(sim.gw.session_count(), 0);
    assert!(
        sim.events
            .iter()
            .any(|e| matches!(e, ClientEvent::Failed(w) if w.contains("closed the connection"))),
        "{:?}",
        sim.events
    );
}
