//! [`TurnClient`]: one allocation on one TURN server (RFC 8656), sans-IO
//! (docs/design.md#turn-client).
//!
//! - Allocate with long-term credentials: the first request goes without, the server answers
//!   401 with REALM and NONCE, the request is sent again with USERNAME, REALM, NONCE and
//!   MESSAGE-INTEGRITY; 438 (stale nonce) takes the new NONCE and repeats any request.
//! - Refresh before the lifetime ends; Refresh with lifetime 0 releases the allocation.
//! - Permissions by peer IP (CreatePermission), refreshed while used; a channel per peer
//!   address (ChannelBind), used for data once bound, Send indications until then.
//! - Data arrives as ChannelData or Data indications and is handed back borrowed.
//!
//! The transport is the owner's: [`TurnOutput::Transmit`] goes to the server over UDP or the
//! stream (with [`TurnClient::new`]'s `stream` set, ChannelData is padded and nothing is
//! retransmitted, as the stream is reliable).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::framing::{channel_data, parse_channel_data};
use super::stun::{
    long_term_key, message_type, random_txid, Class, Message, MessageBuilder, TransactionId,
    ATTR_CHANNEL_NUMBER, ATTR_DATA, ATTR_LIFETIME, ATTR_NONCE, ATTR_REALM,
    ATTR_REQUESTED_TRANSPORT, ATTR_USERNAME, ATTR_XOR_MAPPED_ADDRESS, ATTR_XOR_PEER_ADDRESS,
    ATTR_XOR_RELAYED_ADDRESS,
};
use crate::machine::{Machine, Next};

const ALLOCATE: u16 = 0x0003;
const REFRESH: u16 = 0x0004;
const SEND: u16 = 0x0006;
const DATA: u16 = 0x0007;
const CREATE_PERMISSION: u16 = 0x0008;
const CHANNEL_BIND: u16 = 0x0009;

/// UDP as REQUESTED-TRANSPORT (the protocol number, then three reserved bytes).
const TRANSPORT_UDP: [u8; 4] = [17, 0, 0, 0];
/// Permissions last five minutes on the server (RFC 8656 §9); refreshed a minute before.
const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// Channel bindings last ten minutes (RFC 8656 §12); refreshed a minute before.
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// First and last channel numbers (RFC 8656 §12).
const FIRST_CHANNEL: u16 = 0x4000;
const LAST_CHANNEL: u16 = 0x4FFF;
/// 401/438 answers followed in a row before giving up (a wrong password would loop).
const MAX_AUTH_RETRIES: u32 = 3;

/// Bounds and retransmission.
#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// Wait before the first retransmission over UDP; doubles after each send.
    pub initial_rto: Duration,
    /// Requests sent per transaction over UDP before giving up.
    pub max_sends: u32,
    /// Over a stream a request is sent once; no answer within this ends the transaction.
    pub stream_timeout: Duration,
    /// Allocation lifetime asked for.
    pub lifetime: Duration,
    /// Datagrams held per client while their peer's permission is being created.
    pub max_waiting: usize,
    /// Peers (permissions and channels) per allocation.
    pub max_peers: usize,
}

impl Default for TurnConfig {
    /// 500 ms doubling, 6 sends (gives up after 31.5 s), 10 s on a stream, 10 minutes
    /// lifetime, 64 datagrams waiting, 64 peers.
    fn default() -> Self {
        TurnConfig {
            initial_rto: Duration::from_millis(500),
            max_sends: 6,
            stream_timeout: Duration::from_secs(10),
            lifetime: Duration::from_secs(600),
            max_waiting: 64,
            max_peers: 64,
        }
    }
}

/// What [`TurnClient::poll_output`] gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnOutput {
    /// Send these bytes to the TURN server (over the client's transport).
    Transmit(Vec<u8>),
    Event(TurnEvent),
}

