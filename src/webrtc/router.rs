//! [`Router`]: which session a datagram on the shared UDP socket belongs to.
//!
//! - STUN with a USERNAME attribute (`ourUfrag:theirUfrag`) goes by *our* ufrag, and its source
//!   address is remembered for that session (this is how DTLS/SCTP from the same address finds
//!   its session before ICE has a nominated pair: do not gate on `Rtc::accepts()`).
//! - STUN Binding responses whose transaction id belongs to our server-reflexive gathering go to
//!   the gatherer.
//! - Everything else goes by source address; unknown sources are dropped and counted.
//!
//! Hash-map lookups only: O(1) per packet, no scan over sessions.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::net::SocketAddr;

use super::is_stun;

/// Addresses remembered per session; the oldest is forgotten beyond this.
pub const MAX_ADDRS_PER_SESSION: usize = 16;

/// STUN attribute USERNAME.
const ATTR_USERNAME: u16 = 0x0006;

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<K> {
    /// Feed it to this session's `handle_receive`.
    Session(K),
    /// A response to our STUN gathering: feed it to `StunGatherer::handle_response`.
    Gather,
    /// Nobody wants it.
    Drop(DropReason),
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// STUN with an unknown ufrag from an unknown address.
    UnknownUfrag,
    /// Not STUN (or STUN without USERNAME) from an unknown address.
    UnknownSource,
}

/// Router errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterError {
    /// The ufrag is already registered for another session (should not happen with 16 random
    /// characters; pick new credentials).
    UfragInUse,
    /// An empty ufrag or one containing `:`.
    BadUfrag,
}

impl fmt::Display for RouterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouterError::UfragInUse => write!(f, "ICE ufrag already in use by another session"),
            RouterError::BadUfrag => write!(f, "invalid ICE ufrag"),
        }
    }
}

impl std::error::Error for RouterError {}

#[derive(Debug, Default)]
struct Routes {
    ufrag: Option<String>,
    addrs: VecDeque<SocketAddr>,
}

/// The routing table for one shared socket. `K` is the driver's session key.
#[derive(Debug)]
pub struct Router<K> {
    by_ufrag: HashMap<String, K>,
    by_addr: HashMap<SocketAddr, K>,
    sessions: HashMap<K, Routes>,
    dropped: u64,
}

impl<K: Copy + Eq + Hash> Default for Router<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy + Eq + Hash> Router<K> {
    /// An empty table.
    pub fn new() -> Self {
        Router {
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            sessions: HashMap::new(),
            dropped: 0,
        }
    }

    /// Register (or re-register after an ICE restart) a session's local ufrag. The previous
    /// ufrag of that session stops routing; remembered addresses are kept (data keeps flowing on
    /// the old path during an ICE restart).
    pub fn set_ufrag(&mut self, key: K, ufrag: &str) -> Result<(), RouterError> {
        if ufrag.is_empty() || ufrag.contains(':') {
            return Err(RouterError::BadUfrag);
        }
        if let Some(owner) = self.by_ufrag.get(ufrag) {
            return if *owner == key {
                Ok(())
            } else {
                Err(RouterError::UfragInUse)
            };
        }
        let routes = self.sessions.entry(key).or_default();
        if let Some(old) = routes.ufrag.replace(ufrag.to_string()) {
            self.by_ufrag.remove(&old);
        }
        self.by_ufrag.insert(ufrag.to_string(), key);
        Ok(())
    }

    /// Forget a session: its ufrag and every address routed to it.
    pub fn remove_session(&mut self, key: K) {
        let Some(routes) = self.sessions.remove(&key) else {
            return;
        };
        if let Some(u) = routes.ufrag {
            self.by_ufrag.remove(&u);
        }
        for a in routes.addrs {
            if self.by_addr.get(&a) == Some(&key) {
                self.by_addr.remove(&a);
            }
        }
    }

