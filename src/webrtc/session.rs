//! [`PeerSession`]: one remote client's WebRTC session (we are the answerer), wrapping a
//! `str0m::Rtc`. Sans-IO: the driver feeds datagrams and timeouts and drains outputs.
//!
//! Properties the driver can rely on:
//! - Every call that changes the `Rtc` is followed by a full `poll_output` drain into an internal
//!   queue (str0m's "drain after every mutation" rule), so [`Machine::poll_output`] only pops.
//! - Every call into str0m runs under `catch_unwind`: a str0m panic ends this session with
//!   [`SessionEvent::Closed`] ([`CloseReason::Panic`]) and the `Rtc` is never touched again.
//! - Incoming packets are never gated on `Rtc::accepts()` (the early-DTLS trap).
//! - Local ICE credentials come from aws-lc-rs randomness, also after an ICE restart (where str0m
//!   would pick new ones with a non-cryptographic RNG): see [`PeerSession::handle_offer`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use str0m::change::SdpOffer;
use str0m::channel::ChannelId;
use str0m::config::{DtlsCert, Fingerprint};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, CandidateKind, Event, IceConnectionState, IceCreds, Input, Output, Rtc};

use crate::machine::{Machine, Next};

/// The smallest `a=max-message-size` an offer may announce. Browsers and the apps send 64 KiB
/// or more; a tiny limit would make the gateway cut every reply into that many messages (one
/// image into millions), stalling the loop for everyone (docs/protocol.md#webrtc-session).
pub const MIN_REMOTE_MAX_MESSAGE_SIZE: usize = 16 * 1024;

/// Datagrams fed to str0m, or messages written, before it must be drained. Draining polls
/// SCTP, which scans every chunk in flight on each transmit (docs/design.md#the-send-window); a
/// batch drained once costs one scan instead of one each. str0m's DTLS layer queues at most 30
/// records between polls, so the batch stays well below that.
pub const MAX_UNDRAINED_INPUTS: u32 = 16;

/// `a=max-message-size` assumed when the offer has none (RFC 8841 §6.1).
pub const DEFAULT_REMOTE_MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// Largest offer SDP we parse.
const MAX_SDP_LEN: usize = 128 * 1024;
/// Longest trickled candidate string we parse.
const MAX_CANDIDATE_LEN: usize = 1024;
/// Far-future timeout of a dead session.
const DEAD_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Tunables of a [`PeerSession`].
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Target size of our datagrams (clamped to str0m's 576..=1500). ~1200 is safe on the
    /// Internet; str0m's default is 1150.
    pub mtu: usize,
    /// str0m's hard send budget shared by all channels of the peer
    /// (`set_sctp_max_buffered_amount`): a message larger than this can never be sent. Far above
    /// ~512 KiB str0m gets slower.
    pub sctp_max_buffered_amount: usize,
    /// The send window on a short path: the bytes written and not yet acknowledged (all
    /// channels) at which we stop writing until the peer acknowledges some
    /// (docs/design.md#the-send-window). A write that would go beyond is refused unless
    /// nothing is in flight, so one message up to the hard budget still goes. Small enough
    /// that a whole window fits the 64 KiB receive buffer Chromium gives its UDP socket
    /// (its tail is not lost to wait for sctp-proto's 1 s retransmission timer), and that
    /// sctp-proto's per-transmit scan of chunks in flight stays cheap.
    pub send_window: usize,
    /// The window grows with the measured round trip, `send_window` per
    /// `send_window_rtt` (the pipe of a longer path holds what a burst no longer puts in
    /// the receiver's buffer at once), up to this.
    pub max_send_window: usize,
    /// Round trip per `send_window` of window (see `max_send_window`).
    pub send_window_rtt: Duration,
    /// Our `a=max-message-size` (the largest message we accept from the client).
    pub max_message_size: u32,
    /// Per channel threshold for [`SessionEvent::ChannelBufferedAmountLow`].
    pub buffered_amount_low_threshold: usize,
    /// A session not connected (ICE + DTLS) this long after creation is closed.
    pub connect_timeout: Duration,
    /// A connected session whose ICE stays disconnected this long is closed.
    pub disconnected_timeout: Duration,
    /// At most this many trickled remote candidates per session (each one costs pairs/checks).
    pub max_remote_candidates: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            mtu: 1200,
            sctp_max_buffered_amount: 512 * 1024,
            send_window: 48 * 1024,
            max_send_window: 256 * 1024,
            send_window_rtt: Duration::from_millis(8),
            max_message_size: 256 * 1024,
            buffered_amount_low_threshold: 32 * 1024,
            connect_timeout: Duration::from_secs(30),
            disconnected_timeout: Duration::from_secs(20),
            max_remote_candidates: 64,
        }
    }
}

/// A datagram to send from the shared UDP socket.
#[derive(Debug)]
pub struct Transmit {
    /// Our local candidate address it is sent from (informational with a single socket).
    pub source: SocketAddr,
    /// Where to send it.
    pub destination: SocketAddr,
    /// The datagram.
    pub contents: Vec<u8>,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Not connected within [`SessionConfig::connect_timeout`].
    ConnectTimeout,
    /// ICE stayed disconnected for [`SessionConfig::disconnected_timeout`].
    IceTimeout,
    /// The peer closed DTLS, or the SCTP association was lost.
    Remote,
    /// [`PeerSession::handle_close`] was called.
    Local,
    /// str0m reported an error (DTLS failure, fingerprint mismatch, bad SDP that killed it, ...).
    Error(String),
    /// str0m panicked (an internal bug); the session was discarded.
    Panic(String),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::ConnectTimeout => write!(f, "not connected in time"),
            CloseReason::IceTimeout => write!(f, "ICE disconnected for too long"),
            CloseReason::Remote => write!(f, "closed by the peer"),
            CloseReason::Local => write!(f, "closed locally"),
            CloseReason::Error(e) => write!(f, "error: {e}"),
            CloseReason::Panic(e) => write!(f, "str0m panicked: {e}"),
        }
    }
}

/// Something that happened in the session.
#[derive(Debug)]
pub enum SessionEvent {
    /// ICE and DTLS are up (once per session).
    Connected,
    /// ICE lost its path after being connected; it may come back (consent, ICE restart). The
    /// session closes after [`SessionConfig::disconnected_timeout`] unless it does.
    Disconnected,
    /// ICE is connected again after [`SessionEvent::Disconnected`].
    Reconnected,
    /// The client opened a data channel.
    ChannelOpen {
        /// Channel id for [`PeerSession::write`] and friends.
        id: ChannelId,
        /// The label (route on it, never on order or stream id).
        label: String,
    },
    /// A message from the client.
    ChannelData {
        /// The channel.
        id: ChannelId,
        /// Binary (true) or text (false) message.
        binary: bool,
        /// The message, owned (str0m's buffer, not copied).
        data: Vec<u8>,
    },
    /// A channel closed.
    ChannelClose {
        /// The channel.
        id: ChannelId,
    },
    /// A channel's buffered amount fell below [`SessionConfig::buffered_amount_low_threshold`].
    ChannelBufferedAmountLow {
        /// The channel.
        id: ChannelId,
    },
    /// A write refused with `Ok(false)` would now fit the shared send budget (at least the
    /// smallest refused one). Retry pending writes on all channels. Emitted once per refusal
    /// episode; more reliable than the per-channel low-water event since the budget is shared.
    Writable,
    /// The session is over (last event). Keep draining [`Machine::poll_output`] until the
    /// timeout (close_notify may still go out), then drop the session.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

/// One output of [`Machine::poll_output`].
#[derive(Debug)]
pub enum SessionOutput {
    /// Send this datagram.
    Transmit(Transmit),
    /// Handle this event.
    Event(SessionEvent),
}

/// What happened to a trickled remote candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteCandidateOutcome {
    /// Given to ICE.
    Added,
    /// Empty candidate: end of candidates. Nothing to do.
    EndOfCandidates,
    /// An mDNS `.local` host: cannot be resolved; the peer's checks make it peer-reflexive.
    IgnoredMdns,
    /// Not UDP (we only have a UDP socket).
    IgnoredProtocol,
    /// Over [`SessionConfig::max_remote_candidates`].
    IgnoredLimit,
}

