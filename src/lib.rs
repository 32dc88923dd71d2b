//! ma-webrtc-gateway: remote access for Music Assistant.
//!
//! Protocol logic lives in sans-IO state machines (inputs carry `now`, outputs are polled, no
//! sockets), driven by thin mio drivers that only move bytes between sockets and machines.
//!
//! State machines (their common face: [`machine`]):
//! - [`signaling::protocol`]: the signaling messages, shared by the three sides below.
//! - [`signaling::client`]: the gateway's side of the signaling protocol.
//! - [`gateway`]: sessions, channel routing by label, bridges to local services.
//! - [`webrtc`]: str0m answerer sessions, UDP routing by ufrag/address, STUN gathering.
//! - [`chunk`]: `__chunk__` framing and reassembly of large messages.
//! - [`http_proxy`]: request hardening, an HTTP/1.1 client, the fetch pool.
//! - [`signaling::server`]: the self-hosted signaling server's relay.
//! - [`remote_client`]: the web app's side, for diagnostics, tests and benchmarks.
//!
//! Plumbing and drivers:
//! - [`config`]: flags and environment variables.
//! - [`identity`]: DTLS certificate, Remote ID and its pin check.
//! - [`backoff`]: reconnect schedule with jitter.
//! - [`stats`]: percentiles for the figures diagnostics and benchmarks print.
//! - [`net`]: non-blocking TCP/TLS/WebSocket/UDP for mio, DNS off the loop.
//! - [`driver`]: the event loops (`gateway`, `connect`, `signal`) and the command dispatch.
//!
//! Tests and benchmarks: `testkit` (this crate's tests, or the `testkit` feature), an
//! in-memory network that wires two machines together with a simulated or real clock.

pub mod backoff;
pub mod chunk;
pub mod config;
pub mod driver;
pub mod gateway;
pub mod http_proxy;
pub mod identity;
pub mod machine;
pub mod net;
pub mod remote_client;
pub mod signaling;
pub mod stats;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod webrtc;