    /// Route one incoming datagram. `is_gather_txid` says whether a 12-byte STUN transaction id
    /// belongs to the server-reflexive gathering (e.g. `|t| gatherer.owns(t)`).
    pub fn route(
        &mut self,
        source: SocketAddr,
        bytes: &[u8],
        is_gather_txid: impl FnOnce(&[u8; 12]) -> bool,
    ) -> Route<K> {
        if is_stun(bytes) {
            let msg_type = u16::from_be_bytes([bytes[0], bytes[1]]);
            // Class bits (C1 = 0x0100, C0 = 0x0010): 0b10 success, 0b11 error response.
            let is_response = msg_type & 0x0100 != 0;
            if is_response {
                let mut txid = [0u8; 12];
                txid.copy_from_slice(&bytes[8..20]);
                if is_gather_txid(&txid) {
                    return Route::Gather;
                }
            }
            if let Some(username) = stun_username(bytes) {
                let ours = username.split(|b| *b == b':').next().unwrap_or_default();
                if let Some(key) = std::str::from_utf8(ours)
                    .ok()
                    .and_then(|u| self.by_ufrag.get(u))
                    .copied()
                {
                    self.learn(key, source);
                    return Route::Session(key);
                }
                return match self.by_addr.get(&source) {
                    Some(key) => Route::Session(*key),
                    None => self.drop(DropReason::UnknownUfrag),
                };
            }
        }
        match self.by_addr.get(&source) {
            Some(key) => Route::Session(*key),
            None => self.drop(DropReason::UnknownSource),
        }
    }

    /// Tell the router a session sent a datagram to `destination` (call it for each transmit,
    /// or at least for STUN ones): replies to our own connectivity checks carry no USERNAME, so
    /// this lets them find the session. Never takes over an address another session owns.
    pub fn note_transmit(&mut self, key: K, destination: SocketAddr) {
        if self.by_addr.contains_key(&destination) || !self.sessions.contains_key(&key) {
            return;
        }
        self.learn(key, destination);
    }

    /// The session an address is routed to.
    pub fn session_for_addr(&self, addr: SocketAddr) -> Option<K> {
        self.by_addr.get(&addr).copied()
    }

    /// The session a ufrag is registered for.
    pub fn session_for_ufrag(&self, ufrag: &str) -> Option<K> {
        self.by_ufrag.get(ufrag).copied()
    }

    /// Datagrams dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Sessions registered.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    fn drop(&mut self, reason: DropReason) -> Route<K> {
        self.dropped += 1;
        Route::Drop(reason)
    }

    /// Route `addr` to `key` (taking it from another session if needed).
    fn learn(&mut self, key: K, addr: SocketAddr) {
        match self.by_addr.insert(addr, key) {
            Some(prev) if prev == key => return,
            Some(prev) => {
                if let Some(r) = self.sessions.get_mut(&prev) {
                    r.addrs.retain(|a| *a != addr);
                }
            }
            None => {}
        }
        let routes = self.sessions.entry(key).or_default();
        routes.addrs.push_back(addr);
        while routes.addrs.len() > MAX_ADDRS_PER_SESSION {
            if let Some(old) = routes.addrs.pop_front() {
                if self.by_addr.get(&old) == Some(&key) {
                    self.by_addr.remove(&old);
                }
            }
        }
    }
}

