//! Command line and environment configuration.
//!
//! Every setting is a flag with an environment-variable fallback (clap's `env`), so `--help`
//! lists both with their defaults. Values are kept as strings by clap and validated here, so a
//! bad value stops start-up with one line naming the variable (see [`ConfigError`]).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use tungstenite::http::Uri;

pub mod signal;

/// The four public STUN servers MA itself uses (docs/protocol.md#default-stun-servers).
pub const DEFAULT_ICE_SERVERS: &str = r#"[{"urls":"stun:stun.home-assistant.io:3478"},{"urls":"stun:stun.l.google.com:19302"},{"urls":"stun:stun1.l.google.com:19302"},{"urls":"stun:stun.cloudflare.com:3478"}]"#;

#[derive(Debug, Parser)]
#[command(
    name = "ma-webrtc-gateway",
    version,
    about = "Remote access for Music Assistant: answers WebRTC offers relayed by a signaling \
             server and bridges the data channels to the local MA server.",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default when no command is given).
    Run,
    /// Print the Remote ID (creating the identity if there is none) and exit.
    Id(IdArgs),
    /// Check identity, signaling, MA, UDP buffers, NAT and TURN, one line each; exit 0 when
    /// remote access should work. Never changes the identity.
    Doctor(DoctorArgs),
    /// Ask the running gateway's status port (MA_STATUS_LISTEN) for /healthz: exit 0 while
    /// it is registered with the signaling server, 1 otherwise (for container health checks).
    Health,
    /// Run a self-hosted signaling server.
    Signal(SignalArgs),
    /// Connect to a gateway as the web app does and report each step (diagnostics).
    Connect(ConnectArgs),
}

#[derive(Debug, Clone, Args)]
pub struct IdArgs {
    /// Also print the app link as a QR code (for a phone's camera; drawn for a dark terminal).
    #[arg(long)]
    pub qr: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Give up on one check after this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// The Remote ID to connect to (the answer's certificate is pinned to it).
    pub remote_id: String,

    /// Echo round trips to measure after MA's first message.
    #[arg(long, default_value_t = 10)]
    pub echo: usize,

    /// Local UDP address for the client (0.0.0.0:0 = the outward interface, any port).
    #[arg(long, default_value = "0.0.0.0:0")]
    pub bind: SocketAddr,

    /// Give up on a step after this long.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// A STUN server (IP:port) to learn the client's public address from, offered as a
    /// server-reflexive candidate (a client behind a NAT).
    #[arg(long)]
    pub stun: Option<SocketAddr>,
}

