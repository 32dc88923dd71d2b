//! The HTTP proxy (docs/protocol.md#http-proxy), sans-IO: clients ask for album art and previews with
//! `http-proxy-request` messages, the gateway fetches them from the local Music Assistant
//! server and answers with `http-proxy-response`.
//!
//! - [`request`]: parsing and hardening of the request message.
//! - [`client`]: an HTTP/1.1 client connection (request bytes out, response parsed as bytes
//!   arrive).
//! - [`response`]: the two response forms (hex JSON on `ma-api`, header + binary frames on
//!   `http_proxy`).
//! - [`ProxyPool`] (here): the scheduler. At most [`PoolConfig::max_in_flight`] fetches
//!   gateway-wide, the rest queued per requester and served fairly, fetch timeouts, idle
//!   keep-alive connections, one response at a time per requester.
//!
//! # Use (core and driver)
//!
//! A *requester* `R` is whatever the core uses to address answers: one per channel that sends
//! requests, e.g. `(SessionKey, ChannelId)`. Every requester receives at most one response at
//! a time: the pool hands one over with [`PoolOutput::Response`] and holds the next until the
//! caller calls [`ProxyPool::handle_delivered`]. That is what an `http_proxy` channel needs (its
//! binary frames carry no id); on `ma-api` the caller may call `handle_delivered` as soon as it
//! has queued the JSON text.
//!
//! Core (`Gateway`), per message from a client:
//! 1. `ma-api` text: [`request::classify`]; `None` → forward to MA as before;
//!    `Some(Ok(req))` → [`ProxyPool::handle_request`]; `Some(Err(e))` → [`ProxyPool::handle_refused`] (a 400
//!    when the id is known; otherwise it is logged and dropped). Never forward it to MA.
//!    `http_proxy` text: the same with [`request::parse`] (binary: drop).
//! 2. Drain [`Machine::poll_output`] after every call into the pool (and after
//!    [`Machine::handle_timeout`]); the deadline it ends with goes into the core's.
//! 3. [`PoolOutput::Response`]: encode for the requester's channel:
//!    - `ma-api`: [`ProxyResponse::to_json`] → `Chunker::frame` (docs/protocol.md#chunk-framing) → the bridge's queue;
//!      then `handle_delivered(now, requester)` right away.
//!    - `http_proxy`: [`ProxyResponse::into_binary`] with `max_frame` = the peer's limit
//!      (`chunk::send_limit`); write the header text, then each frame, as the send budget
//!      allows (keep the [`response::BodyFrames`] as the channel's pending state; resume on
//!      `ChannelBufferedAmountLow`). Call [`ProxyPool::handle_progress`] whenever frames were
//!      written and [`ProxyPool::handle_delivered`] once the last frame (or the header of an
//!      empty body) was accepted.
//! 4. [`PoolOutput::Stalled`]: the requester has held a response for
//!    [`PoolConfig::drain_timeout`] without progress (a client that stopped reading). The pool
//!    has already dropped everything of that requester; close its `http_proxy` channel (a
//!    half-sent response cannot be abandoned otherwise: the frames carry no id).
//! 5. Channel or session closed: [`ProxyPool::handle_cancel`] for each of its requesters.
//! 6. Connection outputs go to the driver: [`PoolOutput::Connect`], [`PoolOutput::Write`],
//!    [`PoolOutput::Close`] (add matching variants to the core's `Output`).
//!
//! Driver, per connection id:
//! - `Connect { conn }`: open TCP (TLS for `wss`) to MA's host and port from `MA_LOCAL_WS_URL`
//!   (`ws` → `http`, `wss` → `https`; resolve as for the WebSockets). Any failure (DNS,
//!   connect, TLS) → [`ProxyPool::handle_failed`].
//! - `Write { conn, bytes }`: queue the bytes on that connection and write them as the socket
//!   takes them (also before the connect or TLS handshake completed: write once possible).
//! - Readable: read until `WouldBlock`, passing each read to [`ProxyPool::handle_data`]; a read of 0
//!   → [`ProxyPool::handle_eof`]; an error → [`ProxyPool::handle_failed`]. Keep reading idle connections
//!   too: that is how a server's close of a keep-alive connection is noticed.
//! - `Close { conn }`: deregister and drop the socket; the pool has forgotten it.
//! - After reporting the end or a failure, drop the socket yourself: the pool forgets the
//!   connection and sends no `Close` for it. Events for unknown ids are ignored.
//!
//! # Decisions
//!
//! - Statuses made up by the gateway: 400 invalid request, 500 any fetch failure (cannot
//!   connect, malformed or too large response: "fetch failed" in
//!   docs/protocol.md#proxy-responses), 503 the requester's queue is full or the fetched body
//!   does not fit in [`PoolConfig::max_held_bytes`] ("the gateway is busy"), 504 the fetch
//!   timed out. Bodies are `text/plain`.
//! - The fetch timeout runs from the start of the fetch (not from queueing) to the end of the
//!   body. Queueing is bounded by the per-requester queue instead.
//! - Fair share: a free slot goes to the requester with the fewest fetches in flight (ties in
//!   round-robin order), so one requester with many queued requests cannot starve another.
//! - A fetch slot is released as soon as the body is read; fetched responses then wait in the
//!   pool for their turn. No fetch starts for a requester while it holds a fetched response
//!   (waiting or being delivered) and its fetching and held responses reach
//!   [`PoolConfig::max_held_per_requester`] (2); a requester that holds none may have
//!   [`PoolConfig::max_ahead_per_requester`] (6) fetching, so a reader that keeps up (the API
//!   channel hands responses over at once) still fetches in parallel. A client that stops
//!   reading therefore gets no new fetch, holds no fetch slot, and costs at most the bodies
//!   already fetched or fetching for it (2 in the steady state, 6 after a burst) until
//!   [`PoolConfig::drain_timeout`] ends it; its further requests wait in its bounded queue
//!   (503 beyond).
//! - Fetched bodies held gateway-wide are counted ([`ProxyPool::held_bytes`]): added when a
//!   response completes (its size is bounded by [`Limits::max_body`] while it streams into
//!   [`HttpConn`]), released when the caller is done with it or its requester is dropped
//!   (stalled or cancelled). A response that would take the count beyond
//!   [`PoolConfig::max_held_bytes`] is dropped and answered 503. Bodies still streaming count
//!   too ([`ProxyPool::buffered_bytes`]): every body byte read for a fetch counts as it arrives,
//!   and the fetch whose bytes would take held and streaming bytes together beyond
//!   [`PoolConfig::max_held_bytes`] is aborted there and answered 503, so a burst of large
//!   fetches cannot pin [`PoolConfig::max_in_flight`] × [`Limits::max_body`] behind the
//!   bound's back.
//! - A request sent on a reused keep-alive connection that fails before any byte of the
//!   response arrived (the server closed the idle connection meanwhile) is retried once on a
//!   new connection (GET and HEAD are idempotent).

