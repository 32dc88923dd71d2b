//! `turn:` / `turns:` URLs (RFC 7065) with their credentials, taken from an ICE server list
//! (`[{"urls": ..., "username": ..., "credential": ...}]`), as the gateway's relays need them.

use std::collections::HashSet;
use std::fmt;

use serde_json::Value;

/// At most this many TURN servers are taken from one ICE server list.
pub const MAX_TURN_SERVERS: usize = 4;
/// Longest username or credential accepted (TURN REST credentials are well below).
const MAX_CREDENTIAL_LEN: usize = 512;

/// How the gateway talks to the TURN server (the relayed side is always UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TurnTransport {
    /// Datagrams from the gateway's shared UDP socket.
    Udp,
    /// A TCP connection, STUN and ChannelData framed on the stream (RFC 8656 §11.5).
    Tcp,
    /// The same over TLS (`turns:`).
    Tls,
}

/// One TURN server with its long-term credentials, unresolved.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TurnServer {
    /// Host name or IP literal (without brackets).
    pub host: String,
    pub port: u16,
    pub transport: TurnTransport,
    pub username: String,
    pub credential: String,
}

impl TurnServer {
    /// `host:port` (IPv6 literals in brackets).
    pub fn host_port(&self) -> String {
        crate::webrtc::stun_gather::host_port(&self.host, self.port)
    }
}

/// The URL, never the credential (it ends up in logs).
impl fmt::Display for TurnServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, transport) = match self.transport {
            TurnTransport::Udp => ("turn", "udp"),
            TurnTransport::Tcp => ("turn", "tcp"),
            TurnTransport::Tls => ("turns", "tcp"),
        };
        write!(f, "{scheme}:{}?transport={transport}", self.host_port())
    }
}

impl fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self} (user {:?})", self.username)
    }
}

/// Parse `turn:host[:port][?transport=udp|tcp]` or `turns:...` (scheme and parameter
/// case-insensitive). The default transport is UDP for `turn:` and TCP (TLS) for `turns:`;
/// `turns:...?transport=udp` (DTLS) is not supported and gives `None`, as does anything else.
pub fn parse_turn_url(url: &str, username: &str, credential: &str) -> Option<TurnServer> {
    let (scheme, rest) = url.trim().split_once(':')?;
    let secure = if scheme.eq_ignore_ascii_case("turn") {
        false
    } else if scheme.eq_ignore_ascii_case("turns") {
        true
    } else {
        return None;
    };
    let (hostport, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    let mut transport = if secure {
        TurnTransport::Tls
    } else {
        TurnTransport::Udp
    };
    if let Some(q) = query {
        let (key, value) = q.split_once('=')?;
        if !key.eq_ignore_ascii_case("transport") {
            return None;
        }
        transport = match (value.to_ascii_lowercase().as_str(), secure) {
            ("udp", false) => TurnTransport::Udp,
            ("tcp", false) => TurnTransport::Tcp,
            ("tcp", true) => TurnTransport::Tls,
            _ => return None,
        };
    }
    // The host part has the same shape as a stun: URL's (default ports 3478 and 5349 alike).
    let scheme = if secure { "stuns" } else { "stun" };
    let parsed = crate::webrtc::parse_stun_url(&format!("{scheme}:{hostport}"))?;
    let ok = |s: &str| !s.is_empty() && s.len() <= MAX_CREDENTIAL_LEN;
    if !ok(username) || !ok(credential) {
        return None;
    }
    Some(TurnServer {
        host: parsed.host,
        port: parsed.port,
        transport,
        username: username.to_string(),
        credential: credential.to_string(),
    })
}

/// The `turn:`/`turns:` servers of an ICE server list with their `username` and `credential`,
/// deduplicated, in order, at most [`MAX_TURN_SERVERS`]. Entries without credentials (TURN
/// needs them), `stun:` URLs and garbage are skipped, each with a log line for TURN ones.
pub fn turn_servers_from_ice_servers(ice_servers: &Value) -> Vec<TurnServer> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (entry, u) in crate::webrtc::stun_gather::ice_server_urls(ice_servers) {
        let lower = u.trim().to_ascii_lowercase();
        if !lower.starts_with("turn:") && !lower.starts_with("turns:") {
            continue;
        }
        let text = |k: &str| entry.get(k).and_then(Value::as_str).unwrap_or_default();
        match parse_turn_url(u, text("username"), text("credential")) {
            Some(server) if out.len() < MAX_TURN_SERVERS => {
                if seen.insert(server.clone()) {
                    out.push(server);
                }
            }
            Some(server) => log::warn!("TURN server {server} ignored: at most {MAX_TURN_SERVERS}"),
            None => log::warn!(
                "TURN server {:?} ignored: not a turn:/turns: URL with udp or tcp, or no username and credential",
                u.split('?').next().unwrap_or_default()
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls() {
        let p = |s| parse_turn_url(s, "u", "c");
        let s = p("turn:turn.example.org").unwrap();
        assert_eq!((s.port, s.transport), (3478, TurnTransport::Udp));
        let s = p("turn:203.0.113.1:3479?transport=tcp").unwrap();
        assert_eq!((s.port, s.transport), (3479, TurnTransport::Tcp));
        assert_eq!(s.host, "203.0.113.1");
        let s = p("TURNS:turn.example.org").unwrap();
        assert_eq!((s.port, s.transport), (5349, TurnTransport::Tls));
        let s = p("turns:turn.example.org:443?transport=tcp").unwrap();
        assert_eq!((s.port, s.transport), (443, TurnTransport::Tls));
        let s = p("turn:[2001:db8::1]:3478?transport=udp").unwrap();
        assert_eq!(s.host, "2001:db8::1");
        assert_eq!(s.to_string(), "turn:[2001:db8::1]:3478?transport=udp");
        assert_eq!(p("turn:[2001:db8::1]").unwrap().port, 3478);
        for bad in [
            "turns:x?transport=udp",
            "turn:x?transport=sctp",
            "turn:x?foo=udp",
            "stun:x",
            "turn:",
            "turn:host:0",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
        assert_eq!(parse_turn_url("turn:x", "", "c"), None);
        assert_eq!(parse_turn_url("turn:x", "u", ""), None);
        // The credential never shows.
        assert!(!format!("{:?}", p("turn:x").unwrap()).contains("\"c\""));
    }

    #[test]
    fn from_ice_servers() {
        let list = json!([
            {"urls": "stun:stun.example.org"},
            {"urls": ["turn:t.example.org?transport=udp", "turn:t.example.org?transport=tcp",
                      "turns:t.example.org"], "username": "u", "credential": "c"},
            {"urls": "turn:nocreds.example.org"},
            {"urls": "turn:t.example.org?transport=udp", "username": "u", "credential": "c"},
            {"urls": ["turn:a", "turn:b", "turn:c"], "username": "u", "credential": "c"}
        ]);
        let s = turn_servers_from_ice_servers(&list);
        let names: Vec<String> = s.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            names,
            [
                "turn:t.example.org:3478?transport=udp",
                "turn:t.example.org:3478?transport=tcp",
                "turns:t.example.org:5349?transport=tcp",
                "turn:a:3478?transport=udp",
            ]
        );
        assert!(turn_servers_from_ice_servers(&json!("junk")).is_empty());
    }
}
