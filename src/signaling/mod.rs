//! The signaling protocol (docs/protocol.md#signaling): its messages ([`protocol`]), the
//! gateway's side ([`client`]) and the self-hosted server's ([`server`]).

pub mod client;
pub mod protocol;
pub mod server;
