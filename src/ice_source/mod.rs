//! Where each session's ICE servers come from (docs/design.md#ice-server-source), as a
//! sans-IO state machine: the static `MA_ICE_SERVERS` list, or a list fetched fresh for the
//! session from Home Assistant Cloud (`MA_HA_URL` + `MA_HA_TOKEN`, [`ha`]) or from any HTTP(S)
//! URL (`MA_ICE_SERVERS_URL`, [`url`]).
//!
//! - A session asks with [`IceSource::handle_session`] and gets exactly one
//!   [`Output::Servers`]: at once from the cache or the static list, or when the fetch it
//!   waits for answers, or after [`FETCH_DEADLINE`] with the static list, whichever comes first.
//!   The signaling server's 10 s `session-ready` window is never at risk.
//! - One fetch at a time (one connection, opened per fetch and closed after it); sessions that
//!   arrive meanwhile wait for the same fetch. A fetch that has not finished after
//!   [`FETCH_TIMEOUT`] is abandoned.
//! - A fetched list is cached while its credentials stay valid: TURN REST usernames carry their
//!   expiry (`"<unix time>:<user>"`); the list is reused until [`EXPIRY_MARGIN`] before the
//!   earliest one, at most [`MAX_CACHE`]. A list without such a username is reused for
//!   [`SHORT_CACHE`] only.
//! - A failure (unreachable, refused token, not logged in, no subscription, malformed reply)
//!   is logged once, not per session; the gateway carries on with the static list and tries
//!   again after [`RETRY_MIN`], doubling up to [`RETRY_MAX`]. Sessions in between get the static
//!   list at once.
//! - [`IceSource::mode`] says what the sessions get: "optimized (Home Assistant Cloud TURN)"
//!   or "basic (STUN only)" as MA says it (and two forms for TURN from elsewhere); logged
//!   whenever it changes.

pub mod ha;
pub mod url;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::config::{check_ice_servers, WsUrl};
use crate::machine::{Machine, Next};

use self::ha::{HaExchange, Reply};
use self::url::UrlExchange;

/// How long a session waits for a fetch before it gets the static list.
pub const FETCH_DEADLINE: Duration = Duration::from_millis(2500);
/// A fetch (connect, TLS, the whole exchange) that takes longer is abandoned.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a fetched list without an expiry in its usernames is reused.
pub const SHORT_CACHE: Duration = Duration::from_secs(30);
/// Credentials with less than this left are not handed out again from the cache.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(600);
/// Longest reuse of a fetched list, whatever its expiry (the subscription may end).
pub const MAX_CACHE: Duration = Duration::from_secs(3600);
/// First wait after a failed fetch before the next one; it doubles up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_secs(30);
pub const RETRY_MAX: Duration = Duration::from_secs(300);
/// Sessions waiting for a fetch at most; more get the static list at once.
pub const MAX_WAITING: usize = 1024;
/// Largest message accepted from Home Assistant (`cloud/status` carries the account's
/// preferences, a few KiB).
pub const HA_MAX_MESSAGE: usize = 256 * 1024;
/// Most entries in a fetched list.
pub const MAX_SERVERS: usize = 32;

/// A secret that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Where fresh ICE servers are fetched.
#[derive(Debug, Clone, PartialEq)]
pub enum Provider {
    /// Home Assistant's WebSocket API (`…/api/websocket`) and a long-lived access token.
    HomeAssistant { url: WsUrl, token: Secret },
    /// An HTTP(S) URL answering the JSON array (`url.tls`: HTTPS; the path and query as given).
    Url { url: WsUrl, shown: String },
}

/// What the sessions get, as the log and the status say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceMode {
    /// Home Assistant Cloud answered with its servers.
    HomeAssistantCloud,
    /// `MA_ICE_SERVERS_URL` answered.
    Url,
    /// The static list, which holds a TURN server.
    StaticTurn,
    /// The static list, STUN only.
    Basic,
}

impl IceMode {
    /// Whether sessions get a TURN server.
    pub fn is_optimized(self) -> bool {
        self != IceMode::Basic
    }

    /// A short stable name for machine-readable output (a status endpoint):
    /// `home_assistant_cloud`, `url`, `static_turn` or `basic`.
    pub fn key(self) -> &'static str {
        match self {
            IceMode::HomeAssistantCloud => "home_assistant_cloud",
            IceMode::Url => "url",
            IceMode::StaticTurn => "static_turn",
            IceMode::Basic => "basic",
        }
    }
}

impl fmt::Display for IceMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IceMode::HomeAssistantCloud => "optimized (Home Assistant Cloud TURN)",
            IceMode::Url => "optimized (TURN from MA_ICE_SERVERS_URL)",
            IceMode::StaticTurn => "optimized (TURN from MA_ICE_SERVERS)",
            IceMode::Basic => "basic (STUN only)",
        })
    }
}