/// What happened to the allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnEvent {
    /// The relay is ready: `relay` is the address peers send to, `mapped` our address as the
    /// server saw it.
    Allocated {
        relay: SocketAddr,
        mapped: Option<SocketAddr>,
    },
    /// The allocation failed or was lost; the client is finished.
    Failed(String),
    /// Released on request ([`TurnClient::handle_release`]); the client is finished.
    Released,
}

/// What one input from the server carried.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// Data from a peer, through the relay.
    Data { peer: SocketAddr, data: &'a [u8] },
    /// A response or something ignored: nothing for the caller.
    Nothing,
}

/// Sending through the relay did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// No allocation (yet, or any more).
    NotAllocated,
    /// The peer's permission is still being created and the queue for it is full.
    QueueFull,
    /// [`TurnConfig::max_peers`] peers already.
    TooManyPeers,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::NotAllocated => write!(f, "no TURN allocation"),
            SendError::QueueFull => write!(f, "TURN queue full"),
            SendError::TooManyPeers => write!(f, "too many TURN peers"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the transport ([`TurnClient::handle_start`]).
    Idle,
    Allocating,
    Allocated {
        relay: SocketAddr,
        refresh_at: Instant,
    },
    Releasing,
    Done,
}

#[derive(Debug, Clone)]
enum Kind {
    Allocate,
    Refresh { lifetime: u32 },
    Permission(IpAddr),
    Bind { peer: SocketAddr, channel: u16 },
}

#[derive(Debug)]
struct Txn {
    kind: Kind,
    request: Vec<u8>,
    sends: u32,
    rto: Duration,
    next: Instant,
}

#[derive(Debug)]
struct Permission {
    /// Confirmed by the server, valid until then.
    expires: Option<Instant>,
    /// A CreatePermission is in flight.
    pending: bool,
    last_used: Instant,
}

#[derive(Debug)]
struct Channel {
    number: u16,
    expires: Option<Instant>,
    pending: bool,
    last_used: Instant,
}

/// One allocation's state, a [`Machine`].
#[derive(Debug)]
pub struct TurnClient {
    cfg: TurnConfig,
    stream: bool,
    username: String,
    password: String,
    state: State,
    realm: Option<String>,
    nonce: Option<Vec<u8>>,
    key: Option<[u8; 16]>,
    auth_retries: u32,
    txns: HashMap<TransactionId, Txn>,
    permissions: HashMap<IpAddr, Permission>,
    channels: HashMap<SocketAddr, Channel>,
    by_number: HashMap<u16, SocketAddr>,
    next_channel: u16,
    /// Datagrams waiting for their peer's permission (bounded by `max_waiting`).
    waiting: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Peer IPs to permit once allocated (remote candidates that came first; ≤ `max_peers`).
    early_permits: Vec<IpAddr>,
    out: VecDeque<TurnOutput>,
    now: Instant,
}

impl TurnClient {
    /// A client with these long-term credentials; `stream`: the transport is TCP or TLS.
    pub fn new(
        now: Instant,
        cfg: TurnConfig,
        username: &str,
        password: &str,
        stream: bool,
    ) -> TurnClient {
        TurnClient {
            cfg,
            stream,
            username: username.to_string(),
            password: password.to_string(),
            state: State::Idle,
            realm: None,
            nonce: None,
            key: None,
            auth_retries: 0,
            txns: HashMap::new(),
            permissions: HashMap::new(),
            channels: HashMap::new(),
            by_number: HashMap::new(),
            next_channel: FIRST_CHANNEL,
            waiting: VecDeque::new(),
            early_permits: Vec::new(),
            out: VecDeque::new(),
            now,
        }
    }

    /// The relayed address once allocated.
    pub fn relay(&self) -> Option<SocketAddr> {
        match self.state {
            State::Allocated { relay, .. } => Some(relay),
            _ => None,
        }
    }

    /// Finished (failed or released): drop it.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Neither giving the allocation back nor finished: a new session may still use it.
    pub fn is_usable(&self) -> bool {
        !matches!(self.state, State::Releasing | State::Done)
    }

