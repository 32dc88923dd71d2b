//! The signaling server's relay logic (docs/protocol.md#relay-rules) as a sans-IO state machine.
//!
//! The driver reports connections opening and closing and the text frames they send; this
//! machine decides what to send where, and when to close a connection. The messages, close codes
//! and error texts are those of [`crate::signaling::protocol`]. It shows the face of
//! [`crate::machine`]: inputs are `handle_…` methods taking `now`, and
//! [`Machine::poll_output`] gives the outputs, then the next deadline.
//!
//! A connection's role is decided by what it sends: `register-server` makes it a gateway,
//! `connect-request` a client. Sending the other one later drops the old role first, exactly as
//! if the socket had closed and reopened.
//!
//! Unlike the public server, this one
//! - tells the gateway when a client leaves while its session is still pending;
//! - lets a gateway address only the sessions of its own Remote ID;
//! - bounds sessions per gateway and pending clients per gateway;
//! - rate-limits messages per IP (close 4029) and failed Remote ID lookups per IP (close 4008).

pub mod http;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::machine::{Machine, Next};
use crate::signaling::protocol::{
    err_rate_limited, FromServer, ParseError, Relay, SessionId, ToServer, CLOSE_BLOCKED,
    CLOSE_BLOCKED_REASON, CLOSE_RATE_LIMITED, CLOSE_RATE_LIMITED_REASON, CLOSE_REPLACED,
    CLOSE_REPLACED_REASON, ERR_BINARY, ERR_INVALID_JSON, ERR_INVALID_REMOTE_ID, ERR_NOT_AN_OBJECT,
    ERR_NOT_REGISTERED, ERR_REMOTE_ID_REQUIRED, ERR_SERVER_BUSY, ERR_SERVER_DISCONNECTED,
    ERR_SERVER_NOT_FOUND, ERR_SESSION_ID_REQUIRED, ERR_SESSION_NOT_FOUND,
};

/// Identifies one connection; chosen by the driver, never reused while it is open.
pub type ConnId = u64;

/// Longest Remote ID accepted (current IDs have 26 characters, legacy ones 12).
const MAX_REMOTE_ID_LEN: usize = 64;
/// Longest message type echoed back in `Unknown message type: X`.
const MAX_ECHOED_TYPE_LEN: usize = 64;
/// Per-IP records kept at most; beyond, records of IPs without a connection are forgotten.
const MAX_IP_RECORDS: usize = 65_536;
/// Session ids: 16 characters from this alphabet.
const SESSION_ID_ALPHABET: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const SESSION_ID_LEN: usize = 16;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Messages per IP per `window` (0 = unlimited).
    pub rate_limit: u32,
    /// Failed Remote ID lookups per IP per `window` before the IP is blocked (0 = unlimited).
    pub lookup_limit: u32,
    /// Apply the limits to loopback addresses too.
    pub limit_loopback: bool,
    /// The rate-limit window.
    pub window: Duration,
    /// How long an IP that exceeded `lookup_limit` may not look up Remote IDs.
    pub block_duration: Duration,
    /// How long a client waits for the gateway's `session-ready` before it gets the cached
    /// ICE servers.
    pub session_ready_timeout: Duration,
    /// Sessions (pending or connected) one gateway may have.
    pub max_sessions_per_gateway: usize,
    /// Sessions still waiting for `session-ready` one gateway may have.
    pub max_pending_per_gateway: usize,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            rate_limit: 100,
            lookup_limit: 10,
            limit_loopback: false,
            window: Duration::from_secs(60),
            block_duration: Duration::from_secs(600),
            session_ready_timeout: Duration::from_secs(10),
            max_sessions_per_gateway: 256,
            max_pending_per_gateway: 64,
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a text frame.
    Send { conn: ConnId, text: String },
    /// Close the connection with this code. The server has already forgotten it: nothing more
    /// is sent to it, and its later input (including `handle_closed`) is ignored.
    Close {
        conn: ConnId,
        code: u16,
        reason: &'static str,
    },
}

/// Counters for `GET /health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Registered gateways.
    pub servers: usize,
    /// Clients whose session is connected.
    pub clients: usize,
    /// Clients waiting for `session-ready`.
    pub pending_clients: usize,
}

/// The answer to `GET /api/check/<ID>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Online(bool),
    /// The IP is rate-limited or blocked: retry after this many seconds.
    Limited {
        retry_after: u64,
    },
}

#[derive(Debug, Clone)]
enum Role {
    /// Nothing decided yet (or the role ended: e.g. a failed lookup).
    None,
    Gateway {
        remote_id: String,
    },
    /// `session` is `None` once the gateway has gone.
    Client {
        remote_id: String,
        session: Option<SessionId>,
    },
}

#[derive(Debug)]
struct Conn {
    ip: IpAddr,
    role: Role,
}

#[derive(Debug)]
struct Gateway {
    conn: ConnId,
    ice_servers: Value,
    sessions: HashSet<SessionId>,
    pending: usize,
}

#[derive(Debug)]
struct Session {
    client: ConnId,
    remote_id: String,
    /// `Some(deadline)` while waiting for `session-ready`.
    pending: Option<Instant>,
}

#[derive(Debug)]
struct IpRecord {
    conns: usize,
    window_start: Instant,
    messages: u32,
    failed_lookups: u32,
    blocked_until: Option<Instant>,
}

pub struct SignalServer {
    config: ServerConfig,
    conns: HashMap<ConnId, Conn>,
    gateways: HashMap<String, Gateway>,
    sessions: HashMap<SessionId, Session>,
    /// Deadlines of pending sessions, earliest first.
    deadlines: BTreeSet<(Instant, SessionId)>,
    ips: HashMap<IpAddr, IpRecord>,
    next_prune: Instant,
    out: VecDeque<Output>,
}

/// A Remote ID as received: trimmed, and `None` when missing or blank.
fn given(remote_id: Option<&str>) -> Option<&str> {
    remote_id.map(str::trim).filter(|s| !s.is_empty())
}

