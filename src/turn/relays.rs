//! [`Relays`]: the gateway's TURN allocations, sans-IO (docs/design.md#turn-relays).
//!
//! The core asks for relays per session with a list of TURN servers
//! ([`Relays::handle_allocate`]); a session shares an allocation with every other session
//! that named the same server and credentials. An allocation nobody uses any more is kept
//! for [`LINGER`] (the next session reuses it), then released. UDP allocations talk to the
//! server from the gateway's shared socket (the driver demultiplexes by the server's
//! address, [`Relays::handle_datagram`]); TCP and TLS ones over a connection the driver opens
//! ([`RelayOutput::Connect`]) and feeds ([`Relays::handle_stream_data`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::client::{Received, TurnClient, TurnConfig, TurnEvent, TurnOutput};
use super::framing::StreamFramer;
use super::url::{TurnServer, TurnTransport};
use crate::machine::{Machine, Next};

/// Identifies one allocation (and its stream connection, for the driver).
pub type RelayId = u64;

/// An allocation no session uses is released this long after the last one left.
pub const LINGER: Duration = Duration::from_secs(30);
/// Allocations at most (one per server and credentials; lists are cut at four servers).
pub const MAX_RELAYS: usize = 16;

/// What the relays need done.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayOutput {
    /// Resolve the server's host (UDP transport); answer with [`Relays::handle_resolved`].
    Lookup {
        relay: RelayId,
        host: String,
        port: u16,
    },
    /// Send this datagram from the shared UDP socket to the server.
    Transmit {
        destination: SocketAddr,
        contents: Vec<u8>,
    },
    /// Open a TCP (or TLS, verifying `host`) connection to the server; then
    /// [`Relays::handle_connected`].
    Connect {
        relay: RelayId,
        host: String,
        port: u16,
        tls: bool,
    },
    /// Write on the relay's connection.
    Write { relay: RelayId, bytes: Vec<u8> },
    /// Close the relay's connection (no event follows).
    Close { relay: RelayId },
    /// A relay is ready: offer `address` as a relay candidate to these sessions.
    Allocated { relay: RelayId, address: SocketAddr },
}

struct Relay<K> {
    server: TurnServer,
    client: TurnClient,
    /// The server's address, once resolved (UDP) or connected (streams).
    server_addr: Option<SocketAddr>,
    framer: StreamFramer,
    users: HashSet<K>,
    /// No user since: released at this time.
    linger_until: Option<Instant>,
    deadline: Option<Instant>,
}

/// The allocations, a [`Machine`] whose outputs are [`RelayOutput`]s.
pub struct Relays<K> {
    cfg: TurnConfig,
    relays: HashMap<RelayId, Relay<K>>,
    by_server: HashMap<SocketAddr, RelayId>,
    by_address: HashMap<SocketAddr, RelayId>,
    next_id: RelayId,
    out: VecDeque<RelayOutput>,
}

impl<K: Copy + Eq + Hash> Default for Relays<K> {
    fn default() -> Self {
        Relays::new(TurnConfig::default())
    }
}

impl<K: Copy + Eq + Hash> Relays<K> {
    pub fn new(cfg: TurnConfig) -> Relays<K> {
        Relays {
            cfg,
            relays: HashMap::new(),
            by_server: HashMap::new(),
            by_address: HashMap::new(),
            next_id: 1,
            out: VecDeque::new(),
        }
    }

    /// Allocations alive (allocating, allocated or releasing).
    pub fn len(&self) -> usize {
        self.relays.len()
    }

    pub fn is_empty(&self) -> bool {
        self.relays.is_empty()
    }

