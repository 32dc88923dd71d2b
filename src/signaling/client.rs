//! The gateway's side of the signaling protocol (docs/protocol.md#gateway-messages), as a
//! sans-IO state machine.
//!
//! The driver owns the WebSocket; this machine decides when to connect, what to send and when a
//! connection is dead. Messages are those of [`crate::signaling::protocol`]; one whose session id
//! is not valid is logged and dropped. It shows the face of [`crate::machine`]: inputs are
//! `handle_…` methods taking `now` (from the driver: the socket's life and frames; from the
//! gateway core: `session-ready`, answers and candidates to send), and
//! [`Machine::poll_output`] gives the outputs, then the next deadline.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::backoff::Backoff;
use crate::identity::Prover;
use crate::machine::{Machine, Next};
use crate::signaling::protocol::{
    escaped, FromServer, ParseError, Relay, SessionId, ToServer, CLOSE_OWNED, CLOSE_REPLACED,
};

/// How long the signaling server waits for `session-ready` before it falls back.
pub const SESSION_READY_WINDOW: Duration = Duration::from_secs(10);
/// A connection attempt (DNS, TCP, TLS, WebSocket handshake) that takes longer is abandoned.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest signaling message accepted (SDP offers are a few KiB).
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Bytes the signaling socket may queue before the connection counts as stuck.
pub const MAX_WRITE_BUFFER: usize = 1024 * 1024;
/// Pending `session-ready` replies tracked at once.
const MAX_PENDING_READY: usize = 1024;
/// Once a server has challenged us, how long a new connection waits for its challenge before
/// registering without proof (docs/protocol.md#ownership-proof).
pub const CHALLENGE_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub remote_id: String,
    pub ping_interval: Duration,
    pub connect_timeout: Duration,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Open a new connection to the signaling server (none is open now).
    Connect,
    /// Send a text frame.
    Send(String),
    /// Send a WebSocket ping.
    Ping,
    /// Drop the connection (dead or timed out). No `handle_closed` needs to follow.
    Disconnect,
    /// Something for the gateway.
    Event(Event),
}

/// What the gateway is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Registration confirmed: the gateway is reachable.
    Registered { remote_id: String },
    /// The connection is gone; every relayed session is unreachable until we register again.
    Lost,
    /// A client wants a session: reply with [`SignalingClient::handle_session_ready`].
    ClientConnected { session_id: SessionId },
    /// An SDP offer (a second one on a session is an ICE restart).
    Offer { session_id: SessionId, sdp: String },
    /// A remote ICE candidate, the `data` object as received.
    RemoteCandidate {
        session_id: SessionId,
        candidate: Value,
    },
    /// The client's signaling socket closed.
    ClientDisconnected { session_id: SessionId },
}

#[derive(Debug)]
enum State {
    /// Waiting to (re)connect at `at`.
    Waiting { at: Instant },
    /// The driver is connecting; abandon at `deadline`.
    Connecting { deadline: Instant },
    /// The WebSocket is open.
    Open {
        registered: bool,
        /// When the last frame of any kind arrived.
        last_rx: Instant,
        next_ping: Instant,
    },
}

/// Why a `session-ready` was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyError {
    /// The signaling connection is not registered.
    NotConnected,
    /// No `client-connected` is waiting for this session.
    UnknownSession,
    /// The 10 s window has passed: the server already answered the client itself.
    TooLate,
}

pub struct SignalingClient {
    config: ClientConfig,
    ice_servers: Value,
    state: State,
    backoff: Backoff,
    out: VecDeque<Output>,
    /// `client-connected` sessions waiting for `session-ready`, with their deadline.
    pending_ready: HashMap<SessionId, Instant>,
    /// Signs ownership proofs, when we hold the certificate of our Remote ID.
    prover: Option<Prover>,
    /// The challenge of the open connection.
    nonce: Option<String>,
    /// This server has sent a challenge before: it knows the ownership-proof extension.
    server_challenges: bool,
    /// Waiting for the challenge before registering (see [`CHALLENGE_WAIT`]) until then.
    register_at: Option<Instant>,
}

fn without_session_id(kind: &str) {
    log::warn!("signaling: {kind} without sessionId; ignored");
}

/// A session id the core hands back (it came from an [`Event`], so it is valid).
fn outgoing(session_id: &str) -> Option<SessionId> {
    SessionId::parse(session_id)
        .inspect_err(|e| log::warn!("signaling: not sending for an {e}"))
        .ok()
}

impl SignalingClient {
    /// A client that connects at once (at `now`).
    pub fn new(
        now: Instant,
        config: ClientConfig,
        ice_servers: Value,
        backoff: Backoff,
    ) -> SignalingClient {
        SignalingClient {
            config,
            ice_servers,
            state: State::Waiting { at: now },
            backoff,
            out: VecDeque::new(),
            pending_ready: HashMap::new(),
            prover: None,
            nonce: None,
            server_challenges: false,
            register_at: None,
        }
    }