/// `Unknown message type: X`, with X bounded and rendered like JavaScript would.
fn unknown_type(t: Option<&Value>) -> String {
    let mut shown = match t {
        None => "undefined".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    if shown.len() > MAX_ECHOED_TYPE_LEN {
        let mut end = MAX_ECHOED_TYPE_LEN;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown.truncate(end);
        shown.push('…');
    }
    format!("Unknown message type: {shown}")
}

/// Whole seconds, rounded up, at least 1 (for "try again in N seconds").
fn ceil_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

fn valid_remote_id(id: &str) -> bool {
    id.len() <= MAX_REMOTE_ID_LEN && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// A fresh session id: 16 characters `[A-Za-z0-9]`, uniformly chosen.
fn new_session_id() -> Option<SessionId> {
    let mut id = String::with_capacity(SESSION_ID_LEN);
    let mut buf = [0u8; 32];
    for _ in 0..8 {
        aws_lc_rs::rand::fill(&mut buf).ok()?;
        // 248 = 4 * 62: reject the top bytes so every character is equally likely.
        for b in buf.iter().filter(|b| **b < 248) {
            id.push(char::from(
                SESSION_ID_ALPHABET[usize::from(*b) % SESSION_ID_ALPHABET.len()],
            ));
            if id.len() == SESSION_ID_LEN {
                return SessionId::try_from(id).ok();
            }
        }
    }
    None
}

impl SignalServer {
    pub fn new(now: Instant, config: ServerConfig) -> SignalServer {
        SignalServer {
            next_prune: now + config.window,
            config,
            conns: HashMap::new(),
            gateways: HashMap::new(),
            sessions: HashMap::new(),
            deadlines: BTreeSet::new(),
            ips: HashMap::new(),
            out: VecDeque::new(),
        }
    }

    /// Whether `conn` is open as far as the server knows (not closed by it or reported closed).
    pub fn is_open(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    pub fn health(&self) -> Health {
        let pending_clients = self.deadlines.len();
        Health {
            servers: self.gateways.len(),
            clients: self.sessions.len().saturating_sub(pending_clients),
            pending_clients,
        }
    }

    /// `GET /api/check/<ID>` from `ip`: counts as a message, and a miss as a failed lookup.
    pub fn handle_check(&mut self, now: Instant, ip: IpAddr, id: &str) -> Check {
        self.ensure_ip(now, ip);
        if let Err(retry_after) = self.count_message(now, ip) {
            return Check::Limited { retry_after };
        }
        if let Some(retry_after) = self.blocked_for(now, ip) {
            return Check::Limited { retry_after };
        }
        let id = id.trim().to_ascii_uppercase();
        let online = valid_remote_id(&id) && self.gateways.contains_key(&id);
        if !online {
            // A block takes effect from the next lookup; this one is answered.
            let _ = self.count_failed_lookup(now, ip);
        }
        self.forget_idle_ip(ip);
        Check::Online(online)
    }

    /// A WebSocket from `ip` is open (the upgrade is done).
    pub fn handle_open(&mut self, now: Instant, conn: ConnId, ip: IpAddr) {
        if self.conns.contains_key(&conn) {
            return;
        }
        self.ensure_ip(now, ip);
        if let Some(rec) = self.ips.get_mut(&ip) {
            rec.conns += 1;
        }
        self.conns.insert(
            conn,
            Conn {
                ip,
                role: Role::None,
            },
        );
    }

    /// The connection is gone (closed by the peer, dropped by the driver); a no-op for one the
    /// server closed itself.
    pub fn handle_closed(&mut self, _now: Instant, conn: ConnId) {
        self.forget(conn);
    }

    /// A binary frame arrived: the protocol has none.
    pub fn handle_binary(&mut self, now: Instant, conn: ConnId) {
        let Some(ip) = self.conns.get(&conn).map(|c| c.ip) else {
            return;
        };
        if let Err(secs) = self.count_message(now, ip) {
            self.rate_limited(conn, secs);
            return;
        }
        self.error(conn, ERR_BINARY);
    }

    /// A text frame arrived.
    pub fn handle_text(&mut self, now: Instant, conn: ConnId, text: &str) {
        let Some(ip) = self.conns.get(&conn).map(|c| c.ip) else {
            return;
        };
        if let Err(secs) = self.count_message(now, ip) {
            self.rate_limited(conn, secs);
            return;
        }
        let msg = match ToServer::parse(text) {
            Ok(msg) => msg,
            Err(ParseError::NotJson(_)) => return self.error(conn, ERR_INVALID_JSON),
            Err(ParseError::NotAnObject) => return self.error(conn, ERR_NOT_AN_OBJECT),
            Err(ParseError::UnknownType(t)) => return self.error(conn, &unknown_type(t.as_ref())),
            // No session can have an invalid id.
            Err(e @ ParseError::InvalidSessionId { .. }) => {
                log::debug!("signal: {ip} sent {e}");
                return self.error(conn, ERR_SESSION_NOT_FOUND);
            }
            Err(e @ ParseError::Invalid { .. }) => {
                log::debug!("signal: {ip} sent {e}");
                return self.error(conn, ERR_INVALID_JSON);
            }
        };
        match msg {
            ToServer::Ping => self.send(conn, FromServer::Pong),
            ToServer::Pong => {}
            ToServer::RegisterServer {
                remote_id,
                ice_servers,
            } => self.register(conn, given(remote_id.as_deref()), ice_servers),
            ToServer::ConnectRequest { remote_id } => {
                self.connect_request(now, conn, ip, given(remote_id.as_deref()))
            }
            ToServer::SessionReady {
                session_id,
                ice_servers,
            } => self.session_ready(conn, session_id, ice_servers),
            ToServer::Offer(relay) => self.relay(conn, relay, true, FromServer::Offer),
            ToServer::Answer(relay) => self.relay(conn, relay, false, FromServer::Answer),
            ToServer::IceCandidate(relay) => {
                self.relay(conn, relay, false, FromServer::IceCandidate)
            }
        }
    }

    fn session_ready_timed_out(&mut self, session_id: SessionId) {
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        session.pending = None;
        let (client, remote_id) = (session.client, session.remote_id.clone());
        let Some(gateway) = self.gateways.get_mut(&remote_id) else {
            return;
        };
        gateway.pending = gateway.pending.saturating_sub(1);
        log::info!(
            "signal: {remote_id} sent no session-ready for {session_id} within {:?}, using the cached ICE servers",
            self.config.session_ready_timeout
        );
        let connected = FromServer::Connected {
            ice_servers: Some(gateway.ice_servers.clone()),
            remote_id: Some(remote_id),
            session_id: Some(session_id),
        };
        self.send(client, connected);
    }

    fn register(&mut self, conn: ConnId, remote_id: Option<&str>, ice_servers: Option<Value>) {
        let Some(remote_id) = remote_id else {
            return self.error(conn, ERR_REMOTE_ID_REQUIRED);
        };
        if !valid_remote_id(remote_id) {
            return self.error(conn, ERR_INVALID_REMOTE_ID);
        }
        let remote_id = remote_id.to_ascii_uppercase();
        let ice_servers = ice_servers.filter(Value::is_array);
        let registered = FromServer::Registered {
            remote_id: Some(remote_id.clone()),
        };

        let same_registration = matches!(
            self.conns.get(&conn),
            Some(Conn { role: Role::Gateway { remote_id: current }, .. }) if *current == remote_id
        );
        if same_registration {
            if let (Some(gateway), Some(ice)) = (self.gateways.get_mut(&remote_id), ice_servers) {
                gateway.ice_servers = ice;
            }
            log::debug!("signal: {remote_id} updated its ICE servers");
            return self.send(conn, registered);
        }
        self.leave_role(conn);
        if let Some(old) = self.gateways.get(&remote_id).map(|g| g.conn) {
            log::info!("signal: {remote_id} registered from a new connection; closing the old one");
            self.close(old, CLOSE_REPLACED, CLOSE_REPLACED_REASON);
        }
        self.gateways.insert(
            remote_id.clone(),
            Gateway {
                conn,
                ice_servers: ice_servers.unwrap_or_else(|| Value::Array(Vec::new())),
                sessions: HashSet::new(),
                pending: 0,
            },
        );
        if let Some(c) = self.conns.get_mut(&conn) {
            log::info!("signal: gateway {remote_id} registered from {}", c.ip);
            c.role = Role::Gateway {
                remote_id: remote_id.clone(),
            };
        }
        self.send(conn, registered);
    }

    fn connect_request(&mut self, now: Instant, conn: ConnId, ip: IpAddr, remote_id: Option<&str>) {
        let Some(remote_id) = remote_id else {
            return self.error(conn, ERR_REMOTE_ID_REQUIRED);
        };
        let remote_id = remote_id.to_ascii_uppercase();
        // A second connect-request on one socket ends the first session.
        self.leave_role(conn);
        if self.blocked_for(now, ip).is_some() {
            return self.close(conn, CLOSE_BLOCKED, CLOSE_BLOCKED_REASON);
        }
        let found = valid_remote_id(&remote_id) && self.gateways.contains_key(&remote_id);
        if !found {
            self.error(conn, ERR_SERVER_NOT_FOUND);
            if self.count_failed_lookup(now, ip) {
                log::warn!(
                    "signal: {ip} looked up too many unknown Remote IDs; blocked for {:?}",
                    self.config.block_duration
                );
                self.close(conn, CLOSE_BLOCKED, CLOSE_BLOCKED_REASON);
            }
            return;
        }
        let Some(gateway) = self.gateways.get(&remote_id) else {
            return;
        };
        let gateway_conn = gateway.conn;
        if gateway.sessions.len() >= self.config.max_sessions_per_gateway
            || gateway.pending >= self.config.max_pending_per_gateway
        {
            log::warn!("signal: {remote_id} has too many sessions; refusing a client from {ip}");
            return self.error(conn, ERR_SERVER_BUSY);
        }
        let session_id = match new_session_id() {
            Some(id) if !self.sessions.contains_key(&id) => id,
            _ => return self.error(conn, ERR_SERVER_BUSY),
        };
        let deadline = now + self.config.session_ready_timeout;
        if let Some(gateway) = self.gateways.get_mut(&remote_id) {
            gateway.sessions.insert(session_id.clone());
            gateway.pending += 1;
        }
        self.sessions.insert(
            session_id.clone(),
            Session {
                client: conn,
                remote_id: remote_id.clone(),
                pending: Some(deadline),
            },
        );
        self.deadlines.insert((deadline, session_id.clone()));
        if let Some(c) = self.conns.get_mut(&conn) {
            c.role = Role::Client {
                remote_id: remote_id.clone(),
                session: Some(session_id.clone()),
            };
        }
        log::debug!("signal: client {ip} asks for {remote_id}: session {session_id}");
        self.send(
            gateway_conn,
            FromServer::ClientConnected {
                session_id: Some(session_id),
            },
        );
    }

    fn session_ready(
        &mut self,
        conn: ConnId,
        session_id: Option<SessionId>,
        ice_servers: Option<Value>,
    ) {
        let Some(remote_id) = self.gateway_of(conn) else {
            return self.error(conn, ERR_NOT_REGISTERED);
        };
        let Some(session_id) = session_id else {
            return self.error(conn, ERR_SESSION_ID_REQUIRED);
        };
        let Some(session) = self
            .sessions
            .get_mut(&session_id)
            .filter(|s| s.remote_id == remote_id)
        else {
            return self.error(conn, ERR_SESSION_NOT_FOUND);
        };
        let Some(deadline) = session.pending.take() else {
            // Too late: the client already got the cached list.
            log::debug!("signal: late session-ready for {session_id} ignored");
            return;
        };
        let client = session.client;
        let key = (deadline, session_id);
        self.deadlines.remove(&key);
        let (_, session_id) = key;
        let Some(gateway) = self.gateways.get_mut(&remote_id) else {
            return;
        };
        gateway.pending = gateway.pending.saturating_sub(1);
        let ice_servers = ice_servers
            .filter(Value::is_array)
            .unwrap_or_else(|| gateway.ice_servers.clone());
        let connected = FromServer::Connected {
            remote_id: Some(remote_id),
            session_id: Some(session_id),
            ice_servers: Some(ice_servers),
        };
        self.send(client, connected);
    }

    /// `offer`, `answer`, `ice-candidate`: gateway → its own session's client, or client → the
    /// gateway of its session (with `sessionId` set by us, and `remoteId` on offers). `wrap`
    /// makes the same type towards the other side.
    fn relay(
        &mut self,
        conn: ConnId,
        mut relay: Relay,
        is_offer: bool,
        wrap: fn(Relay) -> FromServer,
    ) {
        let Some(role) = self.conns.get(&conn).map(|c| c.role.clone()) else {
            return;
        };
        match role {
            Role::None => self.error(conn, ERR_NOT_REGISTERED),
            Role::Gateway { remote_id } => {
                let Some(session_id) = &relay.session_id else {
                    return self.error(conn, ERR_SESSION_ID_REQUIRED);
                };
                let Some(session) = self
                    .sessions
                    .get(session_id)
                    .filter(|s| s.remote_id == remote_id)
                else {
                    return self.error(conn, ERR_SESSION_NOT_FOUND);
                };
                let client = session.client;
                self.send(client, wrap(relay));
            }
            Role::Client {
                remote_id,
                session: Some(session_id),
            } => {
                let Some(gateway_conn) = self.gateways.get(&remote_id).map(|g| g.conn) else {
                    return self.error(conn, ERR_SERVER_DISCONNECTED);
                };
                relay.session_id = Some(session_id);
                if is_offer {
                    relay.set_remote_id(&remote_id);
                }
                self.send(gateway_conn, wrap(relay));
            }
            Role::Client { session: None, .. } => self.error(conn, ERR_SERVER_DISCONNECTED),
        }
    }

    fn gateway_of(&self, conn: ConnId) -> Option<String> {
        match self.conns.get(&conn) {
            Some(Conn {
                role: Role::Gateway { remote_id },
                ..
            }) => Some(remote_id.clone()),
            _ => None,
        }
    }

    /// End what the connection was (gateway or client), notifying the other side.
    fn leave_role(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        match std::mem::replace(&mut c.role, Role::None) {
            Role::None => {}
            Role::Client { session, .. } => {
                if let Some(session_id) = session {
                    self.end_session_by_client(session_id);
                }
            }
            Role::Gateway { remote_id } => self.unregister(&remote_id, conn),
        }
    }

    /// The client of a session left: tell the gateway (pending or not).
    fn end_session_by_client(&mut self, session_id: SessionId) {
        let Some(session) = self.sessions.remove(&session_id) else {
            return;
        };
        if let Some(deadline) = session.pending {
            self.deadlines.remove(&(deadline, session_id.clone()));
        }
        let Some(gateway) = self.gateways.get_mut(&session.remote_id) else {
            return;
        };
        gateway.sessions.remove(&session_id);
        if session.pending.is_some() {
            gateway.pending = gateway.pending.saturating_sub(1);
        }
        let gateway_conn = gateway.conn;
        log::debug!("signal: client of session {session_id} left");
        self.send(
            gateway_conn,
            FromServer::ClientDisconnected {
                session_id: Some(session_id),
            },
        );
    }

    /// The gateway registered as `remote_id` on `conn` is gone: end its sessions.
    fn unregister(&mut self, remote_id: &str, conn: ConnId) {
        if self.gateways.get(remote_id).map(|g| g.conn) != Some(conn) {
            return;
        }
        let Some(gateway) = self.gateways.remove(remote_id) else {
            return;
        };
        log::info!(
            "signal: gateway {remote_id} left ({} sessions ended)",
            gateway.sessions.len()
        );
        for session_id in gateway.sessions {
            let Some(session) = self.sessions.remove(&session_id) else {
                continue;
            };
            if let Some(c) = self.conns.get_mut(&session.client) {
                if let Role::Client { session, .. } = &mut c.role {
                    *session = None;
                }
            }
            let msg = match session.pending {
                Some(deadline) => {
                    self.deadlines.remove(&(deadline, session_id));
                    FromServer::error(ERR_SERVER_DISCONNECTED)
                }
                None => FromServer::PeerDisconnected {
                    session_id: Some(session_id),
                },
            };
            self.send(session.client, msg);
        }
    }

    /// Forget a connection (its roles end) and drop its IP's connection count.
    fn forget(&mut self, conn: ConnId) {
        self.leave_role(conn);
        if let Some(c) = self.conns.remove(&conn) {
            if let Some(rec) = self.ips.get_mut(&c.ip) {
                rec.conns = rec.conns.saturating_sub(1);
            }
        }
    }

    fn close(&mut self, conn: ConnId, code: u16, reason: &'static str) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        self.forget(conn);
        self.out.push_back(Output::Close { conn, code, reason });
    }

    fn rate_limited(&mut self, conn: ConnId, retry_after: u64) {
        if let Some(c) = self.conns.get(&conn) {
            log::warn!(
                "signal: {} sends too many messages; closing its connection",
                c.ip
            );
        }
        self.error(conn, &err_rate_limited(retry_after));
        self.close(conn, CLOSE_RATE_LIMITED, CLOSE_RATE_LIMITED_REASON);
    }

    fn send(&mut self, conn: ConnId, msg: FromServer) {
        if self.conns.contains_key(&conn) {
            self.out.push_back(Output::Send {
                conn,
                text: msg.to_text(),
            });
        }
    }

    fn error(&mut self, conn: ConnId, error: &str) {
        self.send(conn, FromServer::error(error));
    }

    fn limited(&self, ip: IpAddr) -> bool {
        self.config.limit_loopback || !ip.to_canonical().is_loopback()
    }

    fn ensure_ip(&mut self, now: Instant, ip: IpAddr) {
        if self.ips.contains_key(&ip) {
            return;
        }
        if self.ips.len() >= MAX_IP_RECORDS {
            self.prune_ips(now, true);
        }
        self.ips.insert(
            ip,
            IpRecord {
                conns: 0,
                window_start: now,
                messages: 0,
                failed_lookups: 0,
                blocked_until: None,
            },
        );
    }

    /// The record of `ip`, with its window restarted if it has passed.
    fn ip_record(&mut self, now: Instant, ip: IpAddr) -> Option<&mut IpRecord> {
        if !self.limited(ip) {
            return None;
        }
        self.ensure_ip(now, ip);
        let window = self.config.window;
        let rec = self.ips.get_mut(&ip)?;
        if now >= rec.window_start + window {
            rec.window_start = now;
            rec.messages = 0;
            rec.failed_lookups = 0;
        }
        Some(rec)
    }

    /// Count one message; `Err(seconds until the window ends)` when over the limit.
    fn count_message(&mut self, now: Instant, ip: IpAddr) -> Result<(), u64> {
        let (limit, window) = (self.config.rate_limit, self.config.window);
        if limit == 0 {
            return Ok(());
        }
        let Some(rec) = self.ip_record(now, ip) else {
            return Ok(());
        };
        rec.messages = rec.messages.saturating_add(1);
        if rec.messages <= limit {
            return Ok(());
        }
        Err(ceil_secs(
            (rec.window_start + window).saturating_duration_since(now),
        ))
    }

    /// Count one failed Remote ID lookup; true when the IP is now blocked.
    fn count_failed_lookup(&mut self, now: Instant, ip: IpAddr) -> bool {
        let (limit, block) = (self.config.lookup_limit, self.config.block_duration);
        if limit == 0 {
            return false;
        }
        let Some(rec) = self.ip_record(now, ip) else {
            return false;
        };
        rec.failed_lookups = rec.failed_lookups.saturating_add(1);
        if rec.failed_lookups <= limit {
            return false;
        }
        rec.blocked_until = Some(now + block);
        true
    }

    /// `Some(seconds left)` while `ip` may not look up Remote IDs.
    fn blocked_for(&self, now: Instant, ip: IpAddr) -> Option<u64> {
        if !self.limited(ip) {
            return None;
        }
        let until = self.ips.get(&ip)?.blocked_until?;
        let left = until.checked_duration_since(now).filter(|d| !d.is_zero())?;
        Some(ceil_secs(left))
    }

    /// Drop the record of an IP that has no connection and nothing worth remembering.
    fn forget_idle_ip(&mut self, ip: IpAddr) {
        if self.ips.get(&ip).is_some_and(|r| {
            r.conns == 0 && r.messages == 0 && r.failed_lookups == 0 && r.blocked_until.is_none()
        }) {
            self.ips.remove(&ip);
        }
    }

    /// Forget records of IPs without connections whose window and block have passed
    /// (`hard`: every record of an IP without connections).
    fn prune_ips(&mut self, now: Instant, hard: bool) {
        let window = self.config.window;
        self.ips.retain(|_, r| {
            r.conns > 0
                || (!hard
                    && (now < r.window_start + window || r.blocked_until.is_some_and(|b| now < b)))
        });
    }
}

impl Machine for SignalServer {
    type Output = Output;

    /// Pending sessions whose `session-ready` wait is over get `connected` with the cached ICE
    /// servers; once per window, per-IP records are pruned.
    fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, _)) = self.deadlines.first() {
            if *at > now {
                break;
            }
            let Some((_, session_id)) = self.deadlines.pop_first() else {
                break;
            };
            self.session_ready_timed_out(session_id);
        }
        if now >= self.next_prune {
            self.next_prune = now + self.config.window;
            self.prune_ips(now, false);
        }
    }

    fn poll_output(&mut self) -> Next<Output> {
        if let Some(out) = self.out.pop_front() {
            return Next::Output(out);
        }
        let next = match self.deadlines.first() {
            Some((at, _)) => (*at).min(self.next_prune),
            None => self.next_prune,
        };
        Next::Timeout(Some(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::net::Ipv4Addr;

    const GW_ID: &str = "QCPJJTJMI3IDBNURU6XJJENRYU";
    const PUBLIC: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn drain(s: &mut SignalServer) -> Vec<Output> {
        std::iter::from_fn(|| s.poll_output().output()).collect()
    }

    /// Messages sent to `conn` (parsed), ignoring others.
    fn sent_to(outs: &[Output], conn: ConnId) -> Vec<Value> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Send { conn: c, text } if *c == conn => {
                    Some(serde_json::from_str(text).unwrap())
                }
                _ => None,
            })
            .collect()
    }

    fn closes(outs: &[Output]) -> Vec<(ConnId, u16)> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Close { conn, code, .. } => Some((*conn, *code)),
                _ => None,
            })
            .collect()
    }

    fn one(outs: &[Output], conn: ConnId) -> Value {
        let v = sent_to(outs, conn);
        assert_eq!(v.len(), 1, "expected one message to {conn}: {outs:?}");
        v.into_iter().next().unwrap()
    }

    fn send(s: &mut SignalServer, now: Instant, conn: ConnId, v: Value) -> Vec<Output> {
        s.handle_text(now, conn, &v.to_string());
        drain(s)
    }

    struct World {
        s: SignalServer,
        t0: Instant,
    }

    /// A server with gateway conn 1 registered as GW_ID (lowercase on the wire).
    fn world(config: ServerConfig) -> World {
        let t0 = Instant::now();
        let mut s = SignalServer::new(t0, config);
        s.handle_open(t0, 1, OTHER);
        let outs = send(
            &mut s,
            t0,
            1,
            json!({"type": "register-server", "remoteId": GW_ID.to_lowercase(), "iceServers": [{"urls": "stun:cached"}]}),
        );
        assert_eq!(
            one(&outs, 1),
            json!({"type": "registered", "remoteId": GW_ID})
        );
        World { s, t0 }
    }

    /// Client `conn` asks for GW_ID; returns the session id the gateway was told.
    fn connect(w: &mut World, now: Instant, conn: ConnId, ip: IpAddr) -> String {
        w.s.handle_open(now, conn, ip);
        let outs = send(
            &mut w.s,
            now,
            conn,
            json!({"type": "connect-request", "remoteId": GW_ID}),
        );
        assert!(
            sent_to(&outs, conn).is_empty(),
            "client waits for session-ready: {outs:?}"
        );
        let m = one(&outs, 1);
        assert_eq!(m["type"], "client-connected");
        let sid = m["sessionId"].as_str().unwrap().to_string();
        assert_eq!(sid.len(), 16);
        assert!(sid.chars().all(|c| c.is_ascii_alphanumeric()));
        sid
    }

    #[test]
    fn full_relay_flow() {
        let mut w = world(ServerConfig::default());
        let t0 = w.t0;
        let sid = connect(&mut w, t0, 2, PUBLIC);
        assert_eq!(
            w.s.health(),
            Health {
                servers: 1,
                clients: 0,
                pending_clients: 1
            }
        );
        let outs = send(
            &mut w.s,
            t0,
            1,
            json!({"type": "session-ready", "sessionId": sid, "iceServers": [{"urls": "turn:fresh", "username": "u", "credential": "c"}]}),
        );
        assert_eq!(
            one(&outs, 2),
            json!({"type": "connected", "remoteId": GW_ID, "sessionId": sid, "iceServers": [{"urls": "turn:fresh", "username": "u", "credential": "c"}]})
        );
        assert_eq!(w.s.health().clients, 1);
        assert_eq!(w.s.health().pending_clients, 0);

        // Client → gateway: sessionId overwritten, offer carries remoteId.
        let outs = send(
            &mut w.s,
            t0,
            2,
            json!({"type": "offer", "sessionId": "forged", "data": {"type": "offer", "sdp": "v=0"}}),
        );
        assert_eq!(
            one(&outs, 1),
            json!({"type": "offer", "sessionId": sid, "remoteId": GW_ID, "data": {"type": "offer", "sdp": "v=0"}})
        );
        let outs = send(
            &mut w.s,
            t0,
            2,
            json!({"type": "ice-candidate", "data": {"candidate": "c1"}}),
        );
        assert_eq!(
            one(&outs, 1),
            json!({"type": "ice-candidate", "sessionId": sid, "data": {"candidate": "c1"}})
        );
        // Gateway → client.
        let outs = send(
            &mut w.s,
            t0,
            1,
            json!({"type": "answer", "sessionId": sid, "data": {"type": "answer", "sdp": "v=0"}}),
        );
        assert_eq!(one(&outs, 2)["data"]["sdp"], "v=0");
        let outs = send(
            &mut w.s,
            t0,
            1,
            json!({"type": "ice-candidate", "sessionId": sid, "data": {"candidate": "c2", "sdpMid": "0", "sdpMLineIndex": 0}}),
        );
        assert_eq!(one(&outs, 2)["data"]["candidate"], "c2");

        // Client leaves → gateway told.
        w.s.handle_closed(t0, 2);
        let outs = drain(&mut w.s);
        assert_eq!(
            one(&outs, 1),
            json!({"type": "client-disconnected", "sessionId": sid})
        );
        assert_eq!(w.s.health().clients, 0);
        // The session is gone for the gateway too.
        let outs = send(
            &mut w.s,
            t0,
            1,
            json!({"type": "answer", "sessionId": sid, "data": {}}),
        );
        assert_eq!(one(&outs, 1)["error"], ERR_SESSION_NOT_FOUND);
    }

    #[test]
    fn pending_timeout_sends_cached_list_and_ignores_late_ready() {
        let mut w = world(ServerConfig::default());
        let t0 = w.t0;
        let sid = connect(&mut w, t0, 2, PUBLIC);
        assert_eq!(
            w.s.poll_output(),
            Next::Timeout(Some(t0 + Duration::from_secs(10)))
        );
        w.s.handle_timeout(t0 + Duration::from_millis(9_999));
        assert!(drain(&mut w.s).is_empty());
        w.s.handle_timeout(t0 + Duration::from_secs(10));
        let outs = drain(&mut w.s);
        assert_eq!(
            one(&outs, 2),
            json!({"type": "connected", "remoteId": GW_ID, "sessionId": sid, "iceServers": [{"urls": "stun:cached"}]})
        );
        assert_eq!(w.s.health().pending_clients, 0);
        let outs = send(
            &mut w.s,
            t0 + Duration::from_secs(11),
            1,
            json!({"type": "session-ready", "sessionId": sid, "iceServers": []}),
        );
        assert!(outs.is_empty(), "late session-ready is ignored: {outs:?}");
    }

    #[test]
    fn pending_client_leaving_is_reported() {
        let mut w = world(ServerConfig::default());
        let t0 = w.t0;
        let sid = connect(&mut w, t0, 2, PUBLIC);
        w.s.handle_closed(t0, 2);
        let outs = drain(&mut w.s);
        assert_eq!(
            one(&outs, 1),
            json!({"type": "client-disconnected", "sessionId": sid})
        );
        assert_eq!(w.s.health().pending_clients, 0);
        // No timeout fires for it any more.
        w.s.handle_timeout(t0 + Duration::from_secs(30));
        assert!(drain(&mut w.s).is_empty());
    }

    #[test]
    fn second_connect_request_ends_first_session() {
        let mut w = world(ServerConfig::default());
        let t0 = w.t0;
        let first = connect(&mut w, t0, 2, PUBLIC);
        let outs = send(
            &mut w.s,
            t0,
            2,
            json!({"type": "connect-request", "remoteId": GW_ID}),
        );
        let to_gw = sent_to(&outs, 1);
        assert_eq!(
            to_gw[0],
            json!({"type": "client-disconnected", "sessionId": first})
        );
        assert_eq!(to_gw[1]["type"], "client-connected");
        assert_ne!(to_gw[1]["sessionId"], first.as_str());
        assert_eq!(w.s.health().pending_clients, 1);
    }

    #[test]
    fn replacement_closes_old_gateway_and_ends_its_sessions() {
        let mut w = world(ServerConfig::default());
        let t0 = w.t0;
        let sid = connect(&mut w, t0, 2, PUBLIC);
        send(
            &mut w.s,
            t0,
            1,
            json!({"type": "session-ready", "sessionId": sid}),
        );
        connect(&mut w, t0, 3, PUBLIC);

        w.s.handle_open(t0, 4, OTHER);
        let outs = send(
            &mut w.s,
            t0,
            4,
            json!({"type": "register-server", "remoteId": GW_ID}),
        );
        assert_eq!(closes(&outs), vec![(1, CLOSE_REPLACED)]);
        assert!(outs.contains(&Output::Close {
            conn: 1,
            code: 4000,
            reason: "Replaced by new connection"
        }));
        assert_eq!(
            one(&outs, 2),
            json!({"type": "peer-disconnected", "sessionId": sid})
        );
        assert_eq!(one(&outs, 3)["error"], ERR_SERVER_DISCONNECTED);
        assert_eq!(one(&outs, 4)["type"], "registered");
        assert_eq!(w.s.health().servers, 1);
        assert_eq!(w.s.health().clients + w.s.health().pending_clients, 0);
        // The old socket is forgotten: what it still sends is ignored, its close is a no-op.
        assert!(send(&mut w.s, t0, 1, json!({"type": "ping"})).is_empty());
        w.s.handle_closed(t0, 1);
        assert!(drain(&mut w.s).is_empty());
        assert_eq!(w.s.health().servers, 1);
        // A client whose gateway went is told so.
        let outs = send(&mut w.s, t0, 2, json!({"type": "offer", "data": {}}));
        assert_eq!(one(&outs, 2)["error"], ERR_SERVER_DISCONNECTED);
    }

    #[test]
    fn re_register_on_same_socket_only_updates_ice_servers() {
        let mut w = world(ServerConfig::default());
        let t0 = w.t0;
        let sid = connect(&mut w, t0, 2, PUBLIC);
        let outs = send(
            &mut w.s,
            t0,
            1,
            json!({"type": "register-server", "remoteId": GW_ID, "iceServers": [{"urls": "stun:new"}]}),
        );
        assert!(closes(&outs).is_empty());
        assert_eq!(one(&outs, 1)["type"], "registered");
        // The session survived and the timeout fallback uses the new list.
        w.s.handle_timeout(t0 + Duration::from_secs(10));
        let outs = drain(&mut w.s);
        let m = one(&outs, 2);
        assert_eq!(m["sessionId"], sid.as_str());
        assert_eq!(m["iceServers"], json!([{"urls": "stun:new"}]));
    }

    #[test]
    fn gateway_reaches_only_its_own_sessions() {
        let mut w = world(ServerConfig::default());
        let t0 = w.t0;
        let sid = connect(&mut w, t0, 2, PUBLIC);
        w.s.handle_open(t0, 5, OTHER);
        let outs = send(
            &mut w.s,
            t0,
            5,
            json!({"type": "register-server", "remoteId": "OTHERID"}),
        );
        assert_eq!(one(&outs, 5)["type"], "registered");
        for msg in [
            json!({"type": "answer", "sessionId": sid, "data": {"sdp": "evil"}}),
            json!({"type": "ice-candidate", "sessionId": sid, "data": {}}),
            json!({"type": "session-ready", "sessionId": sid, "iceServers": []}),
        ] {
            let outs = send(&mut w.s, t0, 5, msg);
            assert!(sent_to(&outs, 2).is_empty(), "{outs:?}");
            assert_eq!(one(&outs, 5)["error"], ERR_SESSION_NOT_FOUND);
        }
        assert_eq!(w.s.health().pending_clients, 1);
    }

    #[test]
    fn errors_of_the_protocol() {
        let mut w = world(ServerConfig::default());
        let t0 = w.t0;
        w.s.handle_open(t0, 2, PUBLIC);
        let err = |w: &mut World, conn, text: &str| {
            w.s.handle_text(t0, conn, text);
            let outs = drain(&mut w.s);
            one(&outs, conn)["error"].as_str().unwrap().to_string()
        };
        assert_eq!(err(&mut w, 2, "not json"), ERR_INVALID_JSON);
        assert_eq!(err(&mut w, 2, "[1,2]"), ERR_NOT_AN_OBJECT);
        assert_eq!(err(&mut w, 2, &"[".repeat(10_000)), ERR_INVALID_JSON);
        assert_eq!(
            err(&mut w, 2, r#"{"type":"bogus"}"#),
            "Unknown message type: bogus"
        );
        assert_eq!(
            err(&mut w, 2, r#"{"x":1}"#),
            "Unknown message type: undefined"
        );
        assert_eq!(err(&mut w, 2, r#"{"type":7}"#), "Unknown message type: 7");
        let long = format!(r#"{{"type":"{}"}}"#, "é".repeat(100));
        assert!(err(&mut w, 2, &long).len() < 100);
        assert_eq!(
            err(&mut w, 2, r#"{"type":"connect-request"}"#),
            ERR_REMOTE_ID_REQUIRED
        );
        assert_eq!(
            err(&mut w, 2, r#"{"type":"connect-request","remoteId":""}"#),
            ERR_REMOTE_ID_REQUIRED
        );
        assert_eq!(
            err(&mut w, 2, r#"{"type":"connect-request","remoteId":5}"#),
            ERR_REMOTE_ID_REQUIRED
        );
        assert_eq!(
            err(&mut w, 2, r#"{"type":"connect-request","remoteId":"NOPE"}"#),
            ERR_SERVER_NOT_FOUND
        );
        assert_eq!(
            err(&mut w, 2, r#"{"type":"offer","data":{}}"#),
            ERR_NOT_REGISTERED
        );
        assert_eq!(
            err(&mut w, 2, r#"{"type":"session-ready","sessionId":"x"}"#),
            ERR_NOT_REGISTERED
        );
        assert_eq!(
            err(&mut w, 2, r#"{"type":"register-server"}"#),
            ERR_REMOTE_ID_REQUIRED
        );
        assert_eq!(
            err(&mut w, 2, r#"{"type":"register-server","remoteId":"a b"}"#),
            ERR_INVALID_REMOTE_ID
        );
        assert_eq!(
            err(&mut w, 1, r#"{"type":"session-ready"}"#),
            ERR_SESSION_ID_REQUIRED
        );
        assert_eq!(
            err(&mut w, 1, r#"{"type":"answer","data":{}}"#),
            ERR_SESSION_ID_REQUIRED
        );
        assert_eq!(
            err(&mut w, 1, r#"{"type":"answer","sessionId":"nope"}"#),
            ERR_SESSION_NOT_FOUND
        );
        let outs = send(&mut w.s, t0, 2, json!({"type": "ping"}));
        assert_eq!(one(&outs, 2), json!({"type": "pong"}));
        assert!(send(&mut w.s, t0, 2, json!({"type": "pong"})).is_empty());
        w.s.handle_binary(t0, 2);
        let outs = drain(&mut w.s);
        assert_eq!(one(&outs, 2)["error"], ERR_BINARY);
        // Unknown connections are ignored.
        w.s.handle_text(t0, 99, r#"{"type":"ping"}"#);
        assert!(drain(&mut w.s).is_empty());
    }

    #[test]
    fn message_rate_limit_closes_4029_and_spares_loopback() {
        let config = ServerConfig {
            rate_limit: 5,
            ..ServerConfig::default()
        };
        let mut w = world(config);
        let t0 = w.t0;
        w.s.handle_open(t0, 2, PUBLIC);
        w.s.handle_open(t0, 3, LOOPBACK);
        for _ in 0..5 {
            assert_eq!(
                one(&send(&mut w.s, t0, 2, json!({"type": "ping"})), 2)["type"],
                "pong"
            );
        }
        for _ in 0..50 {
            assert_eq!(
                one(&send(&mut w.s, t0, 3, json!({"type": "ping"})), 3)["type"],
                "pong"
            );
        }
        let outs = send(
            &mut w.s,
            t0 + Duration::from_millis(20_500),
            2,
            json!({"type": "ping"}),
        );
        assert_eq!(
            one(&outs, 2)["error"],
            "Rate limited. Try again in 40 seconds."
        );
        assert_eq!(closes(&outs), vec![(2, CLOSE_RATE_LIMITED)]);
        // Another socket from that IP is limited too, until the window ends.
        w.s.handle_open(t0, 4, PUBLIC);
        let outs = send(
            &mut w.s,
            t0 + Duration::from_secs(30),
            4,
            json!({"type": "ping"}),
        );
        assert_eq!(closes(&outs), vec![(4, CLOSE_RATE_LIMITED)]);
        w.s.handle_open(t0, 5, PUBLIC);
        let outs = send(
            &mut w.s,
            t0 + Duration::from_secs(60),
            5,
            json!({"type": "ping"}),
        );
        assert_eq!(one(&outs, 5)["type"], "pong");
    }

    #[test]
    fn loopback_is_limited_when_asked() {
        let config = ServerConfig {
            rate_limit: 2,
            limit_loopback: true,
            ..ServerConfig::default()
        };
        let mut w = world(config);
        let t0 = w.t0;
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        w.s.handle_open(t0, 2, mapped);
        send(&mut w.s, t0, 2, json!({"type": "ping"}));
        send(&mut w.s, t0, 2, json!({"type": "ping"}));
        let outs = send(&mut w.s, t0, 2, json!({"type": "ping"}));
        assert_eq!(closes(&outs), vec![(2, CLOSE_RATE_LIMITED)]);
    }

    #[test]
    fn brute_forcing_remote_ids_closes_4008() {
        let config = ServerConfig {
            lookup_limit: 3,
            ..ServerConfig::default()
        };
        let mut w = world(config);
        let t0 = w.t0;
        w.s.handle_open(t0, 2, PUBLIC);
        for i in 0..3 {
            let outs = send(
                &mut w.s,
                t0,
                2,
                json!({"type": "connect-request", "remoteId": format!("GUESS{i}")}),
            );
            assert_eq!(one(&outs, 2)["error"], ERR_SERVER_NOT_FOUND);
            assert!(closes(&outs).is_empty());
        }
        // Successful lookups do not count.
        let sid = {
            let outs = send(
                &mut w.s,
                t0,
                2,
                json!({"type": "connect-request", "remoteId": GW_ID}),
            );
            one(&outs, 1)["sessionId"].as_str().unwrap().to_string()
        };
        let outs = send(
            &mut w.s,
            t0,
            2,
            json!({"type": "connect-request", "remoteId": "GUESS4"}),
        );
        assert_eq!(
            one(&outs, 1),
            json!({"type": "client-disconnected", "sessionId": sid})
        );
        assert_eq!(one(&outs, 2)["error"], ERR_SERVER_NOT_FOUND);
        assert_eq!(closes(&outs), vec![(2, CLOSE_BLOCKED)]);
        // Blocked: even a correct ID is refused, on any socket, and /api/check says so.
        w.s.handle_open(t0, 3, PUBLIC);
        let outs = send(
            &mut w.s,
            t0 + Duration::from_secs(120),
            3,
            json!({"type": "connect-request", "remoteId": GW_ID}),
        );
        assert_eq!(closes(&outs), vec![(3, CLOSE_BLOCKED)]);
        assert!(sent_to(&outs, 1).is_empty());
        assert!(matches!(
            w.s.handle_check(t0 + Duration::from_secs(120), PUBLIC, GW_ID),
            Check::Limited { retry_after: 480 }
        ));
        // Other IPs are not affected; the block ends.
        assert_eq!(w.s.handle_check(t0, OTHER, GW_ID), Check::Online(true));
        let later = t0 + Duration::from_secs(601);
        assert_eq!(w.s.handle_check(later, PUBLIC, GW_ID), Check::Online(true));
    }

    #[test]
    fn api_check_counts_misses() {
        let config = ServerConfig {
            lookup_limit: 2,
            ..ServerConfig::default()
        };
        let mut w = world(config);
        let t0 = w.t0;
        assert_eq!(
            w.s.handle_check(t0, PUBLIC, &GW_ID.to_lowercase()),
            Check::Online(true)
        );
        assert_eq!(w.s.handle_check(t0, PUBLIC, "X"), Check::Online(false));
        assert_eq!(w.s.handle_check(t0, PUBLIC, "Y"), Check::Online(false));
        assert_eq!(w.s.handle_check(t0, PUBLIC, "Z"), Check::Online(false));
        assert!(matches!(
            w.s.handle_check(t0, PUBLIC, GW_ID),
            Check::Limited { .. }
        ));
        // Loopback is exempt by default.
        for _ in 0..10 {
            assert_eq!(w.s.handle_check(t0, LOOPBACK, "X"), Check::Online(false));
        }
    }

    #[test]
    fn sessions_per_gateway_are_bounded() {
        let config = ServerConfig {
            max_sessions_per_gateway: 3,
            max_pending_per_gateway: 2,
            ..ServerConfig::default()
        };
        let mut w = world(config);
        let t0 = w.t0;
        let a = connect(&mut w, t0, 2, PUBLIC);
        connect(&mut w, t0, 3, PUBLIC);
        w.s.handle_open(t0, 4, PUBLIC);
        let req = json!({"type": "connect-request", "remoteId": GW_ID});
        let outs = send(&mut w.s, t0, 4, req.clone());
        assert_eq!(
            one(&outs, 4)["error"],
            ERR_SERVER_BUSY,
            "two pending at most"
        );
        assert!(sent_to(&outs, 1).is_empty());
        send(
            &mut w.s,
            t0,
            1,
            json!({"type": "session-ready", "sessionId": a}),
        );
        let outs = send(&mut w.s, t0, 4, req.clone());
        assert_eq!(one(&outs, 1)["type"], "client-connected");
        w.s.handle_open(t0, 5, PUBLIC);
        let outs = send(&mut w.s, t0, 5, req.clone());
        assert_eq!(
            one(&outs, 5)["error"],
            ERR_SERVER_BUSY,
            "three sessions at most"
        );
        w.s.handle_closed(t0, 2);
        drain(&mut w.s);
        w.s.handle_timeout(t0 + Duration::from_secs(10));
        drain(&mut w.s);
        let outs = send(&mut w.s, t0 + Duration::from_secs(10), 5, req);
        assert_eq!(one(&outs, 1)["type"], "client-connected");
    }

    #[test]
    fn gateway_leaving_notifies_clients_and_role_switch_is_clean() {
        let mut w = world(ServerConfig::default());
        let t0 = w.t0;
        let sid = connect(&mut w, t0, 2, PUBLIC);
        send(
            &mut w.s,
            t0,
            1,
            json!({"type": "session-ready", "sessionId": sid}),
        );
        // The gateway socket turns into a client of itself: its registration ends first.
        let outs = send(
            &mut w.s,
            t0,
            1,
            json!({"type": "connect-request", "remoteId": GW_ID}),
        );
        assert_eq!(
            one(&outs, 2),
            json!({"type": "peer-disconnected", "sessionId": sid})
        );
        assert_eq!(one(&outs, 1)["error"], ERR_SERVER_NOT_FOUND);
        assert_eq!(w.s.health().servers, 0);
        assert_eq!(w.s.health().clients, 0);
        assert_eq!(w.s.handle_check(t0, OTHER, GW_ID), Check::Online(false));
    }

    #[test]
    fn ip_records_are_pruned() {
        let mut w = world(ServerConfig::default());
        let t0 = w.t0;
        w.s.handle_open(t0, 2, PUBLIC);
        w.s.handle_text(t0, 2, r#"{"type":"ping"}"#);
        w.s.handle_closed(t0, 2);
        assert!(w.s.ips.contains_key(&PUBLIC));
        w.s.handle_timeout(t0 + Duration::from_secs(61));
        assert!(!w.s.ips.contains_key(&PUBLIC));
        assert!(
            w.s.ips.contains_key(&OTHER),
            "the gateway's IP still has a connection"
        );
    }

    #[test]
    fn session_ids_are_random() {
        let a = new_session_id().unwrap();
        let b = new_session_id().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn invalid_session_ids_name_no_session() {
        let mut w = world(ServerConfig::default());
        let t0 = w.t0;
        let sid = connect(&mut w, t0, 2, PUBLIC);
        let long = "a".repeat(65);
        for bad in [
            "",
            " ",
            long.as_str(),
            "a\r\nb",
            "é",
            "../x",
            &format!(" {sid}"),
        ] {
            for msg in [
                json!({"type": "session-ready", "sessionId": bad, "iceServers": []}),
                json!({"type": "answer", "sessionId": bad, "data": {}}),
                json!({"type": "ice-candidate", "sessionId": bad, "data": {}}),
            ] {
                let outs = send(&mut w.s, t0, 1, msg);
                assert_eq!(one(&outs, 1)["error"], ERR_SESSION_NOT_FOUND, "{bad:?}");
                assert!(sent_to(&outs, 2).is_empty());
            }
            // A client's own sessionId is replaced, but an invalid one is refused all the same.
            let outs = send(
                &mut w.s,
                t0,
                2,
                json!({"type": "offer", "sessionId": bad, "data": {}}),
            );
            assert_eq!(one(&outs, 2)["error"], ERR_SESSION_NOT_FOUND, "{bad:?}");
            assert!(sent_to(&outs, 1).is_empty());
        }
        // The session is untouched: session-ready still works.
        let outs = send(
            &mut w.s,
            t0,
            1,
            json!({"type": "session-ready", "sessionId": sid}),
        );
        assert_eq!(one(&outs, 2)["type"], "connected");
        // A sessionId that is not a string is no id at all, as before.
        let outs = send(
            &mut w.s,
            t0,
            1,
            json!({"type": "answer", "sessionId": 16, "data": {}}),
        );
        assert_eq!(one(&outs, 1)["error"], ERR_SESSION_ID_REQUIRED);
        let outs = send(
            &mut w.s,
            t0,
            2,
            json!({"type": "offer", "sessionId": null, "data": {"sdp": "v=0"}}),
        );
        assert_eq!(one(&outs, 1)["sessionId"], sid.as_str());
    }

    #[test]
    fn relays_unknown_fields_untouched() {
        let mut w = world(ServerConfig::default());
        let t0 = w.t0;
        let sid = connect(&mut w, t0, 2, PUBLIC);
        send(
            &mut w.s,
            t0,
            1,
            json!({"type": "session-ready", "sessionId": sid}),
        );
        let extra = json!({"nested": {"list": [1, 2.5, null, "x"]}, "n": 18446744073709551615u64});
        let outs = send(
            &mut w.s,
            t0,
            2,
            json!({"type": "ice-candidate", "data": null, "remoteId": 7, "extra": extra}),
        );
        assert_eq!(
            one(&outs, 1),
            json!({"type": "ice-candidate", "sessionId": sid, "data": null, "remoteId": 7, "extra": extra})
        );
        // Offers get the gateway's Remote ID, whatever the client put there.
        let outs = send(
            &mut w.s,
            t0,
            2,
            json!({"type": "offer", "remoteId": "SOMEONE", "data": {"type": "offer", "sdp": "v=0"}, "x": true}),
        );
        assert_eq!(
            one(&outs, 1),
            json!({"type": "offer", "sessionId": sid, "remoteId": GW_ID, "data": {"type": "offer", "sdp": "v=0"}, "x": true})
        );
        let outs = send(
            &mut w.s,
            t0,
            1,
            json!({"type": "answer", "sessionId": sid, "x": [true]}),
        );
        assert_eq!(
            one(&outs, 2),
            json!({"type": "answer", "sessionId": sid, "x": [true]})
        );
    }
}