/// Settings of the gateway (also read by `id`, which needs the data folder).
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Signaling server WebSocket URL (ws:// or wss://).
    #[arg(
        long,
        env = "MA_SIGNALING_URL",
        default_value = "wss://signaling.music-assistant.io/ws",
        global = true
    )]
    pub signaling_url: String,

    /// Extra PEM CA certificate(s) trusted besides the public roots: for a wss:// signaling
    /// server, and for an https:// MA_HA_URL or MA_ICE_SERVERS_URL.
    #[arg(long, env = "MA_SIGNALING_CA_FILE", global = true)]
    pub signaling_ca_file: Option<PathBuf>,

    /// Music Assistant's local WebSocket API (ws:// or wss://).
    #[arg(
        long,
        env = "MA_LOCAL_WS_URL",
        default_value = "ws://127.0.0.1:8095/ws",
        global = true
    )]
    pub local_ws_url: String,

    /// Sendspin audio server WebSocket URL.
    #[arg(
        long,
        env = "MA_SENDSPIN_URL",
        default_value = "ws://127.0.0.1:8927/sendspin",
        global = true
    )]
    pub sendspin_url: String,

    /// Folder holding webrtc_certificate.pem and webrtc_private_key.pem (point it at MA's data
    /// folder to keep the Remote ID users already have). Default: $XDG_DATA_HOME or
    /// ~/.local/share, then `ma-webrtc-gateway`.
    #[arg(long, env = "MA_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// Override the Remote ID derived from the certificate (e.g. a legacy MA-XXXX-XXXX).
    /// Pinning clients refuse an ID that does not match the certificate.
    #[arg(long, env = "MA_REMOTE_ID", global = true)]
    pub remote_id: Option<String>,

    /// ICE servers as a JSON array in the browser's RTCIceServer form.
    #[arg(long, env = "MA_ICE_SERVERS", default_value = DEFAULT_ICE_SERVERS, global = true)]
    pub ice_servers: String,

    /// Home Assistant's URL (http(s)://host:8123 or ws(s)://…/api/websocket): with
    /// MA_HA_TOKEN, each session gets fresh ICE servers (TURN) from Home Assistant Cloud.
    #[arg(long, env = "MA_HA_URL", global = true)]
    pub ha_url: Option<String>,

    /// A long-lived access token of Home Assistant, for MA_HA_URL (a secret: never logged).
    #[arg(long, env = "MA_HA_TOKEN", hide_env_values = true, global = true)]
    pub ha_token: Option<String>,

    /// An HTTP(S) URL answering an ICE server list (JSON, as MA_ICE_SERVERS), fetched fresh
    /// for each session (another TURN provider than Home Assistant Cloud).
    #[arg(long, env = "MA_ICE_SERVERS_URL", global = true)]
    pub ice_servers_url: Option<String>,

    /// Local UDP address and port for WebRTC traffic (one socket shared by all sessions).
    #[arg(long, env = "MA_UDP_BIND", default_value = "0.0.0.0:0", global = true)]
    pub udp_bind: String,

    /// Public IP address of a 1:1 NAT, advertised as an extra host candidate.
    #[arg(long, env = "MA_PUBLIC_IP", global = true)]
    pub public_ip: Option<String>,

    /// Maximum number of concurrent remote sessions.
    #[arg(long, env = "MA_MAX_SESSIONS", default_value = "32", global = true)]
    pub max_sessions: String,

    /// Bytes the gateway may hold for clients, all sessions together (data in flight, queues
    /// towards slow readers, proxied images), e.g. 16MiB, 64MiB, 500KiB; past it MA's sockets
    /// pause.
    #[arg(long, env = "MA_MEMORY_BUDGET", default_value = "16MiB", global = true)]
    pub memory_budget: String,

    /// First reconnect delay after losing the signaling server (e.g. 10s, 500ms).
    #[arg(long, env = "MA_RECONNECT_MIN", default_value = "10s", global = true)]
    pub reconnect_min: String,

    /// Longest reconnect delay (the backoff doubles up to it).
    #[arg(long, env = "MA_RECONNECT_MAX", default_value = "300s", global = true)]
    pub reconnect_max: String,

    /// Interval of WebSocket pings to the signaling server (a silent socket is dropped after
    /// twice this without any frame).
    #[arg(long, env = "MA_SIGNALING_PING", default_value = "35s", global = true)]
    pub signaling_ping: String,

    /// Serve /status, /metrics and /healthz over HTTP on this address (off when empty;
    /// 127.0.0.1:PORT keeps it on this machine). Read-only, no secrets.
    #[arg(long, env = "MA_STATUS_LISTEN", global = true)]
    pub status_listen: Option<String>,

    /// Log format: `text` (one readable line per event) or `json` (one JSON object per line,
    /// for log collectors).
    #[arg(long, env = "MA_LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: String,
}

/// Settings of the self-hosted signaling server.
#[derive(Debug, Clone, Args)]
pub struct SignalArgs {
    /// Address and port to listen on (HTTP and WebSocket on one port).
    #[arg(long, env = "MA_SIGNAL_LISTEN", default_value = "0.0.0.0:8787")]
    pub listen: String,

    /// PEM certificate chain to serve wss:// / https:// directly (needs --tls-key).
    #[arg(long, env = "MA_SIGNAL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "MA_SIGNAL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Maximum number of open connections.
    #[arg(long, env = "MA_SIGNAL_MAX_CONNECTIONS", default_value = "4096")]
    pub max_connections: String,

    /// Messages allowed per IP per minute (0 = unlimited).
    #[arg(long, env = "MA_SIGNAL_RATE_LIMIT", default_value = "100")]
    pub rate_limit: String,