/// Errors of [`PeerSession`] calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// The session is closed (or died); nothing more can be done with it.
    Closed,
    /// The offer SDP was refused.
    Sdp(String),
    /// A candidate was refused.
    Candidate(String),
    /// The channel is not open (unknown, closing or closed).
    ChannelNotOpen,
    /// The message can never be sent: above the peer's `max-message-size` or our send budget.
    MessageTooLarge {
        /// Message length.
        len: usize,
        /// The largest message we can send to this peer.
        max: usize,
    },
    /// Empty messages cannot be sent: str0m 0.25 / sctp-proto 0.10.8 would send nothing but use
    /// up a stream sequence number, stalling every later message on an ordered channel.
    EmptyMessage,
    /// No randomness for ICE credentials.
    Random,
    /// str0m refused the call.
    Rtc(String),
    /// str0m panicked; the session is dead.
    Panic(String),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Closed => write!(f, "session closed"),
            SessionError::Sdp(e) => write!(f, "bad offer: {e}"),
            SessionError::Candidate(e) => write!(f, "bad candidate: {e}"),
            SessionError::ChannelNotOpen => write!(f, "data channel not open"),
            SessionError::MessageTooLarge { len, max } => {
                write!(f, "message of {len} bytes exceeds the limit of {max} bytes")
            }
            SessionError::EmptyMessage => write!(f, "empty messages cannot be sent"),
            SessionError::Random => write!(f, "no randomness available"),
            SessionError::Rtc(e) => write!(f, "webrtc error: {e}"),
            SessionError::Panic(e) => write!(f, "str0m panicked: {e}"),
        }
    }
}

impl std::error::Error for SessionError {}

/// One remote client's WebRTC session. See the module docs.
pub struct PeerSession {
    rtc: Rtc,
    fingerprint: Fingerprint,
    log_id: String,
    cfg: SessionConfig,
    /// True once the `Rtc` must not be touched (panic, error, closed and drained).
    dead: bool,
    closed_emitted: bool,
    /// Reason of a local close in progress.
    closing: Option<CloseReason>,
    out: VecDeque<SessionOutput>,
    rtc_timeout: Instant,
    last_now: Instant,
    connected: bool,
    ice_connected_once: bool,
    connect_deadline: Option<Instant>,
    disconnected_deadline: Option<Instant>,
    local_creds: IceCreds,
    offers: u32,
    ice_restarts: u32,
    app_mid: String,
    app_mline_index: u32,
    remote_max_message_size: Option<usize>,
    channels: HashMap<ChannelId, String>,
    /// Smallest write refused for lack of budget since the last [`SessionEvent::Writable`].
    blocked: Option<usize>,
    ignored_datagrams: u64,
    /// Datagrams fed to str0m and messages written since the last drain
    /// ([`PeerSession::handle_receive`], [`PeerSession::write`]).
    undrained: u32,
    /// The smallest round trip of our data (write into an empty window → first
    /// acknowledgement) and when it was measured; a sample replaces it when smaller, or when
    /// it is older than [`MIN_RTT_LIFETIME`].
    min_rtt: Option<(Duration, Instant)>,
    /// The most the send window may grow to, set by the gateway from its memory budget and
    /// the number of sessions ([`PeerSession::set_window_cap`]).
    window_cap: usize,
    /// The round-trip measurement under way.
    rtt_probe: Option<RttProbe>,
    /// Each remote candidate added: its address and type (at most `max_remote_candidates`,
    /// which this list's length counts).
    remote_kinds: Vec<(SocketAddr, CandidateKind)>,
    /// Where the last datagram went ([`PeerSession::remote_candidate_type`]).
    last_sent_to: Option<SocketAddr>,
}

/// A write into an empty window, waiting for the first acknowledgement.
#[derive(Debug, Clone, Copy)]
struct RttProbe {
    sent: Instant,
    /// Bytes buffered once written (plus what was written since): fewer means acknowledged.
    buffered: usize,
}

/// A probe needs at least this many bytes: a receiver acknowledges every second packet at
/// once, but a lone packet only after its delayed-ack timer (up to 200 ms).
const RTT_PROBE_MIN: usize = 4 * 1024;
/// In flight, and still an empty window for a message larger than the window. Not zero: the
/// receiver acknowledges every second packet at once, but an odd last packet only when its
/// delayed-ack timer fires (200 ms in sctp-proto and in browsers), so "nothing in flight"
/// made every message larger than the window wait that long half the time (a 64 KiB echo
/// managed 320 KiB/s). Two packets' worth, with room to spare.
pub const WINDOW_RESIDUE: usize = 4 * 1024;
/// Samples are capped here (a retransmission timeout is not a round trip).
const RTT_SAMPLE_MAX: Duration = Duration::from_secs(1);
/// How long the smallest round trip stands for the path. The minimum, not an average: a
/// receiver slow to acknowledge (a busy phone) makes the round trip longer without making
/// the path hold more, and a larger window would only overflow its receive buffer.
const MIN_RTT_LIFETIME: Duration = Duration::from_secs(30);

impl fmt::Debug for PeerSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerSession")
            .field("log_id", &self.log_id)
            .field("ufrag", &self.local_creds.ufrag)
            .field("connected", &self.connected)
            .field("dead", &self.dead)
            .finish_non_exhaustive()
    }
}