    /// Prove ownership of the Remote ID to servers that challenge us (docs/protocol.md#ownership-proof):
    /// used only when `prover` holds the certificate of our Remote ID (not for an override).
    pub fn with_prover(mut self, prover: Option<Prover>) -> SignalingClient {
        self.prover = prover.filter(|p| p.remote_id().eq_ignore_ascii_case(&self.config.remote_id));
        self
    }

    pub fn remote_id(&self) -> &str {
        &self.config.remote_id
    }

    pub fn is_registered(&self) -> bool {
        matches!(
            self.state,
            State::Open {
                registered: true,
                ..
            }
        )
    }

    /// A new ICE server list for `register-server` and every `session-ready`; sent again at
    /// once on an open connection (the server then only updates it).
    pub fn handle_ice_servers(&mut self, _now: Instant, ice_servers: Value) {
        self.ice_servers = ice_servers;
        if matches!(self.state, State::Open { .. }) && self.register_at.is_none() {
            self.send_register();
        }
    }

    /// The next moment [`Machine::handle_timeout`] must be called.
    fn deadline(&self) -> Instant {
        let state_deadline = match self.state {
            State::Waiting { at } => at,
            State::Connecting { deadline } => deadline,
            State::Open {
                last_rx, next_ping, ..
            } => next_ping.min(last_rx + self.dead_after()),
        };
        self.pending_ready
            .values()
            .copied()
            .chain(self.register_at)
            .fold(state_deadline, Instant::min)
    }

    fn dead_after(&self) -> Duration {
        self.config.ping_interval * 2
    }

    /// The WebSocket handshake completed.
    pub fn handle_open(&mut self, now: Instant) {
        if !matches!(self.state, State::Connecting { .. }) {
            log::debug!("signaling: unexpected open in state {:?}", self.state);
        }
        self.state = State::Open {
            registered: false,
            last_rx: now,
            next_ping: now + self.config.ping_interval,
        };
        self.nonce = None;
        // Register at once, unless this server is known to challenge and we can prove: then
        // the proven registration waits (briefly) for this socket's challenge.
        match self.server_challenges && self.prover.is_some() {
            true => self.register_at = Some(now + CHALLENGE_WAIT),
            false => self.send_register(),
        }
    }

    /// `register-server`, with a proof when this socket was challenged and we can prove.
    fn send_register(&mut self) {
        self.register_at = None;
        let proof = match (&self.prover, &self.nonce) {
            (Some(prover), Some(nonce)) => prover
                .prove(nonce, &self.config.remote_id)
                .inspect_err(|e| log::warn!("signaling: cannot prove our Remote ID: {e}"))
                .ok(),
            _ => None,
        };
        let msg = ToServer::RegisterServer {
            remote_id: Some(self.config.remote_id.clone()),
            ice_servers: Some(self.ice_servers.clone()),
            proof,
        };
        self.out.push_back(Output::Send(msg.to_text()));
    }

    /// The server's challenge: register again with proof (on the public protocol, registering
    /// again on the same socket only updates the ICE servers).
    fn on_challenge(&mut self, nonce: Option<String>) {
        let Some(nonce) = nonce.filter(|n| !n.is_empty() && n.len() <= 1024) else {
            return log::debug!("signaling: a challenge without a usable nonce; ignored");
        };
        self.server_challenges = true;
        if self.prover.is_none() {
            return log::debug!(
                "signaling: challenged, but our Remote ID is not our certificate's; no proof"
            );
        }
        log::debug!("signaling: challenged; registering with proof of our Remote ID");
        self.nonce = Some(nonce);
        self.send_register();
    }

    /// A frame other than text arrived (ping, pong, binary): the connection is alive.
    pub fn handle_frame(&mut self, now: Instant) {
        if let State::Open {
            ref mut last_rx, ..
        } = self.state
        {
            *last_rx = now;
        }
    }

    /// The connection attempt failed or the open connection closed (`code` from the close
    /// frame, if any).
    pub fn handle_closed(&mut self, now: Instant, code: Option<u16>, reason: &str) {
        if matches!(self.state, State::Waiting { .. }) {
            return;
        }
        match code {
            Some(c) => {
                log::warn!("signaling: connection closed by the server (code {c} {reason:?})")
            }
            None if reason.is_empty() => log::warn!("signaling: connection lost"),
            None => log::warn!("signaling: connection failed: {reason}"),
        }
        self.lost(now, code);
    }

