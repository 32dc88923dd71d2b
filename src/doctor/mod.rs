//! `ma-webrtc-gateway doctor` (docs/design.md#doctor): checks what remote access needs, one
//! line each with ✓ (fine), ! (works, but worth a look) or ✗ (remote access will not work) and
//! a hint, then a verdict. Exit code 0 when remote access should work, 1 otherwise. It reads
//! the identity and never writes it.
//!
//! The checks themselves are blocking and live in [`probe`]; this module holds what they
//! report, the NAT comparison, the TURN boundary and the verdict, all without I/O.

pub mod probe;
pub mod turn_probe;

use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::config::{DoctorArgs, GatewayConfig};

/// How one check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Ok,
    /// Remote access works, but something is worth a look.
    Warn,
    /// Remote access will not work until this is fixed.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub mark: Mark,
    /// What was checked, e.g. `signaling TLS`.
    pub what: String,
    /// What was found.
    pub detail: String,
    /// What to do about it (for `Warn` and `Fail`).
    pub hint: Option<String>,
}

impl Line {
    pub fn ok(what: impl Into<String>, detail: impl Into<String>) -> Line {
        Line {
            mark: Mark::Ok,
            what: what.into(),
            detail: detail.into(),
            hint: None,
        }
    }

    pub fn warn(
        what: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Line {
        Line {
            mark: Mark::Warn,
            what: what.into(),
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }

    pub fn fail(
        what: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Line {
        Line {
            mark: Mark::Fail,
            what: what.into(),
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match self.mark {
            Mark::Ok => "✓",
            Mark::Warn => "!",
            Mark::Fail => "✗",
        };
        write!(f, "{mark} {}: {}", self.what, self.detail)?;
        if let Some(hint) = &self.hint {
            write!(f, " — {hint}")?;
        }
        Ok(())
    }
}

/// How the NAT in front of us maps one local UDP port, from two STUN servers' answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nat {
    /// No answer from any STUN server.
    Unknown,
    /// Only one server answered: the mapping cannot be compared.
    OneAnswer(SocketAddr),
    /// The same public address for every server: clients can reach us directly (hole
    /// punching works), whatever their own NAT, unless theirs is strict too.
    EndpointIndependent(SocketAddr),
    /// A different public address per server (a "symmetric" NAT): only clients with an open
    /// NAT reach us; the rest need a TURN relay.
    EndpointDependent(Vec<SocketAddr>),
}

/// Compare the mapped addresses several STUN servers reported for one local socket.
pub fn classify_nat(mapped: &[SocketAddr]) -> Nat {
    match mapped {
        [] => Nat::Unknown,
        [one] => Nat::OneAnswer(*one),
        [first, rest @ ..] if rest.iter().all(|m| m == first) => Nat::EndpointIndependent(*first),
        all => Nat::EndpointDependent(all.to_vec()),
    }
}

/// A TURN server from the configuration, without its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnServer {
    /// `turn:` or `turns:` URL as configured.
    pub url: String,
    pub username: Option<String>,
    /// The credential; never printed.
    pub credential: Option<String>,
}

/// The TURN servers an ICE server list names (`turn:` and `turns:` URLs).
pub fn turn_servers(ice_servers: &Value) -> Vec<TurnServer> {
    let mut out = Vec::new();
    for server in ice_servers.as_array().into_iter().flatten() {
        let urls = match server.get("urls") {
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(one)) => vec![one.as_str()],
            _ => Vec::new(),
        };
        let field = |k: &str| server.get(k).and_then(Value::as_str).map(str::to_string);
        for url in urls {
            if url.starts_with("turn:") || url.starts_with("turns:") {
                out.push(TurnServer {
                    url: url.to_string(),
                    username: field("username"),
                    credential: field("credential"),
                });
            }
        }
    }
    out
}

/// What trying a TURN allocation gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnOutcome {
    /// An allocation succeeded: the relayed address.
    Allocated(SocketAddr),
    Failed(String),
    /// Not tried, and why.
    Untested(String),
}

/// Tries an allocation on a TURN server: [`turn_probe::LiveTurnProbe`] with the gateway's TURN
/// client; [`NoTurnClient`] reports it untested.
pub trait TurnProbe {
    fn allocate(&self, server: &TurnServer, timeout: Duration) -> TurnOutcome;
}

/// A probe that tries nothing (reports and verdicts in tests).
pub struct NoTurnClient;

impl TurnProbe for NoTurnClient {
    fn allocate(&self, _: &TurnServer, _: Duration) -> TurnOutcome {
        TurnOutcome::Untested("this build has no TURN client to try an allocation".into())
    }
}

/// The report line of one TURN server.
pub fn turn_line(server: &TurnServer, outcome: &TurnOutcome) -> Line {
    let what = format!("TURN {}", server.url);
    match outcome {
        TurnOutcome::Allocated(relayed) => {
            Line::ok(what, format!("allocation gave relay address {relayed}"))
        }
        TurnOutcome::Failed(e) => Line::fail(
            what,
            format!("allocation failed: {e}"),
            "check the server's address and the username/credential in MA_ICE_SERVERS",
        ),
        TurnOutcome::Untested(why) => {
            Line::warn(what, "configured, allocation not tested", why.clone())
        }
    }
}

