//! [`GatewayEnd`]: the gateway core with in-memory local WebSockets.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use serde_json::Value;
use tungstenite::Message;

use super::turn::TurnStandin;
use super::{tail, End, Wire};
use crate::config::WsUrl;
use crate::gateway::bridge::BridgeId;
use crate::gateway::{CoreConfig, Gateway, Output};
use crate::identity::Identity;
use crate::machine::{Machine, Next};
use crate::signaling::protocol::{FromServer, Relay, SessionId, ToServer};

/// How the in-memory MA behaves.
#[derive(Debug, Clone, Default)]
pub struct Ma {
    /// Accept every local WebSocket as soon as the gateway opens it (else the test calls
    /// [`GatewayEnd::open_ws`]).
    pub open_at_once: bool,
    /// Sent on every socket when it opens (MA speaks first: its server info).
    pub first_message: Option<Message>,
    /// Send back every message received instead of recording it in [`LocalWs::sent`].
    pub echo: bool,
}

impl Ma {
    /// Accepts at once, greets with `first_message`, echoes everything: the benchmarks' MA.
    pub fn echo(first_message: &str) -> Ma {
        Ma {
            open_at_once: true,
            first_message: Some(Message::text(first_message)),
            echo: true,
        }
    }
}

/// One local WebSocket the gateway opened (a bridge to MA, Sendspin, …).
#[derive(Debug, Default)]
pub struct LocalWs {
    /// The URL it asked for.
    pub url: String,
    /// MA accepted it.
    pub open: bool,
    /// The gateway closed it.
    pub closed: bool,
    /// What the gateway sent on it (unless MA echoes).
    pub sent: Vec<Message>,
    /// What MA has for the gateway: read while the core allows it (backpressure).
    pub inbox: VecDeque<Message>,
    /// Times the core allowed reading again after a pause.
    pub resumed: u32,
}

impl LocalWs {
    /// The texts the gateway sent.
    pub fn sent_texts(&self) -> Vec<String> {
        self.sent
            .iter()
            .map(|m| m.to_text().expect("a text message").to_string())
            .collect()
    }
}

/// The gateway core ([`Gateway`]) on one end of the wire, with one UDP address. It plays the
/// signaling server's part towards the clients: `connect-request`, `offer` and
/// `ice-candidate` from a client reach the core, and its session-ready, answer and
/// candidates go back as `connected`, `answer` and `ice-candidate`. Local WebSockets live in
/// memory ([`GatewayEnd::ws`]); MA is played as [`GatewayEnd::ma`] says.
pub struct GatewayEnd {
    pub gw: Gateway,
    /// Its UDP socket's address (a host candidate).
    pub addr: SocketAddr,
    pub remote_id: String,
    pub ma: Ma,
    /// Local WebSockets by bridge, in the order they were opened.
    pub ws: BTreeMap<BridgeId, LocalWs>,
    /// Sessions the core said ready, in order.
    pub ready: Vec<String>,
    /// Candidates the core trickled: (session, candidate object).
    pub candidates: Vec<(String, Value)>,
    /// Outputs not played here (Sendspin player, DNS lookups, proxy fetches), in order.
    pub other: Vec<Output>,
    /// A TURN server next to the gateway: lookups of its IP are answered with it, datagrams
    /// to it and to its relay address are played here ([`TurnStandin`]).
    pub turn: Option<TurnStandin>,
    /// What the TURN stand-in sends to peers, waiting for the wire.
    relayed_out: VecDeque<Wire>,
}

impl GatewayEnd {
    /// A core with MA at `ws://127.0.0.1:8095/ws` and Sendspin at
    /// `ws://127.0.0.1:8927/sendspin`, defaults otherwise.
    pub fn config(max_sessions: usize) -> CoreConfig {
        let url = |s| WsUrl::parse(s).expect("a valid URL");
        CoreConfig::new(
            url("ws://127.0.0.1:8095/ws"),
            url("ws://127.0.0.1:8927/sendspin"),
            max_sessions,
        )
    }