    fn lost(&mut self, now: Instant, code: Option<u16>) {
        let was_registered = self.is_registered();
        let was_open = matches!(self.state, State::Open { .. });
        let delay = if code == Some(CLOSE_OWNED) && self.prover.is_none() {
            let d = self.backoff.replaced_delay();
            log::warn!(
                "signaling: the server refused Remote ID {} (close 4003): a gateway that proved it \
                 owns that ID is online, and this one cannot prove it (the ID is not its \
                 certificate's). Retrying in {:.0} s.",
                self.config.remote_id,
                d.as_secs_f64()
            );
            d
        } else if code == Some(CLOSE_OWNED) {
            // We registered before this socket's challenge arrived while a proven registration
            // (most likely our own previous process) was still online; from now on a new
            // connection waits for the challenge and registers with proof.
            let d = self.backoff.next_delay();
            log::warn!(
                "signaling: Remote ID {} is held by a proven registration (close 4003); \
                 reconnecting in {:.1} s to register with proof",
                self.config.remote_id,
                d.as_secs_f64()
            );
            d
        } else if code == Some(CLOSE_REPLACED) {
            let d = self.backoff.replaced_delay();
            log::warn!(
                "signaling: another gateway registered Remote ID {} and replaced this one (close 4000). \
                 Two gateways with one ID evict each other: stop the other one or give this one its own \
                 data folder. Retrying in {:.0} s, backing off further each time this repeats.",
                self.config.remote_id,
                d.as_secs_f64()
            );
            d
        } else {
            if was_registered {
                self.backoff.reset_replaced();
            }
            let d = self.backoff.next_delay();
            log::info!("signaling: reconnecting in {:.1} s", d.as_secs_f64());
            d
        };
        self.state = State::Waiting { at: now + delay };
        self.pending_ready.clear();
        self.nonce = None;
        self.register_at = None;
        if was_open {
            self.out.push_back(Output::Event(Event::Lost));
        }
    }

    /// A text frame arrived.
    pub fn handle_text(&mut self, now: Instant, frame: &str) {
        self.handle_frame(now);
        if !matches!(self.state, State::Open { .. }) {
            return;
        }
        let msg = match FromServer::parse(frame) {
            Ok(msg) => msg,
            Err(ParseError::NotJson(e)) => {
                log::warn!(
                    "signaling: ignoring a message that is not JSON ({e}): {}",
                    escaped(frame, 120)
                );
                return;
            }
            Err(ParseError::UnknownType(Some(Value::String(kind)))) => {
                log::debug!(
                    "signaling: ignoring unknown message type {}",
                    escaped(&kind, 64)
                );
                return;
            }
            Err(ParseError::NotAnObject | ParseError::UnknownType(_)) => {
                log::warn!(
                    "signaling: ignoring a message without \"type\": {}",
                    escaped(frame, 120)
                );
                return;
            }
            Err(e @ (ParseError::InvalidSessionId { .. } | ParseError::Invalid { .. })) => {
                log::warn!("signaling: ignoring {e}");
                return;
            }
        };
        match msg {
            FromServer::Registered { remote_id } => self.on_registered(remote_id),
            FromServer::Error { error, message } => {
                let error = error.or(message).unwrap_or_else(|| "(no text)".into());
                log::warn!("signaling server error: {error}");
            }
            FromServer::Ping => self.out.push_back(Output::Send(ToServer::Pong.to_text())),
            FromServer::Pong => {}
            FromServer::Challenge { nonce } => self.on_challenge(nonce),
            FromServer::ClientConnected { session_id } => {
                let Some(session_id) = session_id else {
                    return without_session_id("client-connected");
                };
                if self.pending_ready.len() >= MAX_PENDING_READY {
                    log::warn!("[{session_id}] signaling: too many sessions waiting for session-ready; ignored");
                    return;
                }
                self.pending_ready
                    .insert(session_id.clone(), now + SESSION_READY_WINDOW);
                self.event(Event::ClientConnected { session_id });
            }
            FromServer::Offer(relay) => {
                let sdp = relay.sdp().map(str::to_string);
                let Some(session_id) = relay.session_id else {
                    return without_session_id("offer");
                };
                match sdp {
                    Some(sdp) => self.event(Event::Offer { session_id, sdp }),
                    None => {
                        log::warn!("[{session_id}] signaling: offer without data.sdp; ignored")
                    }
                }
            }
            FromServer::IceCandidate(relay) => {
                let Some(session_id) = relay.session_id else {
                    return without_session_id("ice-candidate");
                };
                match relay.data {
                    Some(candidate @ Value::Object(_)) => self.event(Event::RemoteCandidate {
                        session_id,
                        candidate,
                    }),
                    _ => {
                        log::warn!("[{session_id}] signaling: ice-candidate without data; ignored")
                    }
                }
            }
            FromServer::ClientDisconnected { session_id } => {
                let Some(session_id) = session_id else {
                    return without_session_id("client-disconnected");
                };
                self.pending_ready.remove(&session_id);
                self.event(Event::ClientDisconnected { session_id });
            }
            // What a server says to clients.
            other @ (FromServer::Connected { .. }
            | FromServer::PeerDisconnected { .. }
            | FromServer::Answer(_)) => {
                log::debug!(
                    "signaling: ignoring unknown message type {:?}",
                    other.kind()
                )
            }
        }
    }