pub mod client;
pub mod request;
pub mod response;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::machine::{Machine, Next};

pub use self::client::{HttpConn, HttpError, Limits};
pub use self::request::{ProxyRequest, RequestError};
pub use self::response::ProxyResponse;

/// Identifies one connection to the local server (the driver's socket).
pub type ConnId = u64;

/// Settings of the [`ProxyPool`].
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The `Host` header: MA's `host:port` (`WsUrl::host_port`).
    pub host_header: String,
    /// Fetches in flight gateway-wide.
    pub max_in_flight: usize,
    /// Requests a requester may have waiting for a slot; more are answered 503.
    pub max_queued_per_requester: usize,
    /// Responses a requester may have fetching, fetched and waiting, or delivered and not yet
    /// done, together, while it holds no fetched response (its fetch parallelism).
    pub max_ahead_per_requester: usize,
    /// While a requester holds a fetched response (waiting, or delivered and not yet done), its
    /// fetching and held responses together stay below this bound: at most this many bodies
    /// wait on a slow reader, and none is fetched for it while that many wait.
    pub max_held_per_requester: usize,
    /// Body bytes of fetched responses held gateway-wide (waiting or delivered and not yet
    /// done). A fetched response that would go beyond is answered 503 instead of kept.
    pub max_held_bytes: usize,
    /// From the start of a fetch to the end of its body; then 504.
    pub fetch_timeout: Duration,
    /// How long a delivered response may go without progress before its requester counts as
    /// stalled.
    pub drain_timeout: Duration,
    /// Idle keep-alive connections kept (0: a new connection per fetch).
    pub max_idle: usize,
    /// An idle connection is closed after this long.
    pub idle_timeout: Duration,
    /// Response size limits.
    pub limits: Limits,
}

