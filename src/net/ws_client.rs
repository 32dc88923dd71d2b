//! An outgoing WebSocket connection for mio: resolve, TCP connect, optional TLS, WebSocket
//! handshake, then an open `tungstenite::WebSocket`. Every step is non-blocking and advances
//! when the driver reports an event for the connection's token.

use std::sync::Arc;

use mio::{Registry, Token};
use tungstenite::handshake::client::ClientHandshake;
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::WebSocket;

use super::connect::{secure, Connecting, Step, TcpConnect};
use super::resolve::Resolver;
use super::stream::Stream;
pub use super::Progress;
use crate::config::WsUrl;

enum State {
    Connecting(TcpConnect),
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
        WsClient {
            url: url.clone(),
            tls,
            config,
            token,
            state: State::Connecting(TcpConnect::start(&url.host, url.port, token, resolver)),
        }
    }

    pub fn token(&self) -> Token {
        self.token
    }

    fn advance(&mut self, registry: &Registry, step: Step) -> Progress {
        match step {
            Step::Pending => Progress::Pending,
            Step::Failed(why) => self.fail(registry, why),
            Step::Connected(tcp) => {
                if self.url.tls && self.tls.is_none() {
                    return self.fail(registry, "wss:// needs a TLS configuration".into());
                }
                // TLS only for wss://: one configuration serves every connection, and a
                // ws:// one (MA's local API) must stay plain.
                let tls = self.tls.as_ref().filter(|_| self.url.tls);
                let stream = match secure(tcp, tls, &self.url.host) {
                    Ok(s) => s,
                    Err(e) => return self.fail(registry, e),
                };
                let result = tungstenite::client::client_with_config(
                    self.url.to_url(),
                    stream,
                    Some(self.config),
                );
                self.handshake_result(registry, result)
            }
        }
    }

    /// Advance on a readiness event for this client's token.
    pub fn on_ready(&mut self, registry: &Registry) -> Progress {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Connecting(mut c) => {
                let step = c.on_ready(registry);
                self.state = State::Connecting(c);
                self.advance(registry, step)
            }
            State::Handshaking(mid) => self.handshake_result(registry, mid.handshake()),
            State::Open(ws) => {
                self.state = State::Open(ws);
                Progress::Open
            }
            State::Closed => Progress::Failed("connection closed".into()),
        }
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
            State::Connecting(mut c) => c.close(registry),
            State::Handshaking(mut mid) => {
                let _ = registry.deregister(mid.get_mut().get_mut());
            }
            State::Open(mut ws) => {
                let _ = registry.deregister(ws.get_mut());
            }
            State::Closed => {}
        }
    }
}

impl Connecting for WsClient {
    fn connecting(&mut self) -> Option<&mut TcpConnect> {
        match &mut self.state {
            State::Connecting(c) => Some(c),
            _ => None,
        }
    }

    fn on_step(&mut self, registry: &Registry, step: Step) -> Progress {
        self.advance(registry, step)
    }
}
