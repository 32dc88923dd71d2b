//! The core's side of TURN relays (docs/design.md#turn-relays): which relays a session gets,
//! relay candidates, a session's datagrams from a relay address sent through its relay, data
//! from a relay fed to the session as if it arrived at the relay address, and the relays'
//! own needs (lookups, connections, datagrams to the TURN server) turned into core outputs.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::{Gateway, LookupKey, Output, SessionKey};
use crate::machine::{Machine, Next};
use crate::turn::{RelayId, RelayOutput, TurnServer};
use crate::webrtc::session::Transmit;

impl Gateway {
    /// Relays for this session on these TURN servers (the configured list today; a list
    /// fetched per session can come here the same way). Relays already allocated are offered
    /// at once, the others when they are ready.
    pub fn allocate_relays(&mut self, now: Instant, key: SessionKey, servers: &[TurnServer]) {
        self.now = now;
        if servers.is_empty() || !self.sessions.contains_key(&key) {
            return;
        }
        let ready = self.relays.handle_allocate(now, key, servers);
        self.drain_relays();
        if !ready.is_empty() {
            self.offer_candidates(key);
        }
    }

    /// A TURN server's TCP or TLS connection ([`Output::TurnConnect`]) is open.
    pub fn handle_turn_connected(&mut self, now: Instant, relay: RelayId, server: SocketAddr) {
        self.now = now;
        self.relays.handle_connected(now, relay, server);
        self.drain_relays();
    }

    /// Bytes read from a TURN server's connection.
    pub fn handle_turn_data(&mut self, now: Instant, relay: RelayId, bytes: &[u8]) {
        self.now = now;
        let (relays, sessions, router) = (&mut self.relays, &mut self.sessions, &mut self.router);
        let mut fed = Vec::new();
        relays.handle_stream_data(now, relay, bytes, |peer, address, data| {
            if let Some(key) = feed(sessions, router, now, peer, address, data) {
                fed.push(key);
            }
        });
        self.after_relayed(now, fed);
        self.drain_relays();
    }

    /// A TURN server's connection failed or ended.
    pub fn handle_turn_lost(&mut self, now: Instant, relay: RelayId, why: &str) {
        self.now = now;
        self.relays.handle_stream_lost(now, relay, why);
        self.drain_relays();
    }

