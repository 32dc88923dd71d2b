//! One face for every outgoing connection the gateway owns: the signaling WebSocket, the local
//! WebSockets of the bridges and the HTTP proxy's byte streams. The driver reads, writes,
//! flushes and closes them all through [`Link`], so each of those is written once.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use mio::{Registry, Token};
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::Message;

use super::connect::Connecting;
use super::resolve::{LookupId, Resolver};
use super::tcp_client::TcpClient;
use super::ws_client::WsClient;
use super::{would_block, Progress};
use crate::config::WsUrl;

/// Bytes one read of a WebSocket may take from its socket. tungstenite's default (128 KiB)
/// is allocated and zero-filled on the first read, and a message still queued keeps the whole
/// buffer it was read into alive: per bridge, that was most of an idle session's memory and
/// a 128 KiB allocation behind every message waiting for a slow client. A larger message
/// still arrives whole (the buffer grows to its length), in reads of this size.
/// See docs/design.md#where-the-memory-goes.
pub const WS_READ_BUFFER: usize = 16 * 1024;
/// Bytes a WebSocket gathers before it writes to its socket (the driver flushes once per
/// turn anyway). tungstenite's default, 128 KiB, left each bridge's write buffer that large
/// for good once a client had sent a burst.
pub const WS_WRITE_BUFFER: usize = 16 * 1024;

/// A WebSocket configuration with small read and write buffers and bounded messages, frames
/// and write buffer.
pub fn ws_config(max_message: usize, max_write_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
        .max_write_buffer_size(max_write_buffer)
}

/// What one read from a link produced.
#[derive(Debug)]
pub enum Incoming {
    /// A WebSocket message (text, binary, ping, pong).
    Message(Message),
    /// This many bytes of a byte stream, at the start of the read buffer.
    Bytes(usize),
    /// The peer ended the connection cleanly (a close frame, or the end of a byte stream).
    Closed { code: Option<u16>, reason: String },
}

pub enum Link {
    Ws(WsClient),
    Tcp(TcpClient),
}

impl Link {
    /// Start a WebSocket connection (`tls` is required for `wss://`).
    pub fn websocket(
        url: &WsUrl,
        tls: Option<Arc<rustls::ClientConfig>>,
        config: WebSocketConfig,
        token: Token,
        resolver: &mut Resolver,
    ) -> Link {
        Link::Ws(WsClient::start(url, tls, config, token, resolver))
    }

    /// Start a byte-stream connection (TLS when `tls` is given).
    pub fn stream(
        host: &str,
        port: u16,
        tls: Option<Arc<rustls::ClientConfig>>,
        token: Token,
        resolver: &mut Resolver,
    ) -> Link {
        Link::Tcp(TcpClient::start(host, port, tls, token, resolver))
    }

    /// The DNS lookup the link waits for, if it is still resolving.
    pub fn lookup(&mut self) -> Option<LookupId> {
        match self {
            Link::Ws(c) => c.lookup(),
            Link::Tcp(c) => c.lookup(),
        }
    }

    /// Feed the DNS answer.
    pub fn on_resolved(
        &mut self,
        registry: &Registry,
        answer: io::Result<Vec<SocketAddr>>,
    ) -> Progress {
        match self {
            Link::Ws(c) => c.on_resolved(registry, answer),
            Link::Tcp(c) => c.on_resolved(registry, answer),
        }
    }

    /// Advance on a readiness event.
    pub fn on_ready(&mut self, registry: &Registry) -> Progress {
        match self {
            Link::Ws(c) => c.on_ready(registry),
            Link::Tcp(c) => c.on_ready(registry),
        }
    }

    /// Read once: `Ok(None)` when nothing is there now (or the link is not open yet).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<Option<Incoming>, String> {
        match self {
            Link::Ws(c) => {
                let Some(ws) = c.socket() else {
                    return Ok(None);
                };
                match ws.read() {
                    Ok(Message::Close(frame)) => {
                        // tungstenite queued the close reply: push it out before we drop.
                        let _ = ws.flush();
                        let (code, reason) = frame
                            .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                            .unwrap_or((None, String::new()));
                        Ok(Some(Incoming::Closed { code, reason }))
                    }
                    Ok(msg) => Ok(Some(Incoming::Message(msg))),
                    Err(e) if would_block(&e) => Ok(None),
                    Err(e) => Err(e.to_string()),
                }
            }
            Link::Tcp(c) => match c.read(buf) {
                Ok(None) => Ok(None),
                Ok(Some(0)) => Ok(Some(Incoming::Closed {
                    code: None,
                    reason: "end of stream".into(),
                })),
                Ok(Some(n)) => Ok(Some(Incoming::Bytes(n))),
                Err(e) => Err(e.to_string()),
            },
        }
    }

    /// Queue a WebSocket message (flushed by [`Link::flush`]). An error means the link is
    /// unusable: not a WebSocket, not open, or its bounded write buffer is full (`None`: the
    /// other end does not read fast enough).
    pub fn send(&mut self, msg: Message) -> Result<(), Option<String>> {
        let Link::Ws(c) = self else {
            return Err(Some("not a WebSocket".into()));
        };
        let Some(ws) = c.socket() else {
            return Err(Some("not open".into()));
        };
        match ws.write(msg) {
            Ok(()) => Ok(()),
            Err(e) if would_block(&e) => Ok(()),
            Err(tungstenite::Error::WriteBufferFull(_)) => Err(None),
            Err(e) => Err(Some(e.to_string())),
        }
    }

    /// Queue bytes on a byte stream (buffered until it is connected; bounded).
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        match self {
            Link::Tcp(c) => match c.write(bytes) {
                true => Ok(()),
                false => Err("request too large for the connection buffer".into()),
            },
            Link::Ws(_) => Err("not a byte stream".into()),
        }
    }

    /// Whether a byte stream's write buffer takes `n` more bytes now.
    pub fn has_room(&self, n: usize) -> bool {
        match self {
            Link::Tcp(c) => c.has_room(n),
            Link::Ws(_) => false,
        }
    }

    /// A byte stream's peer, once connected.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            Link::Tcp(c) => c.peer_addr(),
            Link::Ws(_) => None,
        }
    }

    /// Push out what is queued as far as the socket takes it.
    pub fn flush(&mut self) -> Result<(), String> {
        match self {
            Link::Ws(c) => match c.socket().map(|ws| ws.flush()) {
                None | Some(Ok(())) => Ok(()),
                Some(Err(e)) if would_block(&e) => Ok(()),
                Some(Err(e)) => Err(e.to_string()),
            },
            Link::Tcp(c) => c.flush().map_err(|e| e.to_string()),
        }
    }

    /// Close: a WebSocket that is open says goodbye first (`frame`, best effort), then the
    /// socket is deregistered and dropped.
    pub fn close(&mut self, registry: &Registry, frame: Option<CloseFrame>) {
        if let Link::Ws(c) = self {
            if let Some(ws) = c.socket() {
                let _ = ws.close(frame);
                let _ = ws.flush();
            }
        }
        match self {
            Link::Ws(c) => c.close(registry),
            Link::Tcp(c) => c.close(registry),
        }
    }
}