impl PoolConfig {
    /// Defaults: 6 in flight, 32 queued per requester, 6 ahead, 2 held, 32 MiB held
    /// gateway-wide, 15 s fetch timeout, 30 s drain timeout, 4 idle connections for 15 s,
    /// 16 KiB heads, 16 MiB bodies.
    pub fn new(host_header: String) -> PoolConfig {
        PoolConfig {
            host_header,
            max_in_flight: 6,
            max_queued_per_requester: 32,
            max_ahead_per_requester: 6,
            max_held_per_requester: 2,
            max_held_bytes: 32 * 1024 * 1024,
            fetch_timeout: Duration::from_secs(15),
            drain_timeout: Duration::from_secs(30),
            max_idle: 4,
            idle_timeout: Duration::from_secs(15),
            limits: Limits::default(),
        }
    }
}

/// What the pool asks of its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolOutput<R> {
    /// Open a connection to the local MA server under this id.
    Connect { conn: ConnId },
    /// Write these bytes on the connection (buffer them until it is established).
    Write { conn: ConnId, bytes: Vec<u8> },
    /// Close the connection and forget it.
    Close { conn: ConnId },
    /// A response for the requester, to encode in its channel's form. The next one for the
    /// same requester comes only after [`ProxyPool::handle_delivered`].
    Response {
        requester: R,
        response: ProxyResponse,
    },
    /// The requester has not drained its response in time; the pool dropped all its work.
    /// Close the requester's channel.
    Stalled { requester: R },
}

#[derive(Debug, Default)]
struct Requester {
    queued: VecDeque<ProxyRequest>,
    in_flight: usize,
    /// Responses waiting for their turn, each with the bytes it counts in
    /// [`ProxyPool::held_bytes`].
    ready: VecDeque<(ProxyResponse, usize)>,
    /// A response is with the caller; it counts as stalled after this moment.
    delivered_deadline: Option<Instant>,
    /// Bytes the response with the caller counts in [`ProxyPool::held_bytes`] (until it is
    /// done).
    delivered_bytes: usize,
}

impl Requester {
    /// Fetched responses held: waiting, or with the caller.
    fn held(&self) -> usize {
        self.ready.len() + usize::from(self.delivered_deadline.is_some())
    }

    /// Bytes its responses count in [`ProxyPool::held_bytes`].
    fn held_bytes(&self) -> usize {
        self.ready.iter().map(|(_, bytes)| bytes).sum::<usize>() + self.delivered_bytes
    }

    /// Whether a fetch may start for it (see [`PoolConfig::max_held_per_requester`]).
    fn may_fetch(&self, cfg: &PoolConfig) -> bool {
        let held = self.held();
        let bound = if held == 0 {
            cfg.max_ahead_per_requester
        } else {
            cfg.max_held_per_requester.min(cfg.max_ahead_per_requester)
        };
        !self.queued.is_empty() && self.in_flight + held < bound
    }

    fn is_empty(&self) -> bool {
        self.queued.is_empty()
            && self.in_flight == 0
            && self.ready.is_empty()
            && self.delivered_deadline.is_none()
    }
}

#[derive(Debug)]
struct Fetch<R> {
    requester: R,
    req: ProxyRequest,
    deadline: Instant,
    /// The connection came from the idle pool.
    reused: bool,
    /// Already retried once on a new connection.
    retried: bool,
    /// Body bytes read for it so far, counted in [`ProxyPool::buffered_bytes`].
    received: usize,
}

/// How a fetch ended.
enum Outcome {
    Ok(client::HttpResponse),
    Failed(String),
    TimedOut,
    /// Its bytes would take the pool beyond [`PoolConfig::max_held_bytes`].
    Busy,
}

