//! What the core tells an operator (docs/design.md#status-and-metrics): counters since the
//! start and a snapshot of each session, read by the status page. Nothing here changes what the
//! core does, and nothing here is secret (no tokens, no message contents).

use std::collections::BTreeMap;
use std::time::Duration;

use super::channels::ChannelKind;
use crate::stats::Histogram;

/// Every channel kind, in the order of the per-kind arrays below.
pub const KINDS: [ChannelKind; 4] = [
    ChannelKind::Api,
    ChannelKind::Sendspin,
    ChannelKind::LiveAnnouncement,
    ChannelKind::HttpProxy,
];

/// Index of `kind` in [`KINDS`].
pub fn kind_index(kind: ChannelKind) -> usize {
    match kind {
        ChannelKind::Api => 0,
        ChannelKind::Sendspin => 1,
        ChannelKind::LiveAnnouncement => 2,
        ChannelKind::HttpProxy => 3,
    }
}

/// Bytes and data channel messages in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub bytes: u64,
    pub messages: u64,
}

impl Traffic {
    pub fn add(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
        self.messages += 1;
    }

    pub fn add_all(&mut self, other: Traffic) {
        self.bytes += other.bytes;
        self.messages += other.messages;
    }

    /// What was added since `earlier` (a copy taken before).
    pub fn since(self, earlier: Traffic) -> Traffic {
        Traffic {
            bytes: self.bytes - earlier.bytes,
            messages: self.messages - earlier.messages,
        }
    }
}

/// Why a session was refused or pushed out before it could serve a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every slot holds a connected session (`MA_MAX_SESSIONS`).
    Full,
    /// A session not connected yet was pushed out by a newcomer.
    Evicted,
    /// The client's offer could not be used.
    BadOffer,
    /// The WebRTC session could not be created or routed.
    Internal,
}

impl Refused {
    pub const ALL: [Refused; 4] = [
        Refused::Full,
        Refused::Evicted,
        Refused::BadOffer,
        Refused::Internal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Refused::Full => "full",
            Refused::Evicted => "evicted",
            Refused::BadOffer => "bad_offer",
            Refused::Internal => "internal",
        }
    }
}

/// Upper bounds (seconds) of the set-up time histogram: `client-connected` to ICE and DTLS up.
pub const SETUP_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Counters since the gateway started.
#[derive(Debug, Clone)]
pub struct Counters {
    /// Sessions created (`client-connected` accepted).
    pub sessions_created: u64,
    /// From the client, per channel kind ([`KINDS`] order).
    pub from_client: [Traffic; 4],
    /// To the client, per channel kind.
    pub to_client: [Traffic; 4],
    /// Refusals by reason ([`Refused::ALL`] order).
    pub refused: [u64; 4],
    /// Set-up time of the sessions that connected.
    pub setup: Histogram,
    /// HTTP proxy responses by status code (the gateway's own 4xx/5xx included).
    pub proxy_status: BTreeMap<u16, u64>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            sessions_created: 0,
            from_client: Default::default(),
            to_client: Default::default(),
            refused: [0; 4],
            setup: Histogram::new(SETUP_BUCKETS),
            proxy_status: BTreeMap::new(),
        }
    }
}

impl Counters {
    pub fn refuse(&mut self, why: Refused) {
        self.refused[Refused::ALL.iter().position(|r| *r == why).unwrap_or(0)] += 1;
    }

    pub fn proxy_response(&mut self, status: u16) {
        // Status codes are three digits (the parser refuses others); anything else is one key.
        let status = if (100..1000).contains(&status) {
            status
        } else {
            0
        };
        *self.proxy_status.entry(status).or_default() += 1;
    }
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// `client-connected` seen, no offer yet.
    AwaitingOffer,
    /// Offer answered, ICE and DTLS not up yet.
    Connecting,
    Connected,
    /// Closing: channel resets in flight.
    Closing,
}

impl SessionState {
    pub const ALL: [SessionState; 4] = [
        SessionState::AwaitingOffer,
        SessionState::Connecting,
        SessionState::Connected,
        SessionState::Closing,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SessionState::AwaitingOffer => "awaiting_offer",
            SessionState::Connecting => "connecting",
            SessionState::Connected => "connected",
            SessionState::Closing => "closing",
        }
    }
}

/// One session as the status page shows it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The signaling session id (chosen by the signaling server, not a secret: it is in every
    /// log line about the session).
    pub id: String,
    pub age: Duration,
    pub state: SessionState,
    /// The kinds of the channels open, by name.
    pub channels: Vec<&'static str>,
    pub from_client: Traffic,
    pub to_client: Traffic,
    /// The remote candidate type the session sends to, once connected
    /// (`PeerSession::remote_candidate_type`).
    pub candidate_type: Option<&'static str>,
}
