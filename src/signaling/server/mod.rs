//! The signaling server's relay logic (docs/protocol.md#relay-rules) as a sans-IO state machine.
//!
//! The driver reports connections being accepted, opening as WebSockets and closing, and the
//! text frames they send; this machine decides what to send where, and when to close a
//! connection. The messages, close codes and error texts are those of
//! [`crate::signaling::protocol`]; every message and error the public server sends is sent here
//! exactly as it sends it (docs/protocol.md#compatibility). It shows the face of
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
//! - lets a gateway prove it owns its Remote ID ([`proof`], docs/protocol.md#ownership-proof);
//! - bounds sessions per gateway, and each IP's share of them;
//! - limits per IP ([`limits`]: IPv4 address or IPv6 /64, behind trusted proxies the forwarded
//!   address): open sockets, messages (close 4029), failed Remote ID lookups (close 4008,
//!   blocks doubling per repeat), and closes sockets that take no role in time
//!   (docs/protocol.md#server-limits).

pub mod http;
pub mod limits;
pub mod proof;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::machine::{Machine, Next};
use crate::signaling::protocol::{
    err_rate_limited, FromServer, ParseError, Proof, Relay, SessionId, ToServer, CLOSE_BLOCKED,
    CLOSE_BLOCKED_REASON, CLOSE_FLOODING_REASON, CLOSE_IDLE_REASON, CLOSE_OWNED,
    CLOSE_OWNED_REASON, CLOSE_POLICY, CLOSE_RATE_LIMITED, CLOSE_RATE_LIMITED_REASON,
    CLOSE_REPLACED, CLOSE_REPLACED_REASON, CLOSE_TOO_MANY_SOCKETS_REASON, ERR_BINARY, ERR_BLOCKED,
    ERR_CLIENT_NOT_FOUND, ERR_INVALID_FORMAT, ERR_INVALID_REMOTE_ID, ERR_NOT_A_REGISTERED_SERVER,
    ERR_NOT_REGISTERED, ERR_REMOTE_ID_OWNED, ERR_REMOTE_ID_REQUIRED, ERR_SERVER_BUSY,
    ERR_SERVER_DISCONNECTED, ERR_SERVER_NOT_FOUND, ERR_SESSION_ID_REQUIRED, ERR_SESSION_NOT_FOUND,
};
use limits::{block_length, Cidr, IpKey, Records};

/// Identifies one connection; chosen by the driver, never reused while it is open.
pub type ConnId = u64;

