//! The status port's sockets, served from the gateway's own loop (docs/design.md#status-and-metrics):
//! a listener and at most [`MAX_CONNS`] connections, each allowed [`DEADLINE`] from accept to
//! the last byte of its response and [`http::MAX_REQUEST`] bytes of request. The pages are
//! rendered by the gateway driver ([`crate::status`]); this only moves bytes.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use crate::status::http::{self, Page, Parsed};

/// Connections served at once; more are accepted and closed at once.
pub const MAX_CONNS: usize = 4;
/// From accept to the end of the response.
pub const DEADLINE: Duration = Duration::from_secs(2);

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The response, once known, and how much of it is written.
    out: Option<(Vec<u8>, usize)>,
    deadline: Instant,
}

pub struct StatusServer {
    listener: TcpListener,
    /// The listener's token; connection `i` has `first_conn + i`.
    token: Token,
    conns: Vec<Option<Conn>>,
}

/// A complete request on connection `slot`: render `page` and call [`StatusServer::respond`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub slot: usize,
    pub page: Page,
    pub head_only: bool,
}

impl StatusServer {
    /// Listen on `addr`; tokens `token ..= token + MAX_CONNS` are this server's.
    pub fn bind(registry: &Registry, addr: SocketAddr, token: Token) -> io::Result<StatusServer> {
        let mut listener = TcpListener::bind(addr)?;
        registry.register(&mut listener, token, Interest::READABLE)?;
        Ok(StatusServer {
            listener,
            token,
            conns: (0..MAX_CONNS).map(|_| None).collect(),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether `token` is this server's.
    pub fn owns(&self, token: Token) -> bool {
        (self.token.0..=self.token.0 + MAX_CONNS).contains(&token.0)
    }

    /// A readiness event for one of our tokens; returns the requests now complete.
    pub fn on_ready(&mut self, registry: &Registry, token: Token, now: Instant) -> Vec<Request> {
        if token == self.token {
            return self.accept(registry, now);
        }
        let slot = token.0 - self.token.0 - 1;
        self.serve(registry, slot).into_iter().collect()
    }

    fn accept(&mut self, registry: &Registry, now: Instant) -> Vec<Request> {
        let mut ready = Vec::new();
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ready,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("status: accept failed: {e}");
                    return ready;
                }
            };
            let Some(slot) = self.conns.iter().position(Option::is_none) else {
                // Busy: closed at once (dropping it), so a flood costs nothing held.
                continue;
            };
            let token = Token(self.token.0 + 1 + slot);
            let interest = Interest::READABLE | Interest::WRITABLE;
            if registry.register(&mut stream, token, interest).is_err() {
                continue;
            }
            self.conns[slot] = Some(Conn {
                stream,
                buf: Vec::new(),
                out: None,
                deadline: now + DEADLINE,
            });
            // Edge-triggered: the request may be there already.
            ready.extend(self.serve(registry, slot));
        }
    }

    /// Read what the connection has, or write what is left of its response.
    fn serve(&mut self, registry: &Registry, slot: usize) -> Option<Request> {
        let conn = self.conns.get_mut(slot)?.as_mut()?;
        if conn.out.is_some() {
            self.write(registry, slot);
            return None;
        }
        let mut chunk = [0u8; 1024];
        loop {
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    self.close(registry, slot);
                    return None;
                }
                Ok(n) => {
                    // One byte past the limit is enough to refuse it.
                    let room = http::MAX_REQUEST + 1 - conn.buf.len();
                    conn.buf.extend_from_slice(&chunk[..n.min(room)]);
                    match http::parse(&conn.buf) {
                        Parsed::Partial => continue,
                        Parsed::Respond(bytes) => {
                            self.respond(registry, slot, bytes);
                            return None;
                        }
                        Parsed::Page { page, head_only } => {
                            // Marked as answered: nothing more is read from it.
                            conn.out = Some((Vec::new(), 0));
                            return Some(Request {
                                slot,
                                page,
                                head_only,
                            });
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(registry, slot);
                    return None;
                }
            }
        }
    }

    /// Send `response` on connection `slot` and close it once written.
    pub fn respond(&mut self, registry: &Registry, slot: usize, response: Vec<u8>) {
        if let Some(Some(conn)) = self.conns.get_mut(slot) {
            conn.out = Some((response, 0));
            self.write(registry, slot);
        }
    }

    fn write(&mut self, registry: &Registry, slot: usize) {
        let Some(Some(conn)) = self.conns.get_mut(slot) else {
            return;
        };
        let Some((bytes, written)) = conn.out.as_mut() else {
            return;
        };
        if bytes.is_empty() {
            return; // being rendered
        }
        while *written < bytes.len() {
            match conn.stream.write(&bytes[*written..]) {
                Ok(0) => break,
                Ok(n) => *written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        self.close(registry, slot);
    }

    fn close(&mut self, registry: &Registry, slot: usize) {
        if let Some(mut conn) = self.conns[slot].take() {
            let _ = registry.deregister(&mut conn.stream);
        }
    }

    /// Close connections past their deadline.
    pub fn handle_timeout(&mut self, registry: &Registry, now: Instant) {
        for slot in 0..self.conns.len() {
            if self.conns[slot].as_ref().is_some_and(|c| c.deadline <= now) {
                log::debug!("status: a connection took too long; closed");
                self.close(registry, slot);
            }
        }
    }

    /// The earliest connection deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.conns.iter().flatten().map(|c| c.deadline).min()
    }
}

/// The `health` command: `GET /healthz` from the gateway's own status port; 0 when it answers
/// 200, 1 otherwise, 2 when no status port is configured.
pub fn health_command(config: &crate::config::GatewayConfig) -> i32 {
    let Some(addr) = config.status_listen else {
        eprintln!("ma-webrtc-gateway: health needs the status port: set MA_STATUS_LISTEN");
        return crate::config::EXIT_CONFIG;
    };
    // A wildcard listen address is reached on loopback.
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    match get_health(SocketAddr::new(ip, addr.port()), DEADLINE) {
        Ok(line) if line.starts_with("HTTP/1.1 200") => {
            println!("healthy: registered with the signaling server");
            0
        }
        Ok(line) => {
            println!("unhealthy: {line}");
            1
        }
        Err(e) => {
            println!("unhealthy: the status port at {addr} does not answer: {e}");
            1
        }
    }
}

/// The status line of `GET /healthz`.
fn get_health(addr: SocketAddr, timeout: Duration) -> io::Result<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
        match s.read(&mut buf)? {
            0 => break,
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    Ok(text.lines().next().unwrap_or_default().to_string())
}
