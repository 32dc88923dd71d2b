//! The gateway core (sans-IO): remote sessions, their data channels and the bridges to local
//! services.
//!
//! A [`Machine`]: inputs are signaling events, UDP datagrams, local WebSocket and HTTP events,
//! DNS answers, each with `now`; outputs are drained with [`Machine::poll_output`]: signaling
//! replies, datagrams to send, DNS lookups, and local socket actions for the driver. Nothing
//! here touches a socket or the clock. It also decides when to discover the server-reflexive
//! address (at every registration with the signaling server, since the public address may
//! have changed while we were away).

pub mod auth;
pub mod bridge;
pub mod channels;
pub mod isolation;
pub mod observe;
pub mod queue;
mod relaying;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use str0m::channel::ChannelId;
use str0m::config::DtlsCert;
use tungstenite::Message;

use self::auth::{Change, Role, SessionAuth};
use self::bridge::{Bridge, BridgeId, Flush, Limits};
use self::channels::ChannelKind;
use self::observe::{Counters, Refused, SessionInfo, SessionState, Traffic};
use crate::chunk::{self, Chunker};
use crate::config::WsUrl;
use crate::http_proxy::response::ProxyResponse;
use crate::http_proxy::{request as proxy_request, ConnId, PoolConfig, PoolOutput, ProxyPool};
use crate::machine::{earliest, Machine, Next};
use crate::turn::{RelayId, Relays, TurnServer};
use crate::webrtc::router::{Route, Router};
use crate::webrtc::session::{
    PeerSession, RemoteCandidateOutcome, SessionConfig, SessionEvent, SessionOutput, Transmit,
};
use crate::webrtc::stun_gather::{GatherConfig, GatherEvent, GatherOutput, StunGatherer, StunUrl};

/// Identifies a session inside the gateway (the signaling session id is a string).
pub type SessionKey = u64;

/// Identifies a DNS lookup the core asked for ([`Output::Lookup`]).
pub type LookupKey = u64;

/// How long a closing session waits for the client to complete the channel resets (so the
/// client sees each channel close at once) before DTLS is closed and the session forgotten.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// MA's WebSocket API; `?webrtc_session_id=<id>` is appended per session.
    pub local_ws_url: WsUrl,
    pub sendspin_url: WsUrl,
    pub live_announcement_url: WsUrl,
    pub max_sessions: usize,
    /// A session that gets no offer this long after `client-connected` is closed.
    pub offer_timeout: Duration,
    /// A connected session that has not opened `ma-api` this long after connecting is closed.
    pub api_timeout: Duration,
    /// Bytes the whole gateway may hold for its clients (a Pi has 1 GB). A quarter is the
    /// allowance for data in flight: every session's send window is capped at an equal share
    /// of it (never below the base window). The rest is for the queues towards clients and
    /// proxy bodies (fetched or still arriving); past it, every local socket that adds to them
    /// is paused until they drain to 3/4 of it. Proxy bodies alone may take at most half of
    /// the budget: a fetch beyond is answered 503. docs/design.md#backpressure
    pub memory_budget: usize,
    /// Sessions not connected yet (no offer, or ICE/DTLS not up) held at most; a newcomer
    /// beyond it evicts the oldest of them, so strangers cannot squat the slots
    /// (docs/design.md#gateway-core).
    pub max_pending: usize,
    /// Connecting and handshaking to a local service (MA's API, Sendspin) must finish within
    /// this, or the bridge fails as if the socket had closed: a hung MA must not hold
    /// sessions and their queues forever.
    pub local_connect_timeout: Duration,
    /// A `sendspin` channel opened before MA confirmed the session's login is held this long
    /// (its messages queued, nothing connected), then closed unless the login came
    /// (docs/protocol.md#channels-and-labels).
    pub sendspin_login_grace: Duration,
    pub session: SessionConfig,
    pub limits: Limits,
    /// STUN servers asked for our public address at every registration.
    pub stun_servers: Vec<StunUrl>,
    /// TURN servers each session gets relays on (docs/design.md#turn-relays).
    pub turn_servers: Vec<TurnServer>,
}

impl CoreConfig {
    /// Defaults for everything but the URLs.
    pub fn new(local_ws_url: WsUrl, sendspin_url: WsUrl, max_sessions: usize) -> CoreConfig {
        let mut live = local_ws_url.clone();
        live.path_and_query = "/live_announcement".into();
        CoreConfig {
            local_ws_url,
            sendspin_url,
            live_announcement_url: live,
            max_sessions,
            offer_timeout: Duration::from_secs(10),
            api_timeout: Duration::from_secs(10),
            memory_budget: 16 * 1024 * 1024,
            max_pending: 8.min(max_sessions),
            local_connect_timeout: Duration::from_secs(10),
            sendspin_login_grace: Duration::from_secs(5),
            session: SessionConfig {
                // Not connected 15 s after client-connected: a squatter or a hopeless path.
                connect_timeout: Duration::from_secs(15),
                ..SessionConfig::default()
            },
            limits: Limits::default(),
            stun_servers: Vec::new(),
            turn_servers: Vec::new(),
        }
    }
}

/// What the driver must do.
#[derive(Debug)]
pub enum Output {
    /// Reply `session-ready` for this signaling session.
    SessionReady { session_id: String },
    /// Send the SDP answer.
    Answer { session_id: String, sdp: String },
    /// Trickle one local candidate.
    Candidate {
        session_id: String,
        candidate: Value,
    },
    /// Send a datagram from the shared UDP socket.
    Transmit(Transmit),
    /// Open a local WebSocket for a bridge.
    OpenWs { bridge: BridgeId, url: WsUrl },
    /// Send on a bridge's local WebSocket.
    WsSend { bridge: BridgeId, msg: Message },
    /// Close a bridge's local WebSocket and forget it.
    CloseWs { bridge: BridgeId },
    /// Reading the bridge's socket is allowed again: read what the kernel holds.
    ResumeWsRead { bridge: BridgeId },
    /// A Sendspin client identified itself: this session's player.
    SendspinPlayer {
        session_id: String,
        client_id: String,
    },
    /// Open an HTTP connection (TLS for a `wss` MA URL) to MA's host for the proxy.
    FetchConnect { conn: ConnId },
    /// Write on a proxy connection (buffer until it is established).
    FetchWrite { conn: ConnId, bytes: Vec<u8> },
    /// Close a proxy connection.
    FetchClose { conn: ConnId },
    /// Resolve `host` (off the loop); answer with [`Gateway::handle_resolved`].
    Lookup {
        key: LookupKey,
        host: String,
        port: u16,
    },
    /// Open a TCP connection (TLS when `tls`, verifying `host`) to a TURN server; answer with
    /// [`Gateway::handle_turn_connected`], then [`Gateway::handle_turn_data`] /
    /// [`Gateway::handle_turn_lost`].
    TurnConnect {
        relay: RelayId,
        host: String,
        port: u16,
        tls: bool,
    },
    /// Write on a TURN server's connection.
    TurnWrite { relay: RelayId, bytes: Vec<u8> },
    /// Close a TURN server's connection (no event follows).
    TurnClose { relay: RelayId },
}

/// Who asked for an HTTP proxy response: a channel of a session. Equal by session and channel;
/// the session's signaling id only labels the proxy pool's log lines (its `Debug` form is the
/// `[id]` prefix of every session line, docs/design.md#logs).
#[derive(Clone)]
struct Requester {
    key: SessionKey,
    channel: ChannelId,
    session: std::sync::Arc<str>,
}

