//! Non-blocking network plumbing for the mio drivers: streams (plain or TLS), DNS lookups off
//! the loop, outgoing WebSocket connections. No protocol logic lives here.

pub mod connect;
pub mod resolve;
pub mod stream;
pub mod tcp_client;
pub mod tls;
pub mod udp;
pub mod ws_client;
