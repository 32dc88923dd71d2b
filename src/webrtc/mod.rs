//! The gateway's WebRTC layer (answerer side), sans-IO: no sockets in here.
//!
//! - [`session`]: [`PeerSession`], one `str0m::Rtc` per remote client, with panic isolation,
//!   ICE-restart handling, trickled candidates in the signaling JSON shape and data channels.
//! - [`router`]: [`Router`], which session an incoming datagram on the one shared UDP socket
//!   belongs to (by our ICE ufrag for STUN, then by source address), O(1) per packet.
//! - [`stun_gather`]: [`StunGatherer`], server-reflexive discovery with STUN Binding requests
//!   sent from the shared socket, and `stun:` URL parsing.
//!
//! Driving it (one mio loop, one UDP socket):
//! 1. Datagram in: [`Router::route`] → [`Route::Session`]: `session.handle_receive(..)`;
//!    [`Route::Gather`]: `gatherer.handle_response(..)`; [`Route::Drop`]: nothing.
//! 2. After any call into a session, drain its `poll_output` (it is a
//!    [`Machine`](crate::machine::Machine)) until `Next::Timeout`: send each transmit (and tell
//!    the router with [`Router::note_transmit`]), handle events, remember the timeout.
//! 3. After [`PeerSession::handle_offer`], re-register the ufrag: an ICE restart changes it
//!    ([`Router::set_ufrag`] with [`PeerSession::local_ufrag`]).
//! 4. On [`SessionEvent::Closed`], keep draining to the timeout, then drop the session and call
//!    [`Router::remove_session`].

pub mod router;
pub mod session;
pub mod stun_gather;

pub use router::{DropReason, Route, Router, RouterError};
pub use session::{
    CloseReason, PeerSession, RemoteCandidateOutcome, SessionConfig, SessionError, SessionEvent,
    SessionOutput, Transmit,
};
pub use stun_gather::{
    parse_stun_url, stun_servers_from_ice_servers, GatherConfig, GatherError, GatherEvent,
    GatherOutput, StunGatherer, StunUrl, TransactionId, DEFAULT_STUN_URLS,
};

/// str0m's data channel id (opaque, `Copy + Eq + Hash`).
pub use str0m::channel::ChannelId;
/// str0m's DTLS certificate type: `DtlsCert { certificate: Vec<u8> /* DER */, private_key:
/// Vec<u8> /* DER, PKCS#8 or SEC1 */ }`.
pub use str0m::config::DtlsCert;

/// STUN magic cookie (RFC 5389).
pub(crate) const STUN_MAGIC_COOKIE: u32 = 0x2112_A442;

/// Whether `bytes` look like a STUN message: first two bits zero (first byte 0 or 1), at least a
/// 20-byte header, and the magic cookie at bytes 4..8.
pub fn is_stun(bytes: &[u8]) -> bool {
    bytes.len() >= 20 && bytes[0] < 2 && bytes[4..8] == STUN_MAGIC_COOKIE.to_be_bytes()
}
