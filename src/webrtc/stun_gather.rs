//! Server-reflexive candidate discovery, sans-IO: STUN Binding requests (RFC 5389) sent from the
//! shared UDP socket to the STUN servers of the ICE server list, retransmitted on a doubling
//! schedule, and their responses' (XOR-)MAPPED-ADDRESS. DNS resolution is the driver's job: this
//! takes resolved addresses. str0m does no gathering itself.
//!
//! The few bytes are written and parsed here (str0m's `ice::StunMessage` is `#[doc(hidden)]`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::machine::{Machine, Next};
pub use crate::turn::stun::TransactionId;
use crate::turn::stun::{
    parse_address, parse_error_code, random_txid, Message, ATTR_ERROR_CODE, ATTR_MAPPED_ADDRESS,
    ATTR_XOR_MAPPED_ADDRESS, ATTR_XOR_MAPPED_ADDRESS_OLD,
};

use super::STUN_MAGIC_COOKIE;

/// The STUN servers to use when the ICE server list has none (MA's list).
pub const DEFAULT_STUN_URLS: &[&str] = &[
    "stun:stun.home-assistant.io:3478",
    "stun:stun.l.google.com:19302",
    "stun:stun1.l.google.com:19302",
    "stun:stun.cloudflare.com:3478",
];

/// At most this many STUN servers are taken from one ICE server list.
pub const MAX_STUN_SERVERS: usize = 16;

const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;

/// A `stun:`/`stuns:` URL (RFC 7064), unresolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StunUrl {
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port (3478 by default, 5349 for `stuns:`).
    pub port: u16,
    /// `stuns:` (STUN over TLS/DTLS). A plain UDP Binding request to it is unlikely to be
    /// answered; the driver may skip these.
    pub secure: bool,
}

impl StunUrl {
    /// `host:port` for `ToSocketAddrs` (IPv6 literals in brackets).
    pub fn host_port(&self) -> String {
        host_port(&self.host, self.port)
    }
}

/// `host:port`, an IPv6 literal in brackets.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Every URL of an ICE server list (`[{"urls": "..." | [...], ...}]`, the legacy `url` key
/// too, or one bare entry), in order, with the entry it came from (its credentials).
pub fn ice_server_urls(ice_servers: &Value) -> Vec<(&Value, &str)> {
    let entries: &[Value] = match ice_servers {
        Value::Array(a) => a,
        Value::Object(_) => std::slice::from_ref(ice_servers),
        _ => &[],
    };
    let mut out = Vec::new();
    for entry in entries {
        match entry.get("urls").or_else(|| entry.get("url")) {
            Some(Value::String(s)) => out.push((entry, s.as_str())),
            Some(Value::Array(a)) => {
                out.extend(a.iter().filter_map(Value::as_str).map(|u| (entry, u)))
            }
            _ => {}
        }
    }
    out
}

impl fmt::Display for StunUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.secure { "stuns" } else { "stun" };
        write!(f, "{scheme}:{}", self.host_port())
    }
}

/// Parse `stun:host`, `stun:host:port`, `stun:[v6]:port`, `stuns:...` (scheme case-insensitive,
/// a `?query` ignored). Anything else (`turn:`, garbage) is `None`.
pub fn parse_stun_url(url: &str) -> Option<StunUrl> {
    let url = url.trim();
    let (scheme, rest) = url.split_once(':')?;
    let secure = if scheme.eq_ignore_ascii_case("stun") {
        false
    } else if scheme.eq_ignore_ascii_case("stuns") {
        true
    } else {
        return None;
    };
    let default_port = if secure { 5349 } else { 3478 };
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let rest = rest.split('?').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        host.parse::<Ipv6Addr>().ok()?;
        let port = match after {
            "" => default_port,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        (host, port)
    } else if rest.matches(':').count() > 1 {
        // Bare IPv6 literal without brackets: no port possible.
        rest.parse::<Ipv6Addr>().ok()?;
        (rest, default_port)
    } else if let Some((host, port)) = rest.split_once(':') {
        (host, port.parse().ok()?)
    } else {
        (rest, default_port)
    };
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    if !valid_host || port == 0 {
        return None;
    }
    Some(StunUrl {
        host: host.to_string(),
        port,
        secure,
    })
}