impl Requester {
    fn new(key: SessionKey, channel: ChannelId, session: &str) -> Requester {
        Requester {
            key,
            channel,
            session: session.into(),
        }
    }

    /// For looking a requester up (equality ignores the label).
    fn of(key: SessionKey, channel: ChannelId) -> Requester {
        Requester::new(key, channel, "")
    }
}

impl PartialEq for Requester {
    fn eq(&self, other: &Self) -> bool {
        (self.key, self.channel) == (other.key, other.channel)
    }
}

impl Eq for Requester {}

impl std::hash::Hash for Requester {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.key, self.channel).hash(state)
    }
}

impl std::fmt::Debug for Requester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}]", self.session)
    }
}

impl Session {
    /// The earliest deadline by which a local socket must be open.
    fn local_deadline(&self) -> Option<Instant> {
        self.bridges
            .values()
            .filter_map(|b| b.connect_deadline)
            .min()
    }

    /// The earliest deadline of a channel held until the login.
    fn hold_deadline(&self) -> Option<Instant> {
        self.bridges.values().filter_map(|b| b.hold_until).min()
    }

    /// Not connected yet, and not closing: what a squatter's session looks like.
    fn is_pending(&self) -> bool {
        self.connected.is_none() && self.closing.is_none()
    }

    /// By then a connected session must have opened `ma-api`.
    fn api_deadline(&self, timeout: Duration) -> Option<Instant> {
        self.connected
            .filter(|_| !self.api_seen)
            .map(|t| t + timeout)
    }
}

struct Session {
    id: String,
    peer: PeerSession,
    created: Instant,
    got_offer: bool,
    /// When ICE and DTLS came up.
    connected: Option<Instant>,
    /// `ma-api` was opened once (it may have closed since: the session closes with it).
    api_seen: bool,
    bridges: HashMap<ChannelId, Bridge>,
    /// Closing: channels reset and waiting for the client's reset to complete, until then.
    closing: Option<Instant>,
    /// Channels whose reset is not complete yet.
    resetting: Vec<ChannelId>,
    /// Local candidates already given to this session (advertised address).
    candidates: Vec<SocketAddr>,
    /// The ICE servers fetched for this session (what its `session-ready` carried), once known:
    /// the servers its own relays are to use (docs/design.md#ice-server-source).
    ice_servers: Option<Value>,
    /// The login MA confirmed on this session's `ma-api` socket (who may use Sendspin).
    auth: SessionAuth,
    /// Data channel traffic of this session, for the status page.
    from_client: Traffic,
    to_client: Traffic,
}

pub struct Gateway {
    cfg: CoreConfig,
    cert: DtlsCert,
    sessions: HashMap<SessionKey, Session>,
    by_id: HashMap<String, SessionKey>,
    bridges: HashMap<BridgeId, (SessionKey, ChannelId)>,
    router: Router<SessionKey>,
    gatherer: StunGatherer,
    /// TURN allocations shared by the sessions (docs/design.md#turn-relays).
    relays: Relays<SessionKey>,
    /// DNS lookups made for relays.
    relay_lookups: HashMap<LookupKey, RelayId>,
    proxy: ProxyPool<Requester>,
    chunker: Chunker,
    /// Advertised host candidates (address we receive on).
    hosts: Vec<SocketAddr>,
    /// Server-reflexive candidates: (mapped address, base).
    reflexive: Vec<(SocketAddr, SocketAddr)>,
    next_key: SessionKey,
    next_bridge: BridgeId,
    /// STUN server lookups in flight (a late answer to an older round is ignored).
    lookups: HashSet<LookupKey>,
    next_lookup: LookupKey,
    /// The sub-machines' deadlines, as their last poll said.
    gatherer_deadline: Option<Instant>,
    proxy_deadline: Option<Instant>,
    relays_deadline: Option<Instant>,
    /// The memory budget is exceeded: local sockets stay paused until it drains.
    over_budget: bool,
    /// The session the timer loop is working on (a panic there is pinned on it).
    current: Option<SessionKey>,
    /// Sessions fed datagrams and not drained yet ([`Gateway::handle_datagrams_done`]).
    undrained: Vec<SessionKey>,
    /// The latest `now` seen (internal steps act at the time of the input that caused them).
    now: Instant,
    out: VecDeque<Output>,
    /// For the operator's status page and metrics ([`observe`]).
    counters: Counters,
}