    /// Failed Remote ID lookups allowed per IP per minute before it is blocked (close 4008).
    #[arg(long, env = "MA_SIGNAL_LOOKUP_LIMIT", default_value = "10")]
    pub lookup_limit: String,

    /// Apply the rate limits to loopback clients too (exempt by default).
    #[arg(long, env = "MA_SIGNAL_LIMIT_LOOPBACK", default_value = "false")]
    pub limit_loopback: String,

    /// Sockets one IP (IPv4 address, IPv6 /64) may have open at once (0 = unlimited).
    #[arg(long, env = "MA_SIGNAL_MAX_SOCKETS_PER_IP", default_value = "32")]
    pub max_sockets_per_ip: String,

    /// Reverse proxies (CIDR or address, comma-separated) whose X-Forwarded-For / Forwarded
    /// headers name the client; no other peer's headers are believed.
    #[arg(long, env = "MA_SIGNAL_TRUSTED_PROXY", default_value = "")]
    pub trusted_proxy: String,
}

/// A configuration value that could not be used: names the variable and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub flag: &'static str,
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid {} (--{}): {}", self.var, self.flag, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Exit code for configuration errors (also clap's).
pub const EXIT_CONFIG: i32 = 2;

impl ConfigError {
    /// Print the error as the one line a user sees and return [`EXIT_CONFIG`].
    pub fn report(&self) -> i32 {
        eprintln!("ma-webrtc-gateway: {self}");
        EXIT_CONFIG
    }
}

pub(crate) fn bad(var: &'static str, flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        flag,
        reason: reason.into(),
    }
}

/// A parsed `ws://` or `wss://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, always starting with `/`.
    pub path_and_query: String,
}

impl WsUrl {
    pub fn parse(s: &str) -> Result<WsUrl, String> {
        let uri: Uri = s.parse().map_err(|e| format!("not a URL ({e}): {s:?}"))?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            Some(other) => {
                return Err(format!(
                    "unsupported scheme {other:?}, expected ws:// or wss://"
                ))
            }
            None => return Err(format!("missing scheme in {s:?}, expected ws:// or wss://")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("missing host in {s:?}"))?;
        if authority.as_str().contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        let host = uri.host().unwrap_or_default();
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(format!("missing host in {s:?}"));
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path_and_query = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| p.starts_with('/'))
            .unwrap_or_else(|| "/".to_string());
        Ok(WsUrl {
            tls,
            host,
            port,
            path_and_query,
        })
    }

    /// `host:port` as it goes into a Host header (IPv6 in brackets).
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL again, e.g. for a WebSocket handshake request.
    pub fn to_url(&self) -> String {
        format!(
            "{}://{}{}",
            if self.tls { "wss" } else { "ws" },
            self.host_port(),
            self.path_and_query
        )
    }
}

impl WsUrl {
    /// Parse an `http://` or `https://` URL into the same parts (`tls` for https).
    pub fn parse_http(s: &str) -> Result<WsUrl, String> {
        let rest = match s.split_once("://") {
            Some(("http", rest)) => format!("ws://{rest}"),
            Some(("https", rest)) => format!("wss://{rest}"),
            _ => return Err(format!("expected an http:// or https:// URL, not {s:?}")),
        };
        WsUrl::parse(&rest)
    }

    /// Home Assistant's WebSocket API from its URL: `http(s)://host[:port][/prefix]` (the path
    /// `/api/websocket` is added) or the `ws(s)://…/api/websocket` URL itself.
    pub fn parse_home_assistant(s: &str) -> Result<WsUrl, String> {
        let s = s.trim();
        let mut url = match s.starts_with("ws://") || s.starts_with("wss://") {
            true => WsUrl::parse(s)?,
            false => WsUrl::parse_http(s)
                .map_err(|_| format!("expected http(s):// or ws(s):// URL, not {s:?}"))?,
        };
        if !url.path_and_query.ends_with("/api/websocket") {
            let prefix = url.path_and_query.trim_end_matches('/');
            if prefix.contains('?') {
                return Err(format!("a query in {s:?} is not supported"));
            }
            url.path_and_query = format!("{prefix}/api/websocket");
        }
        Ok(url)
    }
}

impl std::fmt::Display for WsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_url())
    }
}

