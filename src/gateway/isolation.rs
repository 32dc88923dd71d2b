//! Panic isolation for the core (docs/design.md#panic-isolation): a panic while handling one
//! input (a bug in the core, the proxy, the chunker, a parser or str0m) costs only the session
//! or connection that input was about, never the process and everyone else's sessions.
//!
//! The driver runs every input through [`Gateway::guarded`], naming what the input concerns
//! ([`Culprit`]). When the input panics, [`Gateway::handle_panic`] drops that session (its
//! sockets are closed, its client sees it end) or fails that proxy connection. A panic in the
//! timers is pinned on the session the timer loop was working on.

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use super::bridge::BridgeId;
use super::{Gateway, Output, Requester, SessionKey};
use crate::http_proxy::ConnId;
use crate::signaling::client::Event;

/// What an input was about: what to drop if handling it panics.
#[derive(Debug, Clone, Copy)]
pub enum Culprit<'a> {
    /// A signaling message for this session.
    Session(&'a str),
    /// A datagram from this address (its session, if the router knows it).
    Datagram(SocketAddr),
    /// An event of this bridge's local socket.
    Bridge(BridgeId),
    /// An event of this proxy connection.
    Fetch(ConnId),
    /// Time passing: the session the timer loop was at.
    Timers,
    /// Nothing in particular (registration, DNS, shutdown): logged, nothing dropped.
    Other,
}

/// A text that makes [`Gateway::handle_remote_candidate`] panic, in builds for tests only: the
/// end-to-end tests prove with it that a panic costs one session.
#[cfg(any(test, feature = "testkit"))]
pub const PANIC_FOR_TESTS: &str = "__panic_for_tests__";

impl Gateway {
    /// Run one input; if it panics, drop what `culprit` names and carry on.
    pub fn guarded(
        &mut self,
        now: Instant,
        culprit: Culprit<'_>,
        input: impl FnOnce(&mut Gateway),
    ) {
        if catch_unwind(AssertUnwindSafe(|| input(self))).is_err() {
            self.handle_panic(now, culprit);
        }
        self.current = None;
    }

    /// A signaling event about one session, guarded: a panic costs only that session.
    pub fn handle_session_event(&mut self, now: Instant, event: Event) {
        match event {
            Event::ClientConnected { session_id } => {
                let culprit = Culprit::Session(&session_id);
                self.guarded(now, culprit, |c| {
                    c.handle_client_connected(now, &session_id)
                })
            }
            Event::Offer { session_id, sdp } => {
                let culprit = Culprit::Session(&session_id);
                self.guarded(now, culprit, |c| c.handle_offer(now, &session_id, &sdp))
            }
            Event::RemoteCandidate {
                session_id,
                candidate,
            } => {
                let culprit = Culprit::Session(&session_id);
                self.guarded(now, culprit, |c| {
                    c.handle_remote_candidate(now, &session_id, &candidate)
                })
            }
            Event::ClientDisconnected { session_id } => {
                let culprit = Culprit::Session(&session_id);
                self.guarded(now, culprit, |c| {
                    c.handle_client_disconnected(now, &session_id)
                })
            }
            Event::Registered { .. } | Event::Lost => {}
        }
    }

    /// An input about `culprit` panicked: drop that session (or fail that connection).
    pub fn handle_panic(&mut self, now: Instant, culprit: Culprit<'_>) {
        self.now = now;
        let key = match culprit {
            Culprit::Session(id) => self.by_id.get(id).copied(),
            Culprit::Datagram(source) => self.router.session_for_addr(source),
            Culprit::Bridge(bridge) => self.bridges.get(&bridge).map(|(key, _)| *key),
            Culprit::Timers => self.current,
            Culprit::Fetch(conn) => {
                log::error!("internal error while handling proxy connection {conn}; it is dropped");
                let failed = catch_unwind(AssertUnwindSafe(|| {
                    self.proxy.handle_failed(now, conn, "internal error");
                }));
                if failed.is_err() {
                    log::error!("the HTTP proxy failed again while recovering");
                }
                self.out.push_back(Output::FetchClose { conn });
                return;
            }
            Culprit::Other => None,
        };
        let Some(key) = key else {
            log::error!("internal error ({culprit:?}); no session to drop, carrying on");
            return;
        };
        self.drop_after_panic(key);
    }

    /// Forget a session whose state may be half-updated: its sockets, its routes, its proxy
    /// requests; say goodbye to the client if even that still works.
    fn drop_after_panic(&mut self, key: SessionKey) {
        let Some(mut s) = self.sessions.remove(&key) else {
            return;
        };
        log::error!("[{}] internal error: the session is closed", s.id);
        if self.by_id.get(&s.id) == Some(&key) {
            self.by_id.remove(&s.id);
        }
        self.router.remove_session(key);
        let now = self.now;
        for (ch, b) in s.bridges.drain() {
            let proxy = &mut self.proxy;
            let _ = catch_unwind(AssertUnwindSafe(|| {
                proxy.handle_cancel(now, &Requester::of(key, ch))
            }));
            if let Some(bridge) = b.local {
                self.bridges.remove(&bridge);
                self.out.push_back(Output::CloseWs { bridge });
            }
        }
        self.bridges.retain(|_, (k, _)| *k != key);
        let goodbye = catch_unwind(AssertUnwindSafe(|| super::say_goodbye(&mut s.peer, now)));
        match goodbye {
            Ok(transmits) => {
                for t in transmits {
                    self.send_transmit(t);
                }
            }
            Err(_) => log::error!("[{}] the WebRTC session could not be closed cleanly", s.id),
        }
        self.session_removed(key);
    }
}