/// The proxy's scheduler. `R` identifies a requester (see the module docs).
pub struct ProxyPool<R> {
    cfg: PoolConfig,
    requesters: HashMap<R, Requester>,
    /// Requesters with queued requests, in round-robin order.
    rotation: VecDeque<R>,
    /// Connections carrying a fetch.
    fetches: HashMap<ConnId, Fetch<R>>,
    /// Every live connection (carrying a fetch or idle).
    conns: HashMap<ConnId, HttpConn>,
    /// Idle connections and since when, most recently used last.
    idle: Vec<(ConnId, Instant)>,
    /// Body bytes of the responses held for all requesters (waiting or with the caller).
    held_bytes: usize,
    /// Body bytes read so far for the fetches in flight.
    streaming_bytes: usize,
    next_conn: ConnId,
    out: VecDeque<PoolOutput<R>>,
}

impl<R: Clone + Eq + Hash + fmt::Debug> ProxyPool<R> {
    pub fn new(cfg: PoolConfig) -> ProxyPool<R> {
        ProxyPool {
            cfg,
            requesters: HashMap::new(),
            rotation: VecDeque::new(),
            fetches: HashMap::new(),
            conns: HashMap::new(),
            idle: Vec::new(),
            held_bytes: 0,
            streaming_bytes: 0,
            next_conn: 1,
            out: VecDeque::new(),
        }
    }

    /// Fetches in flight.
    pub fn in_flight(&self) -> usize {
        self.fetches.len()
    }

    /// Requests waiting for a slot, all requesters together.
    pub fn queued(&self) -> usize {
        self.requesters.values().map(|r| r.queued.len()).sum()
    }

    /// Idle keep-alive connections.
    pub fn idle_connections(&self) -> usize {
        self.idle.len()
    }

    /// Body bytes of fetched responses held (waiting, or with the caller and not yet done);
    /// the gateway's own short error bodies are not counted.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Everything the pool holds for requesters: [`ProxyPool::held_bytes`] plus the body bytes
    /// read so far for the fetches in flight. Never above [`PoolConfig::max_held_bytes`] by more
    /// than one read.
    pub fn buffered_bytes(&self) -> usize {
        self.held_bytes + self.streaming_bytes
    }

    /// The next moment [`Machine::handle_timeout`] must run.
    fn deadline(&self) -> Option<Instant> {
        let fetches = self.fetches.values().map(|f| f.deadline);
        let idle = self
            .idle
            .iter()
            .map(|(_, since)| *since + self.cfg.idle_timeout);
        let drains = self
            .requesters
            .values()
            .filter_map(|r| r.delivered_deadline);
        fetches.chain(idle).chain(drains).min()
    }

    // ---- requests --------------------------------------------------------------------------

    /// A validated request from `requester`.
    pub fn handle_request(&mut self, now: Instant, requester: R, req: ProxyRequest) {
        let max_queued = self.cfg.max_queued_per_requester;
        let r = self.requesters.entry(requester.clone()).or_default();
        if r.queued.len() >= max_queued {
            log::warn!(
                "{requester:?} http proxy: {max_queued} requests queued; refusing {:?}",
                req.id
            );
            let resp = ProxyResponse::error(
                req.id,
                503,
                "too many proxy requests queued; try again later",
            );
            self.push_ready(now, &requester, resp);
            return;
        }
        log::debug!(
            "{requester:?} http proxy: {} {} ({:?})",
            req.method.as_str(),
            req.path,
            req.id
        );
        r.queued.push_back(req);
        if r.queued.len() == 1 {
            self.rotation.push_back(requester);
        }
        self.schedule(now);
    }

    /// A request that failed validation: answered 400 when it has an id, else logged and
    /// dropped.
    pub fn handle_refused(&mut self, now: Instant, requester: R, err: RequestError) {
        let Some(id) = err.id.clone() else {
            log::info!("{requester:?} http proxy: {err}; dropped (no id to answer)");
            return;
        };
        log::info!("{requester:?} http proxy: {err}");
        let resp = ProxyResponse::error(id, err.status(), &err.to_string());
        self.requesters.entry(requester.clone()).or_default();
        self.push_ready(now, &requester, resp);
    }

    /// The caller has written part of the delivered response: the drain deadline starts over.
    pub fn handle_progress(&mut self, now: Instant, requester: &R) {
        let timeout = self.cfg.drain_timeout;
        if let Some(r) = self.requesters.get_mut(requester) {
            if r.delivered_deadline.is_some() {
                r.delivered_deadline = Some(now + timeout);
            }
        }
    }