impl PeerSession {
    /// A new session with our persistent DTLS certificate and fresh random ICE credentials
    /// (ufrag of 16 `[A-Za-z0-9]`, the routing key; password of 32). Full ICE (not lite).
    /// `log_id` prefixes this session's log lines (e.g. the signaling session id).
    pub fn new(
        now: Instant,
        cert: DtlsCert,
        config: &SessionConfig,
        log_id: impl Into<String>,
    ) -> Result<PeerSession, SessionError> {
        let log_id = log_id.into();
        let creds = random_ice_creds()?;
        let mtu = config.mtu.clamp(
            str0m::DATAGRAM_MTU_TARGET_MIN,
            str0m::DATAGRAM_MTU_TARGET_MAX,
        );
        let builder = Rtc::builder()
            .set_dtls_cert(cert)
            .set_local_ice_credentials(creds.clone())
            .set_ice_lite(false)
            .set_mtu(mtu..=mtu.max(str0m::DATAGRAM_MTU_WARN))
            .set_sctp_max_buffered_amount(config.sctp_max_buffered_amount)
            .set_sctp_max_message_size(config.max_message_size);
        // Building panics on a certificate the DTLS stack refuses.
        let (rtc, fingerprint) = catch_unwind(AssertUnwindSafe(move || {
            let mut rtc = builder.build(now);
            let fingerprint = rtc.direct_api().local_dtls_fingerprint().clone();
            (rtc, fingerprint)
        }))
        .map_err(|p| SessionError::Panic(panic_message(p.as_ref())))?;
        Ok(PeerSession {
            rtc,
            fingerprint,
            log_id,
            cfg: config.clone(),
            dead: false,
            closed_emitted: false,
            closing: None,
            out: VecDeque::new(),
            rtc_timeout: now,
            last_now: now,
            connected: false,
            ice_connected_once: false,
            connect_deadline: Some(now + config.connect_timeout),
            disconnected_deadline: None,
            local_creds: creds,
            offers: 0,
            ice_restarts: 0,
            app_mid: "0".to_string(),
            app_mline_index: 0,
            remote_max_message_size: None,
            channels: HashMap::new(),
            blocked: None,
            ignored_datagrams: 0,
            undrained: 0,
            min_rtt: None,
            window_cap: usize::MAX,
            rtt_probe: None,
            remote_kinds: Vec::new(),
            last_sent_to: None,
        })
    }

    /// Our current ICE ufrag: STUN from the client carries `USERNAME = ourUfrag:theirUfrag`.
    /// It changes when an offer restarts ICE: re-register it with the router after every
    /// [`PeerSession::handle_offer`].
    pub fn local_ufrag(&self) -> &str {
        &self.local_creds.ufrag
    }

    /// Our DTLS certificate fingerprint as it goes into the answer (`hash_func` "sha-256",
    /// `bytes`; `Display` gives `sha-256 AB:CD:..`). Clients pin it against the Remote ID.
    pub fn local_fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// Whether ICE and DTLS came up (and the session has not died since).
    pub fn is_connected(&self) -> bool {
        self.connected && !self.dead
    }

    /// False once the session is over (after [`SessionEvent::Closed`]).
    pub fn is_alive(&self) -> bool {
        !self.dead && !self.closed_emitted
    }

    /// Offers accepted so far (1 after the first; more means re-offers/ICE restarts).
    pub fn offers_accepted(&self) -> u32 {
        self.offers
    }

    /// ICE restarts done so far (offers with new remote ICE credentials).
    pub fn ice_restarts(&self) -> u32 {
        self.ice_restarts
    }

