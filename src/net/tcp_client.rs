//! An outgoing byte-stream connection for mio (plain TCP or TLS): resolve, connect, then read
//! and write raw bytes with a bounded write buffer. Used for the HTTP proxy's fetches.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::resolve::{LookupId, Resolver};
use super::stream::{Stream, TlsStream};

/// Bytes a connection may hold unsent.
pub const MAX_WRITE_BUFFER: usize = 64 * 1024;

enum State {
    Resolving(LookupId),
    Connecting {
        tcp: TcpStream,
        rest: Vec<SocketAddr>,
    },
    Open(Stream),
    Closed,
}

/// What happened on a readiness event.
#[derive(Debug, PartialEq, Eq)]
pub enum Ready {
    /// Still connecting.
    Pending,
    /// Connected just now (reported once).
    Connected,
    /// Connected; read with [`TcpClient::read`].
    Open,
    /// Failed; the connection is closed.
    Failed(String),
}

pub struct TcpClient {
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: Token,
    state: State,
    out: Vec<u8>,
}

impl TcpClient {
    pub fn start(
        host: &str,
        port: u16,
        tls: Option<Arc<rustls::ClientConfig>>,
        token: Token,
        resolver: &mut Resolver,
    ) -> TcpClient {
        TcpClient {
            host: host.to_string(),
            port,
            tls,
            token,
            state: State::Resolving(resolver.lookup(host, port)),
            out: Vec::new(),
        }
    }

    pub fn lookup(&self) -> Option<LookupId> {
        match self.state {
            State::Resolving(id) => Some(id),
            _ => None,
        }
    }

    pub fn on_resolved(
        &mut self,
        registry: &Registry,
        answer: io::Result<Vec<SocketAddr>>,
    ) -> Ready {
        match answer {
            Ok(mut addrs) => {
                addrs.reverse();
                self.connect_next(registry, addrs)
            }
            Err(e) => self.fail(registry, format!("cannot resolve {}: {e}", self.host)),
        }
    }

    fn connect_next(&mut self, registry: &Registry, mut rest: Vec<SocketAddr>) -> Ready {
        while let Some(addr) = rest.pop() {
            if let Ok(mut tcp) = TcpStream::connect(addr) {
                if registry
                    .register(
                        &mut tcp,
                        self.token,
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .is_ok()
                {
                    self.state = State::Connecting { tcp, rest };
                    return Ready::Pending;
                }
            }
        }
        self.fail(
            registry,
            format!("cannot connect to {}:{}", self.host, self.port),
        )
    }

    /// Advance on a readiness event; then read and flush.
    pub fn on_ready(&mut self, registry: &Registry) -> Ready {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Connecting { mut tcp, rest } => {
                let connected = match tcp.take_error() {
                    Ok(None) => match tcp.peer_addr() {
                        Ok(_) => true,
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                            self.state = State::Connecting { tcp, rest };
                            return Ready::Pending;
                        }
                        Err(_) => false,
                    },
                    _ => false,
                };
                if !connected {
                    let _ = registry.deregister(&mut tcp);
                    return self.connect_next(registry, rest);
                }
                let _ = tcp.set_nodelay(true);
                let stream = match &self.tls {
                    None => Stream::Plain(tcp),
                    Some(config) => {
                        let conn = super::tls::server_name(&self.host).and_then(|name| {
                            rustls::ClientConnection::new(config.clone(), name)
                                .map_err(|e| e.to_string())
                        });
                        match conn {
                            Ok(conn) => Stream::Tls(Box::new(TlsStream::new(tcp, conn))),
                            Err(e) => return self.fail(registry, e),
                        }
                    }
                };
                self.state = State::Open(stream);
                Ready::Connected
            }
            State::Open(s) => {
                self.state = State::Open(s);
                Ready::Open
            }
            other => {
                self.state = other;
                Ready::Pending
            }
        }
    }

    /// Queue bytes to send; `false` if the write buffer would pass [`MAX_WRITE_BUFFER`].
    pub fn write(&mut self, bytes: &[u8]) -> bool {
        if self.out.len() + bytes.len() > MAX_WRITE_BUFFER {
            return false;
        }
        self.out.extend_from_slice(bytes);
        true
    }

    /// Send what is queued as far as the socket takes it.
    pub fn flush(&mut self) -> io::Result<()> {
        let State::Open(stream) = &mut self.state else {
            return Ok(());
        };
        while !self.out.is_empty() {
            match stream.write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        match stream.flush() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }

    /// Read what is available: `Ok(Some(n))` bytes, `Ok(None)` nothing for now, `Ok(Some(0))`
    /// end of stream.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let State::Open(stream) = &mut self.state else {
            return Ok(None);
        };
        match stream.read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn fail(&mut self, registry: &Registry, why: String) -> Ready {
        self.close(registry);
        Ready::Failed(why)
    }

    pub fn close(&mut self, registry: &Registry) {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Connecting { mut tcp, .. } => {
                let _ = registry.deregister(&mut tcp);
            }
            State::Open(mut s) => {
                let _ = registry.deregister(&mut s);
            }
            _ => {}
        }
    }
}