    /// The delivered response is fully written (or was discarded): the next may come.
    pub fn handle_delivered(&mut self, now: Instant, requester: &R) {
        let Some(r) = self.requesters.get_mut(requester) else {
            return;
        };
        r.delivered_deadline = None;
        self.held_bytes = self
            .held_bytes
            .saturating_sub(std::mem::take(&mut r.delivered_bytes));
        self.deliver(now, requester);
        self.forget_if_idle(requester);
        self.schedule(now);
    }

    /// The requester is gone (channel or session closed): drop its queued requests and
    /// responses, abort its fetches.
    pub fn handle_cancel(&mut self, now: Instant, requester: &R) {
        self.drop_requester(requester);
        self.schedule(now);
    }

    fn drop_requester(&mut self, requester: &R) {
        let Some(r) = self.requesters.remove(requester) else {
            return;
        };
        self.held_bytes = self.held_bytes.saturating_sub(r.held_bytes());
        if !r.queued.is_empty() || r.in_flight > 0 {
            log::debug!(
                "{requester:?} http proxy: gone: {} queued, {} in flight dropped",
                r.queued.len(),
                r.in_flight
            );
        }
        self.rotation.retain(|k| k != requester);
        let conns: Vec<ConnId> = self
            .fetches
            .iter()
            .filter(|(_, f)| &f.requester == requester)
            .map(|(c, _)| *c)
            .collect();
        for conn in conns {
            if let Some(f) = self.fetches.remove(&conn) {
                self.streaming_bytes -= f.received;
            }
            self.close_conn(conn);
        }
    }

    // ---- connections -----------------------------------------------------------------------

    /// Bytes read from a connection.
    pub fn handle_data(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        if !self.fetches.contains_key(&conn) {
            if self.conns.contains_key(&conn) {
                log::debug!("http proxy: data on idle connection {conn}; closing it");
                self.close_conn(conn);
            }
            return;
        }
        let Some(http) = self.conns.get_mut(&conn) else {
            return;
        };
        match http.feed(bytes) {
            Ok(client::Progress::NeedMore) => {
                let body = http.body_len();
                let Some(f) = self.fetches.get_mut(&conn) else {
                    return;
                };
                self.streaming_bytes = self.streaming_bytes - f.received + body;
                f.received = body;
                if self.buffered_bytes() > self.cfg.max_held_bytes {
                    self.close_conn(conn);
                    self.finish(now, conn, Outcome::Busy);
                }
            }
            Ok(client::Progress::Done(resp)) => {
                if resp.reusable && self.idle.len() < self.cfg.max_idle {
                    self.idle.push((conn, now));
                } else {
                    self.close_conn(conn);
                }
                self.finish(now, conn, Outcome::Ok(resp));
            }
            Err(e) => {
                self.close_conn(conn);
                self.finish(
                    now,
                    conn,
                    Outcome::Failed(format!("invalid response from Music Assistant: {e}")),
                );
            }
        }
    }

    /// The server closed the connection (a read returned 0). The driver drops the socket.
    pub fn handle_eof(&mut self, now: Instant, conn: ConnId) {
        let Some(mut http) = self.forget_conn(conn) else {
            return;
        };
        if !self.fetches.contains_key(&conn) {
            return;
        }
        match http.feed_eof() {
            Ok(client::Progress::Done(resp)) => self.finish(now, conn, Outcome::Ok(resp)),
            Ok(client::Progress::NeedMore) => self.finish(
                now,
                conn,
                Outcome::Failed("connection to Music Assistant closed".into()),
            ),
            Err(HttpError::ClosedBeforeResponse) if self.may_retry(conn) => self.retry(conn),
            Err(e) => self.finish(
                now,
                conn,
                Outcome::Failed(format!("invalid response from Music Assistant: {e}")),
            ),
        }
    }

    /// The connection failed (DNS, connect, TLS, read or write error). The driver drops the
    /// socket.
    pub fn handle_failed(&mut self, now: Instant, conn: ConnId, error: &str) {
        let Some(http) = self.forget_conn(conn) else {
            return;
        };
        if !self.fetches.contains_key(&conn) {
            return;
        }
        if !http.response_started() && self.may_retry(conn) {
            self.retry(conn);
            return;
        }
        self.finish(
            now,
            conn,
            Outcome::Failed(format!("cannot fetch from Music Assistant: {error}")),
        );
    }

