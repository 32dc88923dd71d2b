//! The signaling server's event loop: one mio `Poll` for the listener, every connection and
//! SIGINT/SIGTERM. It moves bytes between sockets and the sans-IO [`SignalServer`].
//!
//! A connection goes through these phases:
//! `Head` (read the HTTP request head, bounded in size and time; TLS handshakes happen here) →
//! `Respond` (write a fixed response, or the `101` of a WebSocket upgrade) →
//! `Ws` (an open WebSocket, fed to the server) → `Closing` (our close frame is being flushed) →
//! `Draining` (write side shut; discard what still arrives until EOF, so the peer reads our last
//! bytes instead of a reset). Every phase but `Ws` has a deadline; `Ws` has pings and a silence
//! limit.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::Utf8Bytes;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Error as WsError, Message, WebSocket};

use crate::config::signal::SignalConfig;
use crate::config::{bad, SignalArgs};
use crate::machine::{Machine, Next};
use crate::net::stream::{Stream, TlsStream};
use crate::net::would_block;
use crate::signaling::protocol::{err_rate_limited, FromServer};
use crate::signaling::server::http::{self, Parsed, Route};
use crate::signaling::server::{Check, ConnId, Output, ServerConfig, SignalServer};

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const WAKER: Token = Token(2);
const FIRST_CONN: usize = 3;

/// Largest WebSocket message and frame accepted (SDP offers are a few KiB).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Bytes a connection may have queued towards its peer; a reader slower than that is closed.
pub const MAX_WRITE_BUFFER: usize = 256 * 1024;
/// Bytes of relayed client messages a gateway's queue may hold; a client whose message does not
/// fit is closed, and the gateway keeps the rest of its queue for everything else.
pub const RELAY_BUDGET: usize = MAX_WRITE_BUFFER / 2;
/// Messages read from one connection before the others get a turn.
const READS_PER_TURN: usize = 64;
/// Reads of a draining socket per event (the deadline ends a peer that keeps sending).
const DRAIN_READS_PER_TURN: usize = 16;

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub listen: SocketAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Open connections at most (any phase); more are refused at accept.
    pub max_connections: usize,
    pub server: ServerConfig,
    /// Time allowed for the TLS handshake and the HTTP request head.
    pub head_timeout: Duration,
    /// A WebSocket ping (and a JSON `ping`, like the public server) this often.
    pub ping_interval: Duration,
    /// A WebSocket silent for this long (no frame at all, not even a pong) is dropped.
    pub dead_after: Duration,
    /// Time allowed for a closing connection to flush and for the peer to hang up.
    pub linger: Duration,
}

impl Default for DriverConfig {
    fn default() -> DriverConfig {
        DriverConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8787)),
            tls: None,
            max_connections: 4096,
            server: ServerConfig::default(),
            head_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            dead_after: Duration::from_secs(75),
            linger: Duration::from_secs(2),
        }
    }
}

enum Phase {
    Head {
        stream: Stream,
        buf: Vec<u8>,
    },
    Respond {
        stream: Stream,
        out: Vec<u8>,
        pos: usize,
        /// `Some(bytes after the head)` when this is a WebSocket upgrade.
        upgrade: Option<Vec<u8>>,
    },
    Ws(Box<WebSocket<Stream>>),
    Closing(Box<WebSocket<Stream>>),
    Draining(Stream),
}

impl Phase {
    fn stream_mut(&mut self) -> &mut Stream {
        match self {
            Phase::Head { stream, .. }
            | Phase::Respond { stream, .. }
            | Phase::Draining(stream) => stream,
            Phase::Ws(ws) | Phase::Closing(ws) => ws.get_mut(),
        }
    }
}

struct Conn {
    phase: Phase,
    /// The TCP peer until the request head is read, then the client's address (behind a
    /// trusted proxy, the one it forwards).
    ip: IpAddr,
    /// Bytes written to the WebSocket since its queue was last seen empty (an upper bound of
    /// what it holds).
    queued: usize,
    /// Ends every phase but `Ws`.
    deadline: Instant,
    last_rx: Instant,
    next_ping: Instant,
}

/// Stops a running [`Driver`] from another thread.
#[derive(Clone)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