    /// The transport to the server is ready: allocate.
    pub fn handle_start(&mut self, now: Instant) {
        self.now = now;
        if self.state == State::Idle {
            self.state = State::Allocating;
            self.request(Kind::Allocate);
        }
    }

    /// Give the allocation back (Refresh with lifetime 0); [`TurnEvent::Released`] follows.
    pub fn handle_release(&mut self, now: Instant) {
        self.now = now;
        match self.state {
            State::Allocated { .. } => {
                self.txns.clear();
                self.waiting.clear();
                self.state = State::Releasing;
                self.request(Kind::Refresh { lifetime: 0 });
            }
            State::Releasing | State::Done => {}
            State::Idle | State::Allocating => {
                self.txns.clear();
                self.finish(TurnEvent::Released);
            }
        }
    }

    /// The transport to the server is gone.
    pub fn handle_transport_lost(&mut self, now: Instant, why: &str) {
        self.now = now;
        match self.state {
            State::Done => {}
            State::Releasing => self.finish(TurnEvent::Released),
            _ => self.finish(TurnEvent::Failed(format!("connection lost: {why}"))),
        }
    }

    /// Create permissions for these peer IPs now (the session's remote candidates), so the
    /// peer's first checks through the relay are let in.
    pub fn handle_permit(&mut self, now: Instant, ip: IpAddr) {
        self.now = now;
        if matches!(self.state, State::Idle | State::Allocating) {
            // Remembered for when the allocation succeeds.
            if !self.early_permits.contains(&ip) && self.early_permits.len() < self.cfg.max_peers {
                self.early_permits.push(ip);
            }
            return;
        }
        if !matches!(self.state, State::Allocated { .. }) {
            return;
        }
        if let Some(p) = self.permissions.get_mut(&ip) {
            p.last_used = now;
            return;
        }
        if self.permissions.len() >= self.cfg.max_peers {
            return;
        }
        self.permissions.insert(
            ip,
            Permission {
                expires: None,
                pending: true,
                last_used: now,
            },
        );
        self.request(Kind::Permission(ip));
    }

    /// Send `data` to `peer` through the relay: as ChannelData once the peer's channel is
    /// bound, else as a Send indication once its permission is there, else queued until it is.
    pub fn handle_send(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        data: &[u8],
    ) -> Result<(), SendError> {
        self.now = now;
        if !matches!(self.state, State::Allocated { .. }) {
            return Err(SendError::NotAllocated);
        }
        if let Some(ch) = self.channels.get_mut(&peer) {
            ch.last_used = now;
            if ch.expires.is_some() {
                let number = ch.number;
                if let Some(p) = self.permissions.get_mut(&peer.ip()) {
                    p.last_used = now;
                }
                let m = channel_data(number, data, self.stream);
                self.out.push_back(TurnOutput::Transmit(m));
                return Ok(());
            }
        }
        let permitted = match self.permissions.get_mut(&peer.ip()) {
            Some(p) => {
                p.last_used = now;
                p.expires.is_some()
            }
            None => {
                if self.permissions.len() >= self.cfg.max_peers {
                    return Err(SendError::TooManyPeers);
                }
                self.handle_permit(now, peer.ip());
                false
            }
        };
        if permitted {
            self.bind(peer);
            self.send_indication(peer, data);
            Ok(())
        } else if self.waiting.len() < self.cfg.max_waiting {
            self.waiting.push_back((peer, data.to_vec()));
            Ok(())
        } else {
            Err(SendError::QueueFull)
        }
    }

    fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        let Some(txid) = random_txid() else {
            return;
        };
        let m = MessageBuilder::new(message_type(SEND, Class::Indication), &txid)
            .xor_address(ATTR_XOR_PEER_ADDRESS, peer)
            .attr(ATTR_DATA, data)
            .finish();
        self.out.push_back(TurnOutput::Transmit(m));
    }

    /// Start binding a channel for `peer` unless it has one.
    fn bind(&mut self, peer: SocketAddr) {
        if self.channels.contains_key(&peer) || self.channels.len() >= self.cfg.max_peers {
            return;
        }
        let Some(number) = self.free_channel() else {
            return;
        };
        self.channels.insert(
            peer,
            Channel {
                number,
                expires: None,
                pending: true,
                last_used: self.now,
            },
        );
        self.by_number.insert(number, peer);
        self.request(Kind::Bind {
            peer,
            channel: number,
        });
    }

    fn free_channel(&mut self) -> Option<u16> {
        let span = usize::from(LAST_CHANNEL - FIRST_CHANNEL) + 1;
        for _ in 0..span {
            let n = self.next_channel;
            self.next_channel = if n >= LAST_CHANNEL {
                FIRST_CHANNEL
            } else {
                n + 1
            };
            if !self.by_number.contains_key(&n) {
                return Some(n);
            }
        }
        None
    }

    /// Feed one message from the server (a datagram from its address, or one frame of the
    /// stream). Data from a peer comes back borrowed from `bytes`.
    pub fn handle_input<'a>(&mut self, now: Instant, bytes: &'a [u8]) -> Received<'a> {
        self.now = now;
        if let Some((number, data)) = parse_channel_data(bytes) {
            return match self.by_number.get(&number).copied() {
                Some(peer) if matches!(self.state, State::Allocated { .. }) => {
                    self.note_used(peer);
                    Received::Data { peer, data }
                }
                _ => Received::Nothing,
            };
        }
        let Some(m) = Message::parse(bytes) else {
            return Received::Nothing;
        };
        match m.class() {
            Class::Indication if m.method() == DATA => {
                let (Some(peer), Some(data)) =
                    (m.xor_address(ATTR_XOR_PEER_ADDRESS), m.attr(ATTR_DATA))
                else {
                    return Received::Nothing;
                };
                if !matches!(self.state, State::Allocated { .. }) {
                    return Received::Nothing;
                }
                self.note_used(peer);
                Received::Data { peer, data }
            }
            Class::Success | Class::Error => {
                self.response(&m);
                Received::Nothing
            }
            _ => Received::Nothing,
        }
    }

    /// Traffic with `peer`: its permission and channel are worth refreshing.
    fn note_used(&mut self, peer: SocketAddr) {
        if let Some(p) = self.permissions.get_mut(&peer.ip()) {
            p.last_used = self.now;
        }
        if let Some(c) = self.channels.get_mut(&peer) {
            c.last_used = self.now;
        }
    }

    fn response(&mut self, m: &Message<'_>) {
        let Some(txn) = self.txns.get(&m.txid) else {
            return;
        };
        // Once we have a key, a response must prove it knows it (a forged 401 or success from
        // an off-path sender is ignored); 401s before that carry no integrity.
        if let Some(key) = self.key {
            if m.class() == Class::Success && !m.check_integrity(&key) {
                log::debug!("TURN response without valid integrity ignored");
                return;
            }
        }
        let kind = txn.kind.clone();
        self.txns.remove(&m.txid);
        if m.class() == Class::Error {
            let code = m.error_code().unwrap_or(0);
            if matches!(code, 401 | 438) && self.auth_retries < MAX_AUTH_RETRIES {
                let realm = m
                    .attr(ATTR_REALM)
                    .map(|r| String::from_utf8_lossy(r).into_owned());
                let nonce = m.attr(ATTR_NONCE).map(<[u8]>::to_vec);
                if let (Some(realm), Some(nonce)) = (realm.or(self.realm.clone()), nonce) {
                    self.auth_retries += 1;
                    self.key = Some(long_term_key(&self.username, &realm, &self.password));
                    self.realm = Some(realm);
                    self.nonce = Some(nonce);
                    self.request(kind);
                    return;
                }
            }
            self.failed(kind, code, m);
            return;
        }
        self.auth_retries = 0;
        match kind {
            Kind::Allocate => {
                let Some(relay) = m.xor_address(ATTR_XOR_RELAYED_ADDRESS) else {
                    self.finish(TurnEvent::Failed(
                        "allocation without a relayed address".into(),
                    ));
                    return;
                };
                let mapped = m.xor_address(ATTR_XOR_MAPPED_ADDRESS);
                let lifetime = lifetime_of(m).unwrap_or(self.cfg.lifetime);
                self.state = State::Allocated {
                    relay,
                    refresh_at: self.now + refresh_after(lifetime),
                };
                self.out
                    .push_back(TurnOutput::Event(TurnEvent::Allocated { relay, mapped }));
                // Remote candidates that came before the allocation: let them in now.
                let now = self.now;
                for ip in std::mem::take(&mut self.early_permits) {
                    self.handle_permit(now, ip);
                }
            }
            Kind::Refresh { lifetime: 0 } => self.finish(TurnEvent::Released),
            Kind::Refresh { .. } => {
                if let State::Allocated { relay, .. } = self.state {
                    let lifetime = lifetime_of(m).unwrap_or(self.cfg.lifetime);
                    self.state = State::Allocated {
                        relay,
                        refresh_at: self.now + refresh_after(lifetime),
                    };
                }
            }
            Kind::Permission(ip) => {
                if let Some(p) = self.permissions.get_mut(&ip) {
                    p.pending = false;
                    p.expires = Some(self.now + PERMISSION_LIFETIME);
                }
                self.flush_waiting(ip);
            }
            Kind::Bind { peer, .. } => {
                if let Some(c) = self.channels.get_mut(&peer) {
                    c.pending = false;
                    c.expires = Some(self.now + CHANNEL_LIFETIME);
                }
                // A binding is also a permission.
                if let Some(p) = self.permissions.get_mut(&peer.ip()) {
                    p.expires = Some(self.now + PERMISSION_LIFETIME);
                }
            }
        }
    }

    /// A request failed for good.
    fn failed(&mut self, kind: Kind, code: u16, m: &Message<'_>) {
        let reason = m
            .attr(super::stun::ATTR_ERROR_CODE)
            .and_then(|v| v.get(4..))
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .unwrap_or_default();
        match kind {
            Kind::Allocate => {
                let hint = match code {
                    401 => " (wrong username or credential?)",
                    437 => " (allocation mismatch)",
                    486 => " (allocation quota reached)",
                    508 => " (server out of capacity)",
                    _ => "",
                };
                self.finish(TurnEvent::Failed(format!(
                    "allocation refused: {code} {reason}{hint}"
                )));
            }
            Kind::Refresh { lifetime: 0 } => self.finish(TurnEvent::Released),
            Kind::Refresh { .. } => self.finish(TurnEvent::Failed(format!(
                "refresh refused: {code} {reason}"
            ))),
            Kind::Permission(ip) => {
                log::debug!("TURN permission for {ip} refused: {code} {reason}");
                self.permissions.remove(&ip);
                self.waiting.retain(|(p, _)| p.ip() != ip);
            }
            Kind::Bind { peer, channel } => {
                log::debug!("TURN channel for {peer} refused: {code} {reason}");
                self.channels.remove(&peer);
                self.by_number.remove(&channel);
            }
        }
    }

    fn flush_waiting(&mut self, ip: IpAddr) {
        let (ready, rest): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(p, _)| p.ip() == ip);
        self.waiting = rest;
        for (peer, data) in ready {
            self.bind(peer);
            self.send_indication(peer, &data);
        }
    }

    fn finish(&mut self, event: TurnEvent) {
        if let TurnEvent::Failed(why) = &event {
            log::debug!("TURN client finished: {why}");
        }
        self.state = State::Done;
        self.txns.clear();
        self.waiting.clear();
        self.permissions.clear();
        self.channels.clear();
        self.by_number.clear();
        self.out.push_back(TurnOutput::Event(event));
    }

    /// Build and send a request of this kind (with credentials once we have them).
    fn request(&mut self, kind: Kind) {
        let Some(txid) = random_txid() else {
            self.finish(TurnEvent::Failed("no randomness available".into()));
            return;
        };
        let method = match kind {
            Kind::Allocate => ALLOCATE,
            Kind::Refresh { .. } => REFRESH,
            Kind::Permission(_) => CREATE_PERMISSION,
            Kind::Bind { .. } => CHANNEL_BIND,
        };
        let mut b = MessageBuilder::new(message_type(method, Class::Request), &txid);
        match &kind {
            Kind::Allocate => {
                b = b
                    .attr(ATTR_REQUESTED_TRANSPORT, &TRANSPORT_UDP)
                    .attr(ATTR_LIFETIME, &secs(self.cfg.lifetime).to_be_bytes());
            }
            Kind::Refresh { lifetime } => b = b.attr(ATTR_LIFETIME, &lifetime.to_be_bytes()),
            Kind::Permission(ip) => {
                b = b.xor_address(ATTR_XOR_PEER_ADDRESS, SocketAddr::new(*ip, 0));
            }
            Kind::Bind { peer, channel } => {
                let mut v = [0u8; 4];
                v[..2].copy_from_slice(&channel.to_be_bytes());
                b = b
                    .attr(ATTR_CHANNEL_NUMBER, &v)
                    .xor_address(ATTR_XOR_PEER_ADDRESS, *peer);
            }
        }
        let request = match (&self.key, &self.realm, &self.nonce) {
            (Some(key), Some(realm), Some(nonce)) => b
                .attr(ATTR_USERNAME, self.username.as_bytes())
                .attr(ATTR_REALM, realm.as_bytes())
                .attr(ATTR_NONCE, nonce)
                .finish_with_integrity(key),
            _ => b.finish(),
        };
        let wait = match self.stream {
            true => self.cfg.stream_timeout,
            false => self.cfg.initial_rto,
        };
        self.out.push_back(TurnOutput::Transmit(request.clone()));
        self.txns.insert(
            txid,
            Txn {
                kind,
                request,
                sends: 1,
                rto: wait,
                next: self.now + wait,
            },
        );
    }

    fn timeout(&mut self, now: Instant) {
        self.now = now;
        // Transactions: retransmit over UDP, give up when out of tries.
        let max_sends = if self.stream {
            1
        } else {
            self.cfg.max_sends.max(1)
        };
        let mut expired = Vec::new();
        for (txid, t) in self.txns.iter_mut() {
            if now < t.next {
                continue;
            }
            if t.sends >= max_sends {
                expired.push(*txid);
                continue;
            }
            t.sends += 1;
            t.rto = t.rto.saturating_mul(2);
            t.next = now + t.rto;
            self.out.push_back(TurnOutput::Transmit(t.request.clone()));
        }
        for txid in expired {
            let Some(t) = self.txns.remove(&txid) else {
                continue;
            };
            match t.kind {
                Kind::Allocate => {
                    self.finish(TurnEvent::Failed("no answer from the TURN server".into()));
                    return;
                }
                Kind::Refresh { lifetime: 0 } => {
                    self.finish(TurnEvent::Released);
                    return;
                }
                Kind::Refresh { .. } => {
                    self.finish(TurnEvent::Failed("refresh not answered".into()));
                    return;
                }
                Kind::Permission(ip) => {
                    self.permissions.remove(&ip);
                    self.waiting.retain(|(p, _)| p.ip() != ip);
                }
                Kind::Bind { peer, channel } => {
                    self.channels.remove(&peer);
                    self.by_number.remove(&channel);
                }
            }
        }
        let State::Allocated { refresh_at, .. } = self.state else {
            return;
        };
        if now >= refresh_at
            && !self
                .txns
                .values()
                .any(|t| matches!(t.kind, Kind::Refresh { .. }))
        {
            let lifetime = secs(self.cfg.lifetime);
            self.request(Kind::Refresh { lifetime });
            if let State::Allocated { relay, .. } = self.state {
                // Until answered, do not ask again.
                self.state = State::Allocated {
                    relay,
                    refresh_at: now + self.cfg.lifetime,
                };
            }
        }
        // Permissions and channels: refreshed while used within their lifetime, else dropped.
        let mut permit = Vec::new();
        self.permissions.retain(|ip, p| {
            match renewal(now, p.expires, p.pending, p.last_used, PERMISSION_LIFETIME) {
                Renewal::Keep => true,
                Renewal::Renew => {
                    p.pending = true;
                    permit.push(*ip);
                    true
                }
                Renewal::Lapse => false,
            }
        });
        for ip in permit {
            self.request(Kind::Permission(ip));
        }
        let mut rebind = Vec::new();
        let mut dropped = Vec::new();
        self.channels.retain(|peer, c| {
            match renewal(now, c.expires, c.pending, c.last_used, CHANNEL_LIFETIME) {
                Renewal::Keep => true,
                Renewal::Renew => {
                    c.pending = true;
                    rebind.push((*peer, c.number));
                    true
                }
                Renewal::Lapse => {
                    dropped.push(c.number);
                    false
                }
            }
        });
        for n in dropped {
            self.by_number.remove(&n);
        }
        for (peer, channel) in rebind {
            self.request(Kind::Bind { peer, channel });
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let txns = self.txns.values().map(|t| t.next).min();
        let State::Allocated { refresh_at, .. } = self.state else {
            return txns;
        };
        let perms = self
            .permissions
            .values()
            .filter(|p| !p.pending)
            .filter_map(|p| p.expires)
            .map(|e| e.checked_sub(REFRESH_MARGIN).unwrap_or(e))
            .min();
        let chans = self
            .channels
            .values()
            .filter(|c| !c.pending)
            .filter_map(|c| c.expires)
            .map(|e| e.checked_sub(REFRESH_MARGIN).unwrap_or(e))
            .min();
        [txns, perms, chans]
            .into_iter()
            .flatten()
            .fold(refresh_at, Instant::min)
            .into()
    }
}