/// The last line, and whether remote access should work.
pub fn verdict(lines: &[Line], nat: &Nat, turn: &[TurnOutcome]) -> (String, bool) {
    if let Some(first) = lines
        .iter()
        .find(|l| l.mark == Mark::Fail && !l.what.starts_with("NAT"))
    {
        return (
            format!("remote access will not work: fix \"{}\" first", first.what),
            false,
        );
    }
    let relay = turn
        .iter()
        .find(|t| matches!(t, TurnOutcome::Allocated(_)))
        .or_else(|| turn.iter().find(|t| matches!(t, TurnOutcome::Untested(_))));
    match (nat, relay) {
        (Nat::EndpointIndependent(_), _) => ("remote clients can connect directly".into(), true),
        (_, Some(TurnOutcome::Allocated(_))) => (
            "remote clients can connect: directly where their NAT allows, else through TURN".into(),
            true,
        ),
        (_, Some(_)) => (
            "clients behind strict NATs need the configured TURN server, whose allocation was not \
             tested here"
                .into(),
            true,
        ),
        (Nat::Unknown, None) => (
            "no STUN server answered, so remote clients can only reach this gateway on its own \
             network: allow outgoing UDP, or configure reachable STUN servers in MA_ICE_SERVERS"
                .into(),
            false,
        ),
        (_, None) => (
            "clients behind strict NATs need TURN: configure a turn: server with username and \
             credential in MA_ICE_SERVERS (or open/forward the UDP port, MA_UDP_BIND)"
                .into(),
            false,
        ),
    }
}

/// Run every check, print the report; returns the exit code.
pub fn run(config: &GatewayConfig, args: &DoctorArgs) -> i32 {
    let mut out = std::io::stdout().lock();
    let mut lines = Vec::new();
    let mut emit = |line: Line, lines: &mut Vec<Line>| {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        lines.push(line);
    };
    let timeout = args.timeout;
    for line in probe::identity(config) {
        emit(line, &mut lines);
    }
    for line in probe::signaling(config, timeout) {
        emit(line, &mut lines);
    }
    for line in probe::local_services(config, timeout) {
        emit(line, &mut lines);
    }
    emit(probe::udp_buffers(config), &mut lines);
    let (nat, nat_lines) = probe::nat(config, timeout);
    for line in nat_lines {
        emit(line, &mut lines);
    }
    let servers = turn_servers(&config.ice_servers);
    if servers.is_empty() {
        emit(
            Line::ok(
                "TURN",
                "none configured (MA_ICE_SERVERS has no turn: server)",
            ),
            &mut lines,
        );
    }
    let mut outcomes = Vec::new();
    for server in &servers {
        let probe = turn_probe::LiveTurnProbe {
            extra_ca: config.signaling_ca_file.clone(),
        };
        let outcome = probe.allocate(server, timeout);
        emit(turn_line(server, &outcome), &mut lines);
        outcomes.push(outcome);
    }
    let (text, works) = verdict(&lines, &nat, &outcomes);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{} verdict: {text}", if works { "✓" } else { "✗" });
    i32::from(!works)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nat_from_mappings() {
        assert_eq!(classify_nat(&[]), Nat::Unknown);
        assert_eq!(
            classify_nat(&[a("203.0.113.1:5")]),
            Nat::OneAnswer(a("203.0.113.1:5"))
        );
        assert_eq!(
            classify_nat(&[a("203.0.113.1:5"), a("203.0.113.1:5")]),
            Nat::EndpointIndependent(a("203.0.113.1:5"))
        );
        assert!(matches!(
            classify_nat(&[a("203.0.113.1:5"), a("203.0.113.1:6")]),
            Nat::EndpointDependent(_)
        ));
    }

    #[test]
    fn turn_servers_keep_credentials_out_of_lines() {
        let ice = json!([
            {"urls": "stun:s.example"},
            {"urls": ["turn:t.example:3478", "turns:t.example:5349"], "username": "u", "credential": "sekrit"}
        ]);
        let servers = turn_servers(&ice);
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].credential.as_deref(), Some("sekrit"));
        let line = turn_line(
            &servers[0],
            &NoTurnClient.allocate(&servers[0], Duration::ZERO),
        );
        assert_eq!(line.mark, Mark::Warn);
        let text = line.to_string();
        assert!(text.contains("configured, allocation not tested"), "{text}");
        assert!(!text.contains("sekrit"));
    }

    #[test]
    fn verdicts() {
        let fine = [Line::ok("identity", "x")];
        let direct = Nat::EndpointIndependent(a("203.0.113.1:5"));
        let strict = Nat::EndpointDependent(vec![a("203.0.113.1:5"), a("203.0.113.1:6")]);
        assert_eq!(
            verdict(&fine, &direct, &[]),
            ("remote clients can connect directly".into(), true)
        );
        let (text, ok) = verdict(&fine, &strict, &[]);
        assert!(
            !ok && text.starts_with("clients behind strict NATs need TURN: configure"),
            "{text}"
        );
        let (_, ok) = verdict(
            &fine,
            &strict,
            &[TurnOutcome::Allocated(a("198.51.100.1:9"))],
        );
        assert!(ok);
        let (text, ok) = verdict(&fine, &strict, &[TurnOutcome::Untested("no client".into())]);
        assert!(ok && text.contains("not tested"), "{text}");
        let (_, ok) = verdict(&fine, &Nat::Unknown, &[]);
        assert!(!ok);
        let broken = [Line::fail("signaling TCP", "refused", "start it")];
        let (text, ok) = verdict(&broken, &direct, &[]);
        assert!(!ok && text.contains("signaling TCP"), "{text}");
    }

    #[test]
    fn lines_show_mark_detail_and_hint() {
        assert_eq!(Line::ok("a", "b").to_string(), "✓ a: b");
        assert_eq!(Line::fail("a", "b", "c").to_string(), "✗ a: b — c");
        assert_eq!(Line::warn("a", "b", "c").to_string(), "! a: b — c");
    }
}
