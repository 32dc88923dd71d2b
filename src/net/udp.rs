//! The shared UDP socket for WebRTC: bound once, buffers raised, plus the host addresses to
//! advertise as ICE candidates.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffer size asked for: Linux defaults (~212 KiB) overflow in bursts and stall SCTP
/// on retransmit timers (docs/design.md#udp-socket-buffers).
pub const SOCKET_BUFFER: usize = 4 * 1024 * 1024;
/// Datagrams held while the socket is not writable; past this, new ones are dropped (SCTP and
/// ICE retransmit).
pub const MAX_QUEUED_DATAGRAMS: usize = 512;

/// Bind a non-blocking UDP socket with large buffers.
pub fn bind(addr: SocketAddr) -> io::Result<mio::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    for (what, result) in [
        ("SO_RCVBUF", socket.set_recv_buffer_size(SOCKET_BUFFER)),
        ("SO_SNDBUF", socket.set_send_buffer_size(SOCKET_BUFFER)),
    ] {
        if let Err(e) = result {
            log::debug!("cannot set {what}: {e}");
        }
    }
    // Linux silently caps the request at net.core.rmem_max / wmem_max (often 212 KiB):
    // read it back and say how to raise it, since bursts then overflow and SCTP stalls.
    let got = socket.recv_buffer_size().unwrap_or(0);
    if got < SOCKET_BUFFER {
        log::warn!(
            "UDP receive buffer is {} KiB, not the {} KiB asked for; for full throughput raise it: \
             sysctl -w net.core.rmem_max={SOCKET_BUFFER} net.core.wmem_max={SOCKET_BUFFER}",
            got / 1024,
            SOCKET_BUFFER / 1024
        );
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let std: StdUdpSocket = socket.into();
    Ok(mio::net::UdpSocket::from_std(std))
}

/// The addresses to advertise as host candidates for a socket bound at `bound`: the bound
/// address itself, or for a wildcard bind the address of the interface that routes outward
/// (found with a routing lookup that sends nothing), falling back to loopback; then the
/// optional public address of a 1:1 NAT.
pub fn host_addresses(bound: SocketAddr, public_ip: Option<IpAddr>) -> Vec<SocketAddr> {
    let port = bound.port();
    let mut out = Vec::new();
    if bound.ip().is_unspecified() {
        match outward_ip() {
            Some(ip) => out.push(SocketAddr::new(ip, port)),
            None => out.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
        }
    } else {
        out.push(bound);
    }
    if let Some(ip) = public_ip {
        let addr = SocketAddr::new(ip, port);
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// The local IPv4 address the kernel would use towards the Internet. `connect` on a UDP
/// socket only looks up the route; no packet is sent. The target is a documentation address.
fn outward_ip() -> Option<IpAddr> {
    let s = StdUdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    s.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// Datagrams waiting for the socket to become writable (bounded).
#[derive(Default)]
pub struct SendQueue {
    queue: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Dropped since the start, and since the last report.
    dropped: u64,
    unreported: u64,
}

impl SendQueue {
    /// Send now if possible, else queue (dropping when full). Errors other than `WouldBlock`
    /// are logged: one unreachable peer must not stop the others.
    pub fn send(&mut self, socket: &mio::net::UdpSocket, dest: SocketAddr, data: Vec<u8>) {
        if self.queue.is_empty() {
            match socket.send_to(&data, dest) {
                Ok(_) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    log::debug!("UDP send to {dest} failed: {e}");
                    return;
                }
            }
        }
        if self.queue.len() >= MAX_QUEUED_DATAGRAMS {
            if self.unreported == 0 {
                log::warn!(
                    "UDP send queue full ({MAX_QUEUED_DATAGRAMS} datagrams): dropping until the \
                     socket drains"
                );
            }
            self.dropped += 1;
            self.unreported += 1;
            return;
        }
        self.queue.push_back((dest, data));
    }

    /// The socket is writable: send what waits.
    pub fn flush(&mut self, socket: &mio::net::UdpSocket) {
        while let Some((dest, data)) = self.queue.front() {
            match socket.send_to(data, *dest) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => log::debug!("UDP send to {dest} failed: {e}"),
            }
            self.queue.pop_front();
        }
        if self.unreported > 0 {
            log::warn!(
                "UDP send queue drained: {} datagrams were dropped ({} since start)",
                self.unreported,
                self.dropped
            );
            self.unreported = 0;
        }
    }

    /// Datagrams dropped since the start because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}