    /// Relays for `session` on these servers: existing allocations are shared, missing ones
    /// started. Relay addresses already allocated come back at once (offer them); the others
    /// come as [`RelayOutput::Allocated`].
    pub fn handle_allocate(
        &mut self,
        now: Instant,
        session: K,
        servers: &[TurnServer],
    ) -> Vec<SocketAddr> {
        let mut ready = Vec::new();
        for server in servers {
            let existing = self
                .relays
                .iter_mut()
                // Not one being released: its allocation is about to go.
                .find(|(_, r)| &r.server == server && r.client.is_usable());
            if let Some((_, r)) = existing {
                r.users.insert(session);
                r.linger_until = None;
                ready.extend(r.client.relay());
                continue;
            }
            if self.relays.len() >= MAX_RELAYS {
                log::warn!("TURN server {server} not used: {MAX_RELAYS} allocations already");
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            let stream = server.transport != TurnTransport::Udp;
            let client = TurnClient::new(
                now,
                self.cfg.clone(),
                &server.username,
                &server.credential,
                stream,
            );
            let (host, port) = (server.host.clone(), server.port);
            self.out.push_back(match server.transport {
                TurnTransport::Udp => RelayOutput::Lookup {
                    relay: id,
                    host,
                    port,
                },
                t => RelayOutput::Connect {
                    relay: id,
                    host,
                    port,
                    tls: t == TurnTransport::Tls,
                },
            });
            log::info!("TURN server {server}: allocating a relay");
            self.relays.insert(
                id,
                Relay {
                    server: server.clone(),
                    client,
                    server_addr: None,
                    framer: StreamFramer::default(),
                    users: HashSet::from([session]),
                    linger_until: None,
                    deadline: None,
                },
            );
        }
        ready
    }

    /// The session is gone: relays it alone used linger, then are released.
    pub fn handle_session_gone(&mut self, now: Instant, session: K) {
        for r in self.relays.values_mut() {
            if r.users.remove(&session) && r.users.is_empty() {
                r.linger_until = Some(now + LINGER);
            }
        }
    }

    /// The sessions a relay serves.
    pub fn users(&self, relay: RelayId) -> Vec<K> {
        self.relays
            .get(&relay)
            .map(|r| r.users.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The relay addresses `session` may use (allocated ones).
    pub fn addresses_of(&self, session: K) -> Vec<SocketAddr> {
        self.relays
            .values()
            .filter(|r| r.users.contains(&session))
            .filter_map(|r| r.client.relay())
            .collect()
    }

    /// Whether `address` is one of our relay addresses (a session's transmit from it goes
    /// through [`Relays::handle_send`]).
    pub fn is_relay_address(&self, address: SocketAddr) -> bool {
        self.by_address.contains_key(&address)
    }

    /// The DNS answer for a UDP relay's server. `usable` says which addresses the shared
    /// socket can reach (its address family).
    pub fn handle_resolved(
        &mut self,
        now: Instant,
        relay: RelayId,
        answer: Result<Vec<SocketAddr>, String>,
        usable: impl Fn(&SocketAddr) -> bool,
    ) {
        let Some(r) = self.relays.get_mut(&relay) else {
            return;
        };
        let addr = match answer {
            Ok(addrs) => addrs.into_iter().find(|a| usable(a)),
            Err(e) => {
                log::warn!("TURN server {}: lookup failed: {e}", r.server);
                None
            }
        };
        let Some(addr) = addr else {
            if r.server_addr.is_none() {
                log::warn!("TURN server {}: no address reachable over UDP", r.server);
            }
            self.remove(relay);
            return;
        };
        if self.by_server.contains_key(&addr) {
            // Another allocation from the same socket to the same server would mix up their
            // responses: one per server address over UDP.
            log::warn!(
                "TURN server {}: {addr} is already used by another relay",
                r.server
            );
            self.remove(relay);
            return;
        }
        r.server_addr = Some(addr);
        self.by_server.insert(addr, relay);
        r.client.handle_start(now);
        self.drain(relay);
    }

    /// The stream to a TCP/TLS relay's server is open.
    pub fn handle_connected(&mut self, now: Instant, relay: RelayId, server: SocketAddr) {
        if let Some(r) = self.relays.get_mut(&relay) {
            r.server_addr = Some(server);
            r.client.handle_start(now);
            self.drain(relay);
        }
    }

    /// The stream to a relay's server ended (or never opened).
    pub fn handle_stream_lost(&mut self, now: Instant, relay: RelayId, why: &str) {
        if let Some(r) = self.relays.get_mut(&relay) {
            r.client.handle_transport_lost(now, why);
            self.drain(relay);
        }
    }

    /// A datagram on the shared socket: if it comes from one of our UDP TURN servers it is
    /// handled here (`true`), and data from peers goes to `deliver(peer, relay address,
    /// data)`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        bytes: &[u8],
        deliver: impl FnOnce(SocketAddr, SocketAddr, &[u8]),
    ) -> bool {
        let Some(&relay) = self.by_server.get(&source) else {
            return false;
        };
        if let Some(r) = self.relays.get_mut(&relay) {
            let address = r.client.relay();
            match r.client.handle_input(now, bytes) {
                Received::Data { peer, data } => {
                    log::trace!("TURN relay {address:?}: {} bytes from {peer}", data.len());
                    if let Some(address) = address {
                        deliver(peer, address, data);
                    }
                }
                Received::Nothing => log::trace!("TURN server {source}: {} bytes", bytes.len()),
            }
            self.drain(relay);
        }
        true
    }

    /// Bytes read from a relay's stream: whole messages are handled, data from peers goes to
    /// `deliver(peer, relay address, data)`.
    pub fn handle_stream_data(
        &mut self,
        now: Instant,
        relay: RelayId,
        bytes: &[u8],
        mut deliver: impl FnMut(SocketAddr, SocketAddr, &[u8]),
    ) {
        let Some(r) = self.relays.get_mut(&relay) else {
            return;
        };
        r.framer.push(bytes);
        let mut broken = None;
        loop {
            let address = r.client.relay();
            match r.framer.next_frame() {
                Ok(Some(frame)) => {
                    if let Received::Data { peer, data } = r.client.handle_input(now, frame) {
                        if let Some(address) = address {
                            deliver(peer, address, data);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    broken = Some(format!("{e:?}"));
                    break;
                }
            }
        }
        // What stays unframed is less than one frame: a length field of 16 bits bounds it
        // (turn::framing::MAX_FRAME).
        if let Some(why) = broken {
            r.client
                .handle_transport_lost(now, &format!("stream out of step: {why}"));
        }
        self.drain(relay);
    }

    /// A session's datagram whose source is a relay address: through that relay to `peer`.
    /// `false` if `source` is not one of ours.
    pub fn handle_send(
        &mut self,
        now: Instant,
        source: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
    ) -> bool {
        let Some(&relay) = self.by_address.get(&source) else {
            return false;
        };
        if let Some(r) = self.relays.get_mut(&relay) {
            match r.client.handle_send(now, peer, data) {
                Ok(()) => log::trace!("TURN relay {source}: {} bytes to {peer}", data.len()),
                Err(e) => log::trace!("TURN relay {source}: datagram to {peer} dropped: {e}"),
            }
            self.drain(relay);
        }
        true
    }

    /// Let `ip` (a remote candidate of `session`) in on every relay the session uses.
    pub fn handle_permit(&mut self, now: Instant, session: K, ip: IpAddr) {
        let ids: Vec<RelayId> = self
            .relays
            .iter()
            .filter(|(_, r)| r.users.contains(&session))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(r) = self.relays.get_mut(&id) {
                if r.server_addr.is_none_or(|s| s.is_ipv4() == ip.is_ipv4()) {
                    r.client.handle_permit(now, ip);
                }
            }
            self.drain(id);
        }
    }

    /// Release everything (shutting down).
    pub fn handle_shutdown(&mut self, now: Instant) {
        let ids: Vec<RelayId> = self.relays.keys().copied().collect();
        for id in ids {
            if let Some(r) = self.relays.get_mut(&id) {
                r.client.handle_release(now);
            }
            self.drain(id);
        }
    }

    fn remove(&mut self, relay: RelayId) {
        let Some(r) = self.relays.remove(&relay) else {
            return;
        };
        if let Some(a) = r.server_addr {
            if self.by_server.get(&a) == Some(&relay) {
                self.by_server.remove(&a);
            }
        }
        self.by_address.retain(|_, id| *id != relay);
        if r.server.transport != TurnTransport::Udp {
            self.out.push_back(RelayOutput::Close { relay });
        }
    }

    /// Move a client's outputs into ours and note its deadline.
    fn drain(&mut self, relay: RelayId) {
        loop {
            let Some(r) = self.relays.get_mut(&relay) else {
                return;
            };
            let o = match r.client.poll_output() {
                Next::Output(o) => o,
                Next::Timeout(t) => {
                    r.deadline = t;
                    return;
                }
            };
            match o {
                TurnOutput::Transmit(contents) => match (r.server.transport, r.server_addr) {
                    (TurnTransport::Udp, Some(destination)) => {
                        self.out.push_back(RelayOutput::Transmit {
                            destination,
                            contents,
                        })
                    }
                    (TurnTransport::Udp, None) => {}
                    _ => self.out.push_back(RelayOutput::Write {
                        relay,
                        bytes: contents,
                    }),
                },
                TurnOutput::Event(TurnEvent::Allocated {
                    relay: address,
                    mapped,
                }) => {
                    log::info!(
                        "TURN server {}: relay {address} allocated (we are {} to it)",
                        r.server,
                        mapped.map_or("?".into(), |m| m.to_string())
                    );
                    self.by_address.insert(address, relay);
                    self.out
                        .push_back(RelayOutput::Allocated { relay, address });
                }
                TurnOutput::Event(TurnEvent::Failed(why)) => {
                    log::warn!("TURN server {}: {why}; no relay from it", r.server);
                    self.remove(relay);
                    return;
                }
                TurnOutput::Event(TurnEvent::Released) => {
                    log::info!("TURN server {}: relay released", r.server);
                    self.remove(relay);
                    return;
                }
            }
        }
    }

    fn timeout(&mut self, now: Instant) {
        let due: Vec<RelayId> = self
            .relays
            .iter()
            .filter(|(_, r)| {
                r.deadline.is_some_and(|d| d <= now) || r.linger_until.is_some_and(|d| d <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(r) = self.relays.get_mut(&id) else {
                continue;
            };
            if r.linger_until.is_some_and(|d| d <= now) {
                r.linger_until = None;
                r.client.handle_release(now);
            } else {
                r.client.handle_timeout(now);
            }
            self.drain(id);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.relays
            .values()
            .flat_map(|r| [r.deadline, r.linger_until])
            .flatten()
            .min()
    }
}

impl<K: Copy + Eq + Hash> Machine for Relays<K> {
    type Output = RelayOutput;

    fn handle_timeout(&mut self, now: Instant) {
        self.timeout(now);
    }

    fn poll_output(&mut self) -> Next<RelayOutput> {
        Next::or_timeout(self.out.pop_front(), || self.deadline())
    }
}