    /// A gateway with `identity`'s certificate whose UDP socket is at `addr`; MA does nothing
    /// by itself until [`GatewayEnd::ma`] says otherwise.
    pub fn new(now: Instant, cfg: CoreConfig, identity: &Identity, addr: SocketAddr) -> GatewayEnd {
        let mut gw = Gateway::new(now, cfg, identity.dtls_cert());
        gw.handle_host_candidate(now, addr);
        GatewayEnd {
            gw,
            addr,
            remote_id: identity.remote_id.clone(),
            ma: Ma::default(),
            ws: BTreeMap::new(),
            ready: Vec::new(),
            candidates: Vec::new(),
            other: Vec::new(),
            turn: None,
            relayed_out: VecDeque::new(),
        }
    }

    /// The TURN stand-in's answers to the gateway go straight back in; what it relays to
    /// peers waits for the wire.
    fn play_turn(&mut self, now: Instant, bytes: &[u8]) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        let sends = turn.from_client(self.addr, bytes);
        let (server, relay) = (turn.server, turn.relay);
        for (peer, bytes) in sends.to_peers {
            self.relayed_out.push_back(Wire::Datagram {
                from: relay,
                to: peer,
                bytes,
            });
        }
        for answer in sends.to_client {
            self.gw.handle_datagram(now, server, &answer);
        }
    }

    /// The first local WebSocket opened (a session's API bridge), if any.
    pub fn first_bridge(&self) -> Option<BridgeId> {
        self.ws.keys().next().copied()
    }

    /// MA accepts `bridge`'s socket (and greets, if [`Ma::first_message`] says so).
    pub fn open_ws(&mut self, now: Instant, bridge: BridgeId) {
        let ws = self
            .ws
            .get_mut(&bridge)
            .expect("a socket the gateway opened");
        ws.open = true;
        if let Some(m) = &self.ma.first_message {
            ws.inbox.push_back(m.clone());
        }
        self.gw.handle_ws_opened(now, bridge);
    }

    /// MA sends `msg` on `bridge`: the gateway reads it when the core allows.
    pub fn ma_send(&mut self, bridge: BridgeId, msg: Message) {
        let ws = self
            .ws
            .get_mut(&bridge)
            .expect("a socket the gateway opened");
        ws.inbox.push_back(msg);
    }

    /// Read one waiting MA message on a socket the core reads now, as the driver does.
    fn feed(&mut self, now: Instant) -> bool {
        for (bridge, ws) in &mut self.ws {
            if ws.open && !ws.closed && !ws.inbox.is_empty() && self.gw.ws_read_allowed(*bridge) {
                let msg = ws.inbox.pop_front().expect("not empty");
                self.gw.handle_ws_message(now, *bridge, msg);
                return true;
            }
        }
        false
    }

    /// Carry out one output of the core; what goes on the wire is returned.
    fn carry_out(&mut self, now: Instant, o: Output) -> Option<Wire> {
        match o {
            Output::SessionReady { session_id } => {
                self.ready.push(session_id.clone());
                let text = FromServer::Connected {
                    remote_id: Some(self.remote_id.clone()),
                    session_id: Some(session_id_of(&session_id)),
                    ice_servers: Some(Value::Array(Vec::new())),
                }
                .to_text();
                Some(signal(session_id, text))
            }
            Output::Answer { session_id, sdp } => {
                let text = FromServer::Answer(Relay::answer(session_id_of(&session_id), &sdp));
                Some(signal(session_id, text.to_text()))
            }
            Output::Candidate {
                session_id,
                candidate,
            } => {
                self.candidates
                    .push((session_id.clone(), candidate.clone()));
                let relay = Relay::candidate(session_id_of(&session_id), candidate);
                Some(signal(
                    session_id,
                    FromServer::IceCandidate(relay).to_text(),
                ))
            }
            Output::Transmit(t)
                if self
                    .turn
                    .as_ref()
                    .is_some_and(|s| s.server == t.destination) =>
            {
                self.play_turn(now, &t.contents);
                None
            }
            Output::Lookup { key, host, .. }
                if self
                    .turn
                    .as_ref()
                    .is_some_and(|s| s.server.ip().to_string() == host) =>
            {
                let server = self.turn.as_ref().map(|s| s.server).into_iter().collect();
                self.gw.handle_resolved(now, key, Ok(server));
                None
            }
            Output::Transmit(t) => Some(Wire::Datagram {
                from: self.addr,
                to: t.destination,
                bytes: t.contents,
            }),
            Output::OpenWs { bridge, url } => {
                let ws = LocalWs {
                    url: url.to_url(),
                    ..LocalWs::default()
                };
                assert!(
                    self.ws.insert(bridge, ws).is_none(),
                    "bridge {bridge} again"
                );
                if self.ma.open_at_once {
                    self.open_ws(now, bridge);
                }
                None
            }
            Output::WsSend { bridge, msg } => {
                let ws = self
                    .ws
                    .get_mut(&bridge)
                    .expect("sent on a socket never opened");
                if self.ma.echo {
                    ws.inbox.push_back(msg);
                } else {
                    ws.sent.push(msg);
                }
                None
            }
            Output::CloseWs { bridge } => {
                let ws = self
                    .ws
                    .get_mut(&bridge)
                    .expect("closed a socket never opened");
                ws.closed = true;
                ws.inbox.clear();
                None
            }
            Output::ResumeWsRead { bridge } => {
                let ws = self
                    .ws
                    .get_mut(&bridge)
                    .expect("resumed a socket never opened");
                ws.resumed += 1;
                None
            }
            other => {
                self.other.push(other);
                None
            }
        }
    }
}

