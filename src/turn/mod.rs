//! TURN relays for the gateway (docs/design.md#turn-client), sans-IO.
//!
//! - [`stun`]: the STUN codec (also used by `webrtc::stun_gather`): messages, attributes,
//!   MESSAGE-INTEGRITY, addresses, the long-term key.
//! - [`url`]: `turn:`/`turns:` servers with their credentials from an ICE server list.
//! - [`client`]: [`TurnClient`], one allocation: allocate, refresh, permissions, channels,
//!   release; data in and out.
//! - [`framing`]: STUN and ChannelData on a TCP or TLS stream.
//! - [`relays`]: [`Relays`], the gateway's allocations: which server, which transport, which
//!   sessions use each, when to release; what the core asks of it and what it gives back.

pub mod client;
pub mod framing;
pub mod relays;
pub mod stun;
pub mod url;

#[cfg(test)]
mod tests;

pub use client::{Received, SendError, TurnClient, TurnConfig, TurnEvent, TurnOutput};
pub use relays::{RelayId, RelayOutput, Relays};
pub use url::{parse_turn_url, turn_servers_from_ice_servers, TurnServer, TurnTransport};
