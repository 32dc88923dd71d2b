//! The first steps of every outgoing connection: resolve the host off the loop, then a
//! non-blocking TCP connect trying each address in turn; then TLS if asked for.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::resolve::{LookupId, Resolver};
use super::stream::{Stream, TlsStream};

/// Where a connection attempt stands.
pub enum Step {
    Pending,
    /// Connected (registered for read and write under the attempt's token).
    Connected(TcpStream),
    /// Every address failed.
    Failed(String),
}

enum State {
    Resolving(LookupId),
    Connecting {
        tcp: TcpStream,
        addr: SocketAddr,
        rest: Vec<SocketAddr>,
    },
    Done,
}

pub struct TcpConnect {
    host: String,
    port: u16,
    token: Token,
    state: State,
}

impl TcpConnect {
    pub fn start(host: &str, port: u16, token: Token, resolver: &mut Resolver) -> TcpConnect {
        TcpConnect {
            host: host.to_string(),
            port,
            token,
            state: State::Resolving(resolver.lookup(host, port)),
        }
    }

    /// The lookup this attempt waits for.
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
    ) -> Step {
        match answer {
            Ok(mut addrs) => {
                addrs.reverse(); // try them in the resolver's order, popping from the end
                self.connect_next(registry, addrs, String::new())
            }
            Err(e) => {
                self.state = State::Done;
                Step::Failed(format!("cannot resolve {}: {e}", self.host))
            }
        }
    }

    fn connect_next(
        &mut self,
        registry: &Registry,
        mut rest: Vec<SocketAddr>,
        mut last_error: String,
    ) -> Step {
        while let Some(addr) = rest.pop() {
            let attempt = TcpStream::connect(addr).and_then(|mut tcp| {
                registry.register(
                    &mut tcp,
                    self.token,
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                Ok(tcp)
            });
            match attempt {
                Ok(tcp) => {
                    self.state = State::Connecting { tcp, addr, rest };
                    return Step::Pending;
                }
                Err(e) => last_error = format!("{addr}: {e}"),
            }
        }
        self.state = State::Done;
        let why = if last_error.is_empty() {
            "no address to connect to".to_string()
        } else {
            last_error
        };
        Step::Failed(format!(
            "cannot connect to {}:{}: {why}",
            self.host, self.port
        ))
    }

    /// Advance on a readiness event for the attempt's token.
    pub fn on_ready(&mut self, registry: &Registry) -> Step {
        let State::Connecting {
            mut tcp,
            addr,
            rest,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Step::Pending;
        };
        let failed = match tcp.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match tcp.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    self.state = State::Connecting { tcp, addr, rest };
                    return Step::Pending;
                }
                Err(e) => Some(e),
            },
        };
        if let Some(e) = failed {
            let _ = registry.deregister(&mut tcp);
            return self.connect_next(registry, rest, format!("{addr}: {e}"));
        }
        let _ = tcp.set_nodelay(true);
        Step::Connected(tcp)
    }

    /// Give up: deregister a socket still connecting.
    pub fn close(&mut self, registry: &Registry) {
        if let State::Connecting { mut tcp, .. } = std::mem::replace(&mut self.state, State::Done) {
            let _ = registry.deregister(&mut tcp);
        }
    }
}

/// Wrap a connected socket in TLS for `host` when `tls` is given.
pub fn secure(
    tcp: TcpStream,
    tls: Option<&Arc<rustls::ClientConfig>>,
    host: &str,
) -> Result<Stream, String> {
    let Some(config) = tls else {
        return Ok(Stream::Plain(tcp));
    };
    let name = super::tls::server_name(host)?;
    let conn = rustls::ClientConnection::new(config.clone(), name)
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    Ok(Stream::Tls(Box::new(TlsStream::new(tcp, conn))))
}

/// A client whose first phase is a [`TcpConnect`]: the lookup and the DNS answer are handled
/// here once for every kind of client; each kind says what follows a connected socket.
pub trait Connecting {
    /// The connect phase, while the client is in it.
    fn connecting(&mut self) -> Option<&mut TcpConnect>;
    /// Carry on after a step of the connect phase.
    fn on_step(&mut self, registry: &Registry, step: Step) -> super::Progress;

    /// The lookup this client waits for, if it is still resolving.
    fn lookup(&mut self) -> Option<LookupId> {
        self.connecting().and_then(|c| c.lookup())
    }

    /// Feed the DNS answer.
    fn on_resolved(
        &mut self,
        registry: &Registry,
        answer: io::Result<Vec<SocketAddr>>,
    ) -> super::Progress {
        match self.connecting() {
            Some(c) => {
                let step = c.on_resolved(registry, answer);
                self.on_step(registry, step)
            }
            None => super::Progress::Pending,
        }
    }
}
