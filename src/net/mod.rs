//! Non-blocking network plumbing for the mio drivers: streams (plain or TLS), DNS lookups off
//! the loop, outgoing connections ([`link::Link`]). No protocol logic lives here.

pub mod connect;
pub mod link;
pub mod resolve;
pub mod stream;
pub mod tcp_client;
pub mod tls;
pub mod udp;
pub mod ws_client;

/// Read buffer of the drivers: the largest UDP payload, and a good size for stream reads.
pub const READ_BUFFER: usize = 64 * 1024;

/// Where an outgoing connection stands after an input.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Still resolving, connecting or handshaking.
    Pending,
    /// Just opened (reported once): a WebSocket after its handshake, a stream once connected.
    Opened,
    /// Already open.
    Open,
    /// The attempt failed; the connection is closed.
    Failed(String),
}

/// Whether a tungstenite error only means "not now" (the socket would block).
pub fn would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock)
}
