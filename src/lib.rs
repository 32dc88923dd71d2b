//! ma-webrtc-gateway: remote access for Music Assistant.
//!
//! Protocol logic lives in sans-IO state machines (no sockets, explicit `now`), driven by thin
//! mio drivers:
//! - [`config`]: flags and environment variables.
//! - [`identity`]: DTLS certificate, Remote ID and its pin check.
//! - [`backoff`]: reconnect schedule with jitter.
//! - [`signaling`]: the gateway's signaling client (sans-IO).
//! - [`net`]: non-blocking TCP/TLS/WebSocket plumbing for mio.
//! - [`driver`]: the gateway's event loop.

pub mod backoff;
pub mod chunk;
pub mod client;
pub mod config;
pub mod driver;
pub mod gateway;
pub mod http_proxy;
pub mod identity;
pub mod net;
pub mod signal;
pub mod signaling;
pub mod webrtc;