/// The USERNAME attribute of a STUN message (bounds-checked walk over the attributes).
pub(crate) fn stun_username(bytes: &[u8]) -> Option<&[u8]> {
    let len = usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]));
    let end = 20usize.checked_add(len)?;
    let attrs = bytes.get(20..end)?;
    let mut i = 0usize;
    while i + 4 <= attrs.len() {
        let typ = u16::from_be_bytes([attrs[i], attrs[i + 1]]);
        let alen = usize::from(u16::from_be_bytes([attrs[i + 2], attrs[i + 3]]));
        let value = attrs.get(i + 4..i + 4 + alen)?;
        if typ == ATTR_USERNAME {
            return Some(value);
        }
        i += 4 + alen.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    /// A Binding request with USERNAME (and a dummy PRIORITY after it).
    fn binding_request(username: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
        let mut m = Vec::new();
        m.extend_from_slice(&0x0001u16.to_be_bytes());
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&0x2112_A442u32.to_be_bytes());
        m.extend_from_slice(&[7u8; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    fn binding_response(txid: [u8; 12]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&0x0101u16.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        m.extend_from_slice(&0x2112_A442u32.to_be_bytes());
        m.extend_from_slice(&txid);
        m
    }

    #[test]
    fn username_parse() {
        assert_eq!(
            stun_username(&binding_request("abc:defgh")),
            Some(&b"abc:defgh"[..])
        );
        // Truncated: length says more than there is.
        let mut m = binding_request("abc:defgh");
        m.truncate(26);
        assert_eq!(stun_username(&m), None);
        // Attribute length beyond the message.
        let mut m = binding_request("abc:d");
        m[22] = 0xff;
        assert_eq!(stun_username(&m), None);
        assert_eq!(stun_username(&binding_response([0; 12])), None);
    }

    #[test]
    fn routes_by_ufrag_then_address() {
        let mut r: Router<u32> = Router::new();
        r.set_ufrag(1, "ufragOne").expect("set");
        r.set_ufrag(2, "ufragTwo").expect("set");
        let a = addr("192.0.2.1:5000");
        let b = addr("192.0.2.2:6000");
        let never = |_: &[u8; 12]| false;

        // DTLS before any STUN from that address: dropped.
        assert_eq!(
            r.route(a, &[22, 254, 253, 0], never),
            Route::Drop(DropReason::UnknownSource)
        );
        // STUN by our ufrag routes and teaches the address.
        assert_eq!(
            r.route(a, &binding_request("ufragOne:remote"), never),
            Route::Session(1)
        );
        assert_eq!(r.route(a, &[22, 254, 253, 0], never), Route::Session(1));
        assert_eq!(r.session_for_addr(a), Some(1));
        // Unknown ufrag from an unknown address.
        assert_eq!(
            r.route(b, &binding_request("nope:remote"), never),
            Route::Drop(DropReason::UnknownUfrag)
        );
        // Unknown ufrag from a known address: by address (the session's ICE agent decides).
        assert_eq!(
            r.route(a, &binding_request("old:remote"), never),
            Route::Session(1)
        );
        // Same address now checked with session 2's ufrag: moves to 2.
        assert_eq!(
            r.route(a, &binding_request("ufragTwo:x"), never),
            Route::Session(2)
        );
        assert_eq!(r.route(a, &[23, 254, 253], never), Route::Session(2));
        assert_eq!(r.dropped(), 2);

        // Ufrag collisions and bad ufrags.
        assert_eq!(r.set_ufrag(3, "ufragOne"), Err(RouterError::UfragInUse));
        assert_eq!(r.set_ufrag(1, "ufragOne"), Ok(()));
        assert_eq!(r.set_ufrag(3, ""), Err(RouterError::BadUfrag));
        assert_eq!(r.set_ufrag(3, "a:b"), Err(RouterError::BadUfrag));
    }

    #[test]
    fn ice_restart_changes_ufrag_keeps_addresses() {
        let mut r: Router<u32> = Router::new();
        let never = |_: &[u8; 12]| false;
        let a = addr("192.0.2.1:5000");
        r.set_ufrag(1, "first").expect("set");
        assert_eq!(
            r.route(a, &binding_request("first:x"), never),
            Route::Session(1)
        );
        r.set_ufrag(1, "second").expect("set");
        assert_eq!(r.session_for_ufrag("first"), None);
        assert_eq!(r.session_for_ufrag("second"), Some(1));
        let c = addr("198.51.100.7:7000");
        assert_eq!(
            r.route(c, &binding_request("second:y"), never),
            Route::Session(1)
        );
        assert_eq!(r.route(a, &[23, 1, 2], never), Route::Session(1));
        assert_eq!(r.route(c, &[23, 1, 2], never), Route::Session(1));
    }

    #[test]
    fn removal_removes_all_routes() {
        let mut r: Router<u32> = Router::new();
        let never = |_: &[u8; 12]| false;
        r.set_ufrag(1, "one").expect("set");
        r.set_ufrag(2, "two").expect("set");
        let a = addr("192.0.2.1:5000");
        let b = addr("192.0.2.2:5000");
        let c = addr("192.0.2.3:5000");
        r.route(a, &binding_request("one:x"), never);
        r.route(b, &binding_request("one:x"), never);
        r.route(c, &binding_request("two:x"), never);
        r.remove_session(1);
        assert_eq!(r.session_for_ufrag("one"), None);
        assert_eq!(r.session_for_addr(a), None);
        assert_eq!(r.session_for_addr(b), None);
        assert_eq!(r.session_for_addr(c), Some(2));
        assert_eq!(
            r.route(a, &[23, 0, 0], never),
            Route::Drop(DropReason::UnknownSource)
        );
        assert_eq!(r.len(), 1);
        r.remove_session(2);
        assert!(r.is_empty());
        assert_eq!(r.session_for_addr(c), None);
        // Removing twice is fine.
        r.remove_session(2);
    }

    #[test]
    fn note_transmit_never_steals() {
        let mut r: Router<u32> = Router::new();
        let never = |_: &[u8; 12]| false;
        r.set_ufrag(1, "one").expect("set");
        r.set_ufrag(2, "two").expect("set");
        let a = addr("192.0.2.1:5000");
        let b = addr("192.0.2.2:5000");
        r.route(a, &binding_request("one:x"), never);
        r.note_transmit(2, a);
        assert_eq!(r.session_for_addr(a), Some(1));
        r.note_transmit(2, b);
        assert_eq!(r.session_for_addr(b), Some(2));
        // Unknown session: ignored.
        r.note_transmit(9, addr("192.0.2.9:1"));
        assert_eq!(r.session_for_addr(addr("192.0.2.9:1")), None);
        // A response to our check (no USERNAME) from b goes to 2.
        assert_eq!(
            r.route(b, &binding_response([1; 12]), never),
            Route::Session(2)
        );
    }

    #[test]
    fn gather_responses_by_transaction_id() {
        let mut r: Router<u32> = Router::new();
        let server = addr("203.0.113.5:3478");
        let ours = [9u8; 12];
        let is_ours = |t: &[u8; 12]| *t == ours;
        assert_eq!(
            r.route(server, &binding_response(ours), is_ours),
            Route::Gather
        );
        assert_eq!(
            r.route(server, &binding_response([1; 12]), is_ours),
            Route::Drop(DropReason::UnknownSource)
        );
        // Requests are never gather traffic, even with a matching id.
        let mut req = binding_request("x:y");
        req[8..20].copy_from_slice(&ours);
        assert_eq!(
            r.route(server, &req, is_ours),
            Route::Drop(DropReason::UnknownUfrag)
        );
    }

    #[test]
    fn address_cap_per_session() {
        let mut r: Router<u32> = Router::new();
        let never = |_: &[u8; 12]| false;
        r.set_ufrag(1, "one").expect("set");
        for port in 0..(MAX_ADDRS_PER_SESSION as u16 + 4) {
            let a = SocketAddr::from(([192, 0, 2, 1], 1000 + port));
            r.route(a, &binding_request("one:x"), never);
        }
        assert_eq!(r.by_addr.len(), MAX_ADDRS_PER_SESSION);
        // The oldest ones were forgotten, the newest kept.
        assert_eq!(
            r.session_for_addr(SocketAddr::from(([192, 0, 2, 1], 1000))),
            None
        );
        assert_eq!(
            r.session_for_addr(SocketAddr::from((
                [192, 0, 2, 1],
                1000 + MAX_ADDRS_PER_SESSION as u16 + 3
            ))),
            Some(1)
        );
    }

    #[test]
    fn short_and_odd_datagrams() {
        let mut r: Router<u32> = Router::new();
        let never = |_: &[u8; 12]| false;
        let a = addr("192.0.2.1:5000");
        assert_eq!(
            r.route(a, &[], never),
            Route::Drop(DropReason::UnknownSource)
        );
        assert_eq!(
            r.route(a, &[0, 1, 0], never),
            Route::Drop(DropReason::UnknownSource)
        );
        // STUN-like header but wrong cookie: not STUN.
        let mut m = binding_request("one:x");
        m[4] = 0;
        assert_eq!(
            r.route(a, &m, never),
            Route::Drop(DropReason::UnknownSource)
        );
    }
}
