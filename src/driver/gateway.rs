//! The gateway's event loop (docs/design.md#the-gateway-driver): one mio `Poll` for the shared
//! UDP socket, DNS answers, signals and every outgoing connection: the signaling WebSocket, the
//! bridges' local WebSockets and the HTTP proxy's streams, all in one [`Table`] keyed by token.
//! It only moves bytes and events between them and the two machines, [`SignalingClient`] and
//! [`Gateway`]; every decision is theirs.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use serde_json::json;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::Message;

use super::table::Table;
use crate::backoff::{Backoff, Jitter};
use crate::config::GatewayConfig;
use crate::gateway::bridge::BridgeId;
use crate::gateway::{CoreConfig, Gateway, LookupKey, Output as CoreOutput};
use crate::http_proxy::ConnId;
use crate::machine::{earliest, Machine, Next};
use crate::net::link::{Incoming, Link};
use crate::net::resolve::{LookupId, Resolver};
use crate::net::udp::{self, SendQueue};
use crate::net::Progress;
use crate::signaling::client::{self, ClientConfig, Event, Output, SignalingClient};
use crate::webrtc::stun_gather::stun_servers_from_ice_servers;

const WAKER: Token = Token(0);
const SIGNALS: Token = Token(1);
const UDP: Token = Token(2);
/// Tokens of the connection table start here.
const FIRST_CONN: usize = 3;

/// Largest signaling message accepted (SDP offers are a few KiB).
const SIGNALING_MAX_MESSAGE: usize = 256 * 1024;
/// Bytes the signaling socket may queue before the connection counts as stuck.
const SIGNALING_MAX_WRITE_BUFFER: usize = 1024 * 1024;
/// Largest message accepted from a local service (MA's player and library lists can be large;
/// they are chunked towards the client).
const LOCAL_MAX_MESSAGE: usize = 32 * 1024 * 1024;
/// Bytes queued towards a local service before the client counts as flooding it.
const LOCAL_MAX_WRITE_BUFFER: usize = 4 * 1024 * 1024;
/// Read buffer for datagrams and proxy streams (the largest UDP payload).
const READ_BUFFER: usize = 64 * 1024;

fn ws_config(max_message: usize, max_write_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
        .max_write_buffer_size(max_write_buffer)
}

/// Which machine a connection serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Owner {
    Signaling,
    Bridge(BridgeId),
    Fetch(ConnId),
}

struct Conn {
    owner: Owner,
    link: Link,
}

/// How a connection ended, for its owner.
enum End {
    /// The peer closed it cleanly (close frame or end of stream).
    Closed {
        code: Option<u16>,
        reason: String,
    },
    Failed(String),
}

/// Who waits for a DNS answer.
enum Lookup {
    Conn(Token),
    Core(LookupKey),
}

struct Driver {
    config: GatewayConfig,
    poll: Poll,
    resolver: Resolver,
    tls: Option<Arc<rustls::ClientConfig>>,
    signaling: SignalingClient,
    core: Gateway,
    udp: UdpSocket,
    udp_queue: SendQueue,
    conns: Table<Conn>,
    /// The signaling connection, bridges and fetches by their machines' ids.
    by_owner: HashMap<Owner, Token>,
    lookups: HashMap<LookupId, Lookup>,
    /// Connections written to in this turn: flushed once, after the machines are drained.
    dirty: HashSet<Token>,
    buf: Vec<u8>,
    shutting_down: bool,
}

/// Run the gateway until SIGINT/SIGTERM; returns the exit code.
pub fn run(config: GatewayConfig) -> i32 {
    match Driver::new(config).and_then(|d| d.run()) {
        Ok(()) => 0,
        Err(e) => {
            log::error!("{e}");
            1
        }
    }
}