    fn on_registered(&mut self, remote_id: Option<String>) {
        let id = remote_id.unwrap_or_default();
        if !id.is_empty() && !id.eq_ignore_ascii_case(&self.config.remote_id) {
            log::warn!(
                "signaling: registered under {}, not the requested {}",
                escaped(&id, 64),
                self.config.remote_id
            );
        }
        if let State::Open {
            ref mut registered, ..
        } = self.state
        {
            let first = !*registered;
            *registered = true;
            if first {
                self.backoff.reset();
                self.event(Event::Registered {
                    remote_id: if id.is_empty() {
                        self.config.remote_id.clone()
                    } else {
                        id
                    },
                });
            }
        }
    }

    fn event(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    fn send_if_open(&mut self, msg: ToServer) -> bool {
        if matches!(self.state, State::Open { .. }) {
            self.out.push_back(Output::Send(msg.to_text()));
            true
        } else {
            false
        }
    }

    /// The core accepted a `client-connected`: reply `session-ready` with our ICE servers, if
    /// the session's window is still open.
    pub fn handle_session_ready(
        &mut self,
        now: Instant,
        session_id: &str,
    ) -> Result<(), ReadyError> {
        let ice_servers = self.ice_servers.clone();
        self.handle_session_ready_with(now, session_id, ice_servers)
    }

    /// [`SignalingClient::handle_session_ready`] with this session's own ICE servers (fetched
    /// fresh for it: docs/design.md#ice-server-source).
    pub fn handle_session_ready_with(
        &mut self,
        now: Instant,
        session_id: &str,
        ice_servers: Value,
    ) -> Result<(), ReadyError> {
        if !self.is_registered() {
            return Err(ReadyError::NotConnected);
        }
        let (session_id, deadline) = self
            .pending_ready
            .remove_entry(session_id)
            .ok_or(ReadyError::UnknownSession)?;
        if now >= deadline {
            log::warn!("[{session_id}] signaling: session-ready is too late; not sent");
            return Err(ReadyError::TooLate);
        }
        self.send_if_open(ToServer::SessionReady {
            session_id: Some(session_id),
            ice_servers: Some(ice_servers),
        });
        Ok(())
    }

    /// Send the core's SDP answer for a session. False if not connected.
    pub fn handle_answer(&mut self, _now: Instant, session_id: &str, sdp: &str) -> bool {
        let Some(session_id) = outgoing(session_id) else {
            return false;
        };
        self.send_if_open(ToServer::Answer(Relay::answer(session_id, sdp)))
    }

    /// Send one local ICE candidate (`candidate` holds `candidate`, `sdpMid`, `sdpMLineIndex`).
    /// False if not connected.
    pub fn handle_candidate(&mut self, _now: Instant, session_id: &str, candidate: Value) -> bool {
        let Some(session_id) = outgoing(session_id) else {
            return false;
        };
        self.send_if_open(ToServer::IceCandidate(Relay::candidate(
            session_id, candidate,
        )))
    }
}

impl Machine for SignalingClient {
    type Output = Output;

    /// Connect when the wait is over, give up on a connection attempt or a silent socket, ping,
    /// forget sessions whose `session-ready` window closed.
    fn handle_timeout(&mut self, now: Instant) {
        let open = matches!(self.state, State::Open { .. });
        if open && self.register_at.is_some_and(|at| now >= at) {
            log::info!(
                "signaling: no challenge within {CHALLENGE_WAIT:?}; registering without proof"
            );
            self.send_register();
        }
        match self.state {
            State::Waiting { at } if now >= at => {
                self.state = State::Connecting {
                    deadline: now + self.config.connect_timeout,
                };
                self.out.push_back(Output::Connect);
            }
            State::Connecting { deadline } if now >= deadline => {
                log::warn!(
                    "signaling: no connection after {:?}, giving up on this attempt",
                    self.config.connect_timeout
                );
                self.out.push_back(Output::Disconnect);
                self.lost(now, None);
            }
            State::Open {
                last_rx,
                ref mut next_ping,
                ..
            } => {
                if now >= last_rx + self.config.ping_interval * 2 {
                    log::warn!(
                        "signaling: nothing received for {:?}, the connection is dead; reconnecting",
                        now - last_rx
                    );
                    self.out.push_back(Output::Disconnect);
                    self.lost(now, None);
                } else if now >= *next_ping {
                    *next_ping = now + self.config.ping_interval;
                    self.out.push_back(Output::Ping);
                }
            }
            _ => {}
        }
        let before = self.pending_ready.len();
        self.pending_ready.retain(|session, deadline| {
            let keep = now < *deadline;
            if !keep {
                log::warn!(
                    "[{session}] signaling: no session-ready within {SESSION_READY_WINDOW:?}"
                );
            }
            keep
        });
        if before != self.pending_ready.len() {
            log::debug!(
                "signaling: {} sessions still waiting for session-ready",
                self.pending_ready.len()
            );
        }
    }