    /// Once connected, the type of the remote candidate the session sends to (the address its
    /// last datagram went to): `host`, `srflx`, `relay`, or `prflx` for an address the client
    /// never announced (learnt from its checks). For the operator's status page.
    pub fn remote_candidate_type(&self) -> Option<&'static str> {
        let to = self.last_sent_to.filter(|_| self.is_connected())?;
        let kind = self
            .remote_kinds
            .iter()
            .find(|(a, _)| *a == to)
            .map(|k| k.1);
        Some(match kind {
            Some(CandidateKind::Host) => "host",
            Some(CandidateKind::ServerReflexive) => "srflx",
            Some(CandidateKind::Relayed) => "relay",
            Some(CandidateKind::PeerReflexive) | None => "prflx",
        })
    }

    /// The session id its log lines start with (`[id]`).
    pub fn log_id(&self) -> &str {
        &self.log_id
    }

    /// Datagrams that were not WebRTC (unparseable) and were dropped.
    pub fn ignored_datagrams(&self) -> u64 {
        self.ignored_datagrams
    }

    /// The `a=mid` of the offer's application m-line (`"0"` before any offer).
    pub fn app_mid(&self) -> &str {
        &self.app_mid
    }

    /// The peer's `a=max-message-size` from its first offer: 65536 when absent, `u32::MAX` for
    /// `0` ("any size"), `None` before the first offer. (str0m fixes the limit at the first offer
    /// and does not expose it, so this is parsed from the offer SDP.)
    pub fn remote_max_message_size(&self) -> Option<usize> {
        self.remote_max_message_size
    }

    /// The largest message [`PeerSession::write`] can ever accept: the peer's
    /// `max-message-size` (65536 before an offer) capped by our send budget.
    pub fn max_send_message_size(&self) -> usize {
        self.remote_max_message_size
            .unwrap_or(DEFAULT_REMOTE_MAX_MESSAGE_SIZE)
            .min(self.cfg.sctp_max_buffered_amount)
    }

    /// The label of an open channel.
    pub fn channel_label(&self, id: ChannelId) -> Option<&str> {
        self.channels.get(&id).map(String::as_str)
    }

    /// Accept an offer (the first one, or a later one on the same session) and return the
    /// answer SDP to send right away (candidates follow by trickle).
    ///
    /// A later offer with new `a=ice-ufrag/pwd` is an ICE restart: str0m then flushes remote
    /// candidates and pairs, keeps local candidates, keeps DTLS/SCTP (data keeps flowing on the
    /// old path until a new pair is nominated) and answers with new local credentials. Those are
    /// replaced here by our own random ones (in the `Rtc` and in the answer text), so
    /// [`PeerSession::local_ufrag`] changes: update the router.
    pub fn handle_offer(&mut self, now: Instant, sdp: &str) -> Result<String, SessionError> {
        self.ensure_alive()?;
        self.last_now = self.last_now.max(now);
        if sdp.len() > MAX_SDP_LEN {
            return Err(SessionError::Sdp(format!(
                "offer of {} bytes is too large",
                sdp.len()
            )));
        }
        let info = OfferInfo::parse(sdp)?;
        let offer = catch_unwind(|| SdpOffer::from_sdp_string(sdp))
            .map_err(|p| SessionError::Sdp(format!("parser panicked: {}", panic_message(&*p))))?
            .map_err(|e| SessionError::Sdp(e.to_string()))?;

        let before = self.rtc.direct_api().local_ice_credentials();
        let result = self.guard(|rtc| rtc.sdp_api().accept_offer(offer));
        let answer = match result {
            None => return Err(SessionError::Closed),
            Some(Err(e)) => {
                let msg = e.to_string();
                log::info!("[{}] offer refused: {msg}", self.log_id);
                if !self.rtc.is_alive() {
                    self.fail(CloseReason::Error(format!("offer refused: {msg}")));
                } else {
                    self.drain();
                }
                return Err(SessionError::Sdp(msg));
            }
            Some(Ok(answer)) => answer,
        };
        let mut answer_sdp = answer.to_sdp_string();

        let after = self.rtc.direct_api().local_ice_credentials();
        if after != before {
            // ICE restart: str0m chose `after` with a non-cryptographic RNG. Use our own.
            self.ice_restarts += 1;
            // Give the restart a full window if ICE was already seen disconnected.
            if let Some(d) = self.disconnected_deadline.as_mut() {
                *d = now + self.cfg.disconnected_timeout;
            }
            match random_ice_creds() {
                Ok(ours) => {
                    let set = ours.clone();
                    self.guard(move |rtc| rtc.direct_api().set_local_ice_credentials(set));
                    self.local_creds = ours;
                }
                Err(_) => {
                    log::warn!(
                        "[{}] no randomness: keeping str0m's ICE credentials",
                        self.log_id
                    );
                    self.local_creds = after;
                }
            }
            log::info!(
                "[{}] ICE restart #{} (new local ufrag {})",
                self.log_id,
                self.ice_restarts,
                self.local_creds.ufrag
            );
        }
        // Always: also fixes the `ufrag` of candidate lines str0m still tags with its own ufrag.
        answer_sdp = rewrite_answer_credentials(&answer_sdp, &self.local_creds);

        self.app_mid = info.mid;
        self.app_mline_index = info.mline_index;
        if self.remote_max_message_size.is_none() {
            self.remote_max_message_size = Some(info.max_message_size);
        }
        self.offers += 1;
        self.drain();
        if self.dead {
            return Err(SessionError::Closed);
        }
        Ok(answer_sdp)
    }

    /// Add a host candidate (an address the shared socket receives on, as advertised). Returns
    /// the signaling JSON `{"candidate","sdpMid","sdpMLineIndex"}` to trickle, or `None` when
    /// str0m found it redundant. Added before the offer, it is also in the answer SDP (trickling
    /// it as well is harmless).
    pub fn handle_host_candidate(
        &mut self,
        now: Instant,
        addr: SocketAddr,
    ) -> Result<Option<Value>, SessionError> {
        self.last_now = self.last_now.max(now);
        let c = Candidate::host(addr, "udp").map_err(|e| SessionError::Candidate(e.to_string()))?;
        self.add_local(c)
    }

    /// Add a server-reflexive candidate `addr` (found by STUN) whose base is the host address
    /// `base` the request went out from. Same return as [`PeerSession::handle_host_candidate`].
    pub fn handle_srflx_candidate(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        base: SocketAddr,
    ) -> Result<Option<Value>, SessionError> {
        self.last_now = self.last_now.max(now);
        let c = Candidate::server_reflexive(addr, base, "udp")
            .map_err(|e| SessionError::Candidate(e.to_string()))?;
        self.add_local(c)
    }

    /// Add a relay candidate `addr` (a TURN allocation) made from the local address `local`.
    /// Same return as [`PeerSession::handle_host_candidate`]. Datagrams str0m sends from
    /// `addr` must go through the relay; data arriving through it is fed with `addr` as the
    /// destination.
    pub fn handle_relay_candidate(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        local: SocketAddr,
    ) -> Result<Option<Value>, SessionError> {
        self.last_now = self.last_now.max(now);
        let c = Candidate::relayed(addr, local, "udp")
            .map_err(|e| SessionError::Candidate(e.to_string()))?;
        self.add_local(c)
    }

    fn add_local(&mut self, c: Candidate) -> Result<Option<Value>, SessionError> {
        self.ensure_alive()?;
        let added = self
            .guard(|rtc| rtc.add_local_candidate(c).map(|c| c.to_sdp_string()))
            .ok_or(SessionError::Closed)?;
        self.drain();
        Ok(added.map(|s| self.candidate_json(&s)))
    }

    /// The signaling JSON for a local candidate string (`candidate:...`), with both `sdpMid` and
    /// `sdpMLineIndex` (the Android app needs the latter).
    pub fn candidate_json(&self, candidate: &str) -> Value {
        json!({
            "candidate": candidate,
            "sdpMid": self.app_mid,
            "sdpMLineIndex": self.app_mline_index,
        })
    }

    /// Add a trickled remote candidate from the signaling `data` object. Accepts `candidate`
    /// with or without the `candidate:` (or `a=candidate:`) prefix, with or without
    /// `sdpMid`/`sdpMLineIndex`; takes `usernameFragment` when the string has no `ufrag`.
    /// Empty/null = end of candidates, `.local` (mDNS) hosts and non-UDP are ignored (`Ok`);
    /// garbage is an `Err`. Never fatal for the session.
    pub fn handle_remote_candidate(
        &mut self,
        now: Instant,
        data: &Value,
    ) -> Result<RemoteCandidateOutcome, SessionError> {
        self.ensure_alive()?;
        self.last_now = self.last_now.max(now);
        let (text, ufrag) = match data {
            Value::Null => return Ok(RemoteCandidateOutcome::EndOfCandidates),
            Value::String(s) => (s.as_str(), None),
            Value::Object(o) => {
                let text = match o.get("candidate") {
                    None | Some(Value::Null) => {
                        return Ok(RemoteCandidateOutcome::EndOfCandidates);
                    }
                    Some(Value::String(s)) => s.as_str(),
                    Some(_) => {
                        return Err(SessionError::Candidate(
                            "\"candidate\" is not a string".into(),
                        ));
                    }
                };
                let ufrag = o.get("usernameFragment").and_then(Value::as_str);
                (text, ufrag)
            }
            _ => {
                return Err(SessionError::Candidate(
                    "candidate data is not an object".into(),
                ))
            }
        };
        let parsed = match parse_remote_candidate(text)? {
            ParsedCandidate::End => return Ok(RemoteCandidateOutcome::EndOfCandidates),
            ParsedCandidate::Mdns(host) => {
                log::debug!("[{}] ignoring mDNS candidate host {host}", self.log_id);
                return Ok(RemoteCandidateOutcome::IgnoredMdns);
            }
            ParsedCandidate::NotUdp(proto) => {
                log::debug!("[{}] ignoring {proto} candidate", self.log_id);
                return Ok(RemoteCandidateOutcome::IgnoredProtocol);
            }
            ParsedCandidate::Candidate(c) => c,
        };
        let mut c = parsed;
        if c.ufrag().is_none() {
            if let Some(u) = ufrag.filter(|u| !u.is_empty()) {
                c.set_ufrag(u);
            }
        }
        if self.remote_kinds.len() >= self.cfg.max_remote_candidates {
            log::debug!("[{}] remote candidate limit reached", self.log_id);
            return Ok(RemoteCandidateOutcome::IgnoredLimit);
        }
        self.remote_kinds.push((c.addr(), c.kind()));
        self.guard(|rtc| rtc.add_remote_candidate(c))
            .ok_or(SessionError::Closed)?;
        self.drain();
        Ok(RemoteCandidateOutcome::Added)
    }

    /// Feed a datagram routed to this session. `destination` must be the advertised local
    /// candidate address it arrived on (not a wildcard), or str0m drops STUN. Not gated on
    /// `Rtc::accepts()`. Unparseable datagrams are dropped (counted); str0m errors end the session.
    /// The session is drained only every [`MAX_UNDRAINED_INPUTS`]: the caller ends a batch
    /// with [`PeerSession::drain_pending`].
    pub fn handle_receive(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        bytes: &[u8],
    ) {
        if self.dead {
            return;
        }
        self.last_now = self.last_now.max(now);
        let result = self.guard(|rtc| {
            let Ok(receive) = Receive::new(Protocol::Udp, source, destination, bytes) else {
                return Ok(false);
            };
            rtc.handle_input(Input::Receive(now, receive))
                .map(|()| true)
        });
        match result {
            None => return,
            Some(Ok(true)) => {}
            Some(Ok(false)) => {
                self.ignored_datagrams += 1;
                log::trace!(
                    "[{}] dropped unparseable datagram from {source}",
                    self.log_id
                );
                return;
            }
            Some(Err(e)) => {
                self.fail(CloseReason::Error(e.to_string()));
                return;
            }
        }
        self.note_undrained();
    }

    /// One more input (datagram or write) left undrained; at [`MAX_UNDRAINED_INPUTS`] the
    /// session is drained at once.
    fn note_undrained(&mut self) {
        self.undrained += 1;
        if self.undrained >= MAX_UNDRAINED_INPUTS {
            self.drain_pending();
        }
    }

    /// Whether datagrams were fed or messages written since the last drain: call
    /// [`PeerSession::drain_pending`] once the batch at hand is done (the session's deadline
    /// is due meanwhile, and [`Machine::poll_output`] drains first).
    pub fn has_undrained(&self) -> bool {
        self.undrained > 0
    }

    /// Drain what the inputs since the last drain produced.
    pub fn drain_pending(&mut self) {
        if self.undrained > 0 {
            self.drain();
            self.after_drain();
        }
    }

    /// Advance time: str0m timers and our deadlines (connect, disconnected).
    fn timeout(&mut self, now: Instant) {
        if self.dead {
            return;
        }
        self.last_now = self.last_now.max(now);
        if !self.connected && self.connect_deadline.is_some_and(|d| now >= d) {
            log::info!("[{}] not connected in time", self.log_id);
            self.close_with(CloseReason::ConnectTimeout, false);
            return;
        }
        if self.disconnected_deadline.is_some_and(|d| now >= d) {
            log::info!("[{}] ICE disconnected for too long", self.log_id);
            self.close_with(CloseReason::IceTimeout, false);
            return;
        }
        match self.guard(|rtc| rtc.handle_input(Input::Timeout(now))) {
            None => return,
            Some(Err(e)) => {
                self.fail(CloseReason::Error(e.to_string()));
                return;
            }
            Some(Ok(())) => {}
        }
        self.drain();
        self.after_drain();
    }

    /// The instant [`Machine::handle_timeout`] is next wanted (given the queue is drained).
    pub fn next_timeout(&self) -> Instant {
        if self.dead {
            return self.last_now + DEAD_TIMEOUT;
        }
        if self.undrained > 0 {
            return self.last_now;
        }
        let mut t = self.rtc_timeout;
        if !self.connected {
            if let Some(d) = self.connect_deadline {
                t = t.min(d);
            }
        }
        if let Some(d) = self.disconnected_deadline {
            t = t.min(d);
        }
        t
    }

    /// Send a message. `Ok(true)`: accepted. `Ok(false)`: the shared send budget is full right
    /// now; retry after [`SessionEvent::Writable`] (or a buffered-amount-low event). `Err`:
    /// channel not open, message larger than [`PeerSession::max_send_message_size`] (never
    /// sendable: chunk it), an empty message (see [`SessionError::EmptyMessage`]), or the
    /// session is closed.
    pub fn write(
        &mut self,
        now: Instant,
        id: ChannelId,
        binary: bool,
        data: &[u8],
    ) -> Result<bool, SessionError> {
        self.ensure_alive()?;
        if data.is_empty() {
            return Err(SessionError::EmptyMessage);
        }
        let max = self.max_send_message_size();
        if data.len() > max {
            return Err(SessionError::MessageTooLarge {
                len: data.len(),
                max,
            });
        }
        self.last_now = self.last_now.max(now);
        let buffered = self.total_buffered();
        if !self.window_fits(buffered, data.len()) {
            let len = data.len();
            self.blocked = Some(self.blocked.map_or(len, |b| b.min(len)));
            return Ok(false);
        }
        let result = self.guard(|rtc| match rtc.channel(id) {
            None => Err(SessionError::ChannelNotOpen),
            Some(mut ch) => ch
                .write(binary, data)
                .map_err(|e| SessionError::Rtc(e.to_string())),
        });
        match result {
            None => Err(SessionError::Closed),
            Some(Ok(true)) => {
                self.probe_written(now, buffered, data.len());
                // Drained once after the caller's writes (as for datagrams): each drain makes
                // sctp-proto scan every chunk in flight.
                self.note_undrained();
                Ok(true)
            }
            Some(Ok(false)) => {
                let len = data.len();
                self.blocked = Some(self.blocked.map_or(len, |b| b.min(len)));
                self.drain();
                Ok(false)
            }
            Some(Err(e)) => {
                self.drain();
                Err(e)
            }
        }
    }

    /// Bytes written on this channel and not yet acknowledged by the peer (0 if not open).
    pub fn buffered_amount(&mut self, id: ChannelId) -> usize {
        if self.dead {
            return 0;
        }
        let n = self
            .guard(|rtc| rtc.channel(id).map_or(0, |mut c| c.buffered_amount()))
            .unwrap_or(0);
        self.drain();
        n
    }

    /// Whether a message of `len` bytes may be written with `buffered` bytes in flight: it
    /// fits the send window, or the window is as good as empty (at most [`WINDOW_RESIDUE`] in
    /// flight), so a message larger than the window still goes (str0m's hard budget is
    /// checked by str0m).
    fn window_fits(&self, buffered: usize, len: usize) -> bool {
        buffered <= WINDOW_RESIDUE || buffered + len <= self.send_window()
    }

    /// The send window for the measured round trip (docs/design.md#the-send-window):
    /// [`SessionConfig::send_window`] until a round trip is known or on a short path, growing
    /// with the round trip up to [`SessionConfig::max_send_window`] or the gateway's cap,
    /// whichever is smaller.
    pub fn send_window(&self) -> usize {
        let base = self.cfg.send_window;
        let max = self.cfg.max_send_window.min(self.window_cap).max(base);
        match self.min_rtt {
            Some((rtt, _)) if !self.cfg.send_window_rtt.is_zero() => {
                let steps = rtt.as_secs_f64() / self.cfg.send_window_rtt.as_secs_f64();
                ((base as f64 * steps) as usize).clamp(base, max)
            }
            _ => base,
        }
    }

    /// Cap the send window (never below [`SessionConfig::send_window`]): the gateway shares
    /// its memory budget's allowance for data in flight among its sessions. A smaller cap
    /// takes effect as acknowledgements come in; nothing written is taken back.
    pub fn set_window_cap(&mut self, cap: usize) {
        self.window_cap = cap;
    }

    /// The address of the remote candidate added last (the one a
    /// [`RemoteCandidateOutcome::Added`] was about).
    pub fn newest_remote_candidate(&self) -> Option<SocketAddr> {
        self.remote_kinds.last().map(|(addr, _)| *addr)
    }

    /// The cap [`PeerSession::set_window_cap`] set (`usize::MAX` when none).
    pub fn window_cap(&self) -> usize {
        self.window_cap
    }

    /// The smallest recent round trip of our data, once measured.
    pub fn data_rtt(&self) -> Option<Duration> {
        self.min_rtt.map(|(rtt, _)| rtt)
    }

    /// A write of `len` bytes was accepted with `buffered` bytes already in flight: start a
    /// round-trip measurement if the window was empty, or count the bytes in the one under way.
    fn probe_written(&mut self, now: Instant, buffered: usize, len: usize) {
        match &mut self.rtt_probe {
            Some(p) => p.buffered += len,
            None if buffered == 0 && len >= RTT_PROBE_MIN => {
                self.rtt_probe = Some(RttProbe {
                    sent: now,
                    buffered: len,
                })
            }
            None => {}
        }
    }

    /// After a drain: the probe's round trip is over once fewer bytes are in flight than it
    /// counted (the peer acknowledged some).
    fn finish_probe(&mut self, buffered: usize) {
        let Some(probe) = self.rtt_probe else {
            return;
        };
        if buffered >= probe.buffered {
            return;
        }
        self.rtt_probe = None;
        let sample = self
            .last_now
            .saturating_duration_since(probe.sent)
            .min(RTT_SAMPLE_MAX);
        let now = self.last_now;
        let stale = |at: Instant| now.saturating_duration_since(at) > MIN_RTT_LIFETIME;
        if self
            .min_rtt
            .is_none_or(|(rtt, at)| sample <= rtt || stale(at))
        {
            let before = self.send_window();
            self.min_rtt = Some((sample, now));
            let after = self.send_window();
            if after != before {
                log::debug!(
                    "[{}] data round trip {sample:?}: send window {} KiB",
                    self.log_id,
                    after / 1024
                );
            }
        }
    }

    /// Change a channel's low-water mark for [`SessionEvent::ChannelBufferedAmountLow`].
    pub fn set_buffered_amount_low_threshold(&mut self, id: ChannelId, threshold: usize) {
        if self.dead {
            return;
        }
        self.guard(|rtc| {
            if let Some(mut c) = rtc.channel(id) {
                c.set_buffered_amount_low_threshold(threshold);
            }
        });
        self.drain();
    }

    /// Close one data channel (e.g. an unwanted duplicate label). A
    /// [`SessionEvent::ChannelClose`] follows.
    pub fn close_channel(&mut self, id: ChannelId) {
        if self.dead {
            return;
        }
        self.guard(|rtc| rtc.direct_api().close_data_channel(id));
        self.drain();
    }

    /// Close the session gracefully (SCTP shutdown, DTLS close_notify). Emits
    /// [`SessionEvent::Closed`] with [`CloseReason::Local`]; drain the outputs, then drop it.
    pub fn handle_close(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        if self.dead || self.closed_emitted {
            return;
        }
        self.close_with(CloseReason::Local, self.connected);
    }

    // --- internals -------------------------------------------------------------------------

    fn ensure_alive(&self) -> Result<(), SessionError> {
        if self.dead || self.closed_emitted {
            Err(SessionError::Closed)
        } else {
            Ok(())
        }
    }

    /// Run `f` on the `Rtc` unless the session is dead; a panic kills the session.
    fn guard<R>(&mut self, f: impl FnOnce(&mut Rtc) -> R) -> Option<R> {
        if self.dead {
            return None;
        }
        let rtc = &mut self.rtc;
        match catch_unwind(AssertUnwindSafe(move || f(rtc))) {
            Ok(r) => Some(r),
            Err(p) => {
                let msg = panic_message(p.as_ref());
                log::error!("[{}] str0m panicked, dropping session: {msg}", self.log_id);
                self.dead = true;
                self.emit_closed(CloseReason::Panic(msg));
                None
            }
        }
    }

    fn emit_closed(&mut self, reason: CloseReason) {
        if !self.closed_emitted {
            self.closed_emitted = true;
            self.out
                .push_back(SessionOutput::Event(SessionEvent::Closed { reason }));
        }
    }

    /// End the session after an error: no more str0m calls.
    fn fail(&mut self, reason: CloseReason) {
        log::info!("[{}] session failed: {reason}", self.log_id);
        self.guard(|rtc| rtc.disconnect());
        self.dead = true;
        self.emit_closed(reason);
    }

    fn close_with(&mut self, reason: CloseReason, graceful: bool) {
        if graceful {
            self.closing = Some(reason.clone());
            match self.guard(|rtc| rtc.close()) {
                None => return,
                Some(Err(e)) => log::debug!("[{}] close: {e}", self.log_id),
                Some(Ok(())) => {}
            }
            // Queue what str0m says while closing (close_notify, channel closes) first.
            self.drain();
        } else {
            self.guard(|rtc| rtc.disconnect());
        }
        self.emit_closed(reason);
        self.dead = true;
    }

    /// Drain str0m until its timeout, queueing outputs.
    fn drain(&mut self) {
        self.undrained = 0;
        while !self.dead {
            let polled = match self.guard(|rtc| rtc.poll_output()) {
                None => return,
                Some(p) => p,
            };
            match polled {
                Err(e) => {
                    self.fail(CloseReason::Error(e.to_string()));
                    return;
                }
                Ok(Output::Timeout(t)) => {
                    self.rtc_timeout = t;
                    break;
                }
                Ok(Output::Transmit(t)) => {
                    self.last_sent_to = Some(t.destination);
                    self.out.push_back(SessionOutput::Transmit(Transmit {
                        source: t.source,
                        destination: t.destination,
                        contents: t.contents.into(),
                    }));
                }
                Ok(Output::Event(e)) => self.on_event(e),
            }
        }
        if !self.dead && !self.rtc.is_alive() {
            // Closed and drained (or disconnected by str0m itself).
            let reason = self
                .closing
                .take()
                .unwrap_or_else(|| CloseReason::Error("connection ended".into()));
            self.emit_closed(reason);
            self.dead = true;
        }
    }

    fn on_event(&mut self, e: Event) {
        let ev = match e {
            Event::Connected => {
                log::info!("[{}] connected", self.log_id);
                self.connected = true;
                self.connect_deadline = None;
                SessionEvent::Connected
            }
            Event::IceConnectionStateChange(state) => {
                log::debug!("[{}] ICE {state:?}", self.log_id);
                match state {
                    IceConnectionState::Connected | IceConnectionState::Completed => {
                        self.ice_connected_once = true;
                        if self.disconnected_deadline.take().is_some() {
                            SessionEvent::Reconnected
                        } else {
                            return;
                        }
                    }
                    IceConnectionState::Disconnected
                        if self.ice_connected_once && self.disconnected_deadline.is_none() =>
                    {
                        self.disconnected_deadline =
                            Some(self.last_now + self.cfg.disconnected_timeout);
                        SessionEvent::Disconnected
                    }
                    _ => return,
                }
            }
            Event::ChannelOpen(id, label) => {
                log::debug!("[{}] channel {id:?} open: {label:?}", self.log_id);
                let threshold = self.cfg.buffered_amount_low_threshold;
                self.guard(|rtc| {
                    if let Some(mut c) = rtc.channel(id) {
                        c.set_buffered_amount_low_threshold(threshold);
                    }
                });
                self.channels.insert(id, label.clone());
                SessionEvent::ChannelOpen { id, label }
            }
            Event::ChannelData(d) => SessionEvent::ChannelData {
                id: d.id,
                binary: d.binary,
                data: d.data,
            },
            Event::ChannelClose(id) => {
                log::debug!("[{}] channel {id:?} closed", self.log_id);
                self.channels.remove(&id);
                SessionEvent::ChannelClose { id }
            }
            Event::ChannelBufferedAmountLow(id) => SessionEvent::ChannelBufferedAmountLow { id },
            Event::Closed => {
                log::info!("[{}] closed by the peer", self.log_id);
                if self.closed_emitted {
                    return;
                }
                self.closed_emitted = true;
                SessionEvent::Closed {
                    reason: CloseReason::Remote,
                }
            }
            _ => return,
        };
        self.out.push_back(SessionOutput::Event(ev));
    }

    /// Bytes written and not yet acknowledged, all channels. Runs before every write: the
    /// channel map is lent to the guard rather than its ids copied into a new vector.
    fn total_buffered(&mut self) -> usize {
        let channels = std::mem::take(&mut self.channels);
        let total = self.guard(|rtc| {
            channels
                .keys()
                .map(|id| rtc.channel(*id).map_or(0, |mut c| c.buffered_amount()))
                .sum()
        });
        self.channels = channels;
        total.unwrap_or(0)
    }

    /// After a drain that may have brought acknowledgements: end the round-trip measurement
    /// and say whether a refused write fits now, from one sum of the bytes in flight (and none
    /// when neither is waiting).
    fn after_drain(&mut self) {
        if self.dead || (self.rtt_probe.is_none() && self.blocked.is_none()) {
            return;
        }
        let buffered = self.total_buffered();
        self.finish_probe(buffered);
        self.check_writable(buffered);
    }

    fn check_writable(&mut self, buffered: usize) {
        let Some(need) = self.blocked else {
            return;
        };
        if self.window_fits(buffered, need) {
            self.blocked = None;
            self.out
                .push_back(SessionOutput::Event(SessionEvent::Writable));
        }
    }
}

