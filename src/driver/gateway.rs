//! The gateway's event loop: one mio `Poll` for the signaling socket, the shared UDP socket,
//! the local WebSockets of every bridge, DNS answers and signals. It moves bytes and events
//! between them and the two state machines ([`SignalingClient`] and [`Gateway`]).

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::net::SocketAddr;
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

use crate::backoff::{Backoff, Jitter};
use crate::config::GatewayConfig;
use crate::gateway::bridge::BridgeId;
use crate::gateway::{CoreConfig, Gateway, Output as CoreOutput};
use crate::http_proxy::ConnId;
use crate::machine::{earliest, Machine, Next};
use crate::net::resolve::{LookupId, Resolver};
use crate::net::tcp_client::{Ready, TcpClient};
use crate::net::udp::{self, SendQueue};
use crate::net::ws_client::{Progress, WsClient};
use crate::signaling::client::{self, ClientConfig, Event, Output, SignalingClient};
use crate::webrtc::stun_gather::stun_servers_from_ice_servers;

const WAKER: Token = Token(0);
const SIGNALS: Token = Token(1);
const SIGNALING: Token = Token(2);
const UDP: Token = Token(3);
/// Tokens of local sockets from here on: even for bridges' WebSockets, odd for HTTP proxy
/// connections (`BRIDGE_BASE + 2 * id (+ 1)`).
const BRIDGE_BASE: usize = 16;

fn bridge_token(bridge: BridgeId) -> Token {
    Token(BRIDGE_BASE + 2 * bridge as usize)
}

fn fetch_token(conn: ConnId) -> Token {
    Token(BRIDGE_BASE + 2 * conn as usize + 1)
}

/// Largest signaling message accepted (SDP offers are a few KiB).
const SIGNALING_MAX_MESSAGE: usize = 256 * 1024;
/// Bytes the signaling socket may queue before the connection counts as stuck.
const SIGNALING_MAX_WRITE_BUFFER: usize = 1024 * 1024;
/// Largest message accepted from a local service (MA's player and library lists can be large;
/// they are chunked towards the client).
const LOCAL_MAX_MESSAGE: usize = 32 * 1024 * 1024;
/// Bytes queued towards a local service before the client counts as flooding it.
const LOCAL_MAX_WRITE_BUFFER: usize = 4 * 1024 * 1024;

fn signaling_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(SIGNALING_MAX_MESSAGE))
        .max_frame_size(Some(SIGNALING_MAX_MESSAGE))
        .max_write_buffer_size(SIGNALING_MAX_WRITE_BUFFER)
}

fn local_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(LOCAL_MAX_MESSAGE))
        .max_frame_size(Some(LOCAL_MAX_MESSAGE))
        .max_write_buffer_size(LOCAL_MAX_WRITE_BUFFER)
}

fn is_would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == io::ErrorKind::WouldBlock)
}

