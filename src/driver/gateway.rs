//! The gateway's event loop (docs/design.md#drivers): one mio `Poll` for the shared
//! UDP socket, DNS answers, signals and the outgoing [`Connections`] (the signaling WebSocket,
//! the bridges' local WebSockets, the HTTP proxy's streams). It only moves bytes and events
//! between them and the two machines, [`SignalingClient`] and [`Gateway`]; every decision is
//! theirs.

use std::collections::HashMap;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

use super::connections::{Connections, Data, End, Event as ConnEvent, READS_PER_TURN};
use super::emit_event;
use super::status::{StatusServer, MAX_CONNS as STATUS_CONNS};
use crate::config::GatewayConfig;
use crate::gateway::bridge::{BridgeId, LOCAL_MAX_MESSAGE, LOCAL_MAX_WRITE_BUFFER};
use crate::gateway::isolation::Culprit;
use crate::gateway::{Gateway, LookupKey, Output as CoreOutput};
use crate::http_proxy::ConnId;
use crate::ice_source::{self, Connect, IceSource, Output as IceOutput};
use crate::identity::Identity;
use crate::machine::{earliest, Machine, Next};
use crate::net::link::ws_config;
use crate::net::resolve::LookupId;
use crate::net::udp::{self, SendQueue};
use crate::signaling::client::{self, Event, Output, SignalingClient};
use crate::status::{self, SignalingState, Snapshot};
use crate::turn::RelayId;

/// Bytes of a TURN stream's write buffer that relayed data leaves free for TURN requests
/// (Refresh, CreatePermission, ChannelBind: each well under 1 KiB).
const TURN_REQUEST_ROOM: usize = 8 * 1024;
const WAKER: Token = Token(0);
const SIGNALS: Token = Token(1);
/// The UDP sockets' tokens: `UDP` and the next one (an IPv4 and an IPv6 socket at most).
const UDP: Token = Token(2);
const MAX_UDP: usize = 2;
/// Tokens of the connections start here.
const FIRST_CONN: usize = UDP.0 + MAX_UDP;
/// The status port's listener, then its connections: far above any connection token.
const STATUS: Token = Token(usize::MAX - STATUS_CONNS - 1);
/// Datagrams read before the connections and the timers get a turn.
const DATAGRAMS_PER_TURN: usize = 256;
/// Bytes read from one connection per turn (besides [`READS_PER_TURN`] messages): an image
/// streaming in at loopback speed is cut into 256 KiB steps, each followed by a look at every
/// other socket.
const READ_BYTES_PER_TURN: usize = 256 * 1024;
/// Read buffer of the signaling WebSocket. tungstenite's default (128 KiB) is zero-filled on
/// the first read and stays resident for as long as the gateway is registered; signaling
/// messages are a few KiB (a larger one grows the buffer while it is read).
const SIGNALING_READ_BUFFER: usize = 4096;

/// Which machine a connection serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Owner {
    Signaling,
    Bridge(BridgeId),
    Fetch(ConnId),
    /// A TURN server's TCP or TLS connection.
    Turn(RelayId),
    /// The fetch of fresh ICE servers (Home Assistant's WebSocket or a URL's stream).
    IceSource,
}

/// One UDP socket shared by every session (docs/design.md#ipv6: one per address family).
struct UdpPort {
    socket: UdpSocket,
    queue: SendQueue,
    /// Bound to an IPv6 address: datagrams to IPv6 peers leave here.
    v6: bool,
    /// The socket had datagrams left when its turn's budget ran out.
    unfinished: bool,
}

struct Driver {
    config: GatewayConfig,
    poll: Poll,
    signaling: SignalingClient,
    core: Gateway,
    /// Each session's ICE servers: fetched fresh, or the static list.
    ice: IceSource,
    udp: Vec<UdpPort>,
    conns: Connections<Owner>,
    /// The core's DNS lookups in flight.
    lookups: HashMap<LookupId, LookupKey>,
    buf: Vec<u8>,
    /// The status port (`MA_STATUS_LISTEN`), and what only the driver sees for it.
    status: Option<StatusServer>,
    signaling_state: SignalingState,
    started: Instant,
}