fn session_id_of(id: &str) -> SessionId {
    SessionId::parse(id).expect("the core only knows valid session ids")
}

fn signal(session: String, text: String) -> Wire {
    Wire::Signal { session, text }
}

impl fmt::Debug for GatewayEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ws: Vec<String> = self
            .ws
            .iter()
            .map(|(b, ws)| {
                format!(
                    "{b}: {} open {} closed {} sent {} inbox {} resumed {}",
                    ws.url,
                    ws.open,
                    ws.closed,
                    ws.sent.len(),
                    ws.inbox.len(),
                    ws.resumed
                )
            })
            .collect();
        f.debug_struct("GatewayEnd")
            .field("addr", &self.addr)
            .field("sessions", &self.gw.session_count())
            .field("ready", &self.ready)
            .field("ws", &ws)
            .field("other", &tail(self.other.iter(), 8))
            .finish_non_exhaustive()
    }
}

impl End for GatewayEnd {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        if let Some(turn) = self.turn.as_mut().filter(|t| t.relay == to) {
            let server = turn.server;
            if let Some(m) = turn.from_peer(from, bytes) {
                self.gw.handle_datagram(now, server, &m);
            }
            return;
        }
        self.gw.handle_datagram(now, from, bytes);
    }

    /// What a client sent to the signaling server, as the server passes it to the gateway
    /// (and as the gateway's signaling client hands it to the core).
    fn handle_signal(&mut self, now: Instant, session: &str, text: &str) {
        match ToServer::parse(text) {
            Ok(ToServer::ConnectRequest { .. }) => self.gw.handle_client_connected(now, session),
            Ok(ToServer::Offer(relay)) => {
                if let Some(sdp) = relay.sdp() {
                    self.gw.handle_offer(now, session, sdp);
                }
            }
            Ok(ToServer::IceCandidate(relay)) => {
                if let Some(c @ Value::Object(_)) = &relay.data {
                    self.gw.handle_remote_candidate(now, session, c);
                }
            }
            Ok(ToServer::Ping | ToServer::Pong) => {}
            Ok(other) => panic!("a client sent {}: {text}", other.kind()),
            Err(e) => panic!("a client sent {e}: {text}"),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.gw.handle_timeout(now);
    }

    fn poll_output(&mut self, now: Instant) -> Next<Wire> {
        loop {
            if let Some(w) = self.relayed_out.pop_front() {
                return Next::Output(w);
            }
            match self.gw.poll_output() {
                Next::Output(o) => {
                    if let Some(w) = self.carry_out(now, o) {
                        return Next::Output(w);
                    }
                }
                Next::Timeout(t) => {
                    if !self.feed(now) {
                        return Next::Timeout(t);
                    }
                }
            }
        }
    }
}