impl Gateway {
    pub fn new(now: Instant, cfg: CoreConfig, cert: DtlsCert) -> Gateway {
        let mut pool = PoolConfig::new(cfg.local_ws_url.host_port());
        // Fetched bodies may take half the budget; the queues towards clients keep the rest.
        pool.max_held_bytes = pool.max_held_bytes.min(cfg.memory_budget / 2);
        Gateway {
            proxy: ProxyPool::new(pool),
            cfg,
            cert,
            sessions: HashMap::new(),
            by_id: HashMap::new(),
            bridges: HashMap::new(),
            router: Router::new(),
            gatherer: StunGatherer::new(GatherConfig::default()),
            relays: Relays::default(),
            relay_lookups: HashMap::new(),
            chunker: Chunker::with_slice_size(chunk::GATEWAY_SLICE_SIZE),
            hosts: Vec::new(),
            reflexive: Vec::new(),
            next_key: 1,
            next_bridge: 1,
            lookups: HashSet::new(),
            next_lookup: 1,
            gatherer_deadline: None,
            proxy_deadline: None,
            relays_deadline: None,
            current: None,
            undrained: Vec::new(),
            over_budget: false,
            now,
            out: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// The ICE servers chosen for a session (`crate::ice_source`, fetched fresh for it or the
    /// static list), the same its `session-ready` carries. Kept with the session for its own
    /// relays (TURN allocations use these credentials).
    pub fn handle_session_ice_servers(&mut self, now: Instant, session_id: &str, servers: Value) {
        self.now = now;
        let Some(key) = self.by_id.get(session_id).copied() else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        // TURN servers of this list beyond the static ones (allocated when the session began):
        // the fetched credentials (Home Assistant Cloud, a URL) give the gateway its own relay
        // too (docs/design.md#turn-relays).
        let fetched: Vec<TurnServer> = crate::turn::turn_servers_from_ice_servers(&servers)
            .into_iter()
            .filter(|t| !self.cfg.turn_servers.contains(t))
            .collect();
        s.ice_servers = Some(servers);
        self.allocate_relays(now, key, &fetched);
    }

    /// A session's ICE servers, once [`Gateway::handle_session_ice_servers`] gave them.
    pub fn session_ice_servers(&self, session_id: &str) -> Option<&Value> {
        let key = self.by_id.get(session_id)?;
        self.sessions.get(key)?.ice_servers.as_ref()
    }

    /// Counters since the start (docs/design.md#status-and-metrics).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Every session as the status page shows it, oldest first.
    pub fn sessions_info(&self, now: Instant) -> Vec<SessionInfo> {
        let mut list: Vec<(Instant, SessionInfo)> = self
            .sessions
            .values()
            .map(|s| {
                let state = match (s.closing, s.connected, s.got_offer) {
                    (Some(_), _, _) => SessionState::Closing,
                    (None, Some(_), _) => SessionState::Connected,
                    (None, None, true) => SessionState::Connecting,
                    (None, None, false) => SessionState::AwaitingOffer,
                };
                let info = SessionInfo {
                    id: s.id.clone(),
                    age: now.saturating_duration_since(s.created),
                    state,
                    channels: s.bridges.values().map(|b| b.kind.name()).collect(),
                    from_client: s.from_client,
                    to_client: s.to_client,
                    candidate_type: s.peer.remote_candidate_type(),
                };
                (s.created, info)
            })
            .collect();
        list.sort_by_key(|(created, _)| *created);
        list.into_iter().map(|(_, info)| info).collect()
    }

    /// Bytes held for clients (queues and proxy bodies) against their part of the memory
    /// budget.
    pub fn memory_used(&self) -> (usize, usize) {
        (self.queued_bytes(), self.queue_budget())
    }

    /// The memory budget less the allowance for data in flight: what queues and proxy bodies
    /// may hold before MA's sockets are paused.
    fn queue_budget(&self) -> usize {
        self.cfg.memory_budget - self.flight_allowance()
    }

    /// The part of the memory budget for data in flight, shared by every session's send
    /// window.
    fn flight_allowance(&self) -> usize {
        self.cfg.memory_budget / 4
    }

    /// Cap every session's send window at an equal share of the allowance for data in flight
    /// (never below the base window): with many sessions what SCTP holds unacknowledged stays
    /// bounded, with few each keeps the window its round trip asks for. Called whenever the
    /// number of sessions changes.
    fn share_send_windows(&mut self) {
        let n = self.sessions.len().max(1);
        let cap = self.flight_allowance() / n;
        for s in self.sessions.values_mut() {
            s.peer.set_window_cap(cap);
        }
    }

    /// Datagrams from sources no session knows, dropped since the start.
    pub fn unrouted_datagrams(&self) -> u64 {
        self.router.dropped()
    }

    /// Sessions open (closing ones excluded).
    pub fn session_count(&self) -> usize {
        self.sessions
            .values()
            .filter(|s| s.closing.is_none())
            .count()
    }

    /// The next moment [`Machine::handle_timeout`] must run.
    fn deadline(&self) -> Option<Instant> {
        let sessions = self.sessions.values().map(|s| {
            let t = s.peer.next_timeout();
            match s.closing {
                Some(deadline) => t.min(deadline),
                None if !s.got_offer => t.min(s.created + self.cfg.offer_timeout),
                None => [
                    s.local_deadline(),
                    s.api_deadline(self.cfg.api_timeout),
                    s.hold_deadline(),
                    s.auth.deadline(),
                ]
                .into_iter()
                .flatten()
                .fold(t, Instant::min),
            }
        });
        let sessions = sessions.min();
        earliest(
            earliest(sessions, self.relays_deadline),
            earliest(self.gatherer_deadline, self.proxy_deadline),
        )
    }

    /// Add a host candidate (an address the UDP socket receives on); given to every session.
    pub fn handle_host_candidate(&mut self, now: Instant, addr: SocketAddr) {
        self.now = now;
        if !self.hosts.contains(&addr) {
            self.hosts.push(addr);
            let keys: Vec<_> = self.sessions.keys().copied().collect();
            for key in keys {
                self.offer_candidates(key);
            }
        }
    }

    /// Registered with the signaling server: our public address may have changed while we were
    /// away (new DHCP lease, router restart), so ask the STUN servers again.
    pub fn handle_registered(&mut self, now: Instant) {
        self.now = now;
        self.lookups.clear();
        for server in &self.cfg.stun_servers {
            let key = self.next_lookup;
            self.next_lookup += 1;
            self.lookups.insert(key);
            self.out.push_back(Output::Lookup {
                key,
                host: server.host.clone(),
                port: server.port,
            });
        }
    }

    /// The answer to an [`Output::Lookup`]: start a server-reflexive discovery with it.
    pub fn handle_resolved(
        &mut self,
        now: Instant,
        key: LookupKey,
        answer: Result<Vec<SocketAddr>, String>,
    ) {
        self.now = now;
        if self.relay_resolved(now, key, &answer) {
            return;
        }
        if !self.lookups.remove(&key) {
            return;
        }
        let addrs = match answer {
            Ok(addrs) => addrs,
            Err(e) => {
                log::info!("STUN server lookup failed: {e}");
                return;
            }
        };
        // The server's first address of each family we have a socket for: IPv4 and IPv6 each
        // have their own public address (docs/design.md#ipv6).
        for v4 in [true, false] {
            if !self.hosts.iter().any(|h| h.is_ipv4() == v4) {
                continue;
            }
            let Some(server) = addrs.iter().find(|a| a.is_ipv4() == v4).copied() else {
                continue;
            };
            if let Err(e) = self.gatherer.handle_gather(now, server) {
                log::debug!("STUN gathering with {server} not started: {e}");
            }
        }
        self.drain_gatherer();
    }

    fn drain_gatherer(&mut self) {
        loop {
            let o = match self.gatherer.poll_output() {
                Next::Output(o) => o,
                Next::Timeout(t) => {
                    self.gatherer_deadline = t;
                    return;
                }
            };
            match o {
                GatherOutput::Transmit {
                    destination,
                    contents,
                } => self.out.push_back(Output::Transmit(Transmit {
                    source: self.local_addr_for(destination).unwrap_or(destination),
                    destination,
                    contents,
                })),
                GatherOutput::Event(GatherEvent::Mapped { server, mapped }) => {
                    let Some(base) = self.local_addr_for(server) else {
                        continue;
                    };
                    if mapped == base || self.reflexive.iter().any(|(m, _)| *m == mapped) {
                        continue;
                    }
                    log::info!("public address {mapped} (seen by STUN server {server})");
                    self.reflexive.push((mapped, base));
                    let keys: Vec<_> = self.sessions.keys().copied().collect();
                    for key in keys {
                        self.offer_candidates(key);
                    }
                }
                GatherOutput::Event(other) => log::debug!("STUN gathering: {other:?}"),
            }
        }
    }

    /// The local address a datagram from `source` arrived at (the socket may be bound to a
    /// wildcard): the host candidate of the same family, loopback for loopback peers.
    fn local_addr_for(&self, source: SocketAddr) -> Option<SocketAddr> {
        let same_family = |a: &&SocketAddr| a.is_ipv4() == source.is_ipv4();
        self.hosts
            .iter()
            .filter(same_family)
            .find(|a| a.ip().is_loopback() == source.ip().is_loopback())
            .or_else(|| self.hosts.iter().find(same_family))
            .copied()
    }

    // ---- signaling -------------------------------------------------------------------------

    /// `client-connected`: create the session and reply `session-ready`.
    pub fn handle_client_connected(&mut self, now: Instant, session_id: &str) {
        self.now = now;
        if let Some(key) = self.by_id.get(session_id).copied() {
            log::info!("[{session_id}] connected again: replacing the old session");
            self.close_session(key, "replaced by a new client-connected");
        }
        if !self.make_room(session_id) {
            return;
        }
        let peer = match PeerSession::new(now, self.cert.clone(), &self.cfg.session, session_id) {
            Ok(p) => p,
            Err(e) => {
                log::error!("[{session_id}] cannot create a WebRTC session: {e}");
                self.counters.refuse(Refused::Internal);
                return;
            }
        };
        let key = self.next_key;
        self.next_key += 1;
        if let Err(e) = self.router.set_ufrag(key, peer.local_ufrag()) {
            log::error!("[{session_id}] cannot route the session: {e}");
            self.counters.refuse(Refused::Internal);
            return;
        }
        self.sessions.insert(
            key,
            Session {
                id: session_id.to_string(),
                peer,
                created: now,
                got_offer: false,
                connected: None,
                api_seen: false,
                bridges: HashMap::new(),
                closing: None,
                resetting: Vec::new(),
                candidates: Vec::new(),
                ice_servers: None,
                auth: SessionAuth::new(),
                from_client: Traffic::default(),
                to_client: Traffic::default(),
            },
        );
        self.counters.sessions_created += 1;
        self.by_id.insert(session_id.to_string(), key);
        self.share_send_windows();
        log::info!("[{session_id}] new session ({} open)", self.sessions.len());
        self.out.push_back(Output::SessionReady {
            session_id: session_id.to_string(),
        });
        let servers = self.cfg.turn_servers.clone();
        self.allocate_relays(now, key, &servers);
    }

    /// Room for a new session: a newcomer pushes out the oldest session that has not connected
    /// yet when those are at their cap or every slot is taken, so a stranger who opens
    /// sessions and never connects cannot keep the real user out. `false`: every slot holds a
    /// connected session.
    fn make_room(&mut self, newcomer: &str) -> bool {
        let pending = self.sessions.values().filter(|s| s.is_pending()).count();
        let full = self.sessions.len() >= self.cfg.max_sessions;
        if pending < self.cfg.max_pending && !full {
            return true;
        }
        let oldest = self
            .sessions
            .iter()
            .filter(|(_, s)| s.is_pending())
            .min_by_key(|(_, s)| s.created)
            .map(|(k, _)| *k);
        let Some(key) = oldest else {
            log::warn!(
                "[{newcomer}] refused: already {} connected sessions (MA_MAX_SESSIONS)",
                self.sessions.len()
            );
            self.counters.refuse(Refused::Full);
            return false;
        };
        self.counters.refuse(Refused::Evicted);
        self.close_session(
            key,
            &format!("evicted by {newcomer}: too many not connected"),
        );
        // Its channel resets would keep the slot a moment longer: free it now.
        self.finish_close(key);
        true
    }

    /// An SDP offer (the first, or an ICE restart).
    pub fn handle_offer(&mut self, now: Instant, session_id: &str, sdp: &str) {
        self.now = now;
        let Some(key) = self.by_id.get(session_id).copied() else {
            log::warn!("[{session_id}] offer for an unknown session; ignored");
            return;
        };
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        let restart = s.got_offer;
        match s.peer.handle_offer(now, sdp) {
            Ok(answer) => {
                s.got_offer = true;
                let ufrag = s.peer.local_ufrag().to_string();
                if let Err(e) = self.router.set_ufrag(key, &ufrag) {
                    log::warn!("[{session_id}] cannot route the new ICE credentials: {e}");
                }
                if restart {
                    log::info!("[{session_id}] ICE restart");
                    s.candidates.clear();
                }
                self.out.push_back(Output::Answer {
                    session_id: session_id.to_string(),
                    sdp: answer,
                });
                self.offer_candidates(key);
                self.drain_session(key, now);
            }
            Err(e) => {
                log::warn!("[{session_id}] offer refused: {e}");
                if !restart {
                    self.counters.refuse(Refused::BadOffer);
                    self.close_session(key, "bad offer");
                }
            }
        }
    }

    /// Give the session every local candidate it does not have yet, trickling each.
    fn offer_candidates(&mut self, key: SessionKey) {
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        if !s.got_offer {
            return;
        }
        let local = self.hosts.first().copied();
        let relays = self.relays.addresses_of(key);
        let wanted = self
            .hosts
            .iter()
            .map(|h| (*h, Kind::Host))
            .chain(
                self.reflexive
                    .iter()
                    .map(|(m, b)| (*m, Kind::Reflexive(*b))),
            )
            .chain(
                relays
                    .iter()
                    .filter_map(|r| Some((*r, Kind::Relay(local?)))),
            );
        for (addr, kind) in wanted {
            if s.candidates.contains(&addr) {
                continue;
            }
            s.candidates.push(addr);
            let added = match kind {
                Kind::Host => s.peer.handle_host_candidate(self.now, addr),
                Kind::Reflexive(base) => s.peer.handle_srflx_candidate(self.now, addr, base),
                Kind::Relay(local) => s.peer.handle_relay_candidate(self.now, addr, local),
            };
            match added {
                Ok(Some(candidate)) => self.out.push_back(Output::Candidate {
                    session_id: s.id.clone(),
                    candidate,
                }),
                Ok(None) => {}
                Err(e) => log::debug!("[{}] local candidate {addr} not added: {e}", s.id),
            }
        }
        // A new local candidate can start connectivity checks: send them now.
        self.drain_session(key, self.now);
    }

    /// A trickled remote candidate.
    pub fn handle_remote_candidate(&mut self, now: Instant, session_id: &str, candidate: &Value) {
        self.now = now;
        #[cfg(any(test, feature = "testkit"))]
        if candidate.get("candidate").and_then(Value::as_str) == Some(isolation::PANIC_FOR_TESTS) {
            panic!("[{session_id}] a panic injected by a test");
        }
        let Some(key) = self.by_id.get(session_id).copied() else {
            log::debug!("[{session_id}] candidate for an unknown session; ignored");
            return;
        };
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        let added = match s.peer.handle_remote_candidate(now, candidate) {
            Ok(RemoteCandidateOutcome::Added) => s.peer.newest_remote_candidate(),
            Ok(outcome) => {
                log::debug!("[{session_id}] remote candidate: {outcome:?}");
                None
            }
            Err(e) => {
                log::warn!("[{session_id}] remote candidate refused: {e}");
                None
            }
        };
        // Only a candidate ICE took gets a TURN permission: junk, mDNS names and candidates
        // over the limit must not use up the relays' peer slots.
        if let Some(addr) = added {
            log::debug!("[{session_id}] remote candidate {addr} added");
            self.permit_candidate(now, key, addr.ip());
        }
        self.drain_session(key, now);
    }

    /// `client-disconnected`, or the signaling connection is gone.
    pub fn handle_client_disconnected(&mut self, now: Instant, session_id: &str) {
        self.now = now;
        if let Some(key) = self.by_id.get(session_id).copied() {
            self.close_session(key, "client disconnected from signaling");
        }
    }

    // ---- UDP -------------------------------------------------------------------------------

    /// A datagram arrived on the shared UDP socket from `source`.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, bytes: &[u8]) {
        self.now = now;
        if !self.relays.is_empty()
            && !self.is_gathering_response(bytes)
            && self.relayed_datagram(now, source, bytes)
        {
            return;
        }
        let gatherer = &self.gatherer;
        match self.router.route(source, bytes, |txid| gatherer.owns(txid)) {
            Route::Session(key) => {
                let Some(destination) = self.local_addr_for(source) else {
                    return;
                };
                let Some(s) = self.sessions.get_mut(&key) else {
                    return;
                };
                s.peer.handle_receive(now, source, destination, bytes);
                if !s.peer.has_undrained() {
                    self.drain_session(key, now);
                } else if !self.undrained.contains(&key) {
                    // Drained once for the batch: [`Gateway::handle_datagrams_done`].
                    self.undrained.push(key);
                }
            }
            Route::Gather => {
                self.gatherer.handle_response(now, source, bytes);
                self.drain_gatherer();
            }
            Route::Drop(reason) => log::trace!("dropped a datagram from {source}: {reason:?}"),
        }
    }

    /// The batch of datagrams at hand is fed: drain every session they went to (each once,
    /// however many datagrams it got; see [`PeerSession::handle_receive`]). Until then their
    /// deadlines are due, and [`Machine::poll_output`] drains them first.
    pub fn handle_datagrams_done(&mut self, now: Instant) {
        self.now = now;
        while let Some(key) = self.undrained.pop() {
            self.current = Some(key);
            // Its poll_output drains str0m first.
            self.drain_session(key, now);
        }
        self.current = None;
    }

    // ---- time ------------------------------------------------------------------------------

    fn timeout(&mut self, now: Instant) {
        self.now = now;
        self.gatherer.handle_timeout(now);
        self.drain_gatherer();
        self.relays_timeout(now);
        self.proxy.handle_timeout(now);
        self.drain_proxy();
        let due: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.peer.next_timeout() <= now
                    || s.closing.is_some_and(|d| now >= d)
                    || (!s.got_offer && now >= s.created + self.cfg.offer_timeout)
                    || s.local_deadline().is_some_and(|d| now >= d)
                    || s.api_deadline(self.cfg.api_timeout)
                        .is_some_and(|d| now >= d)
                    || s.hold_deadline().is_some_and(|d| now >= d)
                    || s.auth.deadline().is_some_and(|d| now >= d)
            })
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            self.current = Some(key);
            let Some(s) = self.sessions.get_mut(&key) else {
                continue;
            };
            if s.closing.is_some_and(|d| now >= d) {
                self.finish_close(key);
                continue;
            }
            if s.closing.is_none() && !s.got_offer && now >= s.created + self.cfg.offer_timeout {
                self.close_session(key, "no offer in time");
                continue;
            }
            if s.closing.is_none()
                && s.api_deadline(self.cfg.api_timeout)
                    .is_some_and(|d| now >= d)
            {
                self.close_session(key, "connected, but no ma-api channel in time");
                continue;
            }
            if s.closing.is_none() {
                let change = s.auth.handle_timeout(now);
                self.auth_changed(key, change);
                self.close_held(key, now);
            }
            let Some(s) = self.sessions.get_mut(&key) else {
                continue;
            };
            let overdue: Vec<BridgeId> = s
                .bridges
                .values()
                .filter(|b| b.connect_deadline.is_some_and(|d| now >= d))
                .filter_map(|b| b.local)
                .collect();
            if !overdue.is_empty() {
                let secs = self.cfg.local_connect_timeout.as_secs();
                for bridge in overdue {
                    self.out.push_back(Output::CloseWs { bridge });
                    let why = format!("not open within {secs} s (is Music Assistant hung?)");
                    self.handle_ws_closed(now, bridge, &why);
                }
                self.drain_session(key, now);
                continue;
            }
            let Some(s) = self.sessions.get_mut(&key) else {
                continue;
            };
            s.peer.handle_timeout(now);
            self.drain_session(key, now);
        }
    }

    // ---- local WebSockets ------------------------------------------------------------------

    /// The bridge's local WebSocket is open.
    pub fn handle_ws_opened(&mut self, now: Instant, bridge: BridgeId) {
        self.now = now;
        let Some((key, ch)) = self.bridges.get(&bridge).copied() else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        let Some(b) = s.bridges.get_mut(&ch) else {
            return;
        };
        for msg in b.local_opened() {
            let msg = match b.kind {
                ChannelKind::Sendspin => {
                    to_sendspin(&mut self.out, &s.id, &mut b.saw_text, s.auth.role(), msg)
                }
                _ => msg,
            };
            self.out.push_back(Output::WsSend { bridge, msg });
        }
    }

    /// Whether the driver may read another message from the bridge's socket now.
    pub fn ws_read_allowed(&self, bridge: BridgeId) -> bool {
        self.bridge_ref(bridge).is_some_and(|b| !b.read_paused)
    }

    fn bridge_ref(&self, bridge: BridgeId) -> Option<&Bridge> {
        let (key, ch) = self.bridges.get(&bridge)?;
        self.sessions.get(key)?.bridges.get(ch)
    }

    /// A message from a bridge's local WebSocket.
    pub fn handle_ws_message(&mut self, now: Instant, bridge: BridgeId, msg: Message) {
        self.now = now;
        let Some((key, ch)) = self.bridges.get(&bridge).copied() else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        let limit = chunk::send_limit(
            s.peer.remote_max_message_size(),
            // Whole up to 64 KiB or the peer's smaller limit, as MA does: older clients cannot
            // reassemble chunks.
            chunk::GATEWAY_WHOLE_MAX.min(self.cfg.session.sctp_max_buffered_amount / 2),
        );
        let Some(b) = s.bridges.get_mut(&ch) else {
            return;
        };
        // Only MA's reply on the session's own API socket can log it in.
        let change = match (&msg, b.kind) {
            (Message::Text(t), ChannelKind::Api) => s.auth.handle_ma_text(now, t),
            _ => Change::None,
        };
        if b.from_local(msg, &mut self.chunker, limit, &s.id).is_err() {
            log::warn!(
                "[{}] {} queue to the client overflowed; closing the session",
                s.id,
                b.kind.name()
            );
            self.close_session(key, "queue to the client overflowed");
            return;
        }
        let sent_before = b.sent;
        match b.flush_to_peer(now, &mut s.peer) {
            Flush::Done | Flush::Blocked => {}
            Flush::Closed(e) => log::debug!("[{}] write to the client failed: {e}", s.id),
        }
        let sent = b.sent.since(sent_before);
        s.to_client.add_all(sent);
        self.counters.to_client[observe::kind_index(b.kind)].add_all(sent);
        // Only a message left waiting adds to the gateway's memory: most go straight through,
        // and then the budget (a sum over every bridge) need not be looked at.
        let queued = b.has_queued_for_peer();
        if queued {
            b.compact_newest();
        }
        if b.peer_queue_high() && !b.read_paused {
            log::debug!(
                "[{}] {} backed up: pausing the local socket",
                s.id,
                b.kind.name()
            );
            b.read_paused = true;
        }
        self.auth_changed(key, change);
        if queued && self.queued_bytes() >= self.queue_budget() {
            self.pause_for_budget(key, ch);
        }
        self.drain_session(key, now);
    }

    /// Bytes held in every bridge's queues and in fetched proxy bodies.
    fn queued_bytes(&self) -> usize {
        let bridges = self.sessions.values().flat_map(|s| s.bridges.values());
        bridges.map(Bridge::queued_bytes).sum::<usize>() + self.proxy.buffered_bytes()
    }

    /// Over the gateway-wide budget: stop reading this bridge's local socket.
    fn pause_for_budget(&mut self, key: SessionKey, ch: ChannelId) {
        if !self.over_budget {
            log::warn!(
                "the gateway holds {} KiB for clients that read slowly (budget {} KiB): \
                 pausing MA's sockets until it drains",
                self.queued_bytes() / 1024,
                self.queue_budget() / 1024
            );
        }
        self.over_budget = true;
        if let Some(b) = self
            .sessions
            .get_mut(&key)
            .and_then(|s| s.bridges.get_mut(&ch))
        {
            b.read_paused = true;
        }
    }

    /// Back under 3/4 of the budget: resume every socket only the budget held.
    fn check_budget(&mut self) {
        if !self.over_budget || self.queued_bytes() > self.queue_budget() / 4 * 3 {
            return;
        }
        self.over_budget = false;
        for s in self.sessions.values_mut() {
            for b in s.bridges.values_mut() {
                if b.read_paused && !b.peer_queue_high() {
                    b.read_paused = false;
                    if let Some(bridge) = b.local {
                        self.out.push_back(Output::ResumeWsRead { bridge });
                    }
                }
            }
        }
    }

    /// A bridge's local WebSocket closed or failed (also: its write buffer overflowed).
    pub fn handle_ws_closed(&mut self, now: Instant, bridge: BridgeId, why: &str) {
        self.now = now;
        let Some((key, ch)) = self.bridges.remove(&bridge) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        let Some(b) = s.bridges.get(&ch) else { return };
        log::info!("[{}] local {} socket closed: {why}", s.id, b.kind.name());
        if b.kind == ChannelKind::Api {
            // Never leave a one-way channel: the session goes with its API socket.
            self.close_session(key, "the MA API socket closed");
        } else {
            s.bridges.remove(&ch);
            s.peer.close_channel(ch);
        }
    }

    // ---- sessions --------------------------------------------------------------------------

    /// Carry out what the session's peer produced.
    fn drain_session(&mut self, key: SessionKey, now: Instant) {
        loop {
            let Some(s) = self.sessions.get_mut(&key) else {
                return;
            };
            match s.peer.poll_output() {
                Next::Timeout(_) => return,
                Next::Output(SessionOutput::Transmit(t)) => {
                    self.router.note_transmit(key, t.destination);
                    self.send_transmit(t);
                }
                Next::Output(SessionOutput::Event(e)) => self.session_event(key, now, e),
            }
        }
    }

    fn session_event(&mut self, key: SessionKey, now: Instant, event: SessionEvent) {
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        if s.closing.is_some() {
            match event {
                SessionEvent::ChannelClose { id } => {
                    s.resetting.retain(|c| *c != id);
                    if s.resetting.is_empty() {
                        self.finish_close(key);
                    }
                }
                SessionEvent::Closed { .. } => self.finish_close(key),
                _ => {}
            }
            return;
        }
        match event {
            SessionEvent::Connected => {
                s.connected = Some(now);
                let setup = now.saturating_duration_since(s.created);
                self.counters.setup.observe(setup.as_secs_f64());
                log::info!(
                    "[{}] connected in {} ms",
                    s.id,
                    (now - s.created).as_millis()
                )
            }
            SessionEvent::Disconnected => log::info!("[{}] ICE disconnected, waiting", s.id),
            SessionEvent::Reconnected => log::info!("[{}] ICE reconnected", s.id),
            SessionEvent::ChannelOpen { id, label } => self.channel_open(key, id, &label),
            SessionEvent::ChannelData { id, binary, data } => {
                self.channel_data(key, id, binary, data)
            }
            SessionEvent::ChannelClose { id } => self.channel_closed(key, id),
            SessionEvent::ChannelBufferedAmountLow { .. } | SessionEvent::Writable => {
                self.flush_session(key)
            }
            SessionEvent::Closed { reason } => {
                if reason == crate::webrtc::CloseReason::ConnectTimeout {
                    self.explain_no_path(key);
                }
                let why = format!("WebRTC session ended: {reason}");
                self.close_session(key, &why);
            }
        }
    }

    fn channel_open(&mut self, key: SessionKey, id: ChannelId, label: &str) {
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        let kind = match channels::classify(label, s.bridges.values().map(|b| b.kind)) {
            Ok(k) => k,
            Err(refusal) => {
                log::warn!("[{}] channel {label:?} refused: {refusal}", s.id);
                s.peer.close_channel(id);
                return;
            }
        };
        s.peer
            .set_buffered_amount_low_threshold(id, self.cfg.session.buffered_amount_low_threshold);
        // Sendspin is for logged-in users only: before MA confirms a login, hold the channel.
        let held = kind == ChannelKind::Sendspin && s.auth.role().is_none();
        let url = match kind {
            _ if held => None,
            ChannelKind::Api => {
                let mut url = self.cfg.local_ws_url.clone();
                let sep = if url.path_and_query.contains('?') {
                    '&'
                } else {
                    '?'
                };
                url.path_and_query =
                    format!("{}{sep}webrtc_session_id={}", url.path_and_query, s.id);
                Some(url)
            }
            ChannelKind::Sendspin => Some(self.cfg.sendspin_url.clone()),
            ChannelKind::LiveAnnouncement => Some(self.cfg.live_announcement_url.clone()),
            ChannelKind::HttpProxy => None,
        };
        let local = url.as_ref().map(|_| {
            let b = self.next_bridge;
            self.next_bridge += 1;
            b
        });
        if held {
            log::info!(
                "[{}] channel {label:?} open: {}, held until MA confirms a login (at most {} s)",
                s.id,
                kind.name(),
                self.cfg.sendspin_login_grace.as_secs_f32()
            );
        } else {
            log::info!("[{}] channel {label:?} open: {}", s.id, kind.name());
        }
        s.api_seen |= kind == ChannelKind::Api;
        let mut b = Bridge::new(kind, id, local, &self.cfg.limits);
        b.connect_deadline = local.map(|_| self.now + self.cfg.local_connect_timeout);
        b.hold_until = held.then(|| self.now + self.cfg.sendspin_login_grace);
        s.bridges.insert(id, b);
        if let (Some(bridge), Some(url)) = (local, url) {
            self.bridges.insert(bridge, (key, id));
            self.out.push_back(Output::OpenWs { bridge, url });
        }
    }

    fn channel_data(&mut self, key: SessionKey, id: ChannelId, binary: bool, data: Vec<u8>) {
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        let Some(b) = s.bridges.get_mut(&id) else {
            log::debug!("[{}] data on an unbridged channel; dropped", s.id);
            return;
        };
        s.from_client.add(data.len());
        self.counters.from_client[observe::kind_index(b.kind)].add(data.len());
        let msg = if binary {
            Message::Binary(data.into())
        } else {
            match tungstenite::Utf8Bytes::try_from(data) {
                Ok(text) => Message::Text(text),
                Err(_) => {
                    log::warn!(
                        "[{}] text message with invalid UTF-8 on {}; dropped",
                        s.id,
                        b.kind.name()
                    );
                    return;
                }
            }
        };
        // HTTP proxy requests are the gateway's own business: never forwarded to MA.
        let proxied = match (&msg, b.kind) {
            (Message::Text(t), ChannelKind::Api) => proxy_request::classify(t),
            (Message::Text(t), ChannelKind::HttpProxy) => Some(proxy_request::parse(t)),
            (Message::Binary(_), ChannelKind::HttpProxy) => {
                log::debug!("[{}] binary message on http_proxy; dropped", s.id);
                return;
            }
            _ => None,
        };
        if let Some(request) = proxied {
            let now = self.now;
            match request {
                Ok(req) => {
                    log::debug!("[{}] proxy {:?} {}", s.id, req.method, req.path);
                    self.proxy
                        .handle_request(now, Requester::new(key, id, &s.id), req);
                }
                Err(e) => {
                    log::warn!("[{}] refused proxy request: {e:?}", s.id);
                    self.proxy
                        .handle_refused(now, Requester::new(key, id, &s.id), e);
                }
            }
            self.drain_proxy();
            return;
        }
        // The client's login (or logout) on the API channel: MA's reply decides.
        let change = match (&msg, b.kind) {
            (Message::Text(t), ChannelKind::Api) => s.auth.handle_client_text(self.now, t),
            _ => Change::None,
        };
        if b.local.is_none() && b.hold_until.is_none() {
            log::debug!(
                "[{}] {} message not handled yet; dropped",
                s.id,
                b.kind.name()
            );
            return;
        }
        // A held channel has no socket yet: `from_peer` queues its messages.
        match b.from_peer(msg) {
            Ok(Some(msg)) => {
                let msg = match b.kind {
                    ChannelKind::Sendspin => {
                        to_sendspin(&mut self.out, &s.id, &mut b.saw_text, s.auth.role(), msg)
                    }
                    _ => msg,
                };
                if let Some(bridge) = b.local {
                    self.out.push_back(Output::WsSend { bridge, msg });
                }
                self.auth_changed(key, change);
            }
            Ok(None) => self.auth_changed(key, change),
            Err(_) => {
                log::warn!(
                    "[{}] the client sent more than {} bytes before {} was reachable; closing",
                    s.id,
                    self.cfg.limits.to_local,
                    b.kind.name()
                );
                self.close_session(key, "client flooded before the local socket opened");
            }
        }
    }

    fn channel_closed(&mut self, key: SessionKey, id: ChannelId) {
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        let Some(b) = s.bridges.remove(&id) else {
            return;
        };
        self.proxy.handle_cancel(self.now, &Requester::of(key, id));
        log::info!("[{}] channel {} closed by the client", s.id, b.kind.name());
        if let Some(bridge) = b.local {
            self.bridges.remove(&bridge);
            self.out.push_back(Output::CloseWs { bridge });
        }
        if b.kind == ChannelKind::Api {
            self.close_session(key, "the API channel closed");
        }
    }

    /// Act on a change of the session's login: a login releases the `sendspin` channel held for
    /// it; a logout closes an open one (and its local socket).
    fn auth_changed(&mut self, key: SessionKey, change: Change) {
        let now = self.now;
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        match change {
            Change::None => {}
            Change::LoggedIn(role) => {
                log::info!("[{}] MA confirmed a login as {}", s.id, role.name());
                for b in s.bridges.values_mut() {
                    if b.hold_until.take().is_none() {
                        continue;
                    }
                    let bridge = self.next_bridge;
                    self.next_bridge += 1;
                    b.local = Some(bridge);
                    b.connect_deadline = Some(now + self.cfg.local_connect_timeout);
                    self.bridges.insert(bridge, (key, b.channel));
                    log::info!("[{}] {} released: connecting", s.id, b.kind.name());
                    let url = self.cfg.sendspin_url.clone();
                    self.out.push_back(Output::OpenWs { bridge, url });
                }
            }
            Change::LoggedOut(why) => {
                let open: Vec<ChannelId> = s
                    .bridges
                    .values()
                    .filter(|b| b.kind == ChannelKind::Sendspin && b.local.is_some())
                    .map(|b| b.channel)
                    .collect();
                log::info!("[{}] not logged in any more: {why}", s.id);
                for ch in open {
                    log::warn!("[{}] sendspin closed: the session is not logged in", s.id);
                    if let Some(bridge) = s.bridges.remove(&ch).and_then(|b| b.local) {
                        self.bridges.remove(&bridge);
                        self.out.push_back(Output::CloseWs { bridge });
                    }
                    s.peer.close_channel(ch);
                }
                self.drain_session(key, now);
            }
        }
    }

    /// Close the channels held for a login that did not come in time (fail closed: nothing
    /// they sent reached the local service).
    fn close_held(&mut self, key: SessionKey, now: Instant) {
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        let expired: Vec<ChannelId> = s
            .bridges
            .values()
            .filter(|b| b.hold_until.is_some_and(|d| now >= d))
            .map(|b| b.channel)
            .collect();
        for ch in &expired {
            if let Some(b) = s.bridges.remove(ch) {
                log::warn!(
                    "[{}] {} closed: MA confirmed no login within {} s",
                    s.id,
                    b.kind.name(),
                    self.cfg.sendspin_login_grace.as_secs_f32()
                );
            }
            s.peer.close_channel(*ch);
        }
        if !expired.is_empty() {
            self.drain_session(key, now);
        }
    }

    /// The send budget has room again: move queued messages, resume paused sockets.
    fn flush_session(&mut self, key: SessionKey) {
        let Some(s) = self.sessions.get(&key) else {
            return;
        };
        let waiting: Vec<ChannelId> = s
            .bridges
            .iter()
            .filter(|(_, b)| b.has_queued_for_peer())
            .map(|(ch, _)| *ch)
            .collect();
        for ch in waiting {
            if let Flush::Blocked = self.flush_bridge(key, ch) {
                break;
            }
        }
        self.check_budget();
    }

    /// Close a session: its local sockets at once; its channels are reset so the client sees
    /// them close, then (after the resets or [`CLOSE_GRACE`]) DTLS is closed and the session
    /// forgotten. Signaling no longer reaches it from here on.
    fn close_session(&mut self, key: SessionKey, why: &str) {
        let now = self.now;
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        if s.closing.is_some() {
            return;
        }
        log::info!("[{}] session closed: {why}", s.id);
        self.by_id.remove(&s.id);
        for (ch, b) in s.bridges.drain() {
            self.proxy.handle_cancel(now, &Requester::of(key, ch));
            if let Some(bridge) = b.local {
                self.bridges.remove(&bridge);
                self.out.push_back(Output::CloseWs { bridge });
            }
            if s.peer.is_connected() {
                s.peer.close_channel(ch);
                s.resetting.push(ch);
            }
        }
        if s.resetting.is_empty() {
            self.finish_close(key);
            return;
        }
        s.closing = Some(now + CLOSE_GRACE);
        self.drain_session(key, now);
    }

    /// Carry out what the HTTP proxy pool asked for.
    fn drain_proxy(&mut self) {
        // Sessions written to: their packets must go out now, not at their next timer.
        let mut touched = Vec::new();
        loop {
            let o = match self.proxy.poll_output() {
                Next::Output(o) => o,
                Next::Timeout(t) => {
                    self.proxy_deadline = t;
                    break;
                }
            };
            match o {
                PoolOutput::Connect { conn } => self.out.push_back(Output::FetchConnect { conn }),
                PoolOutput::Write { conn, bytes } => {
                    self.out.push_back(Output::FetchWrite { conn, bytes })
                }
                PoolOutput::Close { conn } => self.out.push_back(Output::FetchClose { conn }),
                PoolOutput::Response {
                    requester,
                    response,
                } => {
                    touched.push(requester.key);
                    self.deliver_proxy_response(requester, response)
                }
                PoolOutput::Stalled {
                    requester:
                        Requester {
                            key, channel: ch, ..
                        },
                } => {
                    let Some(s) = self.sessions.get_mut(&key) else {
                        continue;
                    };
                    touched.push(key);
                    log::warn!(
                        "[{}] the client stopped reading proxy responses; closing that channel",
                        s.id
                    );
                    if let Some(b) = s.bridges.remove(&ch) {
                        if let Some(bridge) = b.local {
                            self.bridges.remove(&bridge);
                            self.out.push_back(Output::CloseWs { bridge });
                        }
                        if b.kind == ChannelKind::Api {
                            self.close_session(key, "the client stopped reading");
                            continue;
                        }
                    }
                    s.peer.close_channel(ch);
                }
            }
        }
        touched.dedup();
        for key in touched {
            self.drain_session(key, self.now);
        }
    }

    /// Encode a proxy response in its channel's form and queue it.
    fn deliver_proxy_response(&mut self, requester: Requester, response: ProxyResponse) {
        let (key, ch) = (requester.key, requester.channel);
        let now = self.now;
        // Body frames carry no framing of their own: any size works, so three fit the
        // smallest send window (docs/design.md#the-send-window). Text goes whole or chunked
        // by the rule of MA's own messages.
        let frame_budget = self.cfg.session.send_window / 3;
        let text_budget =
            chunk::GATEWAY_WHOLE_MAX.min(self.cfg.session.sctp_max_buffered_amount / 2);
        let Some(s) = self.sessions.get_mut(&key) else {
            self.proxy.handle_cancel(now, &Requester::of(key, ch));
            return;
        };
        let peer_max = s.peer.remote_max_message_size();
        let limit = chunk::send_limit(peer_max, text_budget);
        let Some(b) = s.bridges.get_mut(&ch) else {
            self.proxy.handle_cancel(now, &Requester::of(key, ch));
            return;
        };
        self.counters.proxy_response(response.status);
        if b.kind == ChannelKind::HttpProxy {
            let (header, body) = response.into_binary(chunk::send_limit(peer_max, frame_budget));
            b.push_binary_response(header, body);
        } else {
            let id = response.id.clone();
            if b.push_text(response.to_json(), &mut self.chunker, limit)
                .is_err()
            {
                log::warn!(
                    "[{}] proxy response {id} does not fit the queue to the client; answering 500",
                    s.id
                );
                let error =
                    ProxyResponse::error(id, 500, "response too large for the gateway's queue");
                let _ = b.push_text(error.to_json(), &mut self.chunker, limit);
            }
            // The JSON form carries its id: the next response may follow at once.
            self.proxy.handle_delivered(now, &Requester::of(key, ch));
        }
        self.flush_bridge(key, ch);
    }

    /// Move a bridge's queue into its channel; for an `http_proxy` channel, tell the pool
    /// how its response delivery is going.
    fn flush_bridge(&mut self, key: SessionKey, ch: ChannelId) -> Flush {
        let (now, over_budget) = (self.now, self.over_budget);
        let Some(s) = self.sessions.get_mut(&key) else {
            return Flush::Closed("no session".into());
        };
        let Some(b) = s.bridges.get_mut(&ch) else {
            return Flush::Closed("no channel".into());
        };
        let sent_before = b.sent;
        let result = b.flush_to_peer(now, &mut s.peer);
        let sent = b.sent.since(sent_before);
        s.to_client.add_all(sent);
        self.counters.to_client[observe::kind_index(b.kind)].add_all(sent);
        if let Flush::Closed(e) = &result {
            log::debug!("[{}] write to the client failed: {e}", s.id);
        }
        if b.read_paused && !b.peer_queue_high() && !over_budget {
            b.read_paused = false;
            if let Some(bridge) = b.local {
                self.out.push_back(Output::ResumeWsRead { bridge });
            }
        }
        if b.proxy_busy {
            if b.has_queued_for_peer() {
                self.proxy.handle_progress(now, &Requester::of(key, ch));
            } else {
                b.proxy_busy = false;
                self.proxy.handle_delivered(now, &Requester::of(key, ch));
            }
            self.drain_proxy();
        }
        result
    }

    /// A proxy connection received bytes.
    pub fn handle_fetch_data(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        self.now = now;
        self.proxy.handle_data(now, conn, bytes);
        self.drain_proxy();
    }

    /// A proxy connection reached its end.
    pub fn handle_fetch_eof(&mut self, now: Instant, conn: ConnId) {
        self.now = now;
        self.proxy.handle_eof(now, conn);
        self.drain_proxy();
    }

    /// A proxy connection failed (DNS, connect, TLS, I/O).
    pub fn handle_fetch_failed(&mut self, now: Instant, conn: ConnId, error: &str) {
        self.now = now;
        self.proxy.handle_failed(now, conn, error);
        self.drain_proxy();
    }

    /// Shutting down: close every session now (DTLS close, so clients notice at once instead
    /// of waiting for ICE consent to expire).
    pub fn handle_shutdown(&mut self, now: Instant, why: &str) {
        self.now = now;
        if self.router.dropped() > 0 {
            let n = self.router.dropped();
            log::info!("{n} datagrams from unknown sources were dropped since the start");
        }
        let keys: Vec<SessionKey> = self.sessions.keys().copied().collect();
        for key in keys {
            if let Some(s) = self.sessions.get(&key) {
                log::info!("[{}] session closed: {why}", s.id);
            }
            self.finish_close(key);
        }
        self.relays.handle_shutdown(now);
        self.drain_relays();
    }

    /// Whether a datagram is a response to our own server-reflexive gathering (a TURN server
    /// is often the STUN server too, at the same address).
    fn is_gathering_response(&self, bytes: &[u8]) -> bool {
        bytes.len() >= 20
            && crate::webrtc::is_stun(bytes)
            && bytes[8..20]
                .try_into()
                .is_ok_and(|txid| self.gatherer.owns(&txid))
    }

    /// Close DTLS, send what that produces, and forget the session and its routes.
    fn finish_close(&mut self, key: SessionKey) {
        let Some(mut s) = self.sessions.remove(&key) else {
            return;
        };
        if self.by_id.get(&s.id) == Some(&key) {
            self.by_id.remove(&s.id);
        }
        self.router.remove_session(key);
        if s.peer.ignored_datagrams() > 0 {
            let n = s.peer.ignored_datagrams();
            log::info!("[{}] {n} unparseable datagrams were ignored", s.id);
        }
        for t in say_goodbye(&mut s.peer, self.now) {
            self.send_transmit(t);
        }
        self.session_removed(key);
    }

    /// A session was forgotten (closed, or dropped after a panic): relays it alone used
    /// linger, the others share the send windows again, and what it held is free, so sockets
    /// the budget paused may read again.
    fn session_removed(&mut self, key: SessionKey) {
        self.relays_session_gone(key);
        self.share_send_windows();
        self.check_budget();
    }
}

