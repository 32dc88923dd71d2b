//! An outgoing byte-stream connection for mio (plain TCP or TLS): resolve, connect, then read
//! and write raw bytes with a bounded write buffer. Used for the HTTP proxy's fetches.

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::{Registry, Token};

use super::connect::{secure, Connecting, Step, TcpConnect};
use super::resolve::Resolver;
use super::stream::Stream;
use super::Progress;

/// Bytes a connection may hold unsent.
pub const MAX_WRITE_BUFFER: usize = 64 * 1024;

enum State {
    Connecting(TcpConnect),
    Open(Stream),
    Closed,
}

pub struct TcpClient {
    host: String,
    tls: Option<Arc<rustls::ClientConfig>>,
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
            tls,
            state: State::Connecting(TcpConnect::start(host, port, token, resolver)),
            out: Vec::new(),
        }
    }

    fn advance(&mut self, step: Step) -> Progress {
        match step {
            Step::Pending => Progress::Pending,
            Step::Failed(why) => {
                self.state = State::Closed;
                Progress::Failed(why)
            }
            Step::Connected(tcp) => match secure(tcp, self.tls.as_ref(), &self.host) {
                Ok(stream) => {
                    self.state = State::Open(stream);
                    Progress::Opened
                }
                Err(e) => {
                    self.state = State::Closed;
                    Progress::Failed(e)
                }
            },
        }
    }

    /// Advance on a readiness event.
    pub fn on_ready(&mut self, registry: &Registry) -> Progress {
        match &mut self.state {
            State::Connecting(c) => {
                let step = c.on_ready(registry);
                self.advance(step)
            }
            State::Open(_) => Progress::Open,
            State::Closed => Progress::Failed("connection closed".into()),
        }
    }

    /// Whether `n` more bytes fit the write buffer.
    pub fn has_room(&self, n: usize) -> bool {
        self.out.len() + n <= MAX_WRITE_BUFFER
    }

    /// The server's address once connected.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        match &self.state {
            State::Open(s) => s.peer_addr().ok(),
            _ => None,
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

    pub fn close(&mut self, registry: &Registry) {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Connecting(mut c) => c.close(registry),
            State::Open(mut s) => {
                let _ = registry.deregister(&mut s);
            }
            _ => {}
        }
    }
}

impl Connecting for TcpClient {
    fn connecting(&mut self) -> Option<&mut TcpConnect> {
        match &mut self.state {
            State::Connecting(c) => Some(c),
            _ => None,
        }
    }

    fn on_step(&mut self, _registry: &Registry, step: Step) -> Progress {
        self.advance(step)
    }
}
