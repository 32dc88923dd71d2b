//! An outgoing WebSocket connection for mio: resolve, TCP connect, optional TLS, WebSocket
//! handshake, then an open `tungstenite::WebSocket`. Every step is non-blocking and advances
//! when the driver reports an event for the connection's token.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use tungstenite::handshake::client::ClientHandshake;
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::WebSocket;

use super::resolve::{LookupId, Resolver};
use super::stream::{Stream, TlsStream};
use crate::config::WsUrl;

/// Where a connection attempt stands after an input.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Still resolving, connecting or handshaking.
    Pending,
    /// The WebSocket just opened (reported once).
    Opened,
    /// Already open: read and write through [`WsClient::socket`].
    Open,
    /// The attempt failed; the client is closed.
    Failed(String),
}

enum State {
    Resolving(LookupId),
    Connecting {
        tcp: TcpStream,
        addr: SocketAddr,
        rest: Vec<SocketAddr>,
    },
    Handshaking(Box<MidHandshake<ClientHandshake<Stream>>>),
    Open(Box<WebSocket<Stream>>),
    Closed,
}

pub struct WsClient {
    url: WsUrl,
    tls: Option<Arc<rustls::ClientConfig>>,
    config: WebSocketConfig,
    token: Token,
    state: State,
}

impl WsClient {
    /// Start connecting to `url`; `tls` is required for `wss://`.
    pub fn start(
        url: &WsUrl,
        tls: Option<Arc<rustls::ClientConfig>>,
        config: WebSocketConfig,
        token: Token,
        resolver: &mut Resolver,
    ) -> WsClient {
        let lookup = resolver.lookup(&url.host, url.port);
        WsClient {
            url: url.clone(),
            tls,
            config,
            token,
            state: State::Resolving(lookup),
        }
    }

    pub fn token(&self) -> Token {
        self.token
    }

    /// The lookup this client waits for, if it is still resolving.
    pub fn lookup(&self) -> Option<LookupId> {
        match self.state {
            State::Resolving(id) => Some(id),
            _ => None,
        }
    }

    /// Feed the DNS answer.
    pub fn on_resolved(
        &mut self,
        registry: &Registry,
        answer: io::Result<Vec<SocketAddr>>,
    ) -> Progress {
        match answer {
            Ok(mut addrs) => {
                addrs.reverse(); // try them in the resolver's order, popping from the end
                self.connect_next(registry, addrs, String::new())
            }
            Err(e) => self.fail(registry, format!("cannot resolve {}: {e}", self.url.host)),
        }
    }

    fn connect_next(
        &mut self,
        registry: &Registry,
        mut rest: Vec<SocketAddr>,
        last_error: String,
    ) -> Progress {
        while let Some(addr) = rest.pop() {
            match TcpStream::connect(addr) {
                Ok(mut tcp) => {
                    if let Err(e) = registry.register(
                        &mut tcp,
                        self.token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        return self.fail(registry, format!("cannot register socket: {e}"));
                    }
                    self.state = State::Connecting { tcp, addr, rest };
                    return Progress::Pending;
                }
                Err(e) => log::debug!("connect to {addr} failed: {e}"),
            }
        }
        let why = if last_error.is_empty() {
            "no address to connect to".to_string()
        } else {
            last_error
        };
        self.fail(
            registry,
            format!("cannot connect to {}: {why}", self.url.host_port()),
        )
    }

    /// Advance on a readiness event for this client's token.
    pub fn on_ready(&mut self, registry: &Registry) -> Progress {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Resolving(id) => {
                self.state = State::Resolving(id);
                Progress::Pending
            }
            State::Connecting {
                mut tcp,
                addr,
                rest,
            } => {
                let failed = match tcp.take_error() {
                    Ok(Some(e)) | Err(e) => Some(e),
                    Ok(None) => match tcp.peer_addr() {
                        Ok(_) => None,
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                            self.state = State::Connecting { tcp, addr, rest };
                            return Progress::Pending;
                        }
                        Err(e) => Some(e),
                    },
                };
                if let Some(e) = failed {
                    let _ = registry.deregister(&mut tcp);
                    return self.connect_next(registry, rest, format!("{addr}: {e}"));
                }
                let _ = tcp.set_nodelay(true);
                self.handshake_start(registry, tcp)
            }
            State::Handshaking(mid) => self.handshake_result(registry, mid.handshake()),
            State::Open(ws) => {
                self.state = State::Open(ws);
                Progress::Open
            }
            State::Closed => Progress::Failed("connection closed".into()),
        }
    }

    fn handshake_start(&mut self, registry: &Registry, tcp: TcpStream) -> Progress {
        let stream = match &self.tls {
            None if self.url.tls => {
                return self.fail(registry, "wss:// needs a TLS configuration".into())
            }
            None => Stream::Plain(tcp),
            Some(config) => {
                let name = match super::tls::server_name(&self.url.host) {
                    Ok(n) => n,
                    Err(e) => return self.fail(registry, e),
                };
                match rustls::ClientConnection::new(config.clone(), name) {
                    Ok(conn) => Stream::Tls(Box::new(TlsStream::new(tcp, conn))),
                    Err(e) => return self.fail(registry, format!("TLS setup failed: {e}")),
                }
            }
        };
        let result =
            tungstenite::client::client_with_config(self.url.to_url(), stream, Some(self.config));
        self.handshake_result(registry, result)
    }

    fn handshake_result(
        &mut self,
        registry: &Registry,
        result: Result<
            (WebSocket<Stream>, tungstenite::handshake::client::Response),
            HandshakeError<ClientHandshake<Stream>>,
        >,
    ) -> Progress {
        match result {
            Ok((ws, _response)) => {
                self.state = State::Open(Box::new(ws));
                Progress::Opened
            }
            Err(HandshakeError::Interrupted(mid)) => {
                self.state = State::Handshaking(Box::new(mid));
                Progress::Pending
            }
            Err(HandshakeError::Failure(e)) => self.fail(
                registry,
                format!("WebSocket handshake with {} failed: {e}", self.url.to_url()),
            ),
        }
    }

    fn fail(&mut self, registry: &Registry, why: String) -> Progress {
        self.close(registry);
        Progress::Failed(why)
    }

    /// The open WebSocket, if the handshake is done.
    pub fn socket(&mut self) -> Option<&mut WebSocket<Stream>> {
        match &mut self.state {
            State::Open(ws) => Some(ws),
            _ => None,
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open(_))
    }

    /// Deregister and drop the socket (no close handshake: call `socket().close()` first for a
    /// polite close).
    pub fn close(&mut self, registry: &Registry) {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Connecting { mut tcp, .. } => {
                let _ = registry.deregister(&mut tcp);
            }
            State::Handshaking(mut mid) => {
                let _ = registry.deregister(mid.get_mut().get_mut());
            }
            State::Open(mut ws) => {
                let _ = registry.deregister(ws.get_mut());
            }
            State::Resolving(_) | State::Closed => {}
        }
    }
}