    fn may_retry(&self, conn: ConnId) -> bool {
        self.fetches
            .get(&conn)
            .is_some_and(|f| f.reused && !f.retried)
    }

    /// Move the fetch of a dead reused connection to a new connection.
    fn retry(&mut self, old: ConnId) {
        let Some(mut fetch) = self.fetches.remove(&old) else {
            return;
        };
        self.streaming_bytes -= std::mem::take(&mut fetch.received);
        log::debug!(
            "http proxy: kept-alive connection {old} was closed; retrying {:?}",
            fetch.req.id
        );
        fetch.reused = false;
        fetch.retried = true;
        let conn = self.new_conn();
        self.send_request(conn, fetch);
    }

    // ---- time ------------------------------------------------------------------------------

    fn timeout(&mut self, now: Instant) {
        let expired: Vec<ConnId> = self
            .fetches
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(c, _)| *c)
            .collect();
        for conn in expired {
            self.close_conn(conn);
            self.finish(now, conn, Outcome::TimedOut);
        }
        let idle_timeout = self.cfg.idle_timeout;
        let stale: Vec<ConnId> = self
            .idle
            .iter()
            .filter(|(_, since)| *since + idle_timeout <= now)
            .map(|(c, _)| *c)
            .collect();
        for conn in stale {
            self.close_conn(conn);
        }
        let stalled: Vec<R> = self
            .requesters
            .iter()
            .filter(|(_, r)| r.delivered_deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for requester in stalled {
            log::warn!(
                "{requester:?} http proxy: stopped reading its response; dropping its requests"
            );
            self.drop_requester(&requester);
            self.out.push_back(PoolOutput::Stalled { requester });
        }
        self.schedule(now);
    }

    // ---- internals -------------------------------------------------------------------------

    /// Start fetches while slots are free.
    fn schedule(&mut self, now: Instant) {
        while self.fetches.len() < self.cfg.max_in_flight {
            let Some(requester) = self.pick() else { return };
            let Some(r) = self.requesters.get_mut(&requester) else {
                continue;
            };
            let Some(req) = r.queued.pop_front() else {
                continue;
            };
            r.in_flight += 1;
            if !r.queued.is_empty() {
                self.rotation.push_back(requester.clone());
            }
            let (conn, reused) = match self.idle.pop() {
                Some((conn, _)) => (conn, true),
                None => (self.new_conn(), false),
            };
            let fetch = Fetch {
                requester,
                req,
                deadline: now + self.cfg.fetch_timeout,
                reused,
                retried: false,
                received: 0,
            };
            self.send_request(conn, fetch);
        }
    }

    /// Take out of the rotation the eligible requester with the fewest fetches in flight
    /// (first in rotation order among equals).
    fn pick(&mut self) -> Option<R> {
        let mut best: Option<(usize, usize)> = None;
        for (i, key) in self.rotation.iter().enumerate() {
            let Some(r) = self.requesters.get(key) else {
                continue;
            };
            if !r.may_fetch(&self.cfg) {
                continue;
            }
            if best.is_none_or(|(_, n)| r.in_flight < n) {
                best = Some((i, r.in_flight));
            }
        }
        let (i, _) = best?;
        self.rotation.remove(i)
    }

    fn new_conn(&mut self) -> ConnId {
        let conn = self.next_conn;
        self.next_conn += 1;
        let keep_alive = self.cfg.max_idle > 0;
        self.conns.insert(
            conn,
            HttpConn::with_limits(self.cfg.host_header.clone(), keep_alive, self.cfg.limits),
        );
        self.out.push_back(PoolOutput::Connect { conn });
        conn
    }

    fn send_request(&mut self, conn: ConnId, fetch: Fetch<R>) {
        let Some(http) = self.conns.get_mut(&conn) else {
            return;
        };
        let bytes = http.start(&fetch.req);
        self.fetches.insert(conn, fetch);
        self.out.push_back(PoolOutput::Write { conn, bytes });
    }

    /// Ask the driver to close a connection and forget it.
    fn close_conn(&mut self, conn: ConnId) {
        if self.forget_conn(conn).is_some() {
            self.out.push_back(PoolOutput::Close { conn });
        }
    }

    /// Forget a connection (not its fetch).
    fn forget_conn(&mut self, conn: ConnId) -> Option<HttpConn> {
        self.idle.retain(|(c, _)| *c != conn);
        self.conns.remove(&conn)
    }