    /// A datagram on the shared socket from one of our UDP TURN servers: handled here
    /// (`true`), data from peers fed to the session as received at the relay address.
    pub(super) fn relayed_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        bytes: &[u8],
    ) -> bool {
        let (relays, sessions, router) = (&mut self.relays, &mut self.sessions, &mut self.router);
        let mut fed = None;
        let ours = relays.handle_datagram(now, source, bytes, |peer, address, data| {
            fed = feed(sessions, router, now, peer, address, data);
        });
        if ours {
            self.after_relayed(now, fed.into_iter().collect());
            self.drain_relays();
        }
        ours
    }

    /// Sessions fed relayed data: drained once with the batch, like direct datagrams.
    fn after_relayed(&mut self, now: Instant, fed: Vec<SessionKey>) {
        for key in fed {
            let undrained = self
                .sessions
                .get(&key)
                .is_some_and(|s| s.peer.has_undrained());
            if !undrained {
                self.drain_session(key, now);
            } else if !self.undrained.contains(&key) {
                self.undrained.push(key);
            }
        }
    }

    /// A session's datagram: through its relay when sent from a relay address, else from the
    /// shared socket.
    pub(super) fn send_transmit(&mut self, t: Transmit) {
        if self.relays.is_relay_address(t.source) {
            let now = self.now;
            self.relays
                .handle_send(now, t.source, t.destination, &t.contents);
            self.drain_relays();
        } else if self.hosts.contains(&t.source) {
            self.out.push_back(Output::Transmit(t));
        } else {
            // From a relay that is gone (failed or released): nowhere to send it from.
            log::trace!(
                "datagram from {} to {} dropped: no such relay",
                t.source,
                t.destination
            );
        }
    }

    /// A remote candidate ICE took: let its IP in on the session's relays.
    pub(super) fn permit_candidate(&mut self, now: Instant, key: SessionKey, ip: IpAddr) {
        self.relays.handle_permit(now, key, ip);
        self.drain_relays();
    }

    /// The session is gone: relays it alone used linger, then are released.
    pub(super) fn relays_session_gone(&mut self, key: SessionKey) {
        let now = self.now;
        self.relays.handle_session_gone(now, key);
        self.drain_relays();
    }

    /// The answer to a lookup made for a relay (`false`: the key is not a relay's).
    pub(super) fn relay_resolved(
        &mut self,
        now: Instant,
        key: LookupKey,
        answer: &Result<Vec<SocketAddr>, String>,
    ) -> bool {
        let Some(relay) = self.relay_lookups.remove(&key) else {
            return false;
        };
        let hosts = &self.hosts;
        let usable = |a: &SocketAddr| hosts.iter().any(|h| h.is_ipv4() == a.is_ipv4());
        self.relays
            .handle_resolved(now, relay, answer.clone(), usable);
        self.drain_relays();
        true
    }

    /// Carry out what the relays asked for.
    pub(super) fn drain_relays(&mut self) {
        loop {
            let o = match self.relays.poll_output() {
                Next::Output(o) => o,
                Next::Timeout(t) => {
                    self.relays_deadline = t;
                    return;
                }
            };
            match o {
                RelayOutput::Lookup { relay, host, port } => {
                    let key = self.next_lookup;
                    self.next_lookup += 1;
                    self.relay_lookups.insert(key, relay);
                    self.out.push_back(Output::Lookup { key, host, port });
                }
                RelayOutput::Transmit {
                    destination,
                    contents,
                } => {
                    let source = self.local_addr_for(destination).unwrap_or(destination);
                    self.out.push_back(Output::Transmit(Transmit {
                        source,
                        destination,
                        contents,
                    }));
                }
                RelayOutput::Connect {
                    relay,
                    host,
                    port,
                    tls,
                } => self.out.push_back(Output::TurnConnect {
                    relay,
                    host,
                    port,
                    tls,
                }),
                RelayOutput::Write { relay, bytes } => {
                    self.out.push_back(Output::TurnWrite { relay, bytes })
                }
                RelayOutput::Close { relay } => self.out.push_back(Output::TurnClose { relay }),
                RelayOutput::Allocated { relay, .. } => {
                    for key in self.relays.users(relay) {
                        self.offer_candidates(key);
                    }
                }
            }
        }
    }

    /// A session never connected: say why that usually happens and what helps.
    pub(super) fn explain_no_path(&self, key: SessionKey) {
        let Some(s) = self.sessions.get(&key) else {
            return;
        };
        let relays = self.relays.addresses_of(key);
        let offered = s.candidates.len();
        if relays.is_empty() {
            log::warn!(
                "[{}] no network path to the client: ICE found no working candidate pair among the \
                 {offered} local candidates offered (host and server-reflexive, no relay). Behind \
                 symmetric NATs (mobile networks, many firewalls) only a TURN relay gets through: \
                 add a turn: server with username and credential to MA_ICE_SERVERS",
                s.id
            );
        } else {
            log::warn!(
                "[{}] no network path to the client, not even through the TURN relay(s) {relays:?}: \
                 is the client's network blocking UDP to the relay?",
                s.id
            );
        }
    }

    pub(super) fn relays_timeout(&mut self, now: Instant) {
        self.relays.handle_timeout(now);
        self.drain_relays();
    }
}

/// Feed relayed data to the session it belongs to, with the relay address as destination
/// (str0m only takes STUN addressed to one of its local candidates,
/// docs/design.md#receive-destination-must-be-an-advertised-address). The session fed, if any.
fn feed(
    sessions: &mut std::collections::HashMap<SessionKey, super::Session>,
    router: &mut crate::webrtc::Router<SessionKey>,
    now: Instant,
    peer: SocketAddr,
    address: SocketAddr,
    data: &[u8],
) -> Option<SessionKey> {
    // Gathering never goes through a relay: no transaction of ours to match.
    match router.route(peer, data, |_| false) {
        crate::webrtc::Route::Session(key) => {
            let s = sessions.get_mut(&key)?;
            s.peer.handle_receive(now, peer, address, data);
            Some(key)
        }
        _ => None,
    }
}