/// Parse a byte size: a number with an optional unit (B, KiB, MiB, GiB; K, M, G and KB, MB,
/// GB are read as the binary units too), e.g. `64MiB`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: u64 = num
        .parse()
        .map_err(|_| format!("not a size: {s:?} (examples: 64MiB, 512KiB)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use KiB, MiB or GiB)"
            ))
        }
    };
    value
        .checked_mul(scale)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| format!("size out of range: {s:?}"))
}

/// Parse a duration such as `10s`, `500ms`, `5m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (examples: 10s, 500ms, 5m)"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Validate an ICE server list and return it as JSON ready to put in signaling messages.
/// `urls` may be a string or a list; schemes are stun, stuns, turn, turns.
pub fn parse_ice_servers(s: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))?;
    check_ice_servers(&v)?;
    Ok(v)
}

/// Check that `v` is an ICE server list in the browser's RTCIceServer form (see
/// [`parse_ice_servers`]); also used for lists fetched per session (`crate::ice_source`).
pub fn check_ice_servers(v: &Value) -> Result<(), String> {
    let list = v
        .as_array()
        .ok_or("expected a JSON array of RTCIceServer objects")?;
    for (i, server) in list.iter().enumerate() {
        let obj = server
            .as_object()
            .ok_or_else(|| format!("entry {i} is not an object"))?;
        let urls: Vec<&Value> = match obj.get("urls") {
            Some(Value::String(_)) => vec![&obj["urls"]],
            Some(Value::Array(a)) if !a.is_empty() => a.iter().collect(),
            _ => {
                return Err(format!(
                    "entry {i} has no \"urls\" (a string or a non-empty list)"
                ))
            }
        };
        for url in urls {
            let url = url
                .as_str()
                .ok_or_else(|| format!("entry {i}: a url is not a string"))?;
            let scheme = url.split(':').next().unwrap_or_default();
            if !matches!(scheme, "stun" | "stuns" | "turn" | "turns") {
                return Err(format!(
                    "entry {i}: unknown scheme in {url:?} (expected stun:, stuns:, turn: or turns:)"
                ));
            }
            if url.len() <= scheme.len() + 1 {
                return Err(format!("entry {i}: no host in {url:?}"));
            }
        }
        for key in ["username", "credential"] {
            if let Some(x) = obj.get(key) {
                if !x.is_string() {
                    return Err(format!("entry {i}: {key:?} must be a string"));
                }
            }
        }
    }
    Ok(())
}

/// The default data folder: `$XDG_DATA_HOME/ma-webrtc-gateway`, else
/// `~/.local/share/ma-webrtc-gateway`, else `./ma-webrtc-gateway-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("ma-webrtc-gateway");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(h).join(".local/share/ma-webrtc-gateway");
    }
    PathBuf::from("ma-webrtc-gateway-data")
}

/// Validated gateway configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub signaling_url: WsUrl,
    pub signaling_ca_file: Option<PathBuf>,
    pub local_ws_url: WsUrl,
    pub sendspin_url: WsUrl,
    pub data_dir: PathBuf,
    pub remote_id: Option<String>,
    pub ice_servers: Value,
    /// Where fresh ICE servers are fetched per session (`MA_HA_URL` + `MA_HA_TOKEN`, or
    /// `MA_ICE_SERVERS_URL`), if anywhere.
    pub ice_provider: Option<crate::ice_source::Provider>,
    pub udp_bind: SocketAddr,
    pub public_ip: Option<IpAddr>,
    pub max_sessions: usize,
    /// [`crate::gateway::CoreConfig::memory_budget`].
    pub memory_budget: usize,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub signaling_ping: Duration,
    /// Where the status port listens (`MA_STATUS_LISTEN`), if anywhere.
    pub status_listen: Option<SocketAddr>,
    /// Signs ownership proofs for servers that challenge (docs/protocol.md#ownership-proof);
    /// set from the identity once it is loaded.
    pub prover: Option<crate::identity::Prover>,
}

