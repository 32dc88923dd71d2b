//! The operator's status port (docs/design.md#status-and-metrics): `/status` (JSON with what
//! MA's `remote_access/info` carries, plus sessions), `/metrics` (Prometheus) and `/healthz`.
//!
//! Sans-IO: [`http`] parses a request and builds responses, [`metrics`] writes the text format,
//! and this module renders a [`Snapshot`] the driver gathers from the machines. The driver
//! (`driver::status`) owns the listener and serves it from the gateway's own loop. Read-only,
//! and nothing rendered here is secret: no tokens, no TURN credentials, no query strings.

pub mod http;
pub mod metrics;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use self::metrics::{Kind, Text};
use crate::config::WsUrl;
use crate::gateway::observe::{Counters, Refused, SessionInfo, SessionState, KINDS};
use crate::ice_source::IceMode;

/// How remote clients reach us, as MA's settings page names it: `optimized` when sessions get
/// a TURN server (Home Assistant Cloud, an ICE server URL, or a static `turn:` entry; they
/// connect even behind strict NATs), `basic` with STUN only. The mode comes from the ICE
/// server source (docs/design.md#ice-server-source).
pub fn mode(mode: IceMode) -> &'static str {
    match mode.is_optimized() {
        true => "optimized",
        false => "basic",
    }
}

/// The signaling server's URL as the status page shows it: scheme, host, port and path, never
/// the query (it could carry a token).
pub fn public_url(url: &WsUrl) -> String {
    let mut shown = url.clone();
    shown.path_and_query = match url.path_and_query.split_once('?') {
        Some((path, _)) => path.to_string(),
        None => url.path_and_query.clone(),
    };
    shown.to_url()
}

/// The signaling connection, as the driver saw it.
#[derive(Debug, Clone, Default)]
pub struct SignalingState {
    pub registered: bool,
    /// Registrations since the start.
    pub registrations: u64,
    /// Times a connection was lost (and a reconnect scheduled).
    pub losses: u64,
    pub last_registered: Option<SystemTime>,
}

/// Everything the pages show, gathered by the driver at the request.
#[derive(Debug)]
pub struct Snapshot<'a> {
    pub version: &'static str,
    pub uptime: Duration,
    pub remote_id: &'a str,
    pub signaling_url: String,
    pub mode: &'static str,
    pub signaling: &'a SignalingState,
    pub sessions: Vec<SessionInfo>,
    pub max_sessions: usize,
    pub counters: &'a Counters,
    /// Datagrams dropped because the UDP send queue was full.
    pub udp_send_dropped: u64,
    /// Datagrams from sources no session knows.
    pub udp_unrouted: u64,
    /// Bytes held for clients, and the budget.
    pub memory_used: usize,
    pub memory_budget: usize,
    /// Resident set size, where the system tells.
    pub rss_bytes: Option<u64>,
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `/status`.
pub fn status_json(s: &Snapshot) -> String {
    let sessions: Vec<Value> = s
        .sessions
        .iter()
        .map(|x| {
            json!({
                "id": x.id,
                "age_seconds": x.age.as_secs(),
                "state": x.state.name(),
                "channels": x.channels,
                "bytes_from_client": x.from_client.bytes,
                "bytes_to_client": x.to_client.bytes,
                "candidate_type": x.candidate_type,
            })
        })
        .collect();
    let v = json!({
        "enabled": true,
        "running": true,
        "connected": s.signaling.registered,
        "remote_id": s.remote_id,
        "signaling_url": s.signaling_url,
        "mode": s.mode,
        "last_registered": s.signaling.last_registered.map(unix_seconds),
        "reconnects": s.signaling.losses,
        "version": s.version,
        "uptime_seconds": s.uptime.as_secs(),
        "max_sessions": s.max_sessions,
        "sessions": sessions,
    });
    let mut text = v.to_string();
    text.push('\n');
    text
}