    fn poll_output(&mut self) -> Next<Output> {
        match self.out.pop_front() {
            Some(out) => Next::Output(out),
            None => Next::Timeout(Some(self.deadline())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Jitter;
    use serde_json::json;

    const ID: &str = "QCPJJTJMI3IDBNURU6XJJENRYU";

    fn sid(s: &str) -> SessionId {
        SessionId::parse(s).unwrap()
    }

    fn client(now: Instant) -> SignalingClient {
        SignalingClient::new(
            now,
            ClientConfig {
                remote_id: ID.into(),
                ping_interval: Duration::from_secs(35),
                connect_timeout: CONNECT_TIMEOUT,
            },
            json!([{"urls": "stun:stun.l.google.com:19302"}]),
            Backoff::new(
                Duration::from_secs(10),
                Duration::from_secs(300),
                Jitter::seeded(3),
            ),
        )
    }

    fn drain(c: &mut SignalingClient) -> Vec<Output> {
        std::iter::from_fn(|| c.poll_output().output()).collect()
    }

    /// The deadline the client reports once drained.
    fn deadline(c: &mut SignalingClient) -> Instant {
        match c.poll_output() {
            Next::Timeout(Some(t)) => t,
            other => panic!("expected a deadline, got {other:?}"),
        }
    }

    fn sent_json(outputs: &[Output]) -> Vec<Value> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Send(s) => Some(serde_json::from_str(s).unwrap()),
                _ => None,
            })
            .collect()
    }

    /// Connect and register; returns the client and the current time.
    fn registered() -> (SignalingClient, Instant) {
        let t0 = Instant::now();
        let mut c = client(t0);
        c.handle_timeout(t0);
        assert_eq!(drain(&mut c), vec![Output::Connect]);
        c.handle_open(t0);
        let out = drain(&mut c);
        let sent = sent_json(&out);
        assert_eq!(sent[0]["type"], "register-server");
        assert_eq!(sent[0]["remoteId"], ID);
        assert_eq!(
            sent[0]["iceServers"][0]["urls"],
            "stun:stun.l.google.com:19302"
        );
        assert!(!c.is_registered(), "connected only on `registered`");
        c.handle_text(
            t0,
            &json!({"type": "registered", "remoteId": ID}).to_string(),
        );
        assert_eq!(
            drain(&mut c),
            vec![Output::Event(Event::Registered {
                remote_id: ID.into()
            })]
        );
        assert!(c.is_registered());
        (c, t0)
    }

    /// Lose the connection and return the delay until the client asks to connect again.
    fn delay_until_connect(c: &mut SignalingClient, now: Instant) -> Duration {
        let at = deadline(c);
        c.handle_timeout(at);
        assert!(drain(c).contains(&Output::Connect));
        at - now
    }

    #[test]
    fn backoff_schedule_and_reset_on_registration() {
        let (mut c, mut now) = registered();
        let mut delays = vec![];
        for _ in 0..7 {
            c.handle_closed(now, None, "refused");
            drain(&mut c);
            let d = delay_until_connect(&mut c, now);
            delays.push(d.as_secs_f64());
            now += d;
        }
        let bases = [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0];
        for (d, base) in delays.iter().zip(bases) {
            assert!(
                *d >= base * 0.8 && *d <= (base * 1.2_f64).min(300.0),
                "{delays:?}"
            );
        }
        // Registered again: the next loss starts from 10 s.
        c.handle_open(now);
        c.handle_text(
            now,
            r#"{"type":"registered","remoteId":"QCPJJTJMI3IDBNURU6XJJENRYU"}"#,
        );
        drain(&mut c);
        c.handle_closed(now, None, "");
        let out = drain(&mut c);
        assert!(out.contains(&Output::Event(Event::Lost)));
        let d = delay_until_connect(&mut c, now).as_secs_f64();
        assert!((8.0..=12.0).contains(&d), "{d}");
    }