impl GatewayConfig {
    /// The TLS client configuration, when any URL needs one (public roots plus
    /// `MA_SIGNALING_CA_FILE`).
    pub fn tls_client_config(
        &self,
    ) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, String> {
        let provider = match &self.ice_provider {
            Some(crate::ice_source::Provider::HomeAssistant { url, .. }) => Some(url),
            Some(crate::ice_source::Provider::Url { url, .. }) => Some(url),
            None => None,
        };
        let urls = [&self.signaling_url, &self.local_ws_url, &self.sendspin_url];
        let turns = crate::turn::turn_servers_from_ice_servers(&self.ice_servers)
            .iter()
            .any(|s| s.transport == crate::turn::TurnTransport::Tls);
        match urls.iter().copied().chain(provider).any(|u| u.tls) || turns {
            true => crate::net::tls::client_config(self.signaling_ca_file.as_deref()).map(Some),
            false => Ok(None),
        }
    }

    /// The signaling client for `remote_id`, connecting at once.
    pub fn signaling_client(
        &self,
        now: std::time::Instant,
        remote_id: String,
    ) -> crate::signaling::client::SignalingClient {
        use crate::backoff::{Backoff, Jitter};
        use crate::signaling::client::{ClientConfig, SignalingClient, CONNECT_TIMEOUT};
        let config = ClientConfig {
            remote_id,
            ping_interval: self.signaling_ping,
            connect_timeout: CONNECT_TIMEOUT,
        };
        let backoff = Backoff::new(self.reconnect_min, self.reconnect_max, Jitter::from_os());
        SignalingClient::new(now, config, self.ice_servers.clone(), backoff)
            .with_prover(self.prover.clone())
    }

    /// The source of each session's ICE servers, fetching at once when there is a provider.
    pub fn ice_source(&self, now: std::time::Instant) -> crate::ice_source::IceSource {
        let unix_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        crate::ice_source::IceSource::new(
            now,
            unix_now,
            self.ice_provider.clone(),
            self.ice_servers.clone(),
        )
    }

    /// The gateway core's settings.
    pub fn core_config(&self) -> crate::gateway::CoreConfig {
        let mut core = crate::gateway::CoreConfig::new(
            self.local_ws_url.clone(),
            self.sendspin_url.clone(),
            self.max_sessions,
        );
        core.stun_servers =
            crate::webrtc::stun_gather::stun_servers_from_ice_servers(&self.ice_servers);
        core.turn_servers = crate::turn::turn_servers_from_ice_servers(&self.ice_servers);
        core.memory_budget = self.memory_budget;
        core
    }