impl Driver {
    fn new(config: GatewayConfig) -> Result<Driver, String> {
        let (identity, remote_id) = super::load_identity(&config)?;
        log::info!(
            "Remote ID {remote_id} ({}), fingerprint sha-256 {}",
            crate::identity::display_remote_id(&remote_id),
            identity.fingerprint_colon_hex()
        );
        let urls = [
            &config.signaling_url,
            &config.local_ws_url,
            &config.sendspin_url,
        ];
        let tls = match urls.iter().any(|u| u.tls) {
            true => Some(crate::net::tls::client_config(
                config.signaling_ca_file.as_deref(),
            )?),
            false => None,
        };
        let poll = Poll::new().map_err(|e| format!("cannot create the event loop: {e}"))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(|e| e.to_string())?);
        let mut udp = udp::bind(config.udp_bind)
            .map_err(|e| format!("cannot bind UDP {} (MA_UDP_BIND): {e}", config.udp_bind))?;
        poll.registry()
            .register(&mut udp, UDP, Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| e.to_string())?;
        let bound = udp.local_addr().map_err(|e| e.to_string())?;
        let now = Instant::now();
        let mut core_config = CoreConfig::new(
            config.local_ws_url.clone(),
            config.sendspin_url.clone(),
            config.max_sessions,
        );
        core_config.stun_servers = stun_servers_from_ice_servers(&config.ice_servers);
        let mut core = Gateway::new(now, core_config, identity.dtls_cert());
        for addr in udp::host_addresses(bound, config.public_ip) {
            log::info!("WebRTC host candidate {addr} (UDP bound to {bound})");
            core.handle_host_candidate(now, addr);
        }
        let signaling = SignalingClient::new(
            now,
            ClientConfig {
                remote_id,
                ping_interval: config.signaling_ping,
                connect_timeout: client::CONNECT_TIMEOUT,
            },
            config.ice_servers.clone(),
            Backoff::new(
                config.reconnect_min,
                config.reconnect_max,
                Jitter::from_os(),
            ),
        );
        Ok(Driver {
            resolver: Resolver::new(waker),
            config,
            poll,
            tls,
            signaling,
            core,
            udp,
            udp_queue: SendQueue::default(),
            conns: Table::new(FIRST_CONN),
            by_owner: HashMap::new(),
            lookups: HashMap::new(),
            dirty: HashSet::new(),
            buf: vec![0; READ_BUFFER],
            shutting_down: false,
        })
    }

    fn run(mut self) -> Result<(), String> {
        let mut signals = Signals::new([SIGINT, SIGTERM])
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(|e| e.to_string())?;
        log::info!(
            "gateway starting: signaling {}, MA API {}",
            self.config.signaling_url.to_url(),
            self.config.local_ws_url.to_url()
        );
        let mut events = Events::with_capacity(256);
        while !self.shutting_down {
            let now = Instant::now();
            self.signaling.handle_timeout(now);
            self.core.handle_timeout(now);
            let deadline = self.drain();
            // Round up to whole milliseconds so we never wake just before a deadline.
            let wait = deadline
                .map(|d| d.saturating_duration_since(Instant::now()) + Duration::from_micros(999));
            match self.poll.poll(&mut events, wait) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("event loop failed: {e}")),
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => self.on_dns_answers(),
                    SIGNALS => {
                        for sig in signals.pending() {
                            log::info!("signal {sig}: shutting down");
                            self.shutting_down = true;
                        }
                    }
                    UDP => {
                        self.udp_queue.flush(&self.udp);
                        self.read_udp();
                    }
                    token => self.on_ready(token),
                }
                self.drain();
            }
        }
        self.shutdown();
        Ok(())
    }

    fn shutdown(&mut self) {
        self.core
            .handle_shutdown(Instant::now(), "gateway shutting down");
        self.drain();
        self.udp_queue.flush(&self.udp);
        for token in self.conns.tokens() {
            let frame = CloseFrame {
                code: CloseCode::Away,
                reason: "gateway shutting down".into(),
            };
            self.close(token, Some(frame));
        }
        log::info!("gateway stopped");
    }

    /// Carry out everything both machines ask for until neither has more, flushing what was
    /// written (once per connection and turn); returns the earliest deadline of the two.
    fn drain(&mut self) -> Option<Instant> {
        loop {
            let deadline = self.pump();
            if self.dirty.is_empty() {
                return deadline;
            }
            for token in std::mem::take(&mut self.dirty) {
                let flushed = self.conns.get_mut(token).map(|c| c.link.flush());
                if let Some(Err(why)) = flushed {
                    self.drop_conn(token, End::Failed(why));
                }
            }
        }
    }

    /// Carry out the machines' outputs (writes are only queued); returns their next deadline.
    fn pump(&mut self) -> Option<Instant> {
        loop {
            let mut idle = true;
            while let Some(output) = self.signaling.poll_output() {
                idle = false;
                self.on_signaling_output(output);
            }
            let core_deadline = loop {
                match self.core.poll_output() {
                    Next::Output(o) => self.on_core_output(o),
                    Next::Timeout(t) => break t,
                }
                idle = false;
            };
            if idle {
                return earliest(core_deadline, Some(self.signaling.poll_timeout()));
            }
        }
    }

    // ---- sockets ---------------------------------------------------------------------------

    fn read_udp(&mut self) {
        loop {
            match self.udp.recv_from(&mut self.buf) {
                Ok((n, source)) => {
                    self.core
                        .handle_datagram(Instant::now(), source, &self.buf[..n]);
                    self.pump();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP errors surface here on Linux; they concern one peer only.
                Err(e) => log::debug!("UDP receive error: {e}"),
            }
        }
    }

    fn on_dns_answers(&mut self) {
        for (id, answer) in self.resolver.poll() {
            match self.lookups.remove(&id) {
                Some(Lookup::Conn(token)) => {
                    let Some(conn) = self.conns.get_mut(token) else {
                        continue;
                    };
                    let progress = conn.link.on_resolved(self.poll.registry(), answer);
                    self.on_progress(token, progress);
                }
                Some(Lookup::Core(key)) => {
                    let answer = answer.map_err(|e| e.to_string());
                    self.core.handle_resolved(Instant::now(), key, answer);
                }
                None => {}
            }
        }
    }

    /// Open an outgoing connection for `owner`.
    fn open(&mut self, owner: Owner, start: impl FnOnce(Token, &mut Resolver) -> Link) {
        let resolver = &mut self.resolver;
        let token = self.conns.insert(|token| Conn {
            owner,
            link: start(token, resolver),
        });
        if let Some(id) = self.conns.get(token).and_then(|c| c.link.lookup()) {
            self.lookups.insert(id, Lookup::Conn(token));
        }
        self.by_owner.insert(owner, token);
    }

    fn on_ready(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        let progress = conn.link.on_ready(self.poll.registry());
        self.on_progress(token, progress);
    }

    fn on_progress(&mut self, token: Token, progress: Progress) {
        let Some(owner) = self.conns.get(token).map(|c| c.owner) else {
            return;
        };
        let now = Instant::now();
        match progress {
            Progress::Pending => return,
            Progress::Failed(why) => return self.drop_conn(token, End::Failed(why)),
            Progress::Opened => match owner {
                Owner::Signaling => {
                    let url = self.config.signaling_url.to_url();
                    log::info!("signaling: connected to {url}");
                    self.signaling.handle_open(now);
                }
                Owner::Bridge(bridge) => self.core.handle_ws_opened(now, bridge),
                Owner::Fetch(_) => {}
            },
            Progress::Open => {}
        }
        self.read(token);
    }

    /// Read until the socket would block (mio is edge-triggered), or until the core pauses a
    /// bridge whose client is slow ([`CoreOutput::ResumeWsRead`] resumes it).
    fn read(&mut self, token: Token) {
        // Whatever the read queues (pongs, close replies) goes out with this turn's flush.
        self.dirty.insert(token);
        loop {
            let Some(conn) = self.conns.get_mut(token) else {
                return;
            };
            let owner = conn.owner;
            if let Owner::Bridge(bridge) = owner {
                if !self.core.ws_read_allowed(bridge) {
                    return;
                }
            }
            let now = Instant::now();
            match conn.link.read(&mut self.buf) {
                Ok(None) => return,
                Ok(Some(Incoming::Closed { code, reason })) => {
                    return self.drop_conn(token, End::Closed { code, reason })
                }
                Err(why) => return self.drop_conn(token, End::Failed(why)),
                Ok(Some(incoming)) => match (owner, incoming) {
                    (Owner::Signaling, Incoming::Message(Message::Text(text))) => {
                        self.signaling.handle_text(now, text.as_str())
                    }
                    (Owner::Signaling, _) => self.signaling.handle_frame(now),
                    (Owner::Bridge(b), Incoming::Message(m @ Message::Text(_)))
                    | (Owner::Bridge(b), Incoming::Message(m @ Message::Binary(_))) => {
                        self.core.handle_ws_message(now, b, m);
                        self.pump();
                    }
                    (Owner::Fetch(c), Incoming::Bytes(n)) => {
                        self.core.handle_fetch_data(now, c, &self.buf[..n])
                    }
                    // Pings are answered by tungstenite on the next flush.
                    _ => {}
                },
            }
        }
    }

    fn send(&mut self, token: Token, msg: Message) {
        let Some(conn) = self.conns.get_mut(token) else {
            log::debug!("not connected: an outgoing message is dropped");
            return;
        };
        let why = match conn.link.send(msg) {
            Ok(()) => {
                self.dirty.insert(token);
                return;
            }
            Err(Some(why)) => why,
            Err(None) if conn.owner == Owner::Signaling => {
                "the signaling server does not keep up (write buffer full)".into()
            }
            Err(None) => {
                "the local service does not keep up with the client (write buffer full)".into()
            }
        };
        self.drop_conn(token, End::Failed(why));
    }

    /// Close a connection its machine no longer wants (no report back to the machine).
    fn close(&mut self, token: Token, frame: Option<CloseFrame>) {
        if let Some(mut conn) = self.forget(token) {
            conn.link.close(self.poll.registry(), frame);
        }
    }

    fn token_of(&self, owner: Owner) -> Option<Token> {
        self.by_owner.get(&owner).copied()
    }

    fn forget(&mut self, token: Token) -> Option<Conn> {
        let conn = self.conns.remove(token)?;
        self.by_owner.remove(&conn.owner);
        self.dirty.remove(&token);
        Some(conn)
    }

    /// A connection ended on its own: drop it and tell its machine.
    fn drop_conn(&mut self, token: Token, end: End) {
        let Some(mut conn) = self.forget(token) else {
            return;
        };
        conn.link.close(self.poll.registry(), None);
        let now = Instant::now();
        match (conn.owner, end) {
            (Owner::Signaling, End::Closed { code, reason }) => {
                self.signaling.handle_closed(now, code, &reason)
            }
            (Owner::Signaling, End::Failed(why)) => self.signaling.handle_closed(now, None, &why),
            (Owner::Bridge(b), End::Closed { code, reason }) => {
                let why = code.map_or("closed".into(), |c| format!("closed ({c} {reason})"));
                self.core.handle_ws_closed(now, b, &why)
            }
            (Owner::Bridge(b), End::Failed(why)) => self.core.handle_ws_closed(now, b, &why),
            (Owner::Fetch(c), End::Closed { .. }) => self.core.handle_fetch_eof(now, c),
            (Owner::Fetch(c), End::Failed(why)) => self.core.handle_fetch_failed(now, c, &why),
        }
    }

    // ---- the machines' outputs -------------------------------------------------------------

    fn on_signaling_output(&mut self, output: Output) {
        let conn = self.token_of(Owner::Signaling);
        match output {
            Output::Connect => {
                if let Some(token) = conn {
                    self.close(token, None);
                }
                let url = self.config.signaling_url.clone();
                log::info!("signaling: connecting to {}", url.to_url());
                let tls = self.tls.clone();
                let config = ws_config(SIGNALING_MAX_MESSAGE, SIGNALING_MAX_WRITE_BUFFER);
                self.open(Owner::Signaling, |token, resolver| {
                    Link::websocket(&url, tls, config, token, resolver)
                });
            }
            Output::Send(text) => self.send_signaling(Message::text(text)),
            Output::Ping => self.send_signaling(Message::Ping(Default::default())),
            Output::Disconnect => {
                if let Some(token) = conn {
                    self.close(token, None);
                }
            }
            Output::Event(event) => self.on_signaling_event(event),
        }
    }

    fn send_signaling(&mut self, msg: Message) {
        match self.token_of(Owner::Signaling) {
            Some(token) => self.send(token, msg),
            None => log::debug!("signaling: not connected, dropping an outgoing message"),
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
                self.core.handle_registered(now);
            }
            Event::Lost => {
                log::warn!("signaling: disconnected; new remote clients cannot reach this gateway");
                emit_event(json!({"event": "disconnected"}));
            }
            Event::ClientConnected { session_id } => {
                self.core.handle_client_connected(now, &session_id)
            }
            Event::Offer { session_id, sdp } => self.core.handle_offer(now, &session_id, &sdp),
            Event::RemoteCandidate {
                session_id,
                candidate,
            } => self
                .core
                .handle_remote_candidate(now, &session_id, &candidate),
            Event::ClientDisconnected { session_id } => {
                self.core.handle_client_disconnected(now, &session_id)
            }
        }
    }

    fn on_core_output(&mut self, output: CoreOutput) {
        let now = Instant::now();
        match output {
            CoreOutput::SessionReady { session_id } => {
                let ice = self.config.ice_servers.clone();
                if let Err(e) = self.signaling.session_ready(now, &session_id, &ice) {
                    log::warn!("[{session_id}] session-ready not sent: {e:?}");
                }
            }
            CoreOutput::Answer { session_id, sdp } => {
                self.signaling.send_answer(&session_id, &sdp);
            }
            CoreOutput::Candidate {
                session_id,
                candidate,
            } => {
                self.signaling.send_candidate(&session_id, candidate);
            }
            CoreOutput::Transmit(t) => self.udp_queue.send(&self.udp, t.destination, t.contents),
            CoreOutput::OpenWs { bridge, url } => {
                let tls = self.tls.clone();
                let config = ws_config(LOCAL_MAX_MESSAGE, LOCAL_MAX_WRITE_BUFFER);
                self.open(Owner::Bridge(bridge), |token, resolver| {
                    Link::websocket(&url, tls, config, token, resolver)
                });
            }
            CoreOutput::FetchConnect { conn } => {
                let url = &self.config.local_ws_url;
                let (host, port) = (url.host.clone(), url.port);
                let tls = self.tls.clone().filter(|_| url.tls);
                self.open(Owner::Fetch(conn), |token, resolver| {
                    Link::stream(&host, port, tls, token, resolver)
                });
            }
            CoreOutput::WsSend { bridge, msg } => {
                if let Some(token) = self.token_of(Owner::Bridge(bridge)) {
                    self.send(token, msg);
                }
            }
            CoreOutput::FetchWrite { conn, bytes } => {
                let token = self.token_of(Owner::Fetch(conn));
                let written = token
                    .and_then(|t| self.conns.get_mut(t))
                    .map(|c| c.link.write(&bytes));
                match (token, written) {
                    (Some(token), Some(Ok(()))) => {
                        self.dirty.insert(token);
                    }
                    (Some(token), Some(Err(why))) => self.drop_conn(token, End::Failed(why)),
                    _ => self.core.handle_fetch_failed(now, conn, "no connection"),
                }
            }
            CoreOutput::CloseWs { bridge } => {
                if let Some(token) = self.token_of(Owner::Bridge(bridge)) {
                    self.close(token, None);
                }
            }
            CoreOutput::FetchClose { conn } => {
                if let Some(token) = self.token_of(Owner::Fetch(conn)) {
                    self.close(token, None);
                }
            }
            CoreOutput::ResumeWsRead { bridge } => {
                if let Some(token) = self.token_of(Owner::Bridge(bridge)) {
                    self.read(token);
                }
            }
            CoreOutput::Lookup { key, host, port } => {
                let id = self.resolver.lookup(&host, port);
                self.lookups.insert(id, Lookup::Core(key));
            }
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

/// Machine-readable events for a supervising process: one JSON object per line on stdout.
fn emit_event(v: serde_json::Value) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}