impl Machine for TurnClient {
    type Output = TurnOutput;

    fn handle_timeout(&mut self, now: Instant) {
        self.timeout(now);
    }

    fn poll_output(&mut self) -> Next<TurnOutput> {
        Next::or_timeout(self.out.pop_front(), || self.deadline())
    }
}

/// What a permission or channel needs now.
enum Renewal {
    Keep,
    /// Close to lapsing and used (either way) since it was installed: ask again.
    Renew,
    /// Close to lapsing and unused: let it go.
    Lapse,
}

fn renewal(
    now: Instant,
    expires: Option<Instant>,
    pending: bool,
    last_used: Instant,
    lifetime: Duration,
) -> Renewal {
    let Some(expires) = expires else {
        return Renewal::Keep;
    };
    if pending || now + REFRESH_MARGIN < expires {
        return Renewal::Keep;
    }
    match expires.checked_sub(lifetime) {
        Some(installed) if last_used <= installed => Renewal::Lapse,
        _ => Renewal::Renew,
    }
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

fn lifetime_of(m: &Message<'_>) -> Option<Duration> {
    let v: [u8; 4] = m.attr(ATTR_LIFETIME)?.try_into().ok()?;
    Some(Duration::from_secs(u64::from(u32::from_be_bytes(v))))
}

/// Refresh a minute before the end, or at half the lifetime when it is shorter than two.
fn refresh_after(lifetime: Duration) -> Duration {
    if lifetime >= REFRESH_MARGIN * 2 {
        lifetime - REFRESH_MARGIN
    } else {
        lifetime / 2
    }
}
