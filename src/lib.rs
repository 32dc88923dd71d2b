//! ma-webrtc-gateway: remote access for Music Assistant.
//!
//! The wire protocol is in `docs/protocol.md`, the design in `docs/design.md`; this page is the
//! map.
//!
//! # One convention
//! Protocol logic lives in sans-IO state machines that own no socket, no thread and no clock
//! ([`machine`]): every input is a `handle_…(now, …)` method, constructors take `now`, and
//! [`machine::Machine::poll_output`] returns either the next output or the next deadline
//! ([`machine::Next`]), as str0m's `Rtc` does. A driver owns the mio `Poll`, the sockets and
//! the clock; it feeds inputs, carries out outputs until it gets the deadline, and sleeps until
//! then. Codecs without time ([`chunk`], `http_proxy::client::HttpConn`, the request and
//! response encoders, [`webrtc::Router`]) are plain functions and types.
//!
//! # Machines
//! - [`signaling::protocol`]: the signaling messages and close codes, typed, shared by the three
//!   sides below (not a machine: the vocabulary).
//! - [`signaling::client::SignalingClient`]: the gateway's side of signaling: connect,
//!   register, keep alive, relay sessions, reconnect with backoff.
//! - [`gateway::Gateway`]: the gateway core: sessions, channel routing by label, bridges to
//!   MA's local services, the HTTP proxy's scheduling, when to ask STUN for our address.
//! - [`ice_source::IceSource`]: each session's ICE servers, the static list or one fetched for
//!   it from Home Assistant Cloud or a URL, never holding up `session-ready` beyond 2.5 s.
//! - [`webrtc::PeerSession`] (one str0m answerer), [`webrtc::StunGatherer`] (server-reflexive
//!   discovery), driven by the core.
//! - [`turn::Relays`] (with a [`turn::TurnClient`] per allocation): the gateway's TURN relays,
//!   driven by the core.
//! - [`http_proxy::ProxyPool`]: fetches for the image proxy, driven by the core.
//! - [`signaling::server::SignalServer`]: the self-hosted signaling server's relay.
//! - [`remote_client::RemoteClient`]: the web app's side, for `connect`, tests and benchmarks.
//!
//! # Drivers and plumbing
//! - [`driver`]: the command dispatch and the mio loops: [`driver::gateway`] (the production
//!   loop, with its outgoing [`driver::connections`]), [`driver::connect`] (the diagnostic
//!   client) and [`driver::signal`] (the self-hosted server).
//! - [`net`]: non-blocking TCP/TLS/WebSocket/UDP for mio, DNS off the loop. No protocol logic.
//! - [`config`] (flags and environment variables), [`identity`] (DTLS certificate, Remote ID,
//!   pin check), [`backoff`] (reconnect schedule with jitter), [`stats`] (percentiles for the
//!   figures diagnostics print).
//!
//! # The operator's side
//! - [`status`]: the status port's pages (`/status`, `/metrics`, `/healthz`), rendered from a
//!   snapshot the gateway driver gathers; `driver::status` serves them from the same loop.
//! - [`doctor`]: the `doctor` command's checks and verdict; [`qr`]: `id --qr`;
//!   [`logging`]: text or JSON log lines.
//!
//! Only the DNS lookups run off the loop, on short-lived threads; the load generator and its
//! threads are a bench target (`benches/load.rs`), not part of the binary.
//!
//! # Tests and benchmarks
//! `testkit` (compiled for this crate's tests and with the `testkit` feature, which the tests
//! and benchmarks turn on through a self dev-dependency): one in-memory network, a `Pair` of
//! two ends (the gateway core, our web-app clients, a bare str0m peer, a `PeerSession`) under
//! a simulated or a real clock.

pub mod backoff;
pub mod chunk;
pub mod config;
pub mod doctor;
pub mod driver;
pub mod gateway;
pub mod http_proxy;
pub mod ice_source;
pub mod identity;
pub mod logging;
pub mod machine;
pub mod net;
pub mod qr;
pub mod remote_client;
pub mod signaling;
pub mod stats;
pub mod status;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod turn;
pub mod webrtc;