    pub fn from_args(a: &GatewayArgs) -> Result<GatewayConfig, ConfigError> {
        let ws = |var, flag, v: &str| WsUrl::parse(v).map_err(|e| bad(var, flag, e));
        let dur = |var, flag, v: &str| parse_duration(v).map_err(|e| bad(var, flag, e));
        let remote_id = match a.remote_id.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(id) => {
                if id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                    return Err(bad(
                        "MA_REMOTE_ID",
                        "remote-id",
                        format!("{id:?} is not a Remote ID (letters, digits and '-')"),
                    ));
                }
                Some(id.to_ascii_uppercase())
            }
        };
        let memory_budget = parse_size(&a.memory_budget)
            .and_then(|n| match n >= 1 << 20 {
                true => Ok(n),
                false => Err(format!("{:?} is below the 1MiB minimum", a.memory_budget)),
            })
            .map_err(|e| bad("MA_MEMORY_BUDGET", "memory-budget", e))?;
        let max_sessions: usize = a
            .max_sessions
            .trim()
            .parse()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| {
                bad(
                    "MA_MAX_SESSIONS",
                    "max-sessions",
                    format!("{:?} is not a number from 1 to 10000", a.max_sessions),
                )
            })?;
        let reconnect_min = dur("MA_RECONNECT_MIN", "reconnect-min", &a.reconnect_min)?;
        let reconnect_max = dur("MA_RECONNECT_MAX", "reconnect-max", &a.reconnect_max)?;
        if reconnect_min.is_zero() || reconnect_max < reconnect_min {
            return Err(bad(
                "MA_RECONNECT_MAX",
                "reconnect-max",
                "must be at least MA_RECONNECT_MIN, which must be above zero",
            ));
        }
        let signaling_ping = dur("MA_SIGNALING_PING", "signaling-ping", &a.signaling_ping)?;
        if signaling_ping < Duration::from_millis(100) {
            return Err(bad(
                "MA_SIGNALING_PING",
                "signaling-ping",
                "must be at least 100ms",
            ));
        }
        let ice_provider = ice_provider(a)?;
        Ok(GatewayConfig {
            signaling_url: ws("MA_SIGNALING_URL", "signaling-url", &a.signaling_url)?,
            signaling_ca_file: a.signaling_ca_file.clone(),
            local_ws_url: ws("MA_LOCAL_WS_URL", "local-ws-url", &a.local_ws_url)?,
            sendspin_url: ws("MA_SENDSPIN_URL", "sendspin-url", &a.sendspin_url)?,
            data_dir: a.data_dir.clone().unwrap_or_else(default_data_dir),
            remote_id,
            ice_servers: parse_ice_servers(&a.ice_servers)
                .map_err(|e| bad("MA_ICE_SERVERS", "ice-servers", e))?,
            ice_provider,
            udp_bind: a.udp_bind.trim().parse().map_err(|_| {
                bad(
                    "MA_UDP_BIND",
                    "udp-bind",
                    format!(
                        "{:?} is not ADDRESS:PORT (e.g. 0.0.0.0:0 or 0.0.0.0:40000)",
                        a.udp_bind
                    ),
                )
            })?,
            public_ip: match a.public_ip.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(ip) => Some(ip.parse().map_err(|_| {
                    bad(
                        "MA_PUBLIC_IP",
                        "public-ip",
                        format!("{ip:?} is not an IP address"),
                    )
                })?),
            },
            max_sessions,
            memory_budget,
            reconnect_min,
            reconnect_max,
            signaling_ping,
            status_listen: match a.status_listen.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(addr) => Some(addr.parse().map_err(|_| {
                    bad(
                        "MA_STATUS_LISTEN",
                        "status-listen",
                        format!("{addr:?} is not ADDRESS:PORT (e.g. 127.0.0.1:8799)"),
                    )
                })?),
            },
            prover: None,
        })
    }
}

