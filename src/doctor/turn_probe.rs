//! `doctor`'s TURN check: one real allocation on a configured server, with the gateway's own
//! TURN client machine ([`TurnClient`], docs/design.md#turn-client) driven by blocking sockets
//! (the doctor is a one-shot command, not the event loop), then released.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use super::{TurnOutcome, TurnProbe, TurnServer};
use crate::machine::{Machine, Next};
use crate::turn::framing::StreamFramer;
use crate::turn::{TurnClient, TurnConfig, TurnEvent, TurnOutput, TurnTransport};

/// Allocates for real: UDP, TCP or TLS as the URL says (TLS verified against the public roots
/// and `extra_ca`, as the gateway does).
pub struct LiveTurnProbe {
    pub extra_ca: Option<std::path::PathBuf>,
}

/// Where the machine's bytes go and come from.
trait Transport {
    fn send(&mut self, bytes: &[u8]) -> Result<(), String>;
    /// One message from the server, or `None` when `wait` passed first.
    fn recv(&mut self, wait: Duration) -> Result<Option<Vec<u8>>, String>;
}

struct Udp {
    socket: UdpSocket,
    server: SocketAddr,
}

impl Transport for Udp {
    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.socket
            .send_to(bytes, self.server)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn recv(&mut self, wait: Duration) -> Result<Option<Vec<u8>>, String> {
        let mut buf = vec![0; 2048];
        self.socket
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .map_err(|e| e.to_string())?;
        match self.socket.recv_from(&mut buf) {
            Ok((n, from)) if from == self.server => {
                buf.truncate(n);
                Ok(Some(buf))
            }
            Ok(_) => Ok(None),
            Err(e) if is_timeout(&e) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// TCP or TLS, framed as RFC 8656 says.
struct Stream<S: Read + Write> {
    io: S,
    framer: StreamFramer,
    set_timeout: fn(&S, Duration) -> std::io::Result<()>,
}

impl<S: Read + Write> Transport for Stream<S> {
    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.io.write_all(bytes).map_err(|e| e.to_string())?;
        self.io.flush().map_err(|e| e.to_string())
    }

    fn recv(&mut self, wait: Duration) -> Result<Option<Vec<u8>>, String> {
        loop {
            if let Some(frame) = self.framer.next_frame().map_err(|e| format!("{e:?}"))? {
                return Ok(Some(frame.to_vec()));
            }
            (self.set_timeout)(&self.io, wait.max(Duration::from_millis(1)))
                .map_err(|e| e.to_string())?;
            let mut buf = [0; 4096];
            match self.io.read(&mut buf) {
                Ok(0) => return Err("the server closed the connection".into()),
                Ok(n) => self.framer.push(&buf[..n]),
                Err(e) if is_timeout(&e) => return Ok(None),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

impl TurnProbe for LiveTurnProbe {
    fn allocate(&self, server: &TurnServer, timeout: Duration) -> TurnOutcome {
        let (Some(user), Some(credential)) = (&server.username, &server.credential) else {
            return TurnOutcome::Failed("no username and credential for it".into());
        };
        let Some(turn) = crate::turn::parse_turn_url(&server.url, user, credential) else {
            return TurnOutcome::Failed("not a TURN URL the gateway can use".into());
        };
        match self.run(&turn, timeout) {
            Ok(relay) => TurnOutcome::Allocated(relay),
            Err(e) => TurnOutcome::Failed(e),
        }
    }
}

impl LiveTurnProbe {
    fn run(&self, turn: &crate::turn::TurnServer, timeout: Duration) -> Result<SocketAddr, String> {
        let deadline = Instant::now() + timeout;
        let server = turn
            .host_port()
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", turn.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", turn.host))?;
        let stream = turn.transport != TurnTransport::Udp;
        let mut transport: Box<dyn Transport> = match turn.transport {
            TurnTransport::Udp => {
                let any: SocketAddr = match server {
                    SocketAddr::V4(_) => "0.0.0.0:0",
                    SocketAddr::V6(_) => "[::]:0",
                }
                .parse()
                .expect("literal");
                let socket = UdpSocket::bind(any).map_err(|e| e.to_string())?;
                Box::new(Udp { socket, server })
            }
            TurnTransport::Tcp => Box::new(Stream {
                io: connect(server, timeout)?,
                framer: StreamFramer::default(),
                set_timeout: |s: &TcpStream, t| s.set_read_timeout(Some(t)),
            }),
            TurnTransport::Tls => {
                let config = crate::net::tls::client_config(self.extra_ca.as_deref())?;
                let name = rustls::pki_types::ServerName::try_from(turn.host.clone())
                    .map_err(|e| format!("{}: {e}", turn.host))?;
                let conn =
                    rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
                Box::new(Stream {
                    io: rustls::StreamOwned::new(conn, connect(server, timeout)?),
                    framer: StreamFramer::default(),
                    set_timeout: |s: &rustls::StreamOwned<_, TcpStream>, t| {
                        s.sock.set_read_timeout(Some(t))
                    },
                })
            }
        };
        let now = Instant::now();
        let mut client = TurnClient::new(
            now,
            TurnConfig::default(),
            &turn.username,
            &turn.credential,
            stream,
        );
        client.handle_start(now);
        let mut relay = None;
        loop {
            let wake = loop {
                match client.poll_output() {
                    Next::Output(TurnOutput::Transmit(bytes)) => transport.send(&bytes)?,
                    Next::Output(TurnOutput::Event(TurnEvent::Allocated { relay: r, .. })) => {
                        relay = Some(r);
                        // Give it back at once: a check should hold nothing on the server.
                        client.handle_release(Instant::now());
                    }
                    Next::Output(TurnOutput::Event(TurnEvent::Failed(why))) => {
                        return relay.ok_or(why);
                    }
                    Next::Output(TurnOutput::Event(TurnEvent::Released)) => {
                        return relay.ok_or_else(|| "released before allocating".into());
                    }
                    Next::Timeout(t) => break t,
                }
            };
            let now = Instant::now();
            if now >= deadline {
                return relay.ok_or_else(|| format!("no answer within {timeout:?}"));
            }
            let until = wake.map_or(deadline, |w| w.min(deadline));
            if let Some(bytes) = transport.recv(until.saturating_duration_since(now))? {
                client.handle_input(Instant::now(), &bytes);
            }
            client.handle_timeout(Instant::now());
        }
    }
}

fn connect(server: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    TcpStream::connect_timeout(&server, timeout).map_err(|e| format!("TCP to {server}: {e}"))
}