/// The `stun:`/`stuns:` servers of an ICE server list (`[{"urls": "..." | [...], ...}]`, the
/// legacy `url` key too), deduplicated, in order, at most [`MAX_STUN_SERVERS`]. TURN entries are
/// skipped.
pub fn stun_servers_from_ice_servers(ice_servers: &Value) -> Vec<StunUrl> {
    let mut out: Vec<StunUrl> = Vec::new();
    let mut seen = HashSet::new();
    for (_, u) in ice_server_urls(ice_servers) {
        if out.len() >= MAX_STUN_SERVERS {
            return out;
        }
        if let Some(parsed) = parse_stun_url(u) {
            if seen.insert(parsed.clone()) {
                out.push(parsed);
            }
        }
    }
    out
}

/// Retransmission and bounds.
#[derive(Debug, Clone)]
pub struct GatherConfig {
    /// Wait before the first retransmission; doubles after each send.
    pub initial_rto: Duration,
    /// Requests sent per transaction (the first one included) before giving up; the last one
    /// gets twice its predecessor's wait.
    pub max_sends: u32,
    /// Transactions in flight at most.
    pub max_outstanding: usize,
}

impl Default for GatherConfig {
    /// 500 ms doubling, 4 sends (at 0, 0.5, 1.5, 3.5 s; gives up at 7.5 s), 16 in flight.
    fn default() -> Self {
        GatherConfig {
            initial_rto: Duration::from_millis(500),
            max_sends: 4,
            max_outstanding: 16,
        }
    }
}

/// Gathering errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatherError {
    /// [`GatherConfig::max_outstanding`] transactions are already in flight.
    TooManyOutstanding,
    /// No randomness for a transaction id.
    Random,
}

impl fmt::Display for GatherError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatherError::TooManyOutstanding => write!(f, "too many STUN requests in flight"),
            GatherError::Random => write!(f, "no randomness available"),
        }
    }
}

impl std::error::Error for GatherError {}

/// Result of one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatherEvent {
    /// The server saw our socket as `mapped`: a server-reflexive candidate (its base is the
    /// local address the request went out from).
    Mapped {
        /// The STUN server.
        server: SocketAddr,
        /// Our address as the server saw it.
        mapped: SocketAddr,
    },
    /// The server answered with an error (or a success without any address).
    Failed {
        /// The STUN server.
        server: SocketAddr,
        /// STUN error code (0 when a success carried no address).
        code: u16,
    },
    /// No answer after [`GatherConfig::max_sends`] requests.
    TimedOut {
        /// The STUN server.
        server: SocketAddr,
    },
}

/// One output of [`StunGatherer::poll_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatherOutput {
    /// Send this request from the shared socket.
    Transmit {
        /// The STUN server.
        destination: SocketAddr,
        /// The Binding request.
        contents: Vec<u8>,
    },
    /// A transaction finished.
    Event(GatherEvent),
}

#[derive(Debug)]
struct Pending {
    server: SocketAddr,
    request: [u8; 20],
    sends: u32,
    rto: Duration,
    next: Instant,
}

/// Server-reflexive discovery state, a [`Machine`]: [`StunGatherer::handle_gather`] per
/// server, send the transmits of [`Machine::poll_output`], call [`Machine::handle_timeout`] at
/// the deadline it returns, feed responses routed to it to [`StunGatherer::handle_response`].
#[derive(Debug, Default)]
pub struct StunGatherer {
    cfg: GatherConfig,
    pending: HashMap<TransactionId, Pending>,
    out: VecDeque<GatherOutput>,
}

