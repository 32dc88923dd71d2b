//! The signaling protocol (docs/protocol.md#signaling): the gateway's side ([`client`]) and
//! the self-hosted server's ([`server`]).

pub mod client;
pub mod server;