/// Run the gateway until SIGINT/SIGTERM; returns the exit code.
pub fn run(config: GatewayConfig, identity: Identity, remote_id: String) -> i32 {
    match Driver::new(config, identity, remote_id).and_then(|d| d.run()) {
        Ok(()) => 0,
        Err(e) => {
            log::error!("{e}");
            1
        }
    }
}

impl Driver {
    fn new(
        mut config: GatewayConfig,
        identity: Identity,
        remote_id: String,
    ) -> Result<Driver, String> {
        // Proofs of our Remote ID for signaling servers that ask (docs/protocol.md#ownership-proof).
        config.prover = identity
            .prover()
            .inspect_err(|e| log::warn!("cannot prove the Remote ID to the signaling server: {e}"))
            .ok();
        log::info!(
            "Remote ID {remote_id} ({}), fingerprint sha-256 {}",
            crate::identity::display_remote_id(&remote_id),
            identity.fingerprint_colon_hex()
        );
        let tls = config.tls_client_config()?;
        let poll = Poll::new().map_err(|e| format!("cannot create the event loop: {e}"))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(|e| e.to_string())?);
        let conns =
            Connections::new(poll.registry(), waker, FIRST_CONN, tls).map_err(|e| e.to_string())?;
        let bound = udp::bind_all(config.udp_bind, config.public_ip)
            .map_err(|e| format!("cannot bind UDP {} (MA_UDP_BIND): {e}", config.udp_bind))?;
        let now = Instant::now();
        let mut core = Gateway::new(now, config.core_config(), identity.dtls_cert());
        let mut udp = Vec::new();
        for (i, (mut socket, hosts)) in bound.sockets.into_iter().take(MAX_UDP).enumerate() {
            poll.registry()
                .register(
                    &mut socket,
                    Token(UDP.0 + i),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map_err(|e| e.to_string())?;
            let bound = socket.local_addr().map_err(|e| e.to_string())?;
            for addr in hosts {
                log::info!("WebRTC host candidate {addr} (UDP bound to {bound})");
                core.handle_host_candidate(now, addr);
            }
            udp.push(UdpPort {
                socket,
                queue: SendQueue::default(),
                v6: bound.is_ipv6(),
                unfinished: false,
            });
        }
        let signaling = config.signaling_client(now, remote_id);
        let ice = config.ice_source(now);
        let buf = vec![0; crate::net::READ_BUFFER];
        let lookups = HashMap::new();
        let status = match config.status_listen {
            Some(addr) => {
                let server = StatusServer::bind(poll.registry(), addr, STATUS).map_err(|e| {
                    format!("cannot listen on {addr} for the status port (MA_STATUS_LISTEN): {e}")
                })?;
                let addr = server.local_addr().map_err(|e| e.to_string())?;
                log::info!("status: serving http://{addr}/status, /metrics and /healthz");
                Some(server)
            }
            None => None,
        };
        Ok(Driver {
            config,
            poll,
            signaling,
            core,
            ice,
            udp,
            conns,
            lookups,
            buf,
            status,
            signaling_state: SignalingState::default(),
            started: now,
        })
    }