/// Longest Remote ID accepted (current IDs have 26 characters, legacy ones 12).
const MAX_REMOTE_ID_LEN: usize = 64;
/// Longest message type echoed back in `Unknown message type: X`.
const MAX_ECHOED_TYPE_LEN: usize = 64;
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
    /// Apply the per-IP limits to loopback addresses too.
    pub limit_loopback: bool,
    /// The rate-limit window.
    pub window: Duration,
    /// How long the first block of an IP that exceeded `lookup_limit` lasts; each repeat
    /// doubles it, up to `max_block`.
    pub block_duration: Duration,
    pub max_block: Duration,
    /// How long a client waits for the gateway's `session-ready` before it gets the cached
    /// ICE servers.
    pub session_ready_timeout: Duration,
    /// Sessions (pending or connected) one gateway may have.
    pub max_sessions_per_gateway: usize,
    /// Sessions still waiting for `session-ready` one gateway may have.
    pub max_pending_per_gateway: usize,
    /// One IP's share of one gateway's sessions, and of its pending sessions.
    pub max_sessions_per_ip: usize,
    pub max_pending_per_ip: usize,
    /// Sockets one IP may have open, in any phase (0 = unlimited).
    pub max_sockets_per_ip: usize,
    /// A WebSocket that has neither registered nor asked for a session (or whose session
    /// ended) for this long is closed.
    pub idle_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` / `Forwarded` headers name the client.
    pub trusted_proxies: Vec<Cidr>,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            rate_limit: 100,
            lookup_limit: 10,
            limit_loopback: false,
            window: Duration::from_secs(60),
            block_duration: Duration::from_secs(600),
            max_block: Duration::from_secs(3600),
            session_ready_timeout: Duration::from_secs(10),
            max_sessions_per_gateway: 256,
            max_pending_per_gateway: 64,
            max_sessions_per_ip: 32,
            max_pending_per_ip: 8,
            max_sockets_per_ip: 32,
            idle_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a text frame. `relayed_from` is the client whose message this is, when it is one
    /// relayed to its gateway: if the gateway cannot take it in, the driver reports
    /// [`SignalServer::handle_relay_refused`] for that client instead of dropping the gateway.
    Send {
        conn: ConnId,
        text: String,
        relayed_from: Option<ConnId>,
    },
    /// Close the connection with this code. The server has already forgotten it: nothing more
    /// is sent to it, and its later input is ignored (`handle_closed` still releases its
    /// place in the per-IP count).
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

impl Role {
    /// A gateway, or a client with a session: not subject to the idle deadline.
    fn active(&self) -> bool {
        matches!(
            self,
            Role::Gateway { .. }
                | Role::Client {
                    session: Some(_),
                    ..
                }
        )
    }
}

#[derive(Debug)]
struct Conn {
    ip: IpAddr,
    key: IpKey,
    role: Role,
    /// The challenge this socket was sent (docs/protocol.md#ownership-proof).
    nonce: Option<String>,
    /// While it has no active role: when it is closed.
    idle_deadline: Option<Instant>,
}

/// One IP's sessions with one gateway.
#[derive(Debug, Default, Clone, Copy)]
struct Share {
    sessions: usize,
    pending: usize,
}

#[derive(Debug)]
struct Gateway {
    conn: ConnId,
    ice_servers: Value,
    /// Registered with a valid proof of ownership.
    proven: bool,
    sessions: HashSet<SessionId>,
    pending: usize,
    per_ip: HashMap<IpKey, Share>,
}

impl Gateway {
    fn new(conn: ConnId, ice_servers: Value, proven: bool) -> Gateway {
        Gateway {
            conn,
            ice_servers,
            proven,
            sessions: HashSet::new(),
            pending: 0,
            per_ip: HashMap::new(),
        }
    }

    fn share(&self, key: IpKey) -> Share {
        self.per_ip.get(&key).copied().unwrap_or_default()
    }

    fn add_pending(&mut self, session_id: SessionId, key: IpKey) {
        self.sessions.insert(session_id);
        self.pending += 1;
        let share = self.per_ip.entry(key).or_default();
        share.sessions += 1;
        share.pending += 1;
    }

    /// A pending session got its `connected` (from `session-ready` or the timeout).
    fn settle(&mut self, key: IpKey) {
        self.pending = self.pending.saturating_sub(1);
        if let Some(share) = self.per_ip.get_mut(&key) {
            share.pending = share.pending.saturating_sub(1);
        }
    }

    fn remove(&mut self, session_id: &SessionId, key: IpKey, pending: bool) {
        self.sessions.remove(session_id);
        if pending {
            self.settle(key);
        }
        if let Some(share) = self.per_ip.get_mut(&key) {
            share.sessions = share.sessions.saturating_sub(1);
            if share.sessions == 0 {
                self.per_ip.remove(&key);
            }
        }
    }
}

#[derive(Debug)]
struct Session {
    client: ConnId,
    /// The client's IP key (its share of the gateway).
    key: IpKey,
    remote_id: String,
    /// `Some(deadline)` while waiting for `session-ready`.
    pending: Option<Instant>,
}

pub struct SignalServer {
    config: ServerConfig,
    conns: HashMap<ConnId, Conn>,
    /// Every socket counted against an IP key, from accept (or open) until it is closed.
    sockets: HashMap<ConnId, IpKey>,
    gateways: HashMap<String, Gateway>,
    sessions: HashMap<SessionId, Session>,
    /// Deadlines of pending sessions, earliest first.
    deadlines: BTreeSet<(Instant, SessionId)>,
    /// Idle deadlines of WebSockets without an active role, earliest first.
    idle: BTreeSet<(Instant, ConnId)>,
    records: Records,
    next_prune: Instant,
    /// The `now` of the latest input (for deadlines set deep inside a transition).
    now: Instant,
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
            sockets: HashMap::new(),
            gateways: HashMap::new(),
            sessions: HashMap::new(),
            deadlines: BTreeSet::new(),
            idle: BTreeSet::new(),
            records: Records::default(),
            now,
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

    /// The address the limits count for a request from the TCP peer `peer` whose forwarding
    /// headers name `forwarded` (leftmost first): see [`limits::client_address`].
    pub fn client_address(&self, peer: IpAddr, forwarded: &[Option<IpAddr>]) -> IpAddr {
        limits::client_address(&self.config.trusted_proxies, peer, forwarded)
    }

    /// A TCP connection from `peer` was accepted: false when that IP has all the sockets it
    /// may have (the driver then closes it at once). A trusted proxy's connections are counted
    /// against the client it names, once the request head is read ([`Self::handle_open`]).
    pub fn handle_accept(&mut self, now: Instant, conn: ConnId, peer: IpAddr) -> bool {
        self.now = now;
        if self.config.trusted_proxies.iter().any(|c| c.contains(peer)) {
            return true;
        }
        self.count_socket(now, conn, IpKey::of(peer))
    }

    /// `GET /api/check/<ID>` from `ip`: counts as a message, and a miss as a failed lookup.
    pub fn handle_check(&mut self, now: Instant, ip: IpAddr, id: &str) -> Check {
        self.now = now;
        let key = IpKey::of(ip);
        if let Err(retry_after) = self.count_message(now, key) {
            return Check::Limited { retry_after };
        }
        if let Some(retry_after) = self.blocked_for(now, key) {
            return Check::Limited { retry_after };
        }
        let id = id.trim().to_ascii_uppercase();
        let online = valid_remote_id(&id) && self.gateways.contains_key(&id);
        if !online {
            // A block takes effect from the next lookup; this one is answered.
            let _ = self.count_failed_lookup(now, key);
        }
        self.records.forget_idle(key);
        Check::Online(online)
    }

    /// A WebSocket from `ip` (the client's address: [`Self::client_address`]) is open (the
    /// upgrade is done). It is sent its challenge, or closed at once when `ip` has too many
    /// sockets open.
    pub fn handle_open(&mut self, now: Instant, conn: ConnId, ip: IpAddr) {
        if self.conns.contains_key(&conn) {
            return;
        }
        self.now = now;
        let key = IpKey::of(ip);
        if !self.count_socket(now, conn, key) {
            self.out.push_back(Output::Close {
                conn,
                code: CLOSE_POLICY,
                reason: CLOSE_TOO_MANY_SOCKETS_REASON,
            });
            return;
        }
        let nonce = proof::new_nonce();
        self.conns.insert(
            conn,
            Conn {
                ip,
                key,
                role: Role::None,
                nonce: nonce.clone(),
                idle_deadline: None,
            },
        );
        self.arm_idle(conn);
        if nonce.is_some() {
            self.send(conn, FromServer::Challenge { nonce });
        }
    }

    /// The connection is gone (closed by the peer, dropped by the driver, or finished after
    /// the server closed it): its roles end (unless the server closed it already) and its
    /// place in the per-IP count is released.
    pub fn handle_closed(&mut self, now: Instant, conn: ConnId) {
        self.now = now;
        self.forget(conn);
        if let Some(key) = self.sockets.remove(&conn) {
            if let Some(rec) = self.records.get_mut(key) {
                rec.sockets = rec.sockets.saturating_sub(1);
            }
            self.records.forget_idle(key);
        }
    }

    /// The driver could not queue a message relayed from client `from` to its gateway without
    /// overfilling the gateway's queue: the flooding client goes, not the gateway.
    pub fn handle_relay_refused(&mut self, now: Instant, from: ConnId) {
        self.now = now;
        if let Some(c) = self.conns.get(&from) {
            log::warn!(
                "signal: {} sends its gateway more than it can take in; closing the client",
                c.ip
            );
        }
        self.close(from, CLOSE_POLICY, CLOSE_FLOODING_REASON);
    }

    /// A binary frame arrived: the protocol has none.
    pub fn handle_binary(&mut self, now: Instant, conn: ConnId) {
        self.now = now;
        let Some(key) = self.conns.get(&conn).map(|c| c.key) else {
            return;
        };
        if let Err(secs) = self.count_message(now, key) {
            self.rate_limited(conn, secs);
            return;
        }
        self.error(conn, ERR_BINARY);
    }

    /// A text frame arrived.
    pub fn handle_text(&mut self, now: Instant, conn: ConnId, text: &str) {
        self.now = now;
        let Some((ip, key)) = self.conns.get(&conn).map(|c| (c.ip, c.key)) else {
            return;
        };
        if let Err(secs) = self.count_message(now, key) {
            self.rate_limited(conn, secs);
            return;
        }
        let msg = match ToServer::parse(text) {
            Ok(msg) => msg,
            Err(ParseError::NotJson(_) | ParseError::NotAnObject) => {
                return self.error(conn, ERR_INVALID_FORMAT)
            }
            Err(ParseError::UnknownType(t)) => return self.error(conn, &unknown_type(t.as_ref())),
            Err(e @ ParseError::InvalidSessionId { kind, .. }) => {
                log::debug!("signal: {ip} sent {e}");
                return self.invalid_session_id(conn, kind);
            }
            Err(e @ ParseError::Invalid { .. }) => {
                log::debug!("signal: {ip} sent {e}");
                return self.error(conn, ERR_INVALID_FORMAT);
            }
        };
        match msg {
            ToServer::Ping => self.send(conn, FromServer::Pong),
            ToServer::Pong => {}
            ToServer::RegisterServer {
                remote_id,
                ice_servers,
                proof,
            } => self.register(conn, given(remote_id.as_deref()), ice_servers, proof),
            ToServer::ConnectRequest { remote_id } => {
                self.connect_request(now, conn, given(remote_id.as_deref()))
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

    /// A message naming a session id that cannot exist: answered as one naming no session.
    fn invalid_session_id(&mut self, conn: ConnId, kind: &str) {
        let role = self.conns.get(&conn).map(|c| c.role.clone());
        let text = match (kind, role) {
            ("session-ready", Some(Role::Gateway { .. })) => return,
            ("session-ready", _) => ERR_NOT_A_REGISTERED_SERVER,
            (_, Some(Role::Gateway { .. })) => ERR_CLIENT_NOT_FOUND,
            (_, Some(Role::Client { .. })) => ERR_SESSION_NOT_FOUND,
            _ => ERR_NOT_REGISTERED,
        };
        self.error(conn, text);
    }

    fn session_ready_timed_out(&mut self, session_id: SessionId) {
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        session.pending = None;
        let (client, key, remote_id) = (session.client, session.key, session.remote_id.clone());
        let Some(gateway) = self.gateways.get_mut(&remote_id) else {
            return;
        };
        gateway.settle(key);
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

    /// Whether `proof` (if any) proves `remote_id` for this socket's challenge.
    fn proven(&self, conn: ConnId, remote_id: &str, proof: Option<&Proof>) -> bool {
        let (Some(proof), Some(c)) = (proof, self.conns.get(&conn)) else {
            return false;
        };
        let Some(nonce) = c.nonce.as_deref() else {
            return false;
        };
        match proof::verify(proof, nonce, remote_id) {
            Ok(()) => true,
            Err(why) => {
                log::warn!(
                    "signal: {} sent a proof for {remote_id} that does not hold: {why}",
                    c.ip
                );
                false
            }
        }
    }

    fn register(
        &mut self,
        conn: ConnId,
        remote_id: Option<&str>,
        ice_servers: Option<Value>,
        proof: Option<Proof>,
    ) {
        let Some(remote_id) = remote_id else {
            return self.error(conn, ERR_REMOTE_ID_REQUIRED);
        };
        if !valid_remote_id(remote_id) {
            return self.error(conn, ERR_INVALID_REMOTE_ID);
        }
        // The proof signs the ID as sent; it is kept upper-cased.
        let proven = self.proven(conn, remote_id, proof.as_ref());
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
            if let Some(gateway) = self.gateways.get_mut(&remote_id) {
                if let Some(ice) = ice_servers {
                    gateway.ice_servers = ice;
                }
                if proven && !gateway.proven {
                    log::info!("signal: gateway {remote_id} proved it owns its Remote ID");
                    gateway.proven = true;
                }
            }
            log::debug!("signal: {remote_id} updated its ICE servers");
            return self.send(conn, registered);
        }
        if let Some(owner) = self.gateways.get(&remote_id).filter(|g| g.proven) {
            if !proven {
                let ip = self.conns.get(&conn).map(|c| c.ip);
                log::warn!(
                    "signal: {ip:?} tried to register {remote_id} without proof, but the proven \
                     owner (connection {}) is online; refused",
                    owner.conn
                );
                self.error(conn, ERR_REMOTE_ID_OWNED);
                return self.close(conn, CLOSE_OWNED, CLOSE_OWNED_REASON);
            }
        }
        self.leave_role(conn);
        if let Some(old) = self.gateways.get(&remote_id).map(|g| g.conn) {
            log::info!("signal: {remote_id} registered from a new connection; closing the old one");
            self.close(old, CLOSE_REPLACED, CLOSE_REPLACED_REASON);
        }
        let ice_servers = ice_servers.unwrap_or_else(|| Value::Array(Vec::new()));
        self.gateways
            .insert(remote_id.clone(), Gateway::new(conn, ice_servers, proven));
        if let Some(c) = self.conns.get(&conn) {
            let how = if proven {
                "with proof"
            } else {
                "without proof"
            };
            log::info!("signal: gateway {remote_id} registered from {} {how}", c.ip);
        }
        self.set_role(
            conn,
            Role::Gateway {
                remote_id: remote_id.clone(),
            },
        );
        self.send(conn, registered);
    }

    fn connect_request(&mut self, now: Instant, conn: ConnId, remote_id: Option<&str>) {
        let Some(remote_id) = remote_id else {
            return self.error(conn, ERR_REMOTE_ID_REQUIRED);
        };
        let Some((ip, key)) = self.conns.get(&conn).map(|c| (c.ip, c.key)) else {
            return;
        };
        let remote_id = remote_id.to_ascii_uppercase();
        // A second connect-request on one socket ends the first session.
        self.leave_role(conn);
        if self.blocked_for(now, key).is_some() {
            self.error(conn, ERR_BLOCKED);
            return self.close(conn, CLOSE_BLOCKED, CLOSE_BLOCKED_REASON);
        }
        let found = valid_remote_id(&remote_id) && self.gateways.contains_key(&remote_id);
        if !found {
            self.error(conn, ERR_SERVER_NOT_FOUND);
            if let Some(block) = self.count_failed_lookup(now, key) {
                log::warn!(
                    "signal: {key} looked up too many unknown Remote IDs; blocked for {block:?}"
                );
                self.error(conn, ERR_BLOCKED);
                self.close(conn, CLOSE_BLOCKED, CLOSE_BLOCKED_REASON);
            }
            return;
        }
        let limited = self.limited(key);
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
        let share = gateway.share(key);
        if limited
            && (share.sessions >= self.config.max_sessions_per_ip
                || share.pending >= self.config.max_pending_per_ip)
        {
            log::warn!("signal: {key} holds its share of {remote_id}'s sessions; refusing another");
            return self.error(conn, ERR_SERVER_BUSY);
        }
        let session_id = match new_session_id() {
            Some(id) if !self.sessions.contains_key(&id) => id,
            _ => return self.error(conn, ERR_SERVER_BUSY),
        };
        let deadline = now + self.config.session_ready_timeout;
        if let Some(gateway) = self.gateways.get_mut(&remote_id) {
            gateway.add_pending(session_id.clone(), key);
        }
        self.sessions.insert(
            session_id.clone(),
            Session {
                client: conn,
                key,
                remote_id: remote_id.clone(),
                pending: Some(deadline),
            },
        );
        self.deadlines.insert((deadline, session_id.clone()));
        self.set_role(
            conn,
            Role::Client {
                remote_id: remote_id.clone(),
                session: Some(session_id.clone()),
            },
        );
        log::debug!("signal: client {ip} asks for {remote_id}: session {session_id}");
        self.send(
            gateway_conn,
            FromServer::ClientConnected {
                session_id: Some(session_id),
            },
        );
    }

    /// `session-ready`: checked in the public server's order (`Session ID required`, `Not a
    /// registered server`); one for a session that is not pending (late, unknown, or another
    /// gateway's) is ignored, as there.
    fn session_ready(
        &mut self,
        conn: ConnId,
        session_id: Option<SessionId>,
        ice_servers: Option<Value>,
    ) {
        let Some(session_id) = session_id else {
            return self.error(conn, ERR_SESSION_ID_REQUIRED);
        };
        let Some(remote_id) = self.gateway_of(conn) else {
            return self.error(conn, ERR_NOT_A_REGISTERED_SERVER);
        };
        let Some(session) = self
            .sessions
            .get_mut(&session_id)
            .filter(|s| s.remote_id == remote_id)
        else {
            log::debug!(
                "signal: session-ready for {session_id}, not a session of {remote_id}; ignored"
            );
            return;
        };
        let Some(deadline) = session.pending.take() else {
            // Too late: the client already got the cached list.
            log::debug!("signal: late session-ready for {session_id} ignored");
            return;
        };
        let (client, key) = (session.client, session.key);
        let key_deadline = (deadline, session_id);
        self.deadlines.remove(&key_deadline);
        let (_, session_id) = key_deadline;
        let Some(gateway) = self.gateways.get_mut(&remote_id) else {
            return;
        };
        gateway.settle(key);
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
                    return self.error(conn, ERR_CLIENT_NOT_FOUND);
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
                if self.conns.contains_key(&gateway_conn) {
                    self.out.push_back(Output::Send {
                        conn: gateway_conn,
                        text: wrap(relay).to_text(),
                        relayed_from: Some(conn),
                    });
                }
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

    /// Give `conn` its role; one without an active role gets an idle deadline.
    fn set_role(&mut self, conn: ConnId, role: Role) {
        let active = role.active();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.role = role;
        match active {
            true => self.disarm_idle(conn),
            false => self.arm_idle(conn),
        }
    }

    fn arm_idle(&mut self, conn: ConnId) {
        self.disarm_idle(conn);
        let at = self.now + self.config.idle_timeout;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.idle_deadline = Some(at);
            self.idle.insert((at, conn));
        }
    }

    fn disarm_idle(&mut self, conn: ConnId) {
        if let Some(at) = self
            .conns
            .get_mut(&conn)
            .and_then(|c| c.idle_deadline.take())
        {
            self.idle.remove(&(at, conn));
        }
    }

    /// End what the connection was (gateway or client), notifying the other side.
    fn leave_role(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let old = std::mem::replace(&mut c.role, Role::None);
        if old.active() {
            self.arm_idle(conn);
        }
        match old {
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
        gateway.remove(&session_id, session.key, session.pending.is_some());
        let gateway_conn = gateway.conn;
        log::debug!("signal: client of session {session_id} left");
        self.send(
            gateway_conn,
            FromServer::ClientDisconnected {
                session_id: Some(session_id),
            },
        );
    }

    /// The gateway registered as `remote_id` on `conn` is gone (closed or replaced): its
    /// connected clients get `peer-disconnected`, its pending ones `Server disconnected`,
    /// exactly as from the public server.
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
                self.arm_idle(session.client);
            }
            let msg = match session.pending {
                Some(deadline) => {
                    self.deadlines.remove(&(deadline, session_id));
                    FromServer::error(ERR_SERVER_DISCONNECTED)
                }
                None => FromServer::PeerDisconnected { session_id: None },
            };
            self.send(session.client, msg);
        }
    }

    /// Forget a connection: its roles end.
    fn forget(&mut self, conn: ConnId) {
        self.leave_role(conn);
        self.disarm_idle(conn);
        self.conns.remove(&conn);
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
                relayed_from: None,
            });
        }
    }

    fn error(&mut self, conn: ConnId, error: &str) {
        self.send(conn, FromServer::error(error));
    }

    fn limited(&self, key: IpKey) -> bool {
        self.config.limit_loopback || !key.is_loopback()
    }

    /// Count socket `conn` against `key`; false when `key` has all the sockets it may have.
    fn count_socket(&mut self, now: Instant, conn: ConnId, key: IpKey) -> bool {
        if self.sockets.get(&conn) == Some(&key) {
            return true;
        }
        let (cap, limited) = (self.config.max_sockets_per_ip, self.limited(key));
        let (window, max_block) = (self.config.window, self.config.max_block);
        let rec = self.records.entry(now, key, window, max_block);
        if limited && cap > 0 && rec.sockets >= cap {
            log::debug!(
                "signal: {key} has {} sockets open; refusing another",
                rec.sockets
            );
            return false;
        }
        rec.sockets += 1;
        if let Some(old) = self.sockets.insert(conn, key) {
            if let Some(rec) = self.records.get_mut(old) {
                rec.sockets = rec.sockets.saturating_sub(1);
            }
        }
        true
    }

    /// The record of `key` with its window restarted if it has passed; `None` when `key` is
    /// not limited.
    fn record(&mut self, now: Instant, key: IpKey) -> Option<&mut limits::Record> {
        if !self.limited(key) {
            return None;
        }
        let (window, max_block) = (self.config.window, self.config.max_block);
        let rec = self.records.entry(now, key, window, max_block);
        if now >= rec.window_start + window {
            rec.window_start = now;
            rec.messages = 0;
            rec.failed_lookups = 0;
        }
        Some(rec)
    }

    /// Count one message; `Err(seconds until the window ends)` when over the limit.
    fn count_message(&mut self, now: Instant, key: IpKey) -> Result<(), u64> {
        let (limit, window) = (self.config.rate_limit, self.config.window);
        if limit == 0 {
            return Ok(());
        }
        let Some(rec) = self.record(now, key) else {
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

    /// Count one failed Remote ID lookup; `Some(block length)` when the IP is now blocked.
    fn count_failed_lookup(&mut self, now: Instant, key: IpKey) -> Option<Duration> {
        let limit = self.config.lookup_limit;
        let (base, max) = (self.config.block_duration, self.config.max_block);
        if limit == 0 {
            return None;
        }
        let rec = self.record(now, key)?;
        rec.failed_lookups = rec.failed_lookups.saturating_add(1);
        if rec.failed_lookups <= limit {
            return None;
        }
        rec.blocks = rec.blocks.saturating_add(1);
        // A new block starts a fresh count: the next one needs `limit` more failures.
        rec.failed_lookups = 0;
        let length = block_length(base, max, rec.blocks);
        rec.blocked_until = Some(now + length);
        Some(length)
    }

    /// `Some(seconds left)` while `key` may not look up Remote IDs.
    fn blocked_for(&self, now: Instant, key: IpKey) -> Option<u64> {
        if !self.limited(key) {
            return None;
        }
        let until = self.records.get(key)?.blocked_until?;
        let left = until.checked_duration_since(now).filter(|d| !d.is_zero())?;
        Some(ceil_secs(left))
    }
}

impl Machine for SignalServer {
    type Output = Output;

    /// Pending sessions whose `session-ready` wait is over get `connected` with the cached ICE
    /// servers; sockets idle without a role past their deadline are closed; once per window,
    /// per-IP records are pruned.
    fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        while let Some((at, _)) = self.deadlines.first() {
            if *at > now {
                break;
            }
            let Some((_, session_id)) = self.deadlines.pop_first() else {
                break;
            };
            self.session_ready_timed_out(session_id);
        }
        while let Some((at, conn)) = self.idle.first().copied() {
            if at > now {
                break;
            }
            self.idle.pop_first();
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            c.idle_deadline = None;
            log::debug!("signal: {} took no role in time; closing it", c.ip);
            self.close(conn, CLOSE_POLICY, CLOSE_IDLE_REASON);
        }
        if now >= self.next_prune {
            self.next_prune = now + self.config.window;
            let (window, max_block) = (self.config.window, self.config.max_block);
            self.records.prune(now, window, max_block, false);
        }
    }

    fn poll_output(&mut self) -> Next<Output> {
        if let Some(out) = self.out.pop_front() {
            return Next::Output(out);
        }
        let next = [
            self.deadlines.first().map(|(at, _)| *at),
            self.idle.first().map(|(at, _)| *at),
        ]
        .into_iter()
        .flatten()
        .fold(self.next_prune, Instant::min);
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

    /// Messages sent to `conn` (parsed), ignoring others and the challenge every new socket
    /// gets (see `every_socket_is_challenged`).
    fn sent_to(outs: &[Output], conn: ConnId) -> Vec<Value> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Send { conn: c, text, .. } if *c == conn => {
                    Some(serde_json::from_str::<Value>(text).unwrap())
                }
                _ => None,
            })
            .filter(|v| v["type"] != "challenge")
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
        assert_eq!(one(&outs, 1)["error"], ERR_CLIENT_NOT_FOUND);
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
        assert_eq!(one(&outs, 2), json!({"type": "peer-disconnected"}));
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
        ] {
            let outs = send(&mut w.s, t0, 5, msg);
            assert!(sent_to(&outs, 2).is_empty(), "{outs:?}");
            assert_eq!(one(&outs, 5)["error"], ERR_CLIENT_NOT_FOUND);
        }
        // session-ready for a session that is not its own pending one is ignored.
        let msg = json!({"type": "session-ready", "sessionId": sid, "iceServers": []});
        assert!(send(&mut w.s, t0, 5, msg).is_empty());
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
        assert_eq!(err(&mut w, 2, "not json"), ERR_INVALID_FORMAT);
        assert_eq!(err(&mut w, 2, "[1,2]"), ERR_INVALID_FORMAT);
        assert_eq!(err(&mut w, 2, &"[".repeat(10_000)), ERR_INVALID_FORMAT);
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
            ERR_NOT_A_REGISTERED_SERVER
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
            ERR_CLIENT_NOT_FOUND
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
        let errors: Vec<Value> = sent_to(&outs, 2)
            .iter()
            .map(|m| m["error"].clone())
            .collect();
        assert_eq!(errors, vec![ERR_SERVER_NOT_FOUND, ERR_BLOCKED]);
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
        assert_eq!(
            one(&outs, 3),
            json!({"type": "error", "error": ERR_BLOCKED})
        );
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
        assert_eq!(one(&outs, 2), json!({"type": "peer-disconnected"}));
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
        assert!(w.s.records.contains(IpKey::of(PUBLIC)));
        w.s.handle_timeout(t0 + Duration::from_secs(61));
        assert!(!w.s.records.contains(IpKey::of(PUBLIC)));
        assert!(
            w.s.records.contains(IpKey::of(OTHER)),
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
                json!({"type": "answer", "sessionId": bad, "data": {}}),
                json!({"type": "ice-candidate", "sessionId": bad, "data": {}}),
            ] {
                let outs = send(&mut w.s, t0, 1, msg);
                assert_eq!(one(&outs, 1)["error"], ERR_CLIENT_NOT_FOUND, "{bad:?}");
                assert!(sent_to(&outs, 2).is_empty());
            }
            let msg = json!({"type": "session-ready", "sessionId": bad, "iceServers": []});
            assert!(send(&mut w.s, t0, 1, msg).is_empty(), "{bad:?}: ignored");
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

    /// The challenge sent to `conn` when it opened.
    fn challenge_of(outs: &[Output], conn: ConnId) -> String {
        outs.iter()
            .find_map(|o| match o {
                Output::Send { conn: c, text, .. } if *c == conn => {
                    let v: Value = serde_json::from_str(text).unwrap();
                    (v["type"] == "challenge").then(|| v["nonce"].as_str().unwrap().to_string())
                }
                _ => None,
            })
            .expect("a challenge")
    }

    /// Open `conn` from `ip` and register `id` with a proof by `prover` (if any).
    fn register_as(
        s: &mut SignalServer,
        now: Instant,
        conn: ConnId,
        id: &str,
        prover: Option<&crate::identity::Prover>,
    ) -> Vec<Output> {
        s.handle_open(now, conn, OTHER);
        let nonce = challenge_of(&drain(s), conn);
        let mut msg = json!({"type": "register-server", "remoteId": id, "iceServers": []});
        if let Some(p) = prover {
            msg["proof"] = serde_json::to_value(p.prove(&nonce, id).unwrap()).unwrap();
        }
        send(s, now, conn, msg)
    }

    #[test]
    fn every_socket_is_challenged_with_a_fresh_nonce() {
        let t0 = Instant::now();
        let mut s = SignalServer::new(t0, ServerConfig::default());
        s.handle_open(t0, 1, PUBLIC);
        s.handle_open(t0, 2, PUBLIC);
        let outs = drain(&mut s);
        let (a, b) = (challenge_of(&outs, 1), challenge_of(&outs, 2));
        assert_ne!(a, b);
        assert!(a.len() >= 24, "{a}");
        assert_eq!(outs.len(), 2);
    }

    #[test]
    fn a_proven_remote_id_cannot_be_taken_without_proof() {
        let identity = crate::identity::Identity::generate().unwrap();
        let prover = identity.prover().unwrap();
        let id = identity.remote_id.clone();
        let t0 = Instant::now();
        let mut s = SignalServer::new(t0, ServerConfig::default());
        let outs = register_as(&mut s, t0, 1, &id, Some(&prover));
        assert_eq!(one(&outs, 1), json!({"type": "registered", "remoteId": id}));
        // A client connects to the owner.
        s.handle_open(t0, 2, PUBLIC);
        let outs = send(
            &mut s,
            t0,
            2,
            json!({"type": "connect-request", "remoteId": id}),
        );
        assert_eq!(one(&outs, 1)["type"], "client-connected");
        // A squatter without proof, and one with a proof made by another key, or a proof
        // replayed from another socket's challenge: refused and closed, the owner untouched.
        let other = crate::identity::Identity::generate()
            .unwrap()
            .prover()
            .unwrap();
        for (conn, prover) in [(3, None), (4, Some(&other))] {
            let outs = register_as(&mut s, t0, conn, &id, prover);
            assert_eq!(
                one(&outs, conn),
                json!({"type": "error", "error": "Remote ID is owned by another server"})
            );
            assert_eq!(closes(&outs), vec![(conn, CLOSE_OWNED)]);
            assert!(sent_to(&outs, 1).is_empty() && sent_to(&outs, 2).is_empty());
        }
        s.handle_open(t0, 5, OTHER);
        drain(&mut s);
        let replayed = json!({"type": "register-server", "remoteId": id,
                              "proof": prover.prove("someone-elses-nonce", &id).unwrap()});
        let outs = send(&mut s, t0, 5, replayed);
        assert_eq!(closes(&outs), vec![(5, CLOSE_OWNED)]);
        assert!(s.is_open(1) && s.is_open(2));
        assert_eq!(s.health().servers, 1);
        // The owner itself, proven again from a new socket (a restart), replaces the old one.
        let outs = register_as(&mut s, t0, 6, &id, Some(&prover));
        assert_eq!(closes(&outs), vec![(1, CLOSE_REPLACED)]);
        assert_eq!(
            one(&outs, 2),
            json!({"type": "error", "error": ERR_SERVER_DISCONNECTED})
        );
        assert_eq!(one(&outs, 6)["type"], "registered");
    }

    #[test]
    fn unproven_registration_behaves_as_on_the_public_server_until_proven() {
        let identity = crate::identity::Identity::generate().unwrap();
        let prover = identity.prover().unwrap();
        let id = identity.remote_id.clone();
        let t0 = Instant::now();
        let mut s = SignalServer::new(t0, ServerConfig::default());
        // Unproven owners replace each other (close 4000), as on the public server.
        let outs = register_as(&mut s, t0, 1, &id, None);
        assert_eq!(one(&outs, 1)["type"], "registered");
        let outs = register_as(&mut s, t0, 2, &id, None);
        assert_eq!(closes(&outs), vec![(1, CLOSE_REPLACED)]);
        // A proof on the same socket later (the challenge came after register-server)
        // upgrades the registration without a new one.
        s.handle_open(t0, 3, PUBLIC);
        let nonce = challenge_of(&drain(&mut s), 3);
        let msg = json!({"type": "register-server", "remoteId": id});
        let outs = send(&mut s, t0, 3, msg.clone());
        assert_eq!(closes(&outs), vec![(2, CLOSE_REPLACED)]);
        let mut proven = msg.clone();
        proven["proof"] = serde_json::to_value(prover.prove(&nonce, &id).unwrap()).unwrap();
        let outs = send(&mut s, t0, 3, proven);
        assert_eq!(one(&outs, 3)["type"], "registered");
        assert!(closes(&outs).is_empty());
        // Now an unproven socket cannot take it.
        let outs = register_as(&mut s, t0, 4, &id, None);
        assert_eq!(closes(&outs), vec![(4, CLOSE_OWNED)]);
        // A wrong proof with no proven owner online counts as no proof.
        s.handle_closed(t0, 3);
        let wrong = crate::identity::Identity::generate()
            .unwrap()
            .prover()
            .unwrap();
        let outs = register_as(&mut s, t0, 5, &id, Some(&wrong));
        assert_eq!(one(&outs, 5)["type"], "registered");
        let outs = register_as(&mut s, t0, 6, &id, None);
        assert_eq!(closes(&outs), vec![(5, CLOSE_REPLACED)]);
    }

    #[test]
    fn sockets_without_a_role_are_closed_after_the_idle_timeout() {
        let mut w = world(ServerConfig::default());
        let t0 = w.t0;
        w.s.handle_open(t0, 2, PUBLIC);
        let sid = connect(&mut w, t0, 3, PUBLIC);
        send(
            &mut w.s,
            t0,
            1,
            json!({"type": "session-ready", "sessionId": sid}),
        );
        w.s.handle_open(t0, 4, PUBLIC);
        // A failed lookup leaves a socket without a role: its deadline starts then.
        let t10 = t0 + Duration::from_secs(10);
        send(
            &mut w.s,
            t10,
            4,
            json!({"type": "connect-request", "remoteId": "NOPE"}),
        );
        assert_eq!(
            w.s.poll_output(),
            Next::Timeout(Some(t0 + Duration::from_secs(30)))
        );
        w.s.handle_timeout(t0 + Duration::from_millis(29_999));
        assert!(drain(&mut w.s).is_empty());
        w.s.handle_timeout(t0 + Duration::from_secs(30));
        let outs = drain(&mut w.s);
        // The deadline runs from the open (or from losing a role), not from the last
        // message: failed lookups do not keep a socket alive.
        let idle = |conn| Output::Close {
            conn,
            code: CLOSE_POLICY,
            reason: CLOSE_IDLE_REASON,
        };
        assert_eq!(outs, vec![idle(2), idle(4)]);
        // The gateway and the client with a session stay, however long.
        w.s.handle_timeout(t0 + Duration::from_secs(3600));
        assert!(drain(&mut w.s).is_empty());
        assert!(w.s.is_open(1) && w.s.is_open(3));
        // A client whose gateway left has no role any more.
        let t1h = t0 + Duration::from_secs(3600);
        w.s.handle_closed(t1h, 1);
        assert_eq!(
            one(&drain(&mut w.s), 3),
            json!({"type": "peer-disconnected"})
        );
        w.s.handle_timeout(t1h + Duration::from_secs(30));
        assert_eq!(closes(&drain(&mut w.s)), vec![(3, CLOSE_POLICY)]);
    }

    #[test]
    fn sockets_per_ip_are_capped_per_address_and_per_ipv6_64() {
        let config = ServerConfig {
            max_sockets_per_ip: 2,
            ..ServerConfig::default()
        };
        let t0 = Instant::now();
        let mut s = SignalServer::new(t0, config);
        assert!(s.handle_accept(t0, 1, PUBLIC));
        assert!(s.handle_accept(t0, 2, PUBLIC));
        assert!(
            !s.handle_accept(t0, 3, PUBLIC),
            "a third socket is refused at accept"
        );
        assert!(s.handle_accept(t0, 4, OTHER));
        assert!(s.handle_accept(t0, 5, LOOPBACK) && s.handle_accept(t0, 6, LOOPBACK));
        assert!(
            s.handle_accept(t0, 7, LOOPBACK),
            "loopback is exempt by default"
        );
        s.handle_closed(t0, 1);
        assert!(
            s.handle_accept(t0, 8, PUBLIC),
            "a closed socket frees its place"
        );
        // The count covers WebSockets too (open after accept counts once).
        s.handle_open(t0, 2, PUBLIC);
        assert!(drain(&mut s)
            .iter()
            .all(|o| !matches!(o, Output::Close { .. })));
        // A WebSocket opened without accept (another IP) is counted at open.
        let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2:ffff::2".parse().unwrap();
        s.handle_open(t0, 10, v6a);
        s.handle_open(t0, 11, v6b);
        s.handle_open(t0, 12, v6a);
        let outs = drain(&mut s);
        assert_eq!(closes(&outs), vec![(12, CLOSE_POLICY)]);
        assert!(!s.is_open(12) && s.is_open(11));
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(s.handle_accept(t0, 13, other_64));
    }

    #[test]
    fn behind_a_trusted_proxy_the_forwarded_client_is_counted() {
        let config = ServerConfig {
            max_sockets_per_ip: 1,
            limit_loopback: true,
            trusted_proxies: limits::parse_cidrs("127.0.0.1").unwrap(),
            ..ServerConfig::default()
        };
        let t0 = Instant::now();
        let mut s = SignalServer::new(t0, config);
        // The proxy itself is never refused: it carries every client.
        for conn in 1..=5 {
            assert!(s.handle_accept(t0, conn, LOOPBACK));
        }
        let a = s.client_address(LOOPBACK, &[Some(PUBLIC)]);
        let b = s.client_address(LOOPBACK, &[Some(OTHER)]);
        assert_eq!((a, b), (PUBLIC, OTHER));
        s.handle_open(t0, 1, a);
        s.handle_open(t0, 2, b);
        s.handle_open(t0, 3, a);
        assert_eq!(closes(&drain(&mut s)), vec![(3, CLOSE_POLICY)]);
        // A client that is not behind the proxy cannot claim an address.
        assert_eq!(s.client_address(OTHER, &[Some(PUBLIC)]), OTHER);
    }

    #[test]
    fn one_ip_gets_only_its_share_of_a_gateways_sessions() {
        let config = ServerConfig {
            max_pending_per_ip: 2,
            max_sessions_per_ip: 3,
            ..ServerConfig::default()
        };
        let mut w = world(config);
        let t0 = w.t0;
        let req = json!({"type": "connect-request", "remoteId": GW_ID});
        let a = connect(&mut w, t0, 2, PUBLIC);
        connect(&mut w, t0, 3, PUBLIC);
        w.s.handle_open(t0, 4, PUBLIC);
        let outs = send(&mut w.s, t0, 4, req.clone());
        assert_eq!(
            one(&outs, 4)["error"],
            ERR_SERVER_BUSY,
            "two pending per IP"
        );
        assert!(sent_to(&outs, 1).is_empty());
        // Another IP still gets through.
        connect(&mut w, t0, 5, OTHER);
        // Once one is connected, one more pending fits; then the session share is full.
        send(
            &mut w.s,
            t0,
            1,
            json!({"type": "session-ready", "sessionId": a}),
        );
        let outs = send(&mut w.s, t0, 4, req.clone());
        assert_eq!(one(&outs, 1)["type"], "client-connected");
        w.s.handle_open(t0, 6, PUBLIC);
        let outs = send(&mut w.s, t0, 6, req.clone());
        assert_eq!(
            one(&outs, 6)["error"],
            ERR_SERVER_BUSY,
            "three sessions per IP"
        );
        // Leaving frees the share.
        w.s.handle_closed(t0, 4);
        drain(&mut w.s);
        let outs = send(&mut w.s, t0, 6, req.clone());
        assert_eq!(one(&outs, 1)["type"], "client-connected");
        // Loopback is exempt by default.
        for conn in 10..20 {
            connect(&mut w, t0, conn, LOOPBACK);
        }
    }

    #[test]
    fn a_client_flooding_its_gateway_is_closed_not_the_gateway() {
        let mut w = world(ServerConfig::default());
        let t0 = w.t0;
        let sid = connect(&mut w, t0, 2, PUBLIC);
        send(
            &mut w.s,
            t0,
            1,
            json!({"type": "session-ready", "sessionId": sid}),
        );
        let outs = send(
            &mut w.s,
            t0,
            2,
            json!({"type": "ice-candidate", "data": {}}),
        );
        assert!(matches!(
            outs.as_slice(),
            [Output::Send {
                conn: 1,
                relayed_from: Some(2),
                ..
            }]
        ));
        // Gateway → client messages and the server's own carry no blame.
        let outs = send(
            &mut w.s,
            t0,
            1,
            json!({"type": "ice-candidate", "sessionId": sid, "data": {}}),
        );
        assert!(matches!(
            outs.as_slice(),
            [Output::Send {
                conn: 2,
                relayed_from: None,
                ..
            }]
        ));
        w.s.handle_relay_refused(t0, 2);
        let outs = drain(&mut w.s);
        assert_eq!(closes(&outs), vec![(2, CLOSE_POLICY)]);
        assert_eq!(
            one(&outs, 1),
            json!({"type": "client-disconnected", "sessionId": sid})
        );
        assert!(w.s.is_open(1));
    }

    #[test]
    fn blocks_double_per_repeat_up_to_an_hour() {
        let config = ServerConfig {
            lookup_limit: 1,
            ..ServerConfig::default()
        };
        let mut w = world(config);
        let mut now = w.t0;
        let mut lengths = Vec::new();
        for conn in 10..15 {
            w.s.handle_open(now, conn, PUBLIC);
            for guess in ["A", "B"] {
                send(
                    &mut w.s,
                    now,
                    conn,
                    json!({"type": "connect-request", "remoteId": guess}),
                );
            }
            let Check::Limited { retry_after } = w.s.handle_check(now, PUBLIC, GW_ID) else {
                panic!("blocked");
            };
            lengths.push(retry_after);
            now += Duration::from_secs(retry_after);
            // Pruning does not forget a recent block.
            w.s.handle_timeout(now);
            drain(&mut w.s);
            assert_eq!(w.s.handle_check(now, PUBLIC, GW_ID), Check::Online(true));
        }
        assert_eq!(lengths, vec![600, 1200, 2400, 3600, 3600]);
    }
}