/// `MA_HA_URL` + `MA_HA_TOKEN`, or `MA_ICE_SERVERS_URL`, or neither.
fn ice_provider(a: &GatewayArgs) -> Result<Option<crate::ice_source::Provider>, ConfigError> {
    use crate::ice_source::{Provider, Secret};
    let set = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    match (set(&a.ha_url), set(&a.ha_token), set(&a.ice_servers_url)) {
        (None, None, None) => Ok(None),
        (Some(_), _, Some(_)) => Err(bad(
            "MA_ICE_SERVERS_URL",
            "ice-servers-url",
            "set either MA_HA_URL (Home Assistant Cloud) or MA_ICE_SERVERS_URL, not both",
        )),
        (Some(url), Some(token), None) => {
            let url =
                WsUrl::parse_home_assistant(&url).map_err(|e| bad("MA_HA_URL", "ha-url", e))?;
            Ok(Some(Provider::HomeAssistant {
                url,
                token: Secret::new(token),
            }))
        }
        (Some(_), None, None) => Err(bad(
            "MA_HA_TOKEN",
            "ha-token",
            "MA_HA_URL needs a long-lived access token of Home Assistant in MA_HA_TOKEN",
        )),
        (None, Some(_), _) => Err(bad(
            "MA_HA_URL",
            "ha-url",
            "MA_HA_TOKEN is set without MA_HA_URL",
        )),
        (None, None, Some(shown)) => {
            let url = WsUrl::parse_http(&shown)
                .map_err(|e| bad("MA_ICE_SERVERS_URL", "ice-servers-url", e))?;
            Ok(Some(Provider::Url { url, shown }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size(" 512 KiB "), Ok(512 << 10));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("64 furlongs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_size("-1MiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn ws_urls() {
        let u = WsUrl::parse("wss://signaling.music-assistant.io/ws").unwrap();
        assert!(u.tls);
        assert_eq!(u.port, 443);
        assert_eq!(u.path_and_query, "/ws");
        let u = WsUrl::parse("ws://[::1]:8095/ws?x=1").unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.host_port(), "[::1]:8095");
        assert_eq!(u.to_url(), "ws://[::1]:8095/ws?x=1");
        let u = WsUrl::parse("ws://127.0.0.1:8095").unwrap();
        assert_eq!(u.path_and_query, "/");
        assert!(WsUrl::parse("http://x/ws").unwrap_err().contains("scheme"));
        assert!(WsUrl::parse("nonsense").is_err());
        assert!(WsUrl::parse("ws://user:pw@host/").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 fortnights").is_err());
    }

    #[test]
    fn ice_servers() {
        let v = parse_ice_servers(DEFAULT_ICE_SERVERS).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 4);
        parse_ice_servers(
            r#"[{"urls":["turn:t.example:3478?transport=udp"],"username":"u","credential":"c"}]"#,
        )
        .unwrap();
        assert!(parse_ice_servers("stun:x").unwrap_err().contains("JSON"));
        assert!(parse_ice_servers(r#"[{"urls":"http://x"}]"#)
            .unwrap_err()
            .contains("scheme"));
        assert!(parse_ice_servers(r#"[{"url":"stun:x"}]"#).is_err());
    }

    #[test]
    fn ice_server_providers() {
        use crate::ice_source::Provider;
        let cfg = |args: &[&str]| {
            let mut all = vec!["x"];
            all.extend_from_slice(args);
            GatewayConfig::from_args(&Cli::try_parse_from(all).unwrap().gateway)
        };
        let c = cfg(&["--ha-url", "http://ha.local:8123", "--ha-token", "abc.def"]).unwrap();
        match c.ice_provider {
            Some(Provider::HomeAssistant { url, token }) => {
                assert_eq!(url.to_url(), "ws://ha.local:8123/api/websocket");
                assert_eq!(token.expose(), "abc.def");
                assert!(
                    !format!("{token:?}").contains("abc"),
                    "the token is never shown"
                );
            }
            other => panic!("{other:?}"),
        }
        let u = WsUrl::parse_home_assistant("https://x.ui.nabu.casa/").unwrap();
        assert_eq!(u.to_url(), "wss://x.ui.nabu.casa:443/api/websocket");
        let u = WsUrl::parse_home_assistant("ws://[::1]:8123/api/websocket").unwrap();
        assert_eq!(u.path_and_query, "/api/websocket");
        assert_eq!(
            cfg(&["--ha-url", "http://h"]).unwrap_err().var,
            "MA_HA_TOKEN"
        );
        assert_eq!(cfg(&["--ha-token", "t"]).unwrap_err().var, "MA_HA_URL");
        assert_eq!(
            cfg(&["--ha-url", "ftp://h", "--ha-token", "t"])
                .unwrap_err()
                .var,
            "MA_HA_URL"
        );
        let both = [
            "--ha-url",
            "http://h",
            "--ha-token",
            "t",
            "--ice-servers-url",
            "http://i/",
        ];
        assert_eq!(cfg(&both).unwrap_err().var, "MA_ICE_SERVERS_URL");
        let c = cfg(&["--ice-servers-url", "https://turn.example/ice?k=1"]).unwrap();
        match c.ice_provider {
            Some(Provider::Url { url, .. }) => {
                assert!(url.tls);
                assert_eq!(url.port, 443);
                assert_eq!(url.path_and_query, "/ice?k=1");
            }
            other => panic!("{other:?}"),
        }
        assert!(cfg(&[]).unwrap().ice_provider.is_none());
    }

    #[test]
    fn bad_value_names_the_variable() {
        let cli = Cli::try_parse_from(["x", "--signaling-url", "http://example.com/ws"]).unwrap();
        let err = GatewayConfig::from_args(&cli.gateway).unwrap_err();
        assert_eq!(err.var, "MA_SIGNALING_URL");
        assert!(err.to_string().contains("MA_SIGNALING_URL"));
        let cli = Cli::try_parse_from(["x", "--max-sessions", "0"]).unwrap();
        assert_eq!(
            GatewayConfig::from_args(&cli.gateway).unwrap_err().var,
            "MA_MAX_SESSIONS"
        );
    }
}