/// Why a fetch gave no list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// No connection (DNS, TCP, TLS, WebSocket handshake), or it ended early.
    Unreachable(String),
    /// Home Assistant refused the token.
    AuthInvalid(String),
    /// Home Assistant is not logged in to Home Assistant Cloud.
    NotLoggedIn,
    /// Logged in, but without an active subscription.
    NoSubscription,
    /// A command failed (an HA too old for `cloud/webrtc/ice_servers`, an HTTP error status).
    CommandFailed(String),
    /// A reply we cannot read, or a list that is not a valid ICE server list.
    Malformed(String),
    /// No complete answer within [`FETCH_TIMEOUT`].
    TimedOut,
}

impl FetchError {
    /// Same kind of failure (logged once per kind, not per session).
    fn same_kind(&self, other: &FetchError) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Unreachable(why) => write!(f, "cannot reach it: {why}"),
            FetchError::AuthInvalid(why) => write!(
                f,
                "the access token was refused (auth_invalid {why}); create a long-lived \
                 access token in Home Assistant (your profile, Security) and set MA_HA_TOKEN"
            ),
            FetchError::NotLoggedIn => {
                f.write_str("Home Assistant is not logged in to Home Assistant Cloud")
            }
            FetchError::NoSubscription => {
                f.write_str("Home Assistant Cloud is logged in but has no active subscription")
            }
            FetchError::CommandFailed(why) => write!(f, "the request failed: {why}"),
            FetchError::Malformed(why) => write!(f, "unusable reply: {why}"),
            FetchError::TimedOut => write!(f, "no answer within {FETCH_TIMEOUT:?}"),
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Open the provider's connection: a WebSocket (Home Assistant) or a byte stream (a URL,
    /// TLS when `url.tls`). Answer with `handle_opened`, then the data, then `handle_closed`.
    Connect(Connect),
    /// Send a text message on the WebSocket.
    SendText(String),
    /// Write bytes on the stream.
    Write(Vec<u8>),
    /// Close the connection (no `handle_closed` needs to follow).
    Close,
    /// The ICE servers for this session: put them in its `session-ready`, and use them for the
    /// session's own relays.
    Servers {
        session_id: String,
        servers: Value,
        mode: IceMode,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Connect {
    WebSocket(WsUrl),
    Stream(WsUrl),
}

#[derive(Debug)]
enum Exchange {
    Ha(HaExchange),
    Url(UrlExchange),
}

#[derive(Debug)]
struct Fetch {
    exchange: Exchange,
    give_up: Instant,
}

pub struct IceSource {
    provider: Option<Provider>,
    static_servers: Value,
    static_mode: IceMode,
    /// The mode of the list the last session got (or the start-up probe found).
    mode: IceMode,
    /// The mode was logged once (the first fetch's outcome, or at once without a provider).
    mode_logged: bool,
    fetch: Option<Fetch>,
    /// The last fetched list and until when it may be handed out.
    cache: Option<(Value, Instant)>,
    /// After a failure: no new fetch before this.
    retry_at: Option<Instant>,
    retry_delay: Duration,
    /// The failure logged last (cleared by a success).
    last_error: Option<FetchError>,
    /// Sessions waiting for the fetch, with their deadline (in arrival order, so the front
    /// holds the earliest).
    waiting: VecDeque<(String, Instant)>,
    /// The wall clock at one instant, to read credential expiry times (Unix seconds).
    wall: (Instant, u64),
    out: VecDeque<Output>,
}

impl IceSource {
    /// `unix_now`: the wall clock (seconds since 1970) at `now`. With a provider, a first fetch
    /// starts at once, so the mode is known (and logged) before the first session.
    pub fn new(
        now: Instant,
        unix_now: u64,
        provider: Option<Provider>,
        static_servers: Value,
    ) -> IceSource {
        let static_mode = match has_turn(&static_servers) {
            true => IceMode::StaticTurn,
            false => IceMode::Basic,
        };
        let mut source = IceSource {
            provider,
            static_servers,
            static_mode,
            mode: static_mode,
            mode_logged: false,
            fetch: None,
            cache: None,
            retry_at: None,
            retry_delay: RETRY_MIN,
            last_error: None,
            waiting: VecDeque::new(),
            wall: (now, unix_now),
            out: VecDeque::new(),
        };
        match source.provider.is_some() {
            true => source.start_fetch(now),
            false => source.set_mode(static_mode),
        }
        source
    }

    /// What the sessions get now.
    pub fn mode(&self) -> IceMode {
        self.mode
    }

    /// The first fetch has answered (or there is no provider): [`IceSource::mode`] is not a guess.
    pub fn mode_known(&self) -> bool {
        self.mode_logged
    }

    /// A session needs its ICE servers.
    pub fn handle_session(&mut self, now: Instant, session_id: String) {
        if self.provider.is_none() {
            return self.answer_static(session_id);
        }
        if let Some((servers, until)) = &self.cache {
            if now < *until {
                let servers = servers.clone();
                return self.answer(session_id, servers, self.fetched_mode());
            }
            self.cache = None;
        }
        if self.retry_at.is_some_and(|at| now < at) || self.waiting.len() >= MAX_WAITING {
            return self.answer_static(session_id);
        }
        self.waiting.push_back((session_id, now + FETCH_DEADLINE));
        if self.fetch.is_none() {
            self.start_fetch(now);
        }
    }

    /// The connection opened (WebSocket handshake or TCP/TLS done).
    pub fn handle_opened(&mut self, _now: Instant) {
        if let Some(Fetch {
            exchange: Exchange::Url(x),
            ..
        }) = &mut self.fetch
        {
            let request = x.request();
            self.out.push_back(Output::Write(request));
        }
    }

    /// A text message from Home Assistant.
    pub fn handle_text(&mut self, now: Instant, text: &str) {
        let Some(Fetch {
            exchange: Exchange::Ha(x),
            ..
        }) = &mut self.fetch
        else {
            return;
        };
        match x.handle_text(text) {
            Ok(Reply::Send(t)) => self.out.push_back(Output::SendText(t)),
            Ok(Reply::Wait) => {}
            Ok(Reply::Done(list)) => self.finish(now, self.check(list)),
            Err(e) => self.finish(now, Err(e)),
        }
    }

    /// Bytes from the URL's server.
    pub fn handle_bytes(&mut self, now: Instant, data: &[u8]) {
        let Some(Fetch {
            exchange: Exchange::Url(x),
            ..
        }) = &mut self.fetch
        else {
            return;
        };
        match x.handle_bytes(data) {
            Ok(None) => {}
            Ok(Some(list)) => self.finish(now, self.check(list)),
            Err(e) => self.finish(now, Err(e)),
        }
    }

    /// The connection ended: `failure` says why when it failed, `None` when the server closed
    /// it (a URL's response may end there).
    pub fn handle_closed(&mut self, now: Instant, failure: Option<&str>) {
        let Some(fetch) = &mut self.fetch else {
            return;
        };
        let result = match (&mut fetch.exchange, failure) {
            (_, Some(why)) => Err(FetchError::Unreachable(why.to_string())),
            (Exchange::Url(x), None) => x.handle_eof(),
            (Exchange::Ha(_), None) => {
                Err(FetchError::Unreachable("closed before answering".into()))
            }
        };
        let result = result.and_then(|list| self.check(list));
        self.fetch = None;
        self.finish(now, result);
    }

    fn start_fetch(&mut self, now: Instant) {
        let (exchange, connect) = match &self.provider {
            None => return,
            Some(Provider::HomeAssistant { url, token }) => (
                Exchange::Ha(HaExchange::new(token.clone())),
                Connect::WebSocket(url.clone()),
            ),
            Some(Provider::Url { url, .. }) => (
                Exchange::Url(UrlExchange::new(url)),
                Connect::Stream(url.clone()),
            ),
        };
        self.fetch = Some(Fetch {
            exchange,
            give_up: now + FETCH_TIMEOUT,
        });
        self.out.push_back(Output::Connect(connect));
    }

    /// A fetched list, validated and bounded.
    fn check(&self, list: Value) -> Result<Value, FetchError> {
        let n = list.as_array().map(Vec::len);
        match n {
            Some(0) => Err(FetchError::Malformed("an empty ICE server list".into())),
            Some(n) if n > MAX_SERVERS => Err(FetchError::Malformed(format!(
                "{n} ICE servers (at most {MAX_SERVERS})"
            ))),
            _ => check_ice_servers(&list)
                .map(|()| list)
                .map_err(FetchError::Malformed),
        }
    }

    fn finish(&mut self, now: Instant, result: Result<Value, FetchError>) {
        if self.fetch.take().is_some() {
            self.out.push_back(Output::Close);
        }
        let waiting = std::mem::take(&mut self.waiting);
        match result {
            Ok(servers) => {
                if let Some(e) = self.last_error.take() {
                    log::info!(
                        "{}: ICE servers fetched again (the earlier problem: {e})",
                        self.name()
                    );
                }
                self.retry_at = None;
                self.retry_delay = RETRY_MIN;
                let unix_now = self.unix_at(now);
                self.cache = cache_until(now, unix_now, &servers).map(|t| (servers.clone(), t));
                let mode = self.fetched_mode();
                self.set_mode(mode);
                for (session_id, _) in waiting {
                    self.answer(session_id, servers.clone(), mode);
                }
            }
            Err(e) => {
                let retry = self.retry_delay;
                if !self.last_error.as_ref().is_some_and(|l| l.same_kind(&e)) {
                    log::warn!(
                        "{}: no ICE servers ({e}); sessions get MA_ICE_SERVERS instead, {}; \
                         next try in {} s at the earliest",
                        self.name(),
                        self.static_mode,
                        retry.as_secs()
                    );
                } else {
                    log::debug!("{}: still no ICE servers ({e})", self.name());
                }
                self.last_error = Some(e);
                self.retry_at = Some(now + retry);
                self.retry_delay = (retry * 2).min(RETRY_MAX);
                self.cache = None;
                self.set_mode(self.static_mode);
                for (session_id, _) in waiting {
                    self.answer_static(session_id);
                }
            }
        }
    }

    fn name(&self) -> &'static str {
        match self.provider {
            Some(Provider::HomeAssistant { .. }) => "Home Assistant Cloud",
            _ => "MA_ICE_SERVERS_URL",
        }
    }

    fn fetched_mode(&self) -> IceMode {
        match self.provider {
            Some(Provider::HomeAssistant { .. }) => IceMode::HomeAssistantCloud,
            _ => IceMode::Url,
        }
    }

    fn set_mode(&mut self, mode: IceMode) {
        if !self.mode_logged || mode != self.mode {
            log::info!("ICE servers: {mode}");
        }
        self.mode = mode;
        self.mode_logged = true;
    }

    fn answer(&mut self, session_id: String, servers: Value, mode: IceMode) {
        self.out.push_back(Output::Servers {
            session_id,
            servers,
            mode,
        });
    }

    fn answer_static(&mut self, session_id: String) {
        let servers = self.static_servers.clone();
        self.answer(session_id, servers, self.static_mode);
    }

    fn unix_at(&self, now: Instant) -> u64 {
        self.wall.1 + now.saturating_duration_since(self.wall.0).as_secs()
    }

    fn deadline(&self) -> Option<Instant> {
        let waiting = self.waiting.front().map(|(_, t)| *t);
        let fetch = self.fetch.as_ref().map(|f| f.give_up);
        crate::machine::earliest(waiting, fetch)
    }
}

impl Machine for IceSource {
    type Output = Output;