impl StunGatherer {
    /// A gatherer with this configuration.
    pub fn new(cfg: GatherConfig) -> Self {
        StunGatherer {
            cfg,
            pending: HashMap::new(),
            out: VecDeque::new(),
        }
    }

    /// Start a Binding transaction with `server` (a request is queued at once).
    pub fn handle_gather(
        &mut self,
        now: Instant,
        server: SocketAddr,
    ) -> Result<TransactionId, GatherError> {
        if self.pending.len() >= self.cfg.max_outstanding {
            return Err(GatherError::TooManyOutstanding);
        }
        let txid = loop {
            let txid = random_txid().ok_or(GatherError::Random)?;
            if !self.pending.contains_key(&txid) {
                break txid;
            }
        };
        let request = binding_request(&txid);
        self.out.push_back(GatherOutput::Transmit {
            destination: server,
            contents: request.to_vec(),
        });
        self.pending.insert(
            txid,
            Pending {
                server,
                request,
                sends: 1,
                rto: self.cfg.initial_rto,
                next: now + self.cfg.initial_rto,
            },
        );
        Ok(txid)
    }

    /// Retransmit what is due; give up on transactions out of tries.
    fn timeout(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for (txid, p) in self.pending.iter_mut() {
            if now < p.next {
                continue;
            }
            if p.sends >= self.cfg.max_sends.max(1) {
                expired.push(*txid);
                continue;
            }
            p.sends += 1;
            p.rto = p.rto.saturating_mul(2);
            // The last request waits twice as long before we give up (RFC 5389 §7.2.1's Rm).
            p.next = now + p.rto;
            self.out.push_back(GatherOutput::Transmit {
                destination: p.server,
                contents: p.request.to_vec(),
            });
        }
        for txid in expired {
            if let Some(p) = self.pending.remove(&txid) {
                log::debug!("STUN server {} did not answer", p.server);
                self.out
                    .push_back(GatherOutput::Event(GatherEvent::TimedOut {
                        server: p.server,
                    }));
            }
        }
    }

    /// Next transmit or event.
    /// When [`Machine::handle_timeout`] is next wanted (`None`: nothing in flight).
    fn deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.next).min()
    }

    /// Whether a transaction id is one of ours in flight (for the router).
    pub fn owns(&self, txid: &TransactionId) -> bool {
        self.pending.contains_key(txid)
    }

    /// Transactions in flight.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    /// Feed a datagram routed here. Returns false (ignore it) unless it is a Binding response
    /// to one of our transactions, from that transaction's server.
    pub fn handle_response(&mut self, _now: Instant, source: SocketAddr, bytes: &[u8]) -> bool {
        let Some((txid, response)) = parse_binding_response(bytes) else {
            return false;
        };
        match self.pending.get(&txid) {
            Some(p) if p.server == source => {}
            _ => return false,
        }
        let Some(p) = self.pending.remove(&txid) else {
            return false;
        };
        let event = match response {
            BindingResponse::Success(Some(mapped)) => GatherEvent::Mapped {
                server: p.server,
                mapped,
            },
            BindingResponse::Success(None) => GatherEvent::Failed {
                server: p.server,
                code: 0,
            },
            BindingResponse::Error(code) => GatherEvent::Failed {
                server: p.server,
                code,
            },
        };
        self.out.push_back(GatherOutput::Event(event));
        true
    }
}

impl Machine for StunGatherer {
    type Output = GatherOutput;

    fn handle_timeout(&mut self, now: Instant) {
        self.timeout(now);
    }

    fn poll_output(&mut self) -> Next<GatherOutput> {
        Next::or_timeout(self.out.pop_front(), || self.deadline())
    }
}

/// A 20-byte Binding request without attributes.
pub fn binding_request(txid: &TransactionId) -> [u8; 20] {
    let mut m = [0u8; 20];
    m[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    // Length 0.
    m[4..8].copy_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
    m[8..20].copy_from_slice(txid);
    m
}

/// A parsed Binding response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingResponse {
    /// Success with the (XOR-)MAPPED-ADDRESS, if any.
    Success(Option<SocketAddr>),
    /// Error response with its code (0 if no ERROR-CODE attribute).
    Error(u16),
}