/// `/metrics`.
pub fn metrics_text(s: &Snapshot) -> String {
    let c = s.counters;
    let mut t = Text::default();
    t.family(
        "magw_build_info",
        Kind::Gauge,
        "The gateway's version (always 1).",
    );
    t.sample("magw_build_info", &[("version", s.version)], 1.0);
    let up = s.uptime.as_secs_f64();
    t.single(
        "magw_uptime_seconds",
        Kind::Gauge,
        "Seconds since the gateway started.",
        up,
    );
    let registered = f64::from(u8::from(s.signaling.registered));
    t.single(
        "magw_signaling_registered",
        Kind::Gauge,
        "1 while registered with the signaling server (remote access on).",
        registered,
    );
    t.single(
        "magw_signaling_registrations_total",
        Kind::Counter,
        "Registrations with the signaling server.",
        s.signaling.registrations as f64,
    );
    t.single(
        "magw_signaling_reconnects_total",
        Kind::Counter,
        "Signaling connections lost (each followed by a reconnect).",
        s.signaling.losses as f64,
    );
    t.family("magw_sessions", Kind::Gauge, "Remote sessions by state.");
    for state in SessionState::ALL {
        let n = s.sessions.iter().filter(|x| x.state == state).count();
        t.sample("magw_sessions", &[("state", state.name())], n as f64);
    }
    t.single(
        "magw_sessions_max",
        Kind::Gauge,
        "MA_MAX_SESSIONS.",
        s.max_sessions as f64,
    );
    t.single(
        "magw_sessions_created_total",
        Kind::Counter,
        "Sessions created (client-connected accepted).",
        c.sessions_created as f64,
    );
    t.family(
        "magw_sessions_refused_total",
        Kind::Counter,
        "Sessions refused or pushed out before serving a client, by reason.",
    );
    for (i, why) in Refused::ALL.iter().enumerate() {
        let n = c.refused[i] as f64;
        t.sample("magw_sessions_refused_total", &[("reason", why.name())], n);
    }
    t.histogram(
        "magw_session_setup_seconds",
        "Time from client-connected to ICE and DTLS up.",
        &c.setup,
    );
    for (name, help, messages) in [
        (
            "magw_channel_bytes_total",
            "Data channel payload bytes by direction and channel kind.",
            false,
        ),
        (
            "magw_channel_messages_total",
            "Data channel messages by direction and channel kind.",
            true,
        ),
    ] {
        t.family(name, Kind::Counter, help);
        for (direction, traffic) in [("from_client", &c.from_client), ("to_client", &c.to_client)] {
            for (i, kind) in KINDS.iter().enumerate() {
                let x = traffic[i];
                let v = if messages { x.messages } else { x.bytes };
                t.sample(
                    name,
                    &[("direction", direction), ("kind", kind.name())],
                    v as f64,
                );
            }
        }
    }
    t.family(
        "magw_proxy_responses_total",
        Kind::Counter,
        "HTTP proxy responses to clients by status code.",
    );
    for (status, n) in &c.proxy_status {
        t.sample(
            "magw_proxy_responses_total",
            &[("status", &status.to_string())],
            *n as f64,
        );
    }
    t.family(
        "magw_udp_dropped_total",
        Kind::Counter,
        "UDP datagrams dropped, by reason.",
    );
    let drops = [
        ("send_queue_full", s.udp_send_dropped),
        ("unknown_source", s.udp_unrouted),
    ];
    for (reason, n) in drops {
        t.sample("magw_udp_dropped_total", &[("reason", reason)], n as f64);
    }
    t.single(
        "magw_queued_bytes",
        Kind::Gauge,
        "Bytes held for clients (queues towards them and proxy bodies).",
        s.memory_used as f64,
    );
    t.single(
        "magw_queued_bytes_budget",
        Kind::Gauge,
        "The queues' part of MA_MEMORY_BUDGET (three quarters; the rest is for data in flight): past it MA's sockets pause.",
        s.memory_budget as f64,
    );
    if let Some(rss) = s.rss_bytes {
        t.single(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size in bytes.",
            rss as f64,
        );
    }
    t.finish()
}

/// `/healthz`: status code, reason and body.
pub fn health(s: &SignalingState) -> (u16, &'static str, &'static str) {
    match s.registered {
        true => (200, "OK", "registered\n"),
        false => (
            503,
            "Service Unavailable",
            "not registered with the signaling server\n",
        ),
    }
}

/// Render `page` as a complete HTTP response.
pub fn respond(page: http::Page, head_only: bool, s: &Snapshot) -> Vec<u8> {
    match page {
        http::Page::Status => {
            let body = status_json(s);
            http::response(200, "OK", "application/json", body.as_bytes(), head_only)
        }
        http::Page::Metrics => {
            let body = metrics_text(s);
            http::response(200, "OK", metrics::CONTENT_TYPE, body.as_bytes(), head_only)
        }
        http::Page::Health => {
            let (code, reason, body) = health(s.signaling);
            http::text(code, reason, body, head_only)
        }
    }
}

/// The process's resident set size from `/proc/self/statm` (Linux), assuming 4 KiB pages
/// when the page size cannot be asked.
pub fn read_rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).unwrap_or(4096))
}

#[cfg(test)]
mod tests;