/// Close a session's DTLS; the datagrams that says goodbye with.
fn say_goodbye(peer: &mut PeerSession, now: Instant) -> Vec<Transmit> {
    peer.handle_close(now);
    let mut out = Vec::new();
    while let Next::Output(o) = peer.poll_output() {
        if let SessionOutput::Transmit(t) = o {
            out.push(t);
        }
    }
    out
}

/// What kind of local candidate an address is, with what str0m needs besides it.
enum Kind {
    Host,
    /// The base it was seen from.
    Reflexive(SocketAddr),
    /// The local address the allocation was made from.
    Relay(SocketAddr),
}

impl Machine for Gateway {
    type Output = Output;

    fn handle_timeout(&mut self, now: Instant) {
        self.timeout(now);
    }

    fn poll_output(&mut self) -> Next<Output> {
        if !self.undrained.is_empty() {
            let now = self.now;
            self.handle_datagrams_done(now);
        }
        Next::or_timeout(self.out.pop_front(), || self.deadline())
    }
}

/// A client message leaving for the Sendspin server: the first text names the player
/// ([`Output::SendspinPlayer`]); a guest's `client/hello` asks for the player role only.
fn to_sendspin(
    out: &mut VecDeque<Output>,
    session_id: &str,
    saw_text: &mut bool,
    role: Option<Role>,
    msg: Message,
) -> Message {
    let Message::Text(text) = msg else {
        return msg;
    };
    if !*saw_text {
        *saw_text = true;
        if let Some(client_id) = sendspin_client_id(&text) {
            log::info!("[{session_id}] Sendspin player {client_id}");
            out.push_back(Output::SendspinPlayer {
                session_id: session_id.to_string(),
                client_id,
            });
        }
    }
    if role == Some(Role::Guest) {
        if let Some(hello) = auth::guest_hello(&text) {
            log::info!("[{session_id}] guest's Sendspin hello: roles limited to player");
            return Message::text(hello);
        }
    }
    Message::Text(text)
}

/// The `client_id` of a Sendspin `{"type":"auth",...,"client_id":X}` message.
fn sendspin_client_id(text: &str) -> Option<String> {
    let v: Value = serde_json::from_str(text).ok()?;
    if v.get("type")?.as_str()? != "auth" {
        return None;
    }
    v.get("client_id")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests;