struct Driver {
    config: GatewayConfig,
    poll: Poll,
    resolver: Resolver,
    tls: Option<Arc<rustls::ClientConfig>>,
    signaling: SignalingClient,
    /// When `signaling` next needs `handle_timeout` (from its last drain).
    signaling_deadline: Option<Instant>,
    conn: Option<WsClient>,
    core: Gateway,
    udp: UdpSocket,
    udp_queue: SendQueue,
    bridges: HashMap<BridgeId, WsClient>,
    /// HTTP proxy connections to MA.
    fetches: HashMap<ConnId, TcpClient>,
    /// Bridges with writes to flush at the end of this turn.
    dirty: HashSet<BridgeId>,
    /// DNS lookups of STUN servers.
    stun_lookups: HashSet<LookupId>,
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
            "Remote ID {} ({}), fingerprint sha-256 {}",
            remote_id,
            crate::identity::display_remote_id(&remote_id),
            identity.fingerprint_colon_hex()
        );
        let needs_tls =
            config.signaling_url.tls || config.local_ws_url.tls || config.sendspin_url.tls;
        let tls = if needs_tls {
            Some(crate::net::tls::client_config(
                config.signaling_ca_file.as_deref(),
            )?)
        } else {
            None
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
        let mut core = Gateway::new(
            CoreConfig::new(
                config.local_ws_url.clone(),
                config.sendspin_url.clone(),
                config.max_sessions,
            ),
            identity.dtls_cert(),
        );
        for addr in udp::host_addresses(bound, config.public_ip) {
            log::info!("WebRTC host candidate {addr} (UDP bound to {bound})");
            core.add_host_candidate(addr);
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
            signaling_deadline: None,
            conn: None,
            core,
            udp,
            udp_queue: SendQueue::default(),
            bridges: HashMap::new(),
            fetches: HashMap::new(),
            dirty: HashSet::new(),
            stun_lookups: HashSet::new(),
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
        let mut buf = vec![0u8; 65536];
        loop {
            let now = Instant::now();
            self.signaling.handle_timeout(now);
            self.core.handle_timeout(now);
            self.drain();
            if self.shutting_down {
                break;
            }
            let deadline = earliest(self.core.poll_timeout(), self.signaling_deadline);
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
                    SIGNALING => self.on_signaling_ready(),
                    UDP => {
                        if event.is_writable() {
                            self.udp_queue.flush(&self.udp);
                        }
                        if event.is_readable() {
                            self.read_udp(&mut buf);
                        }
                    }
                    Token(t) if t >= BRIDGE_BASE && (t - BRIDGE_BASE).is_multiple_of(2) => {
                        self.on_bridge_ready(((t - BRIDGE_BASE) / 2) as BridgeId)
                    }
                    Token(t) if t >= BRIDGE_BASE => {
                        self.on_fetch_ready(((t - BRIDGE_BASE) / 2) as ConnId)
                    }
                    _ => {}
                }
                self.drain();
            }
        }
        self.shutdown();
        Ok(())
    }

    fn shutdown(&mut self) {
        self.core.close_all("gateway shutting down");
        self.drain();
        self.udp_queue.flush(&self.udp);
        if let Some(mut conn) = self.conn.take() {
            if let Some(ws) = conn.socket() {
                let _ = ws.close(Some(CloseFrame {
                    code: CloseCode::Away,
                    reason: "gateway shutting down".into(),
                }));
                let _ = ws.flush();
            }
            conn.close(self.poll.registry());
        }
        for (_, mut f) in self.fetches.drain() {
            f.close(self.poll.registry());
        }
        for (_, mut b) in self.bridges.drain() {
            if let Some(ws) = b.socket() {
                let _ = ws.close(None);
                let _ = ws.flush();
            }
            b.close(self.poll.registry());
        }
        log::info!("gateway stopped");
    }

    /// Look up the STUN servers of the ICE list; each answer starts a reflexive discovery.
    fn gather_reflexive(&mut self) {
        for server in stun_servers_from_ice_servers(&self.config.ice_servers) {
            let id = self.resolver.lookup(&server.host, server.port);
            self.stun_lookups.insert(id);
        }
    }

    fn read_udp(&mut self, buf: &mut [u8]) {
        loop {
            match self.udp.recv_from(buf) {
                Ok((n, source)) => {
                    self.core.datagram(Instant::now(), source, &buf[..n]);
                    self.drain_core();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // ICMP errors surface here on Linux; they concern one peer only.
                    log::debug!("UDP receive error: {e}");
                }
            }
        }
    }

    fn on_dns_answers(&mut self) {
        for (id, answer) in self.resolver.poll() {
            if self.stun_lookups.remove(&id) {
                match answer {
                    Ok(addrs) => {
                        let family_ok = |a: &&SocketAddr| {
                            a.is_ipv4() == self.config.udp_bind.is_ipv4()
                                || self.config.udp_bind.is_ipv6()
                        };
                        if let Some(addr) = addrs.iter().find(family_ok) {
                            self.core.gather_from(Instant::now(), *addr);
                        }
                    }
                    Err(e) => log::info!("STUN server lookup failed: {e}"),
                }
                continue;
            }
            if let Some(conn) = self.conn.as_mut().filter(|c| c.lookup() == Some(id)) {
                let progress = conn.on_resolved(self.poll.registry(), answer);
                self.on_signaling_progress(progress);
                continue;
            }
            let fetch = self
                .fetches
                .iter()
                .find(|(_, c)| c.lookup() == Some(id))
                .map(|(c, _)| *c);
            if let Some(conn) = fetch {
                if let Some(client) = self.fetches.get_mut(&conn) {
                    let ready = client.on_resolved(self.poll.registry(), answer);
                    self.on_fetch_progress(conn, ready);
                }
                continue;
            }
            let found = self
                .bridges
                .iter()
                .find(|(_, c)| c.lookup() == Some(id))
                .map(|(b, _)| *b);
            if let Some(bridge) = found {
                if let Some(conn) = self.bridges.get_mut(&bridge) {
                    let progress = conn.on_resolved(self.poll.registry(), answer);
                    self.on_bridge_progress(bridge, progress);
                }
            }
        }
    }

    // ---- signaling -------------------------------------------------------------------------

    fn on_signaling_ready(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let progress = conn.on_ready(self.poll.registry());
        self.on_signaling_progress(progress);
    }

    fn on_signaling_progress(&mut self, progress: Progress) {
        let now = Instant::now();
        match progress {
            Progress::Pending => {}
            Progress::Failed(why) => {
                self.conn = None;
                self.signaling.handle_closed(now, None, &why);
            }
            Progress::Opened => {
                log::info!(
                    "signaling: connected to {}",
                    self.config.signaling_url.to_url()
                );
                self.signaling.handle_open(now);
                self.drain_signaling();
                self.read_signaling();
            }
            Progress::Open => self.read_signaling(),
        }
        self.drain_signaling();
    }

    /// Read every frame the socket has (mio is edge-triggered), then flush what is queued.
    fn read_signaling(&mut self) {
        let Some(ws) = self.conn.as_mut().and_then(WsClient::socket) else {
            return;
        };
        let mut closed: Option<(Option<u16>, String)> = None;
        loop {
            match ws.read() {
                Ok(Message::Text(text)) => {
                    self.signaling.handle_text(Instant::now(), text.as_str())
                }
                Ok(Message::Close(frame)) => {
                    let (code, reason) = frame
                        .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                        .unwrap_or((None, String::new()));
                    closed = Some((code, reason));
                    break;
                }
                Ok(_) => self.signaling.handle_frame(Instant::now()),
                Err(e) if is_would_block(&e) => break,
                Err(e) => {
                    closed = Some((None, e.to_string()));
                    break;
                }
            }
        }
        if let Some((code, reason)) = closed {
            // tungstenite queued the close reply: flush it, then drop the socket.
            let _ = ws.flush();
            self.drop_signaling();
            self.signaling.handle_closed(Instant::now(), code, &reason);
        } else {
            self.flush_signaling();
        }
    }

    fn flush_signaling(&mut self) {
        let Some(ws) = self.conn.as_mut().and_then(WsClient::socket) else {
            return;
        };
        match ws.flush() {
            Ok(()) => {}
            Err(e) if is_would_block(&e) => {}
            Err(e) => {
                self.drop_signaling();
                self.signaling
                    .handle_closed(Instant::now(), None, &e.to_string());
            }
        }
    }

    fn drop_signaling(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.close(self.poll.registry());
        }
    }

    fn send_signaling(&mut self, msg: Message) {
        let Some(ws) = self.conn.as_mut().and_then(WsClient::socket) else {
            log::debug!("signaling: not connected, dropping an outgoing message");
            return;
        };
        match ws.write(msg) {
            // WouldBlock: queued in tungstenite's buffer, flushed when the socket is writable.
            Ok(()) => {}
            Err(e) if is_would_block(&e) => {}
            Err(e) => {
                log::warn!("signaling: send failed: {e}");
                self.drop_signaling();
                self.signaling
                    .handle_closed(Instant::now(), None, &e.to_string());
            }
        }
    }

    /// Carry out everything both state machines asked for, until neither has more.
    fn drain(&mut self) {
        loop {
            let a = self.drain_signaling();
            let b = self.drain_core();
            if !a && !b {
                break;
            }
        }
        self.flush_bridges();
    }

    fn drain_signaling(&mut self) -> bool {
        let mut wrote = false;
        let mut any = false;
        loop {
            let output = match self.signaling.poll_output() {
                Next::Output(output) => output,
                Next::Timeout(deadline) => {
                    self.signaling_deadline = deadline;
                    break;
                }
            };
            any = true;
            match output {
                Output::Connect => {
                    self.drop_signaling();
                    log::info!(
                        "signaling: connecting to {}",
                        self.config.signaling_url.to_url()
                    );
                    self.conn = Some(WsClient::start(
                        &self.config.signaling_url,
                        self.tls.clone(),
                        signaling_ws_config(),
                        SIGNALING,
                        &mut self.resolver,
                    ));
                }
                Output::Send(text) => {
                    self.send_signaling(Message::text(text));
                    wrote = true;
                }
                Output::Ping => {
                    self.send_signaling(Message::Ping(Default::default()));
                    wrote = true;
                }
                Output::Disconnect => self.drop_signaling(),
                Output::Event(event) => self.on_signaling_event(event),
            }
        }
        if wrote {
            self.flush_signaling();
        }
        any
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
                // Our public address may have changed while we were away (new DHCP lease,
                // router restart): ask the STUN servers again.
                self.gather_reflexive();
            }
            Event::Lost => {
                log::warn!("signaling: disconnected; new remote clients cannot reach this gateway");
                emit_event(json!({"event": "disconnected"}));
            }
            Event::ClientConnected { session_id } => self.core.client_connected(now, &session_id),
            Event::Offer { session_id, sdp } => self.core.offer(now, &session_id, &sdp),
            Event::RemoteCandidate {
                session_id,
                candidate,
            } => self.core.remote_candidate(now, &session_id, &candidate),
            Event::ClientDisconnected { session_id } => self.core.client_disconnected(&session_id),
        }
    }

    // ---- the gateway core ------------------------------------------------------------------

    fn drain_core(&mut self) -> bool {
        let mut any = false;
        while let Some(output) = self.core.poll_output() {
            any = true;
            match output {
                CoreOutput::SessionReady { session_id } => {
                    if let Err(e) = self
                        .signaling
                        .handle_session_ready(Instant::now(), &session_id)
                    {
                        log::warn!("[{session_id}] session-ready not sent: {e:?}");
                    }
                }
                CoreOutput::Answer { session_id, sdp } => {
                    self.signaling
                        .handle_answer(Instant::now(), &session_id, &sdp);
                }
                CoreOutput::Candidate {
                    session_id,
                    candidate,
                } => {
                    self.signaling
                        .handle_candidate(Instant::now(), &session_id, candidate);
                }
                CoreOutput::Transmit(t) => {
                    self.udp_queue.send(&self.udp, t.destination, t.contents)
                }
                CoreOutput::OpenWs { bridge, url } => {
                    let conn = WsClient::start(
                        &url,
                        self.tls.clone(),
                        local_ws_config(),
                        bridge_token(bridge),
                        &mut self.resolver,
                    );
                    self.bridges.insert(bridge, conn);
                }
                CoreOutput::WsSend { bridge, msg } => self.send_bridge(bridge, msg),
                CoreOutput::CloseWs { bridge } => {
                    if let Some(mut conn) = self.bridges.remove(&bridge) {
                        if let Some(ws) = conn.socket() {
                            let _ = ws.close(None);
                            let _ = ws.flush();
                        }
                        conn.close(self.poll.registry());
                    }
                    self.dirty.remove(&bridge);
                }
                CoreOutput::ResumeWsRead { bridge } => self.read_bridge(bridge),
                CoreOutput::FetchConnect { conn } => {
                    let url = &self.config.local_ws_url;
                    let tls = if url.tls { self.tls.clone() } else { None };
                    let client = TcpClient::start(
                        &url.host,
                        url.port,
                        tls,
                        fetch_token(conn),
                        &mut self.resolver,
                    );
                    self.fetches.insert(conn, client);
                }
                CoreOutput::FetchWrite { conn, bytes } => {
                    let ok = self.fetches.get_mut(&conn).is_some_and(|c| c.write(&bytes));
                    if !ok {
                        self.fail_fetch(conn, "request too large for the connection buffer");
                    } else {
                        self.flush_fetch(conn);
                    }
                }
                CoreOutput::FetchClose { conn } => {
                    if let Some(mut c) = self.fetches.remove(&conn) {
                        c.close(self.poll.registry());
                    }
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
        any
    }

    // ---- HTTP proxy connections ------------------------------------------------------------

    fn on_fetch_ready(&mut self, conn: ConnId) {
        let Some(client) = self.fetches.get_mut(&conn) else {
            return;
        };
        let ready = client.on_ready(self.poll.registry());
        self.on_fetch_progress(conn, ready);
    }

    fn on_fetch_progress(&mut self, conn: ConnId, ready: Ready) {
        match ready {
            Ready::Pending => {}
            Ready::Failed(why) => {
                self.fetches.remove(&conn);
                self.core.fetch_failed(Instant::now(), conn, &why);
            }
            Ready::Connected | Ready::Open => {
                self.flush_fetch(conn);
                self.read_fetch(conn);
            }
        }
    }

    fn flush_fetch(&mut self, conn: ConnId) {
        let Some(client) = self.fetches.get_mut(&conn) else {
            return;
        };
        if let Err(e) = client.flush() {
            self.fail_fetch(conn, &e.to_string());
        }
    }

    fn read_fetch(&mut self, conn: ConnId) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let Some(client) = self.fetches.get_mut(&conn) else {
                return;
            };
            match client.read(&mut buf) {
                Ok(None) => return,
                Ok(Some(0)) => {
                    if let Some(mut c) = self.fetches.remove(&conn) {
                        c.close(self.poll.registry());
                    }
                    self.core.fetch_eof(Instant::now(), conn);
                    return;
                }
                Ok(Some(n)) => self.core.fetch_data(Instant::now(), conn, &buf[..n]),
                Err(e) => {
                    self.fail_fetch(conn, &e.to_string());
                    return;
                }
            }
        }
    }

    fn fail_fetch(&mut self, conn: ConnId, why: &str) {
        if let Some(mut c) = self.fetches.remove(&conn) {
            c.close(self.poll.registry());
        }
        self.core.fetch_failed(Instant::now(), conn, why);
    }

    // ---- local WebSockets ------------------------------------------------------------------

    fn on_bridge_ready(&mut self, bridge: BridgeId) {
        let Some(conn) = self.bridges.get_mut(&bridge) else {
            return;
        };
        let progress = conn.on_ready(self.poll.registry());
        self.on_bridge_progress(bridge, progress);
    }

    fn on_bridge_progress(&mut self, bridge: BridgeId, progress: Progress) {
        match progress {
            Progress::Pending => {}
            Progress::Failed(why) => {
                self.bridges.remove(&bridge);
                self.core.ws_closed(bridge, &why);
            }
            Progress::Opened => {
                self.core.ws_opened(bridge);
                self.drain_core();
                self.read_bridge(bridge);
            }
            Progress::Open => {
                self.read_bridge(bridge);
                // Writable again: push out what tungstenite holds.
                self.dirty.insert(bridge);
            }
        }
    }

    /// Read messages while the core accepts them (it pauses a bridge whose client is slow).
    fn read_bridge(&mut self, bridge: BridgeId) {
        let mut closed = None;
        while self.core.ws_read_allowed(bridge) {
            let Some(ws) = self.bridges.get_mut(&bridge).and_then(WsClient::socket) else {
                return;
            };
            match ws.read() {
                Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                    self.core.ws_message(Instant::now(), bridge, msg);
                    self.drain_core();
                }
                Ok(Message::Close(frame)) => {
                    closed = Some(frame.map_or("closed".to_string(), |f| {
                        format!("closed ({} {})", f.code, f.reason)
                    }));
                    break;
                }
                // Pings are answered by tungstenite on the next flush.
                Ok(_) => {}
                Err(e) if is_would_block(&e) => break,
                Err(e) => {
                    closed = Some(e.to_string());
                    break;
                }
            }
        }
        self.dirty.insert(bridge);
        if let Some(why) = closed {
            self.drop_bridge(bridge, &why);
        }
    }

    fn send_bridge(&mut self, bridge: BridgeId, msg: Message) {
        let Some(ws) = self.bridges.get_mut(&bridge).and_then(WsClient::socket) else {
            log::debug!("bridge {bridge}: not open, message dropped");
            return;
        };
        match ws.write(msg) {
            Ok(()) => {}
            Err(e) if is_would_block(&e) => {}
            Err(tungstenite::Error::WriteBufferFull(_)) => {
                self.drop_bridge(
                    bridge,
                    "the local service does not keep up with the client (write buffer full)",
                );
                return;
            }
            Err(e) => {
                self.drop_bridge(bridge, &e.to_string());
                return;
            }
        }
        self.dirty.insert(bridge);
    }

    fn drop_bridge(&mut self, bridge: BridgeId, why: &str) {
        if let Some(mut conn) = self.bridges.remove(&bridge) {
            conn.close(self.poll.registry());
        }
        self.dirty.remove(&bridge);
        self.core.ws_closed(bridge, why);
    }

    /// Flush every bridge written to in this turn (one flush per batch, not per message).
    fn flush_bridges(&mut self) {
        let dirty: Vec<BridgeId> = self.dirty.drain().collect();
        for bridge in dirty {
            let Some(ws) = self.bridges.get_mut(&bridge).and_then(WsClient::socket) else {
                continue;
            };
            match ws.flush() {
                Ok(()) => {}
                Err(e) if is_would_block(&e) => {}
                Err(e) => {
                    let why = e.to_string();
                    self.drop_bridge(bridge, &why);
                    self.drain_core();
                }
            }
        }
    }
}

/// Machine-readable events for a supervising process: one JSON object per line on stdout.
fn emit_event(v: serde_json::Value) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}