    fn run(mut self) -> Result<(), String> {
        let mut signals = super::shutdown_signals(&self.poll, SIGNALS)?;
        // URLs without their query in logs: it could carry a token (docs/design.md#logs).
        let signaling = status::public_url(&self.config.signaling_url);
        let api = status::public_url(&self.config.local_ws_url);
        log::info!("gateway starting: signaling {signaling}, MA API {api}");
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            self.signaling.handle_timeout(now);
            self.ice.handle_timeout(now);
            self.core
                .guarded(now, Culprit::Timers, |c| c.handle_timeout(now));
            let mut deadline = self.drain();
            if let Some(status) = &mut self.status {
                status.handle_timeout(self.poll.registry(), now);
                deadline = earliest(deadline, status.deadline());
            }
            // Reads cut short by their budget go on after one look at the other sockets.
            let udp_unfinished = self.udp.iter().any(|u| u.unfinished);
            let wait = match udp_unfinished || self.conns.has_unfinished() {
                true => Some(std::time::Duration::ZERO),
                false => super::wait_until(deadline),
            };
            match self.poll.poll(&mut events, wait) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("event loop failed: {e}")),
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => self.on_dns_answers(),
                    SIGNALS => {
                        if let Some(sig) = signals.pending().next() {
                            log::info!("signal {sig}: shutting down");
                            self.shutdown();
                            return Ok(());
                        }
                    }
                    token if (UDP.0..UDP.0 + self.udp.len()).contains(&token.0) => {
                        let i = token.0 - UDP.0;
                        let port = &mut self.udp[i];
                        port.queue.flush(&port.socket);
                        self.read_udp(i);
                    }
                    token if self.status.as_ref().is_some_and(|s| s.owns(token)) => {
                        self.on_status_ready(token)
                    }
                    token => {
                        if self.conns.on_ready(token) {
                            self.read(token);
                        }
                    }
                }
                self.drain();
            }
            for i in 0..self.udp.len() {
                if std::mem::take(&mut self.udp[i].unfinished) {
                    self.read_udp(i);
                }
            }
            for token in self.conns.take_unfinished() {
                self.read(token);
            }
        }
    }

    // ---- the status port (docs/design.md#status-and-metrics) --------------------------------

    fn on_status_ready(&mut self, token: Token) {
        let Some(mut server) = self.status.take() else {
            return;
        };
        for req in server.on_ready(self.poll.registry(), token, Instant::now()) {
            let response = status::respond(req.page, req.head_only, &self.snapshot());
            server.respond(self.poll.registry(), req.slot, response);
        }
        self.status = Some(server);
    }

    /// What the status pages show, now.
    fn snapshot(&self) -> Snapshot<'_> {
        let now = Instant::now();
        let (memory_used, memory_budget) = self.core.memory_used();
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            uptime: now - self.started,
            remote_id: self.signaling.remote_id(),
            signaling_url: status::public_url(&self.config.signaling_url),
            mode: status::mode(self.ice.mode()),
            signaling: &self.signaling_state,
            sessions: self.core.sessions_info(now),
            max_sessions: self.config.max_sessions,
            counters: self.core.counters(),
            udp_send_dropped: self.udp.iter().map(|u| u.queue.dropped()).sum(),
            udp_unrouted: self.core.unrouted_datagrams(),
            memory_used,
            memory_budget,
            rss_bytes: status::read_rss(),
        }
    }

    fn shutdown(&mut self) {
        self.core
            .handle_shutdown(Instant::now(), "gateway shutting down");
        self.drain();
        for port in &mut self.udp {
            port.queue.flush(&port.socket);
        }
        let reason = "gateway shutting down".into();
        self.conns.close_all(CloseFrame {
            code: CloseCode::Away,
            reason,
        });
        log::info!("gateway stopped");
    }

    /// Carry out everything the machines and connections have for us, flushing what was
    /// written (once per connection and turn); returns the machines' next deadline.
    fn drain(&mut self) -> Option<Instant> {
        loop {
            let deadline = self.pump();
            if !self.conns.has_writes() {
                return deadline;
            }
            self.conns.flush();
        }
    }

    /// Carry out the machines' outputs and the connections' events (writes are only queued);
    /// returns the machines' next deadline.
    fn pump(&mut self) -> Option<Instant> {
        loop {
            let mut idle = true;
            while let Some((owner, event)) = self.conns.poll_event() {
                idle = false;
                self.on_conn_event(owner, event);
            }
            let signaling_deadline = loop {
                match self.signaling.poll_output() {
                    Next::Output(o) => self.on_signaling_output(o),
                    Next::Timeout(t) => break t,
                }
                idle = false;
            };
            let core_deadline = loop {
                match self.core.poll_output() {
                    Next::Output(o) => self.on_core_output(o),
                    Next::Timeout(t) => break t,
                }
                idle = false;
            };
            let ice_deadline = loop {
                match self.ice.poll_output() {
                    Next::Output(o) => self.on_ice_output(o),
                    Next::Timeout(t) => break t,
                }
                idle = false;
            };
            if idle {
                return earliest(earliest(core_deadline, signaling_deadline), ice_deadline);
            }
        }
    }

    // ---- sockets ---------------------------------------------------------------------------

    /// Read datagrams until the socket would block or the turn's budget is spent, then let the
    /// sessions they went to answer, each once for the whole batch.
    fn read_udp(&mut self, i: usize) {
        let mut finished = false;
        for _ in 0..DATAGRAMS_PER_TURN {
            match self.udp[i].socket.recv_from(&mut self.buf) {
                Ok((n, source)) => {
                    let now = Instant::now();
                    let datagram = &self.buf[..n];
                    let culprit = Culprit::Datagram(source);
                    self.core
                        .guarded(now, culprit, |c| c.handle_datagram(now, source, datagram));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    finished = true;
                    break;
                }
                // ICMP errors surface here on Linux; they concern one peer only.
                Err(e) => log::debug!("UDP receive error: {e}"),
            }
        }
        let now = Instant::now();
        self.core
            .guarded(now, Culprit::Timers, |c| c.handle_datagrams_done(now));
        self.pump();
        self.udp[i].unfinished = !finished;
    }

    fn on_dns_answers(&mut self) {
        for (id, answer) in self.conns.on_dns() {
            if let Some(key) = self.lookups.remove(&id) {
                let (now, answer) = (Instant::now(), answer.map_err(|e| e.to_string()));
                self.core
                    .guarded(now, Culprit::Other, |c| c.handle_resolved(now, key, answer));
            }
        }
    }

    /// Read what a connection has, handing each message to its machine at once, up to a
    /// turn's budget of messages and bytes (a fast local server must not keep the loop from
    /// the others: docs/design.md#hostile-peers).
    fn read(&mut self, token: Token) {
        let mut bytes = 0usize;
        for _ in 0..READS_PER_TURN {
            if bytes >= READ_BYTES_PER_TURN {
                break;
            }
            if let Some(Owner::Bridge(bridge)) = self.conns.owner(token) {
                if !self.core.ws_read_allowed(bridge) {
                    return; // paused: the core resumes it (ResumeWsRead)
                }
            }
            let (core, signaling, now) = (&mut self.core, &mut self.signaling, Instant::now());
            let ice = &mut self.ice;
            let mut ice_failed = false;
            let mut signaling_failed = false;
            let more = self
                .conns
                .read_one(token, |owner, data| match (owner, data) {
                    (Owner::Signaling, Data::Message(Message::Text(text))) => {
                        let input = AssertUnwindSafe(|| signaling.handle_text(now, text.as_str()));
                        signaling_failed = catch_unwind(input).is_err();
                    }
                    (Owner::Signaling, _) => signaling.handle_frame(now),
                    (
                        Owner::Bridge(b),
                        Data::Message(m @ (Message::Text(_) | Message::Binary(_))),
                    ) => {
                        bytes += m.len();
                        core.guarded(now, Culprit::Bridge(b), |c| c.handle_ws_message(now, b, m))
                    }
                    (Owner::Fetch(f), Data::Bytes(data)) => {
                        bytes += data.len();
                        core.guarded(now, Culprit::Fetch(f), |c| {
                            c.handle_fetch_data(now, f, data)
                        })
                    }
                    (Owner::Turn(r), Data::Bytes(data)) => {
                        bytes += data.len();
                        core.guarded(now, Culprit::Other, |c| c.handle_turn_data(now, r, data))
                    }
                    (Owner::IceSource, Data::Message(Message::Text(text))) => {
                        let input = AssertUnwindSafe(|| ice.handle_text(now, text.as_str()));
                        ice_failed = catch_unwind(input).is_err();
                    }
                    (Owner::IceSource, Data::Bytes(data)) => {
                        let input = AssertUnwindSafe(|| ice.handle_bytes(now, data));
                        ice_failed = catch_unwind(input).is_err();
                    }
                    // Pings are answered by tungstenite on the next flush.
                    _ => {}
                });
            if signaling_failed {
                // The signaling client's state is suspect: start over with a fresh one.
                log::error!("signaling: internal error handling a message; reconnecting");
                self.conns.close(Owner::Signaling, None);
                let remote_id = self.signaling.remote_id().to_string();
                self.signaling = self.config.signaling_client(now, remote_id);
                return;
            }
            if ice_failed {
                // A reply from the provider hit a bug: start over with a fresh source. The
                // sessions that waited get no session-ready from us; the signaling server
                // gives them its registered list after its 10 s window.
                log::error!(
                    "ICE servers: internal error handling the provider's reply; starting over"
                );
                self.conns.close(Owner::IceSource, None);
                self.ice = self.config.ice_source(now);
                return;
            }
            // What this message caused goes out before the next one is read.
            self.pump();
            if !more {
                return;
            }
        }
        self.conns.mark_unfinished(token);
    }

    fn on_conn_event(&mut self, owner: Owner, event: ConnEvent) {
        let now = Instant::now();
        let end = match event {
            ConnEvent::Opened => {
                match owner {
                    Owner::Signaling => {
                        let url = status::public_url(&self.config.signaling_url);
                        log::info!("signaling: connected to {url}");
                        self.signaling.handle_open(now);
                    }
                    Owner::Bridge(b) => {
                        let culprit = Culprit::Bridge(b);
                        self.core
                            .guarded(now, culprit, |c| c.handle_ws_opened(now, b))
                    }
                    Owner::Fetch(_) => {}
                    Owner::Turn(r) => match self.conns.peer_addr(owner) {
                        Some(server) => self.core.guarded(now, Culprit::Other, |c| {
                            c.handle_turn_connected(now, r, server)
                        }),
                        None => self.core.guarded(now, Culprit::Other, |c| {
                            c.handle_turn_lost(now, r, "no peer address")
                        }),
                    },
                    Owner::IceSource => self.ice.handle_opened(now),
                }
                return;
            }
            ConnEvent::Ended(end) => end,
        };
        let slow = match owner {
            Owner::Signaling => "the signaling server does not keep up",
            _ => "the local service does not keep up with the client",
        };
        let why = end.describe(slow);
        match (owner, end) {
            (Owner::Signaling, End::Closed { code, reason }) => {
                self.signaling.handle_closed(now, code, &reason)
            }
            (Owner::Signaling, _) => self.signaling.handle_closed(now, None, &why),
            (Owner::IceSource, End::Closed { .. }) => self.ice.handle_closed(now, None),
            (Owner::IceSource, _) => self.ice.handle_closed(now, Some(&why)),
            (Owner::Bridge(b), _) => {
                let culprit = Culprit::Bridge(b);
                self.core
                    .guarded(now, culprit, |c| c.handle_ws_closed(now, b, &why))
            }
            (Owner::Turn(r), _) => self
                .core
                .guarded(now, Culprit::Other, |c| c.handle_turn_lost(now, r, &why)),
            (Owner::Fetch(f), end) => self.core.guarded(now, Culprit::Fetch(f), |c| match end {
                End::Closed { .. } => c.handle_fetch_eof(now, f),
                _ => c.handle_fetch_failed(now, f, &why),
            }),
        }
    }

    // ---- the machines' outputs -------------------------------------------------------------

    fn on_ice_output(&mut self, output: IceOutput) {
        let now = Instant::now();
        match output {
            IceOutput::Connect(Connect::WebSocket(url)) => {
                let config = ws_config(ice_source::HA_MAX_MESSAGE, ice_source::HA_MAX_MESSAGE);
                self.conns.open_websocket(Owner::IceSource, &url, config);
            }
            IceOutput::Connect(Connect::Stream(url)) => {
                self.conns.open_stream(Owner::IceSource, &url)
            }
            IceOutput::SendText(text) => {
                self.conns.send(Owner::IceSource, Message::text(text));
            }
            IceOutput::Write(bytes) => {
                self.conns.write(Owner::IceSource, &bytes);
            }
            IceOutput::Close => self.conns.close(Owner::IceSource, None),
            // The seam for a session's own relays: the core keeps the list with the session.
            IceOutput::Servers {
                session_id,
                servers,
                mode,
            } => {
                log::debug!("[{session_id}] ICE servers: {mode}");
                let sent =
                    self.signaling
                        .handle_session_ready_with(now, &session_id, servers.clone());
                if let Err(e) = sent {
                    log::warn!("[{session_id}] session-ready not sent: {e:?}");
                }
                let culprit = Culprit::Session(&session_id);
                self.core.guarded(now, culprit, |c| {
                    c.handle_session_ice_servers(now, &session_id, servers)
                });
            }
        }
    }

    fn on_signaling_output(&mut self, output: Output) {
        let sent = match output {
            Output::Connect => {
                let url = self.config.signaling_url.clone();
                log::info!("signaling: connecting to {}", status::public_url(&url));
                let config = ws_config(client::MAX_MESSAGE, client::MAX_WRITE_BUFFER)
                    .read_buffer_size(SIGNALING_READ_BUFFER);
                self.conns.open_websocket(Owner::Signaling, &url, config);
                true
            }
            Output::Send(text) => self.conns.send(Owner::Signaling, Message::text(text)),
            Output::Ping => self
                .conns
                .send(Owner::Signaling, Message::Ping(Default::default())),
            Output::Disconnect => {
                self.conns.close(Owner::Signaling, None);
                true
            }
            Output::Event(event) => {
                self.on_signaling_event(event);
                true
            }
        };
        if !sent {
            log::debug!("signaling: not connected, dropping an outgoing message");
        }
    }

    fn on_signaling_event(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::Registered { remote_id } => {
                log::info!(
                    "registered with the signaling server: remote access is on. Remote ID {remote_id}, {}",
                    crate::identity::app_link(&remote_id)
                );
                emit_event(json!({"event": "registered", "remote_id": remote_id}));
                self.signaling_state.registered = true;
                self.signaling_state.registrations += 1;
                self.signaling_state.last_registered = Some(std::time::SystemTime::now());
                self.core
                    .guarded(now, Culprit::Other, |c| c.handle_registered(now));
                release_free_memory();
            }
            Event::Lost => {
                log::warn!("signaling: disconnected; new remote clients cannot reach this gateway");
                emit_event(json!({"event": "disconnected"}));
                self.signaling_state.registered = false;
                self.signaling_state.losses += 1;
            }
            session_event => self.core.handle_session_event(now, session_event),
        }
    }

    fn on_core_output(&mut self, output: CoreOutput) {
        let now = Instant::now();
        match output {
            // The session's ICE servers first: at once, or once fetched (at most
            // `ice_source::FETCH_DEADLINE` later), then session-ready (`on_ice_output`).
            CoreOutput::SessionReady { session_id } => self.ice.handle_session(now, session_id),
            CoreOutput::Answer { session_id, sdp } => {
                self.signaling.handle_answer(now, &session_id, &sdp);
            }
            CoreOutput::Candidate {
                session_id,
                candidate,
            } => {
                self.signaling.handle_candidate(now, &session_id, candidate);
            }
            CoreOutput::Transmit(t) => {
                // The socket of the destination's family (the first one if there is none).
                let v6 = t.destination.is_ipv6();
                let i = self.udp.iter().position(|u| u.v6 == v6).unwrap_or(0);
                let port = &mut self.udp[i];
                port.queue.send(&port.socket, t.destination, t.contents)
            }
            CoreOutput::OpenWs { bridge, url } => {
                let config = ws_config(LOCAL_MAX_MESSAGE, LOCAL_MAX_WRITE_BUFFER);
                self.conns
                    .open_websocket(Owner::Bridge(bridge), &url, config);
            }
            CoreOutput::WsSend { bridge, msg } => {
                if !self.conns.send(Owner::Bridge(bridge), msg) {
                    log::debug!("bridge {bridge}: not open, message dropped");
                }
            }
            CoreOutput::CloseWs { bridge } => self.conns.close(Owner::Bridge(bridge), None),
            CoreOutput::ResumeWsRead { bridge } => {
                if let Some(token) = self.conns.token_of(Owner::Bridge(bridge)) {
                    self.read(token);
                }
            }
            CoreOutput::FetchConnect { conn } => self
                .conns
                .open_stream(Owner::Fetch(conn), &self.config.local_ws_url),
            // No connection: it ended already, and the core was told so.
            CoreOutput::FetchWrite { conn, bytes } => {
                self.conns.write(Owner::Fetch(conn), &bytes);
            }
            CoreOutput::FetchClose { conn } => self.conns.close(Owner::Fetch(conn), None),
            CoreOutput::Lookup { key, host, port } => {
                let id = self.conns.resolve(&host, port);
                self.lookups.insert(id, key);
            }
            CoreOutput::TurnConnect {
                relay,
                host,
                port,
                tls,
            } => {
                if !self.conns.open_tcp(Owner::Turn(relay), &host, port, tls) {
                    self.core.guarded(now, Culprit::Other, |c| {
                        c.handle_turn_lost(now, relay, "no TLS configuration")
                    });
                }
            }
            CoreOutput::TurnWrite { relay, bytes } => {
                // Over a stream a TURN request (STUN) is sent once, so it is never dropped;
                // relayed data (ChannelData) is, while the stream is busy, and leaves room
                // for the requests (docs/design.md#turn-relays).
                let owner = Owner::Turn(relay);
                if crate::webrtc::is_stun(&bytes) {
                    self.conns.write(owner, &bytes);
                } else if !self.conns.write_or_drop(owner, &bytes, TURN_REQUEST_ROOM) {
                    log::trace!("TURN relay {relay}: stream busy, data dropped");
                }
            }
            CoreOutput::TurnClose { relay } => self.conns.close(Owner::Turn(relay), None),
            CoreOutput::SendspinPlayer {
                session_id,
                client_id,
            } => emit_event(json!({
                "event": "sendspin_player",
                "session_id": session_id,
                "client_id": client_id,
            })),
        }
    }
}