pub struct Driver {
    config: DriverConfig,
    poll: Poll,
    listener: TcpListener,
    local_addr: SocketAddr,
    server: SignalServer,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    /// Connections whose turn ended with input possibly left unread (edge-triggered).
    read_pending: HashSet<Token>,
    /// Connections written to since their last flush.
    dirty: HashSet<Token>,
    /// Accepting failed for lack of resources (e.g. file descriptors): retry on the next tick.
    accept_paused: bool,
    stop: StopHandle,
}

fn conn_id(token: Token) -> ConnId {
    token.0 as ConnId
}

fn close_frame(code: u16, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from_static(reason),
    }
}

impl Driver {
    /// Bind the listener (port 0 picks a free port: see [`Driver::local_addr`]).
    pub fn new(config: DriverConfig) -> Result<Driver, String> {
        // The first use of the system randomness initialises aws-lc (~40 ms measured): pay it
        // at start-up rather than in the first client's connect-request.
        let _ = aws_lc_rs::rand::fill(&mut [0u8; 16]);
        let poll = Poll::new().map_err(|e| format!("cannot create the event loop: {e}"))?;
        let mut listener = TcpListener::bind(config.listen)
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let local_addr = listener.local_addr().map_err(|e| e.to_string())?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| e.to_string())?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(|e| e.to_string())?);
        let now = Instant::now();
        Ok(Driver {
            server: SignalServer::new(now, config.server.clone()),
            config,
            poll,
            listener,
            local_addr,
            conns: HashMap::new(),
            next_token: FIRST_CONN,
            read_pending: HashSet::new(),
            dirty: HashSet::new(),
            accept_paused: false,
            stop: StopHandle {
                flag: Arc::new(AtomicBool::new(false)),
                waker,
            },
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Serve until stopped (by the [`StopHandle`], or SIGINT/SIGTERM when `signals`).
    pub fn run(mut self, signals: bool) -> Result<(), String> {
        let mut signal_source = match signals {
            true => Some(super::shutdown_signals(&self.poll, SIGNALS)?),
            false => None,
        };
        log::info!(
            "signal: listening on {} ({}; WebSocket at /ws, GET /health, GET /api/check/<ID>)",
            self.local_addr,
            if self.config.tls.is_some() {
                "TLS"
            } else {
                "plain TCP"
            }
        );
        let tick = Duration::from_secs(1).min(self.config.ping_interval / 2);
        let mut next_tick = Instant::now() + tick;
        let mut events = Events::with_capacity(1024);
        let mut deadline = self.process_outputs(Instant::now());
        loop {
            let wait = match self.read_pending.is_empty() {
                true => super::wait_until(Some(deadline.map_or(next_tick, |d| d.min(next_tick)))),
                false => Some(Duration::ZERO),
            };
            match self.poll.poll(&mut events, wait) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("event loop failed: {e}")),
            }
            let now = Instant::now();
            let mut stopping = false;
            let mut pending: HashSet<Token> = std::mem::take(&mut self.read_pending);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    SIGNALS => {
                        if let Some(s) = signal_source.as_mut() {
                            for sig in s.pending() {
                                log::info!("signal: got signal {sig}, shutting down");
                                stopping = true;
                            }
                        }
                    }
                    WAKER => {}
                    token => {
                        pending.remove(&token);
                        self.on_ready(token, now);
                    }
                }
            }
            for token in pending {
                self.on_ready(token, now);
            }
            self.process_outputs(now);
            self.server.handle_timeout(now);
            deadline = self.process_outputs(now);
            if now >= next_tick {
                next_tick = now + tick;
                self.tick(now);
                deadline = self.process_outputs(now);
            }
            if stopping || self.stop.flag.load(Ordering::SeqCst) {
                break;
            }
        }
        self.shutdown();
        Ok(())
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let (tcp, addr) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    if !self.accept_paused {
                        log::warn!(
                            "signal: cannot accept connections ({e}); retrying every second"
                        );
                    }
                    self.accept_paused = true;
                    return;
                }
            };
            self.accept_paused = false;
            if self.conns.len() >= self.config.max_connections {
                log::debug!(
                    "signal: refusing {addr}: {} connections open",
                    self.conns.len()
                );
                if self.config.tls.is_none() {
                    let mut tcp = tcp;
                    let _ = tcp.write(
                        b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                    );
                }
                continue;
            }
            let token = Token(self.next_token);
            self.next_token += 1;
            if !self.server.handle_accept(now, conn_id(token), addr.ip()) {
                if self.config.tls.is_none() {
                    let mut tcp = tcp;
                    let _ = tcp.write(
                        b"HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                    );
                }
                continue;
            }
            let _ = tcp.set_nodelay(true);
            let mut stream = match &self.config.tls {
                None => Stream::Plain(tcp),
                Some(tls) => match rustls::ServerConnection::new(tls.clone()) {
                    Ok(c) => Stream::Tls(Box::new(TlsStream::new(tcp, c))),
                    Err(e) => {
                        log::warn!("signal: TLS setup failed: {e}");
                        self.server.handle_closed(now, conn_id(token));
                        continue;
                    }
                },
            };
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::warn!("signal: cannot register a connection: {e}");
                self.server.handle_closed(now, conn_id(token));
                continue;
            }
            self.conns.insert(
                token,
                Conn {
                    phase: Phase::Head {
                        stream,
                        buf: Vec::new(),
                    },
                    ip: addr.ip(),
                    queued: 0,
                    deadline: now + self.config.head_timeout,
                    last_rx: now,
                    next_ping: now,
                },
            );
        }
    }

    /// Advance a connection after a readiness event (or a pending read).
    fn on_ready(&mut self, token: Token, now: Instant) {
        let Some(conn) = self.conns.remove(&token) else {
            return;
        };
        match self.advance(token, conn, now) {
            Some(conn) => {
                self.conns.insert(token, conn);
            }
            None => self.finish(token, now),
        }
    }

    /// Run a connection as far as it goes; `None` when it is finished (already deregistered).
    fn advance(&mut self, token: Token, mut conn: Conn, now: Instant) -> Option<Conn> {
        loop {
            conn.phase = match conn.phase {
                Phase::Head {
                    mut stream,
                    mut buf,
                } => {
                    // TLS handshake records may be waiting for a writable socket.
                    let _ = stream.flush();
                    match read_head(&mut stream, &mut buf) {
                        Ok(false) => {
                            conn.phase = Phase::Head { stream, buf };
                            return Some(conn);
                        }
                        Ok(true) => {}
                        Err(_) => return self.release(Phase::Head { stream, buf }),
                    }
                    let (out, upgrade, client) = self.respond(&buf, conn.ip, now);
                    conn.ip = client;
                    Phase::Respond {
                        stream,
                        out,
                        pos: 0,
                        upgrade,
                    }
                }
                Phase::Respond {
                    mut stream,
                    out,
                    mut pos,
                    upgrade,
                } => {
                    let done = loop {
                        if pos >= out.len() {
                            break stream.flush();
                        }
                        match stream.write(&out[pos..]) {
                            Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                            Ok(n) => pos += n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => break Err(e),
                        }
                    };
                    match done {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            conn.phase = Phase::Respond {
                                stream,
                                out,
                                pos,
                                upgrade,
                            };
                            return Some(conn);
                        }
                        Err(_) => return self.release(Phase::Draining(stream)),
                    }
                    match upgrade {
                        Some(rest) => {
                            let ws = WebSocket::from_partially_read(
                                stream,
                                rest,
                                Role::Server,
                                Some(ws_config()),
                            );
                            conn.last_rx = now;
                            conn.next_ping = now + self.config.ping_interval;
                            self.server.handle_open(now, conn_id(token), conn.ip);
                            Phase::Ws(Box::new(ws))
                        }
                        None => {
                            let _ = stream.tcp().shutdown(Shutdown::Write);
                            conn.deadline = now + self.config.linger;
                            Phase::Draining(stream)
                        }
                    }
                }
                Phase::Ws(mut ws) => {
                    let outcome = self.read_ws(token, &mut ws, conn.ip, &mut conn.last_rx, now);
                    let outcome = match outcome {
                        WsOutcome::Open => match ws.flush() {
                            Ok(()) => {
                                conn.queued = 0;
                                WsOutcome::Open
                            }
                            Err(e) if would_block(&e) => WsOutcome::Open,
                            Err(_) => WsOutcome::Gone,
                        },
                        other => other,
                    };
                    match outcome {
                        WsOutcome::Open => {
                            conn.phase = Phase::Ws(ws);
                            return Some(conn);
                        }
                        WsOutcome::Gone => return self.release(Phase::Ws(ws)),
                        WsOutcome::PeerClosed => {
                            conn.deadline = now + self.config.linger;
                            Phase::Closing(ws)
                        }
                        WsOutcome::Fail(code, reason) => {
                            self.server.handle_closed(now, conn_id(token));
                            match ws.close(Some(close_frame(code, reason))) {
                                Ok(()) => {}
                                Err(e) if would_block(&e) => {}
                                Err(_) => return self.release(Phase::Ws(ws)),
                            }
                            conn.deadline = now + self.config.linger;
                            Phase::Closing(ws)
                        }
                    }
                }
                Phase::Closing(mut ws) => match ws.flush() {
                    Ok(()) => {
                        let stream = ws.into_inner();
                        let _ = stream.tcp().shutdown(Shutdown::Write);
                        Phase::Draining(stream)
                    }
                    Err(e) if would_block(&e) => {
                        conn.phase = Phase::Closing(ws);
                        return Some(conn);
                    }
                    // ConnectionClosed: the close handshake is complete.
                    Err(_) => return self.release(Phase::Closing(ws)),
                },
                Phase::Draining(mut stream) => {
                    let mut scratch = [0u8; 4096];
                    for _ in 0..DRAIN_READS_PER_TURN {
                        match stream.read(&mut scratch) {
                            Ok(0) => return self.release(Phase::Draining(stream)),
                            Ok(_) => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(_) => return self.release(Phase::Draining(stream)),
                        }
                    }
                    conn.phase = Phase::Draining(stream);
                    return Some(conn);
                }
            };
        }
    }

    /// The response to a complete (or oversized) request head from TCP peer `peer`, the
    /// upgrade leftovers, and the client's address.
    fn respond(
        &mut self,
        buf: &[u8],
        peer: IpAddr,
        now: Instant,
    ) -> (Vec<u8>, Option<Vec<u8>>, IpAddr) {
        let (route, head_len, ip) = match http::parse(buf) {
            Parsed::Done {
                route,
                head_len,
                forwarded,
            } => (
                route,
                head_len,
                self.server.client_address(peer, &forwarded),
            ),
            Parsed::Partial => return (http::head_too_large(), None, peer),
        };
        let (out, upgrade) = self.route(route, buf, head_len, ip, now);
        (out, upgrade, ip)
    }

    /// The response to a routed request from client `ip`, and the upgrade leftovers.
    fn route(
        &mut self,
        route: Route,
        buf: &[u8],
        head_len: usize,
        ip: IpAddr,
        now: Instant,
    ) -> (Vec<u8>, Option<Vec<u8>>) {
        match route {
            Route::Respond(bytes) => (bytes, None),
            Route::Health { head_only } => {
                let h = self.server.health();
                let body = serde_json::json!({
                    "status": "ok",
                    "version": env!("CARGO_PKG_VERSION"),
                    "servers": h.servers,
                    "clients": h.clients,
                    "pendingClients": h.pending_clients,
                })
                .to_string();
                (http::json_response(200, "OK", &body, &[], head_only), None)
            }
            Route::Check { id, head_only } => match self.server.handle_check(now, ip, &id) {
                Check::Online(online) => {
                    let body = serde_json::json!({ "online": online }).to_string();
                    (http::json_response(200, "OK", &body, &[], head_only), None)
                }
                Check::Limited { retry_after } => {
                    let error = err_rate_limited(retry_after);
                    let body = serde_json::json!({ "error": error }).to_string();
                    let secs = retry_after.to_string();
                    let extra = [("Retry-After", secs.as_str())];
                    (
                        http::json_response(429, "Too Many Requests", &body, &extra, head_only),
                        None,
                    )
                }
            },
            Route::Upgrade { accept_key } => {
                let rest = buf.get(head_len..).unwrap_or_default().to_vec();
                (http::upgrade_response(&accept_key), Some(rest))
            }
        }
    }

    /// Read and dispatch WebSocket messages (a bounded number per turn).
    fn read_ws(
        &mut self,
        token: Token,
        ws: &mut WebSocket<Stream>,
        ip: IpAddr,
        last_rx: &mut Instant,
        now: Instant,
    ) -> WsOutcome {
        let id = conn_id(token);
        for _ in 0..READS_PER_TURN {
            let msg = match ws.read() {
                Ok(m) => m,
                Err(e) if would_block(&e) => return WsOutcome::Open,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(WsError::Capacity(e)) => {
                    log::debug!("signal: {ip} sent too much: {e}");
                    return WsOutcome::Fail(1009, "Message too big");
                }
                Err(WsError::Utf8(_)) => return WsOutcome::Fail(1007, "Invalid UTF-8"),
                Err(WsError::Protocol(e)) => {
                    log::debug!("signal: WebSocket protocol error from {ip}: {e}");
                    return WsOutcome::Fail(1002, "Protocol error");
                }
                Err(_) => return WsOutcome::Gone,
            };
            *last_rx = now;
            match msg {
                Message::Text(text) => self.server.handle_text(now, id, text.as_str()),
                Message::Binary(_) => self.server.handle_binary(now, id),
                Message::Close(_) => {
                    self.server.handle_closed(now, id);
                    return WsOutcome::PeerClosed;
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
            if !self.server.is_open(id) {
                // The server closed it (e.g. rate limited): leave the rest unread.
                return WsOutcome::Open;
            }
        }
        self.read_pending.insert(token);
        WsOutcome::Open
    }

    /// Carry out what the server asked for, until it has nothing more to say; returns its next
    /// deadline.
    fn process_outputs(&mut self, now: Instant) -> Option<Instant> {
        loop {
            let mut dropped = Vec::new();
            let mut refused = Vec::new();
            let deadline = loop {
                let out = match self.server.poll_output() {
                    Next::Output(out) => out,
                    Next::Timeout(deadline) => break deadline,
                };
                match out {
                    Output::Send {
                        conn,
                        text,
                        relayed_from,
                    } => {
                        let token = Token(conn as usize);
                        let Some(Conn {
                            phase: Phase::Ws(ws),
                            ip,
                            queued,
                            ..
                        }) = self.conns.get_mut(&token)
                        else {
                            continue;
                        };
                        if relayed_from.is_some() && *queued + text.len() > RELAY_BUDGET {
                            // The client floods a gateway that cannot keep up: the client goes.
                            refused.extend(relayed_from);
                            continue;
                        }
                        *queued += text.len();
                        match ws.write(Message::text(text)) {
                            Ok(()) => {}
                            Err(e) if would_block(&e) => {}
                            Err(WsError::WriteBufferFull(_)) => {
                                log::info!("signal: {ip} does not read its messages; dropping the connection");
                                dropped.push(token);
                            }
                            Err(_) => dropped.push(token),
                        }
                        self.dirty.insert(token);
                    }
                    Output::Close { conn, code, reason } => {
                        let token = Token(conn as usize);
                        let Some(mut c) = self.conns.remove(&token) else {
                            continue;
                        };
                        c.phase = match c.phase {
                            Phase::Ws(mut ws) => {
                                match ws.close(Some(close_frame(code, reason))) {
                                    Ok(()) => {}
                                    Err(e) if would_block(&e) => {}
                                    Err(_) => dropped.push(token),
                                }
                                Phase::Closing(ws)
                            }
                            other => other,
                        };
                        c.deadline = now + self.config.linger;
                        self.conns.insert(token, c);
                        self.dirty.insert(token);
                    }
                }
            };
            if dropped.is_empty() && refused.is_empty() && self.dirty.is_empty() {
                return deadline;
            }
            for from in refused {
                self.server.handle_relay_refused(now, from);
            }
            // Dropping and flushing may close connections, which the server hears about.
            for token in dropped {
                self.drop_conn(token, now);
            }
            for token in std::mem::take(&mut self.dirty) {
                self.flush(token, now);
            }
        }
    }

    /// Push out what a connection has queued.
    fn flush(&mut self, token: Token, now: Instant) {
        let result = match self.conns.get_mut(&token) {
            None => return,
            Some(Conn {
                phase: Phase::Ws(ws),
                queued,
                ..
            }) => ws.flush().inspect(|()| *queued = 0),
            // Closing and the HTTP phases flush as part of advancing.
            Some(_) => return self.on_ready(token, now),
        };
        match result {
            Ok(()) => {}
            Err(e) if would_block(&e) => {}
            Err(_) => self.drop_conn(token, now),
        }
    }

    /// Once a second: deadlines, pings, dead sockets, paused accepting.
    fn tick(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for (token, conn) in self.conns.iter_mut() {
            match &mut conn.phase {
                Phase::Ws(ws) => {
                    if now.saturating_duration_since(conn.last_rx) >= self.config.dead_after {
                        log::debug!("signal: {} went silent; dropping it", conn.ip);
                        expired.push(*token);
                    } else if now >= conn.next_ping {
                        conn.next_ping = now + self.config.ping_interval;
                        // A WebSocket ping for liveness, a JSON one like the public server's.
                        for ping in [
                            Message::Ping(Default::default()),
                            Message::text(FromServer::Ping.to_text()),
                        ] {
                            match ws.write(ping) {
                                Ok(()) => {}
                                Err(e) if would_block(&e) => {}
                                Err(_) => {
                                    expired.push(*token);
                                    break;
                                }
                            }
                        }
                        self.dirty.insert(*token);
                    }
                }
                _ if now >= conn.deadline => expired.push(*token),
                _ => {}
            }
        }
        for token in expired {
            self.drop_conn(token, now);
        }
        if self.accept_paused {
            self.accept(now);
        }
    }

    /// Deregister a finished connection's socket; it closes when dropped.
    fn release(&mut self, mut phase: Phase) -> Option<Conn> {
        let _ = self.poll.registry().deregister(phase.stream_mut());
        None
    }

    /// Drop a connection at once (no goodbye).
    fn drop_conn(&mut self, token: Token, now: Instant) {
        self.dirty.remove(&token);
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(conn.phase.stream_mut());
        }
        self.finish(token, now);
    }

    /// A connection is gone: the server forgets it (a no-op if it already has).
    fn finish(&mut self, token: Token, now: Instant) {
        self.read_pending.remove(&token);
        self.server.handle_closed(now, conn_id(token));
    }

    /// Say goodbye to every WebSocket (best effort, no waiting) and drop everything.
    fn shutdown(&mut self) {
        for (_, mut conn) in self.conns.drain() {
            if let Phase::Ws(ws) = &mut conn.phase {
                let _ = ws.close(Some(close_frame(1001, "Server shutting down")));
            }
            let _ = self.poll.registry().deregister(conn.phase.stream_mut());
        }
        log::info!("signal: stopped");
    }
}