    /// Sessions whose wait is over get the static list; a fetch past its time is abandoned.
    fn handle_timeout(&mut self, now: Instant) {
        while let Some((_, deadline)) = self.waiting.front() {
            if *deadline > now {
                break;
            }
            let (session_id, _) = self.waiting.pop_front().expect("front exists");
            log::info!(
                "[{session_id}] {} did not answer within {FETCH_DEADLINE:?}: MA_ICE_SERVERS for this session",
                self.name()
            );
            self.answer_static(session_id);
        }
        if self.fetch.as_ref().is_some_and(|f| now >= f.give_up) {
            self.finish(now, Err(FetchError::TimedOut));
        }
    }

    fn poll_output(&mut self) -> Next<Output> {
        let o = self.out.pop_front();
        Next::or_timeout(o, || self.deadline())
    }
}

/// Whether a list names a TURN server.
pub fn has_turn(servers: &Value) -> bool {
    urls(servers).any(|u| u.starts_with("turn:") || u.starts_with("turns:"))
}

/// Every URL of a list (`urls` may be a string or a list).
fn urls(servers: &Value) -> impl Iterator<Item = &str> {
    let entries = servers.as_array().map(Vec::as_slice).unwrap_or_default();
    entries.iter().flat_map(|s| match s.get("urls") {
        Some(Value::String(u)) => vec![u.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    })
}

/// The earliest credential expiry (Unix seconds) in a list's TURN REST usernames
/// (`"<expiry>:<user>"`, the form coturn's `use-auth-secret` and most providers use).
pub fn credential_expiry(servers: &Value) -> Option<u64> {
    let entries = servers.as_array()?;
    entries
        .iter()
        .filter_map(|s| s.get("username")?.as_str())
        .filter_map(|u| {
            let (t, _) = u.split_once(':')?;
            // A plausible Unix time (2001 … 2286), not some other number before a colon.
            t.parse::<u64>()
                .ok()
                .filter(|t| (1_000_000_000..10_000_000_000).contains(t))
        })
        .min()
}

/// Until when a list fetched at `now` may be reused, if at all.
pub fn cache_until(now: Instant, unix_now: u64, servers: &Value) -> Option<Instant> {
    match credential_expiry(servers) {
        None => Some(now + SHORT_CACHE),
        Some(expiry) => {
            let left = Duration::from_secs(expiry.saturating_sub(unix_now));
            let reuse = left.checked_sub(EXPIRY_MARGIN)?.min(MAX_CACHE);
            (!reuse.is_zero()).then(|| now + reuse)
        }
    }
}