    /// A fetch ended: turn the outcome into the requester's response.
    fn finish(&mut self, now: Instant, conn: ConnId, outcome: Outcome) {
        let Some(fetch) = self.fetches.remove(&conn) else {
            return;
        };
        self.streaming_bytes -= fetch.received;
        let id = fetch.req.id.clone();
        let (resp, bytes) = match outcome {
            Outcome::Ok(resp)
                if self.buffered_bytes() + resp.body.len() > self.cfg.max_held_bytes =>
            {
                (self.busy(&fetch, resp.body.len()), 0)
            }
            Outcome::Busy => (self.busy(&fetch, fetch.received), 0),
            Outcome::Ok(resp) => {
                let bytes = resp.body.len();
                (ProxyResponse::from_http(id, resp), bytes)
            }
            Outcome::Failed(why) => {
                log::info!(
                    "{:?} http proxy: {} {}: {why}",
                    fetch.requester,
                    fetch.req.method.as_str(),
                    fetch.req.path
                );
                (ProxyResponse::error(id, 500, &why), 0)
            }
            Outcome::TimedOut => {
                log::info!(
                    "{:?} http proxy: {} {}: timed out",
                    fetch.requester,
                    fetch.req.method.as_str(),
                    fetch.req.path
                );
                let timeout = "Music Assistant did not answer in time";
                (ProxyResponse::error(id, 504, timeout), 0)
            }
        };
        if let Some(r) = self.requesters.get_mut(&fetch.requester) {
            r.in_flight = r.in_flight.saturating_sub(1);
            self.held_bytes += bytes;
            r.ready.push_back((resp, bytes));
            self.deliver(now, &fetch.requester);
        }
        self.schedule(now);
    }

    /// The 503 for a fetch whose `size` bytes do not fit in [`PoolConfig::max_held_bytes`].
    fn busy(&self, fetch: &Fetch<R>, size: usize) -> ProxyResponse {
        log::warn!(
            "{:?} http proxy: {} {}: {size} bytes would exceed the {} held gateway-wide; answering 503",
            fetch.requester,
            fetch.req.method.as_str(),
            fetch.req.path,
            self.cfg.max_held_bytes
        );
        let text = "the gateway is busy; try again later";
        ProxyResponse::error(fetch.req.id.clone(), 503, text)
    }

    /// Queue a response made up by the gateway (bounded: beyond the bound it is dropped). Its
    /// short text body does not count in [`ProxyPool::held_bytes`].
    fn push_ready(&mut self, now: Instant, requester: &R, resp: ProxyResponse) {
        let bound = self.cfg.max_queued_per_requester + self.cfg.max_ahead_per_requester;
        let Some(r) = self.requesters.get_mut(requester) else {
            return;
        };
        if r.ready.len() >= bound {
            log::warn!(
                "{requester:?} http proxy: does not read its responses; dropping one for {:?}",
                resp.id
            );
            return;
        }
        r.ready.push_back((resp, 0));
        self.deliver(now, requester);
    }

    /// Hand the requester its next response if it has none in hand.
    fn deliver(&mut self, now: Instant, requester: &R) {
        let Some(r) = self.requesters.get_mut(requester) else {
            return;
        };
        if r.delivered_deadline.is_some() {
            return;
        }
        let Some((response, bytes)) = r.ready.pop_front() else {
            return;
        };
        r.delivered_deadline = Some(now + self.cfg.drain_timeout);
        r.delivered_bytes = bytes;
        self.out.push_back(PoolOutput::Response {
            requester: requester.clone(),
            response,
        });
    }

    fn forget_if_idle(&mut self, requester: &R) {
        if self
            .requesters
            .get(requester)
            .is_some_and(Requester::is_empty)
        {
            self.requesters.remove(requester);
        }
    }
}

impl<R: Clone + Eq + Hash + fmt::Debug> Machine for ProxyPool<R> {
    type Output = PoolOutput<R>;

    fn handle_timeout(&mut self, now: Instant) {
        self.timeout(now);
    }

    fn poll_output(&mut self) -> Next<PoolOutput<R>> {
        Next::or_timeout(self.out.pop_front(), || self.deadline())
    }
}

#[cfg(test)]
mod tests;