/// Parse a Binding success/error response: transaction id and content. XOR-MAPPED-ADDRESS is
/// preferred over MAPPED-ADDRESS. `None` for anything else or malformed.
pub fn parse_binding_response(bytes: &[u8]) -> Option<(TransactionId, BindingResponse)> {
    let m = Message::parse(bytes)?;
    if m.typ != BINDING_SUCCESS && m.typ != BINDING_ERROR {
        return None;
    }
    let mut xor_mapped = None;
    let mut mapped = None;
    let mut error = 0u16;
    for (at, value) in m.attrs() {
        match at {
            ATTR_XOR_MAPPED_ADDRESS | ATTR_XOR_MAPPED_ADDRESS_OLD if xor_mapped.is_none() => {
                xor_mapped = parse_address(value, Some(&m.txid));
            }
            ATTR_MAPPED_ADDRESS if mapped.is_none() => {
                mapped = parse_address(value, None);
            }
            ATTR_ERROR_CODE => error = parse_error_code(value).unwrap_or(error),
            _ => {}
        }
    }
    let response = if m.typ == BINDING_SUCCESS {
        BindingResponse::Success(xor_mapped.or(mapped))
    } else {
        BindingResponse::Error(error)
    };
    Some((m.txid, response))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn deadline(g: &mut StunGatherer) -> Option<Instant> {
        match g.poll_output() {
            Next::Timeout(t) => t,
            Next::Output(o) => panic!("unexpected output {o:?}"),
        }
    }
    use serde_json::json;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    /// A Binding success response with XOR-MAPPED-ADDRESS for `mapped`, built by hand.
    fn success_response(txid: &TransactionId, mapped: SocketAddr) -> Vec<u8> {
        let cookie = STUN_MAGIC_COOKIE.to_be_bytes();
        let mut value = vec![0u8];
        let port = mapped.port() ^ 0x2112;
        match mapped.ip() {
            IpAddr::V4(ip) => {
                value.push(1);
                value.extend_from_slice(&port.to_be_bytes());
                value.extend(ip.octets().iter().zip(cookie).map(|(a, k)| a ^ k));
            }
            IpAddr::V6(ip) => {
                value.push(2);
                value.extend_from_slice(&port.to_be_bytes());
                let key: Vec<u8> = cookie.iter().chain(txid.iter()).copied().collect();
                value.extend(ip.octets().iter().zip(key).map(|(a, k)| a ^ k));
            }
        }
        let mut attrs = Vec::new();
        // SOFTWARE first (odd length, padded), to exercise the walk.
        attrs.extend_from_slice(&[
            0x80, 0x22, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o', 0, 0, 0,
        ]);
        attrs.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
        attrs.extend_from_slice(&(value.len() as u16).to_be_bytes());
        attrs.extend_from_slice(&value);
        let mut m = Vec::new();
        m.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&cookie);
        m.extend_from_slice(txid);
        m.extend_from_slice(&attrs);
        m
    }

    fn transmit(out: Option<GatherOutput>) -> (SocketAddr, Vec<u8>) {
        match out {
            Some(GatherOutput::Transmit {
                destination,
                contents,
            }) => (destination, contents),
            other => panic!("expected a transmit, got {other:?}"),
        }
    }

    #[test]
    fn urls() {
        let p = |s| parse_stun_url(s);
        assert_eq!(
            p("stun:stun.l.google.com:19302"),
            Some(StunUrl {
                host: "stun.l.google.com".into(),
                port: 19302,
                secure: false
            })
        );
        assert_eq!(p("stun:stun.example.org").map(|u| u.port), Some(3478));
        assert_eq!(
            p("STUN:stun.example.org:3479?transport=udp").map(|u| u.port),
            Some(3479)
        );
        assert_eq!(
            p("stuns:stun.example.org").map(|u| (u.port, u.secure)),
            Some((5349, true))
        );
        assert_eq!(
            p("stun:[2001:db8::1]:3478").map(|u| u.host),
            Some("2001:db8::1".into())
        );
        assert_eq!(p("stun:[2001:db8::1]").map(|u| u.port), Some(3478));
        assert_eq!(p("stun:2001:db8::1").map(|u| u.port), Some(3478));
        assert_eq!(
            p("stun:[2001:db8::1]:3478").map(|u| u.host_port()),
            Some("[2001:db8::1]:3478".into())
        );
        assert_eq!(
            p("stun:1.2.3.4:5").map(|u| u.to_string()),
            Some("stun:1.2.3.4:5".into())
        );
        for bad in [
            "turn:turn.example.org:3478",
            "turns:x",
            "stun:",
            "stun::3478",
            "stun:host:0",
            "stun:host:70000",
            "stun:host:abc",
            "stun:user@host",
            "stun:host/path",
            "stun:[notv6]:3478",
            "http://example.org",
            "nonsense",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn ice_server_list() {
        let list = json!([
            {"urls": "stun:stun.home-assistant.io:3478"},
            {"urls": ["stun:stun.l.google.com:19302", "stun:stun1.l.google.com:19302"]},
            {"urls": ["turn:turn.example.org:3478?transport=udp"], "username": "u", "credential": "c"},
            {"url": "stun:stun.cloudflare.com:3478"},
            {"urls": "stun:stun.l.google.com:19302"},
            {"urls": 42},
            "junk"
        ]);
        let servers = stun_servers_from_ice_servers(&list);
        let names: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            names,
            vec![
                "stun:stun.home-assistant.io:3478",
                "stun:stun.l.google.com:19302",
                "stun:stun1.l.google.com:19302",
                "stun:stun.cloudflare.com:3478",
            ]
        );
        assert!(stun_servers_from_ice_servers(&json!(null)).is_empty());
        let defaults: Vec<StunUrl> = DEFAULT_STUN_URLS
            .iter()
            .filter_map(|u| parse_stun_url(u))
            .collect();
        assert_eq!(defaults.len(), DEFAULT_STUN_URLS.len());
        let many: Vec<Value> = (0..40)
            .map(|i| json!({"urls": format!("stun:h{i}.example:3478")}))
            .collect();
        assert_eq!(
            stun_servers_from_ice_servers(&Value::Array(many)).len(),
            MAX_STUN_SERVERS
        );
    }

    #[test]
    fn request_response_round_trip() {
        let now = Instant::now();
        let server = addr("203.0.113.5:19302");
        let mut g = StunGatherer::new(GatherConfig::default());
        let txid = g.handle_gather(now, server).expect("start");
        let (dest, req) = transmit(g.poll_output().output());
        assert_eq!(dest, server);
        assert_eq!(req.len(), 20);
        assert_eq!(&req[0..4], &[0, 1, 0, 0]);
        assert_eq!(&req[4..8], &STUN_MAGIC_COOKIE.to_be_bytes());
        assert_eq!(&req[8..20], &txid);
        assert!(g.owns(&txid));
        assert!(g.poll_output().output().is_none());

        let mapped = addr("198.51.100.20:61000");
        let resp = success_response(&txid, mapped);
        // The router would send it here: check through a router too.
        let mut router: super::super::Router<u32> = super::super::Router::new();
        assert_eq!(
            router.route(server, &resp, |t| g.owns(t)),
            super::super::Route::Gather
        );
        // From another address: refused.
        assert!(!g.handle_response(now, addr("203.0.113.6:19302"), &resp));
        assert!(g.handle_response(now, server, &resp));
        assert_eq!(
            g.poll_output().output(),
            Some(GatherOutput::Event(GatherEvent::Mapped { server, mapped }))
        );
        assert!(!g.owns(&txid));
        assert_eq!(g.outstanding(), 0);
        assert_eq!(deadline(&mut g), None);
        // A duplicate response is no longer ours.
        assert!(!g.handle_response(now, server, &resp));
    }

    #[test]
    fn ipv6_and_mapped_address_fallback() {
        let txid = [3u8; 12];
        let v6 = addr("[2001:db8::42]:4242");
        let (t, r) = parse_binding_response(&success_response(&txid, v6)).expect("parse");
        assert_eq!(t, txid);
        assert_eq!(r, BindingResponse::Success(Some(v6)));

        // MAPPED-ADDRESS only (plain, not XORed).
        let mut m = Vec::new();
        m.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
        m.extend_from_slice(&12u16.to_be_bytes());
        m.extend_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&txid);
        m.extend_from_slice(&[0x00, 0x01, 0x00, 0x08, 0, 1, 0x1f, 0x90, 192, 0, 2, 7]);
        assert_eq!(
            parse_binding_response(&m),
            Some((txid, BindingResponse::Success(Some(addr("192.0.2.7:8080")))))
        );

        // Error response 401.
        let mut e = Vec::new();
        e.extend_from_slice(&BINDING_ERROR.to_be_bytes());
        e.extend_from_slice(&8u16.to_be_bytes());
        e.extend_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
        e.extend_from_slice(&txid);
        e.extend_from_slice(&[0x00, 0x09, 0x00, 0x04, 0, 0, 4, 1]);
        assert_eq!(
            parse_binding_response(&e),
            Some((txid, BindingResponse::Error(401)))
        );

        // Malformed: truncated attribute, bad length, a request.
        let mut bad = success_response(&txid, v6);
        bad.truncate(bad.len() - 4);
        assert_eq!(parse_binding_response(&bad), None);
        let mut bad = success_response(&txid, v6);
        bad[3] = 3;
        assert_eq!(parse_binding_response(&bad), None);
        assert_eq!(parse_binding_response(&binding_request(&txid)), None);
        assert_eq!(parse_binding_response(&[1, 1, 0]), None);
    }

    #[test]
    fn retransmit_then_give_up() {
        let t0 = Instant::now();
        let server = addr("203.0.113.5:3478");
        let mut g = StunGatherer::new(GatherConfig::default());
        let txid = g.handle_gather(t0, server).expect("start");
        let (_, first) = transmit(g.poll_output().output());
        let ms = Duration::from_millis;
        assert_eq!(deadline(&mut g), Some(t0 + ms(500)));
        // Not yet due: nothing.
        g.handle_timeout(t0 + ms(499));
        assert!(g.poll_output().output().is_none());
        let mut now = t0;
        let mut sends = vec![0u64];
        while let Some(t) = deadline(&mut g) {
            now = t;
            g.handle_timeout(now);
            match g.poll_output().output() {
                Some(GatherOutput::Transmit { contents, .. }) => {
                    assert_eq!(contents, first, "a retransmission is the same request");
                    sends.push((now - t0).as_millis() as u64);
                }
                Some(GatherOutput::Event(GatherEvent::TimedOut { server: s })) => {
                    assert_eq!(s, server);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(sends, vec![0, 500, 1500, 3500]);
        assert_eq!((now - t0).as_millis(), 7500);
        assert!(!g.owns(&txid));
        assert_eq!(deadline(&mut g), None);
    }

    #[test]
    fn bounded_outstanding() {
        let now = Instant::now();
        let mut g = StunGatherer::new(GatherConfig {
            max_outstanding: 2,
            ..GatherConfig::default()
        });
        let a = g
            .handle_gather(now, addr("203.0.113.1:3478"))
            .expect("start");
        let b = g
            .handle_gather(now, addr("203.0.113.2:3478"))
            .expect("start");
        assert_ne!(a, b);
        assert_eq!(
            g.handle_gather(now, addr("203.0.113.3:3478")),
            Err(GatherError::TooManyOutstanding)
        );
        assert_eq!(g.outstanding(), 2);
    }
}