enum WsOutcome {
    /// Still open (possibly with input left: see `read_pending`).
    Open,
    /// The peer sent a close frame: our reply is queued.
    PeerClosed,
    /// Close with this code (bad input).
    Fail(u16, &'static str),
    /// The socket is unusable: drop it.
    Gone,
}

/// Read the request head into `buf`; `Ok(true)` once it is complete or `buf` is full.
fn read_head(stream: &mut Stream, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0u8; 2048];
    loop {
        if buf.len() >= http::MAX_HEAD || !matches!(http::parse(buf), Parsed::Partial) {
            return Ok(true);
        }
        let room = chunk.len().min(http::MAX_HEAD - buf.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Run the signaling server until SIGINT/SIGTERM; returns the exit code.
pub fn run(args: &SignalArgs) -> i32 {
    let config = match SignalConfig::from_args(args) {
        Ok(c) => c,
        Err(e) => return e.report(),
    };
    let tls = match &config.tls {
        None => None,
        Some((cert, key)) => match crate::net::tls::server_config(cert, key) {
            Ok(c) => Some(c),
            Err(e) => return bad("MA_SIGNAL_TLS_CERT", "tls-cert", e).report(),
        },
    };
    let driver_config = DriverConfig {
        listen: config.listen,
        tls,
        max_connections: config.max_connections,
        server: config.server,
        ..DriverConfig::default()
    };
    match Driver::new(driver_config).and_then(|d| d.run(true)) {
        Ok(()) => 0,
        Err(e) => {
            log::error!("signal: {e}");
            1
        }
    }
}