/// Give the heap's free pages back to the kernel. Start-up (flags, logging, the identity's
/// certificate, the TLS configuration) and the signaling handshake leave freed memory that
/// glibc keeps; an idle gateway may sit registered for weeks, so once registered is the
/// moment. A no-op elsewhere than glibc. Then the same for the code start-up ran
/// ([`release_startup_code`]).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and shrinks the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
    release_startup_code();
}

/// Most of an idle gateway's resident memory is its own code, mapped from the binary: the
/// pages start-up ran (flags, logging, the identity, TLS set-up) stay mapped although they
/// never run again. Once registered, the driver unmaps the binary's executable pages
/// (`MADV_DONTNEED`; docs/design.md#where-the-memory-goes): they stay in the page cache as
/// clean, unmapped pages (the first the kernel reclaims under memory pressure) and what the
/// loop still runs is mapped again on its next use. Only the executable mapping: the
/// relocated read-only data (RELRO) holds patched pointers and must stay. (`MADV_PAGEOUT`,
/// which would drop them from the cache too, reclaimed nothing on the machines we measured.)
fn release_startup_code() {
    #[cfg(target_os = "linux")]
    {
        let (Ok(maps), Ok(exe)) = (
            std::fs::read_to_string("/proc/self/maps"),
            std::env::current_exe(),
        ) else {
            return;
        };
        for (start, end) in executable_mappings(&maps, &exe.to_string_lossy()) {
            // SAFETY: the range is a whole mapping of our own binary's code, read-only and
            // never written (no private copy exists to lose): unmapping its pages changes no
            // content, a later access maps them again from the file.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}

/// The `r-xp` mappings of `path` in a `/proc/PID/maps` text: (start, end) addresses.
fn executable_mappings(maps: &str, path: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let file = fields.nth(3)?;
            if perms != "r-xp" || file != path {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            (end > start).then_some((start, end))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::executable_mappings;

    #[test]
    fn only_the_binarys_executable_mappings() {
        let maps = "\
5580a0000000-5580a0100000 r--p 00000000 fd:01 42 /usr/bin/ma-webrtc-gateway
5580a0100000-5580a0600000 r-xp 00100000 fd:01 42 /usr/bin/ma-webrtc-gateway
5580a0600000-5580a0700000 r--p 00600000 fd:01 42 /usr/bin/ma-webrtc-gateway
7f0000000000-7f0000100000 r-xp 00000000 fd:01 7 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
garbage line
";
        assert_eq!(
            executable_mappings(maps, "/usr/bin/ma-webrtc-gateway"),
            [(0x5580a0100000, 0x5580a0600000)]
        );
        assert!(executable_mappings(maps, "/other").is_empty());
    }

    /// On this very process: its test binary has an executable mapping, and reclaiming it
    /// leaves the process running.
    #[test]
    fn releasing_our_own_code_is_harmless() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let exe = std::env::current_exe().unwrap();
        assert!(!executable_mappings(&maps, &exe.to_string_lossy()).is_empty());
        super::release_startup_code();
        // Code runs on: the pages come back when used.
        super::release_startup_code();
        assert!(!executable_mappings(&maps, &exe.to_string_lossy()).is_empty());
    }
}