impl Machine for PeerSession {
    type Output = SessionOutput;

    /// Advance time: str0m timers and our deadlines (connect, disconnected).
    fn handle_timeout(&mut self, now: Instant) {
        self.timeout(now);
    }

    /// Queued transmits and events in order, then the next timeout.
    fn poll_output(&mut self) -> Next<SessionOutput> {
        self.drain_pending();
        Next::or_timeout(self.out.pop_front(), || Some(self.next_timeout()))
    }
}

/// Random ICE credentials from aws-lc-rs: ufrag 16 and password 32 chars of `[A-Za-z0-9]`.
pub(crate) fn random_ice_creds() -> Result<IceCreds, SessionError> {
    Ok(IceCreds {
        ufrag: random_alnum(16)?,
        pass: random_alnum(32)?,
    })
}

fn random_alnum(len: usize) -> Result<String, SessionError> {
    const CHARS: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        aws_lc_rs::rand::fill(&mut buf).map_err(|_| SessionError::Random)?;
        // Rejection sampling: 248 = 4 * 62, so no modulo bias.
        for b in buf.iter().filter(|b| **b < 248) {
            if out.len() == len {
                break;
            }
            out.push(char::from(CHARS[usize::from(*b % 62)]));
        }
    }
    Ok(out)
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// What we need from the offer that str0m does not expose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OfferInfo {
    /// `a=mid` of the application m-line.
    pub mid: String,
    /// Index of the application m-line.
    pub mline_index: u32,
    /// Its `a=max-message-size` (65536 absent, `u32::MAX` for 0).
    pub max_message_size: usize,
}