    #[test]
    fn replaced_backs_off_long_but_retries() {
        let (mut c, now) = registered();
        c.handle_closed(now, Some(CLOSE_REPLACED), "Replaced by new connection");
        drain(&mut c);
        let d = delay_until_connect(&mut c, now).as_secs_f64();
        assert!((240.0..=360.0).contains(&d), "{d}");
        // Evicted again right after registering: the wait grows.
        let now = now + Duration::from_secs_f64(d);
        c.handle_open(now);
        c.handle_text(now, r#"{"type":"registered"}"#);
        c.handle_closed(now, Some(CLOSE_REPLACED), "");
        drain(&mut c);
        let d2 = delay_until_connect(&mut c, now).as_secs_f64();
        assert!((480.0..=720.0).contains(&d2), "{d2}");
    }

    #[test]
    fn heartbeat_pings_and_detects_dead_socket() {
        let (mut c, t0) = registered();
        let t = deadline(&mut c);
        assert_eq!(t - t0, Duration::from_secs(35));
        c.handle_timeout(t);
        assert_eq!(drain(&mut c), vec![Output::Ping]);
        // A pong keeps it alive.
        c.handle_frame(t + Duration::from_millis(20));
        let t2 = deadline(&mut c);
        c.handle_timeout(t2);
        assert_eq!(drain(&mut c), vec![Output::Ping]);
        // Silence: pings keep going out, and the socket is declared dead at last_rx + 70 s.
        let last_rx = t + Duration::from_millis(20);
        let (dead, out) = loop {
            let at = deadline(&mut c);
            c.handle_timeout(at);
            let out = drain(&mut c);
            if out != vec![Output::Ping] {
                break (at, out);
            }
            assert!(at < last_rx + Duration::from_secs(70));
        };
        assert_eq!(dead, last_rx + Duration::from_secs(70));
        assert_eq!(out[0], Output::Disconnect);
        assert!(out.contains(&Output::Event(Event::Lost)));
        assert!(!c.is_registered());
    }

    #[test]
    fn connect_attempt_times_out() {
        let t0 = Instant::now();
        let mut c = client(t0);
        c.handle_timeout(t0);
        drain(&mut c);
        assert_eq!(deadline(&mut c), t0 + CONNECT_TIMEOUT);
        c.handle_timeout(t0 + CONNECT_TIMEOUT);
        assert_eq!(drain(&mut c), vec![Output::Disconnect]);
        assert!(deadline(&mut c) > t0 + CONNECT_TIMEOUT);
    }

    #[test]
    fn session_ready_within_the_window_only() {
        let (mut c, t0) = registered();
        c.handle_text(t0, r#"{"type":"client-connected","sessionId":"abc"}"#);
        assert_eq!(
            drain(&mut c),
            vec![Output::Event(Event::ClientConnected {
                session_id: sid("abc")
            })]
        );
        c.handle_session_ready(t0, "abc").unwrap();
        let sent = sent_json(&drain(&mut c));
        assert_eq!(
            sent[0],
            json!({"type":"session-ready","sessionId":"abc","iceServers":[{"urls": "stun:stun.l.google.com:19302"}]})
        );
        assert_eq!(
            c.handle_session_ready(t0, "abc"),
            Err(ReadyError::UnknownSession)
        );

        c.handle_text(t0, r#"{"type":"client-connected","sessionId":"late"}"#);
        drain(&mut c);
        assert_eq!(deadline(&mut c), t0 + SESSION_READY_WINDOW);
        assert_eq!(
            c.handle_session_ready(t0 + SESSION_READY_WINDOW, "late"),
            Err(ReadyError::TooLate)
        );
        assert!(drain(&mut c).is_empty(), "a late session-ready is not sent");

        // A session's own list (fresh TURN credentials) goes in its session-ready only.
        c.handle_text(t0, r#"{"type":"client-connected","sessionId":"own"}"#);
        drain(&mut c);
        let own = json!([{"urls": "turn:t.example", "username": "1:u", "credential": "c"}]);
        c.handle_session_ready_with(t0, "own", own.clone()).unwrap();
        assert_eq!(sent_json(&drain(&mut c))[0]["iceServers"], own);
    }

    #[test]
    fn new_ice_servers_are_registered_and_used() {
        let t0 = Instant::now();
        let mut c = client(t0);
        let ice = json!([{"urls": "stun:x:3478"}]);
        // Before a connection there is nobody to tell.
        c.handle_ice_servers(t0, ice.clone());
        assert!(drain(&mut c).is_empty());
        let (mut c, t0) = registered();
        c.handle_ice_servers(t0, ice.clone());
        assert_eq!(
            sent_json(&drain(&mut c)),
            [json!({"type": "register-server", "remoteId": ID, "iceServers": ice})]
        );
        c.handle_text(t0, r#"{"type":"client-connected","sessionId":"s"}"#);
        drain(&mut c);
        c.handle_session_ready(t0, "s").unwrap();
        assert_eq!(sent_json(&drain(&mut c))[0]["iceServers"], ice);
    }

    #[test]
    fn relays_offers_candidates_and_disconnects() {
        let (mut c, t0) = registered();
        c.handle_text(
            t0,
            r#"{"type":"offer","sessionId":"s1","remoteId":"X","data":{"type":"offer","sdp":"v=0"}}"#,
        );
        c.handle_text(
            t0,
            r#"{"type":"ice-candidate","sessionId":"s1","data":{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMid":"0"}}"#,
        );
        c.handle_text(t0, r#"{"type":"client-disconnected","sessionId":"s1"}"#);
        let out = drain(&mut c);
        assert_eq!(
            out[0],
            Output::Event(Event::Offer {
                session_id: sid("s1"),
                sdp: "v=0".into()
            })
        );
        assert!(
            matches!(&out[1], Output::Event(Event::RemoteCandidate { session_id, candidate })
            if session_id == "s1" && candidate["sdpMid"] == "0")
        );
        assert_eq!(
            out[2],
            Output::Event(Event::ClientDisconnected {
                session_id: sid("s1")
            })
        );
        assert!(c.handle_answer(t0, "s1", "v=0 answer"));
        assert!(c.handle_candidate(
            t0,
            "s1",
            json!({"candidate":"candidate:x","sdpMid":"0","sdpMLineIndex":0})
        ));
        let sent = sent_json(&drain(&mut c));
        assert_eq!(sent[0]["data"], json!({"type":"answer","sdp":"v=0 answer"}));
        assert_eq!(sent[1]["data"]["sdpMLineIndex"], 0);
    }

    #[test]
    fn bad_input_is_ignored_without_panic() {
        let (mut c, t0) = registered();
        for bad in [
            "",
            "not json",
            "[1,2]",
            "{}",
            r#"{"type":42}"#,
            r#"{"type":"offer"}"#,
            r#"{"type":"offer","sessionId":"s","data":"x"}"#,
            r#"{"type":"ice-candidate","sessionId":"s","data":null}"#,
            r#"{"type":"client-connected","sessionId":7}"#,
            r#"{"type":"something-new","sessionId":"s"}"#,
            r#"{"type":"error"}"#,
            r#"{"type":"error","message":"Server not found"}"#,
            "\u{0}\u{ffff}",
        ] {
            c.handle_text(t0, bad);
        }
        assert!(drain(&mut c).is_empty());
        assert!(c.is_registered());
        c.handle_text(t0, r#"{"type":"ping"}"#);
        assert_eq!(
            drain(&mut c),
            vec![Output::Send(r#"{"type":"pong"}"#.into())]
        );
    }

    #[test]
    fn invalid_session_ids_are_dropped() {
        let (mut c, t0) = registered();
        let long = "a".repeat(65);
        for bad in [
            "",
            "a b",
            "x\r\nINFO forged",
            "é",
            "../../etc",
            "s?x=1",
            long.as_str(),
        ] {
            for kind in [
                "client-connected",
                "offer",
                "ice-candidate",
                "client-disconnected",
            ] {
                let msg = json!({"type": kind, "sessionId": bad,
                                 "data": {"type": "offer", "sdp": "v=0", "candidate": "candidate:x"}});
                c.handle_text(t0, &msg.to_string());
            }
        }
        assert!(drain(&mut c).is_empty());
        assert!(c.pending_ready.is_empty());
        assert!(c.is_registered());
        // Nothing goes out under an invalid id either.
        assert!(!c.handle_answer(t0, "a b", "v=0"));
        assert!(!c.handle_candidate(t0, "", json!({"candidate": "candidate:x"})));
        assert_eq!(
            c.handle_session_ready(t0, "a b"),
            Err(ReadyError::UnknownSession)
        );
        assert!(drain(&mut c).is_empty());
        // The longest valid id is fine.
        let max = "a".repeat(64);
        c.handle_text(
            t0,
            &json!({"type": "client-connected", "sessionId": max}).to_string(),
        );
        assert_eq!(
            drain(&mut c),
            vec![Output::Event(Event::ClientConnected {
                session_id: sid(&max)
            })]
        );
    }

    fn proving_client(now: Instant) -> (SignalingClient, crate::identity::Identity) {
        let identity = crate::identity::Identity::generate().unwrap();
        let mut c = SignalingClient::new(
            now,
            ClientConfig {
                remote_id: identity.remote_id.clone(),
                ping_interval: Duration::from_secs(35),
                connect_timeout: CONNECT_TIMEOUT,
            },
            json!([]),
            Backoff::new(
                Duration::from_secs(10),
                Duration::from_secs(300),
                Jitter::seeded(3),
            ),
        )
        .with_prover(identity.prover().ok());
        c.handle_timeout(now);
        assert_eq!(drain(&mut c), vec![Output::Connect]);
        (c, identity)
    }

    #[test]
    fn a_challenge_is_ignored_without_a_matching_certificate() {
        let (mut c, t0) = registered();
        c.handle_text(t0, r#"{"type":"challenge","nonce":"bm9uY2Vub25jZW5vbmNl"}"#);
        assert!(drain(&mut c).is_empty());
        // An overridden Remote ID is never proven with the certificate of another.
        let other = crate::identity::Identity::generate().unwrap();
        let c = client(t0).with_prover(other.prover().ok());
        assert!(c.prover.is_none());
    }

    #[test]
    fn the_gateway_proves_its_remote_id_whenever_challenged() {
        use crate::signaling::server::proof::verify;
        let t0 = Instant::now();
        let (mut c, identity) = proving_client(t0);
        let id = identity.remote_id.clone();
        // First connection: registers at once (the public server never challenges) ...
        c.handle_open(t0);
        let sent = sent_json(&drain(&mut c));
        assert_eq!(sent.len(), 1);
        assert!(sent[0].get("proof").is_none());
        // ... and again with proof when the challenge comes, before or after `registered`.
        c.handle_text(
            t0,
            &json!({"type": "challenge", "nonce": "n1n1n1n1n1n1n1n1n1n1"}).to_string(),
        );
        let sent = sent_json(&drain(&mut c));
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0]["type"], "register-server");
        let proof: crate::signaling::protocol::Proof =
            serde_json::from_value(sent[0]["proof"].clone()).unwrap();
        assert_eq!(verify(&proof, "n1n1n1n1n1n1n1n1n1n1", &id), Ok(()));
        c.handle_text(
            t0,
            &json!({"type": "registered", "remoteId": id}).to_string(),
        );
        assert_eq!(drain(&mut c).len(), 1, "one Registered event");

        // Refused (close 4003: registered before the challenge while a proven registration
        // was online): the normal backoff, and the next connection waits for the challenge.
        c.handle_closed(
            t0,
            Some(CLOSE_OWNED),
            "Remote ID is owned by another server",
        );
        assert!(drain(&mut c).contains(&Output::Event(Event::Lost)));
        let delay = delay_until_connect(&mut c, t0);
        assert!(delay <= Duration::from_secs(15), "{delay:?}");
        let t1 = t0 + delay;
        c.handle_open(t1);
        assert!(drain(&mut c).is_empty(), "waits for the challenge");
        assert_eq!(deadline(&mut c), t1 + CHALLENGE_WAIT);
        c.handle_text(
            t1,
            &json!({"type": "challenge", "nonce": "n2n2n2n2n2n2n2n2n2n2"}).to_string(),
        );
        let sent = sent_json(&drain(&mut c));
        let proof: crate::signaling::protocol::Proof =
            serde_json::from_value(sent[0]["proof"].clone()).unwrap();
        assert_eq!(verify(&proof, "n2n2n2n2n2n2n2n2n2n2", &id), Ok(()));

        // A server that stops challenging still gets a registration, after the wait.
        c.handle_closed(t1, None, "");
        drain(&mut c);
        let t2 = t1 + delay_until_connect(&mut c, t1);
        c.handle_open(t2);
        assert!(drain(&mut c).is_empty());
        c.handle_timeout(t2 + CHALLENGE_WAIT);
        let sent = sent_json(&drain(&mut c));
        assert_eq!(sent.len(), 1);
        assert!(sent[0].get("proof").is_none());
    }

    /// Our gateway against our server, wired together in memory: it ends up proven, and a
    /// squatter without proof cannot take its Remote ID.
    #[test]
    fn against_our_server_the_gateway_ends_up_proven() {
        use crate::signaling::server::{Output as S, ServerConfig, SignalServer};
        let t0 = Instant::now();
        let (mut c, identity) = proving_client(t0);
        let id = identity.remote_id.clone();
        let mut server = SignalServer::new(t0, ServerConfig::default());
        // The server's challenge goes out on open; the gateway's register-server may cross it.
        server.handle_open(t0, 1, "192.0.2.1".parse().unwrap());
        c.handle_open(t0);
        let mut to_client = Vec::new();
        for _ in 0..4 {
            for out in drain(&mut c) {
                if let Output::Send(text) = out {
                    server.handle_text(t0, 1, &text);
                }
            }
            while let Some(out) = server.poll_output().output() {
                if let S::Send { conn: 1, text, .. } = out {
                    to_client.push(text);
                }
            }
            for text in to_client.drain(..) {
                c.handle_text(t0, &text);
            }
        }
        assert!(c.is_registered());
        // A squatter without proof is refused.
        server.handle_open(t0, 2, "203.0.113.9".parse().unwrap());
        server.handle_text(
            t0,
            2,
            &json!({"type": "register-server", "remoteId": id}).to_string(),
        );
        let outs: Vec<S> = std::iter::from_fn(|| server.poll_output().output()).collect();
        assert!(
            outs.iter().any(|o| matches!(
                o,
                S::Close {
                    conn: 2,
                    code: 4003,
                    ..
                }
            )),
            "{outs:?}"
        );
        assert!(server.is_open(1));
    }
}