impl OfferInfo {
    pub(crate) fn parse(sdp: &str) -> Result<OfferInfo, SessionError> {
        let mut index: Option<u32> = None;
        let mut app: Option<(u32, Option<String>, Option<usize>)> = None;
        let mut in_app = false;
        for line in sdp.lines() {
            let line = line.trim_end_matches('\r');
            if let Some(rest) = line.strip_prefix("m=") {
                let i = index.map_or(0, |i| i.saturating_add(1));
                index = Some(i);
                in_app = rest.starts_with("application") && app.is_none();
                if in_app {
                    app = Some((i, None, None));
                }
                continue;
            }
            if !in_app {
                continue;
            }
            let Some((_, mid, max)) = app.as_mut() else {
                continue;
            };
            if let Some(v) = line.strip_prefix("a=mid:") {
                *mid = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("a=max-message-size:") {
                let n: u64 = v.trim().parse().map_err(|_| {
                    SessionError::Sdp(format!("bad a=max-message-size: {:?}", v.trim()))
                })?;
                let n = if n == 0 {
                    u32::MAX as usize
                } else {
                    usize::try_from(n.min(u64::from(u32::MAX))).unwrap_or(u32::MAX as usize)
                };
                if n < MIN_REMOTE_MAX_MESSAGE_SIZE {
                    return Err(SessionError::Sdp(format!(
                        "a=max-message-size:{n} is below {MIN_REMOTE_MAX_MESSAGE_SIZE} bytes \
                         (browsers announce 65536 or more)"
                    )));
                }
                *max = Some(n);
            }
        }
        let Some((mline_index, mid, max)) = app else {
            return Err(SessionError::Sdp(
                "no m=application line (data channels)".into(),
            ));
        };
        Ok(OfferInfo {
            mid: mid.unwrap_or_else(|| mline_index.to_string()),
            mline_index,
            max_message_size: max.unwrap_or(DEFAULT_REMOTE_MAX_MESSAGE_SIZE),
        })
    }
}

/// Put our ICE credentials into an answer: `a=ice-ufrag`, `a=ice-pwd` and the `ufrag` extension
/// of `a=candidate` lines.
pub(crate) fn rewrite_answer_credentials(sdp: &str, creds: &IceCreds) -> String {
    let mut out = String::with_capacity(sdp.len() + 32);
    for line in sdp.split_inclusive('\n') {
        let (body, eol) = match line.strip_suffix("\r\n") {
            Some(b) => (b, "\r\n"),
            None => match line.strip_suffix('\n') {
                Some(b) => (b, "\n"),
                None => (line, ""),
            },
        };
        if body.starts_with("a=ice-ufrag:") {
            out.push_str("a=ice-ufrag:");
            out.push_str(&creds.ufrag);
        } else if body.starts_with("a=ice-pwd:") {
            out.push_str("a=ice-pwd:");
            out.push_str(&creds.pass);
        } else if let Some(c) = body.strip_prefix("a=") {
            if c.starts_with("candidate:") {
                out.push_str("a=");
                out.push_str(&set_candidate_ufrag(c, &creds.ufrag));
            } else {
                out.push_str(body);
            }
        } else {
            out.push_str(body);
        }
        out.push_str(eol);
    }
    out
}

/// Replace the value after a `ufrag` token in a candidate string.
fn set_candidate_ufrag(candidate: &str, ufrag: &str) -> String {
    let mut tokens: Vec<&str> = candidate.split(' ').collect();
    // Extensions start after "typ <kind>" (index 7 at the earliest).
    let mut i = 8;
    while i + 1 < tokens.len() {
        if tokens[i] == "ufrag" {
            tokens[i + 1] = ufrag;
        }
        i += 1;
    }
    tokens.join(" ")
}

enum ParsedCandidate {
    End,
    Mdns(String),
    NotUdp(String),
    Candidate(Candidate),
}

/// Parse a trickled candidate string leniently (see [`PeerSession::handle_remote_candidate`]).
fn parse_remote_candidate(text: &str) -> Result<ParsedCandidate, SessionError> {
    let s = text.trim();
    let s = s.strip_prefix("a=").unwrap_or(s);
    if s.is_empty() || s == "candidate:" {
        return Ok(ParsedCandidate::End);
    }
    if s.len() > MAX_CANDIDATE_LEN {
        return Err(SessionError::Candidate(format!(
            "candidate of {} bytes is too long",
            s.len()
        )));
    }
    let body = s.strip_prefix("candidate:").unwrap_or(s);
    let fields: Vec<&str> = body.split_whitespace().collect();
    if fields.len() < 8 {
        return Err(SessionError::Candidate(format!(
            "too few fields in {text:?}"
        )));
    }
    let proto = fields[2];
    let host = fields[4];
    if host.to_ascii_lowercase().ends_with(".local") {
        return Ok(ParsedCandidate::Mdns(host.to_string()));
    }
    if !proto.eq_ignore_ascii_case("udp") {
        return Ok(ParsedCandidate::NotUdp(proto.to_string()));
    }
    let full = format!("candidate:{}", fields.join(" "));
    let c = catch_unwind(|| Candidate::from_sdp_string(&full))
        .map_err(|_| SessionError::Candidate(format!("unparseable candidate {text:?}")))?
        .map_err(|e| SessionError::Candidate(e.to_string()))?;
    Ok(ParsedCandidate::Candidate(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_creds_shape() {
        let c = random_ice_creds().expect("random");
        assert_eq!(c.ufrag.len(), 16);
        assert_eq!(c.pass.len(), 32);
        assert!(c.ufrag.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(c.pass.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(c.ufrag, random_ice_creds().expect("random").ufrag);
    }

    #[test]
    fn offer_info() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:a\r\na=max-message-size:5\r\n\
                   m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:data\r\n\
                   a=sctp-port:5000\r\na=max-message-size:262144\r\n";
        let info = OfferInfo::parse(sdp).expect("parse");
        assert_eq!(info.mid, "data");
        assert_eq!(info.mline_index, 1);
        assert_eq!(info.max_message_size, 262_144);

        let sdp = "v=0\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\na=mid:0\n";
        let info = OfferInfo::parse(sdp).expect("parse");
        assert_eq!(info.max_message_size, DEFAULT_REMOTE_MAX_MESSAGE_SIZE);
        assert_eq!(info.mid, "0");

        let sdp = "v=0\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\na=max-message-size:0\n";
        let info = OfferInfo::parse(sdp).expect("parse");
        assert_eq!(info.max_message_size, u32::MAX as usize);
        assert_eq!(info.mid, "0");

        // A hostile floor: refused, not obeyed; the floor itself is fine.
        for tiny in [1, 1200, MIN_REMOTE_MAX_MESSAGE_SIZE - 1] {
            let sdp = format!(
                "v=0\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\na=max-message-size:{tiny}\n"
            );
            let err = OfferInfo::parse(&sdp).expect_err("tiny limit");
            assert!(err.to_string().contains("below"), "{err}");
        }
        let sdp = format!(
            "v=0\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\na=max-message-size:{}\n",
            MIN_REMOTE_MAX_MESSAGE_SIZE
        );
        assert_eq!(
            OfferInfo::parse(&sdp).expect("floor").max_message_size,
            MIN_REMOTE_MAX_MESSAGE_SIZE
        );

        assert!(OfferInfo::parse("v=0\r\nm=audio 9 RTP/AVP 0\r\n").is_err());
        assert!(OfferInfo::parse(
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\na=max-message-size:x\n"
        )
        .is_err());
    }

    #[test]
    fn rewrite_credentials() {
        let creds = IceCreds {
            ufrag: "NEWUFRAG".into(),
            pass: "NEWPASS".into(),
        };
        let sdp = "v=0\r\na=ice-ufrag:old\r\na=ice-pwd:oldpass\r\n\
                   a=candidate:1 1 udp 2130706175 10.0.0.1 4000 typ host ufrag old\r\n\
                   a=candidate:2 1 udp 1694498815 1.2.3.4 4000 typ srflx raddr 0.0.0.0 rport 0 ufrag old\r\n\
                   a=setup:passive\r\n";
        let out = rewrite_answer_credentials(sdp, &creds);
        assert_eq!(
            out,
            "v=0\r\na=ice-ufrag:NEWUFRAG\r\na=ice-pwd:NEWPASS\r\n\
             a=candidate:1 1 udp 2130706175 10.0.0.1 4000 typ host ufrag NEWUFRAG\r\n\
             a=candidate:2 1 udp 1694498815 1.2.3.4 4000 typ srflx raddr 0.0.0.0 rport 0 ufrag NEWUFRAG\r\n\
             a=setup:passive\r\n"
        );
    }

    #[test]
    fn parse_candidates() {
        let ok = [
            "candidate:842163049 1 udp 1677729535 1.2.3.4 54321 typ srflx raddr 0.0.0.0 rport 0 generation 0 ufrag abcd network-cost 999",
            "842163049 1 udp 1677729535 1.2.3.4 54321 typ srflx raddr 0.0.0.0 rport 0",
            "a=candidate:1 1 UDP 2122252543 192.168.1.5 5000 typ host",
            "candidate:1 1 udp 2122252543 2001:db8::1 5000 typ host",
        ];
        for s in ok {
            assert!(
                matches!(parse_remote_candidate(s), Ok(ParsedCandidate::Candidate(_))),
                "{s}"
            );
        }
        assert!(matches!(
            parse_remote_candidate("candidate:1 1 udp 2122252543 4f2b1c.local 5000 typ host"),
            Ok(ParsedCandidate::Mdns(_))
        ));
        assert!(matches!(
            parse_remote_candidate(
                "candidate:1 1 tcp 1518280447 192.168.1.5 9 typ host tcptype active"
            ),
            Ok(ParsedCandidate::NotUdp(_))
        ));
        assert!(matches!(
            parse_remote_candidate(""),
            Ok(ParsedCandidate::End)
        ));
        assert!(matches!(
            parse_remote_candidate("  "),
            Ok(ParsedCandidate::End)
        ));
        for bad in [
            "garbage",
            "candidate:1 1 udp notanumber 1.2.3.4 5000 typ host",
            "candidate:1 1 udp 1 1.2.3.4 99999 typ host",
            "candidate:1 1 udp 1 1.2.3.4 5000 nottyp host",
            "candidate:1 1 udp 1 1.2.3.4 5000 typ bogus",
            "candidate:1 1 udp 1 not-an-ip 5000 typ host",
        ] {
            assert!(parse_remote_candidate(bad).is_err(), "{bad}");
        }
        let long = format!(
            "candidate:1 1 udp 1 1.2.3.4 5000 typ host {}",
            "x ".repeat(1000)
        );
        assert!(parse_remote_candidate(&long).is_err());
    }
}
