//! The shared UDP socket for WebRTC: bound once, buffers raised, plus the host addresses to
//! advertise as ICE candidates.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};

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

/// The UDP sockets for `MA_UDP_BIND` (docs/design.md#ipv6), each with the host candidates it
/// receives on.
pub struct Bound {
    pub sockets: Vec<(mio::net::UdpSocket, Vec<SocketAddr>)>,
}

/// Bind for `MA_UDP_BIND`:
/// - a specific address (IPv4 or IPv6): one socket there, as given;
/// - a wildcard (`0.0.0.0` or `[::]`): an IPv4 socket on `0.0.0.0` (host candidate: the outward
///   IPv4 address), plus, when the host has a usable global IPv6 address ([`pick_ipv6`]), an
///   IPv6 socket bound to that address, on the same port when it is free. Bound to the
///   address, so what we send leaves from the address we advertise (a wildcard socket would
///   let the kernel pick, maybe a temporary address, and the peer's checks would fail). An
///   IPv4-only host gets the IPv4 socket only, as before.
pub fn bind_all(addr: SocketAddr, public_ip: Option<IpAddr>) -> io::Result<Bound> {
    if !addr.ip().is_unspecified() {
        let socket = bind(addr)?;
        let hosts = host_addresses(socket.local_addr()?, public_ip);
        return Ok(Bound {
            sockets: vec![(socket, hosts)],
        });
    }
    let v4 = bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()))?;
    let port = v4.local_addr()?.port();
    let v4_public = public_ip.filter(IpAddr::is_ipv4);
    let mut sockets = vec![(
        v4,
        host_addresses(
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
            v4_public,
        ),
    )];
    if let Some(ip) = global_ipv6() {
        let v6 =
            bind(SocketAddr::new(ip.into(), port)).or_else(|_| bind(SocketAddr::new(ip.into(), 0)));
        match v6 {
            Ok(v6) => {
                let mut hosts = vec![v6.local_addr()?];
                if let Some(p) = public_ip.filter(IpAddr::is_ipv6) {
                    hosts.push(SocketAddr::new(p, hosts[0].port()));
                }
                sockets.push((v6, hosts));
            }
            Err(e) => log::warn!("cannot bind UDP on [{ip}]: {e}; no IPv6 candidates"),
        }
    }
    if let Some(p) = public_ip.filter(|p| p.is_ipv6() && sockets.len() < 2) {
        log::warn!("MA_PUBLIC_IP {p} is IPv6, but this host has no usable IPv6 address: ignored");
    }
    Ok(Bound { sockets })
}

/// One IPv6 address of the host, as `/proc/net/if_inet6` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Entry {
    pub ip: Ipv6Addr,
    /// 0x00 global, 0x10 host, 0x20 link, 0x40 site.
    pub scope: u8,
    /// `IFA_F_*` (the low 8 bits).
    pub flags: u8,
    pub interface: String,
}

const IFA_F_TEMPORARY: u8 = 0x01;
const IFA_F_DADFAILED: u8 = 0x08;
const IFA_F_DEPRECATED: u8 = 0x20;
const IFA_F_TENTATIVE: u8 = 0x40;
const SCOPE_GLOBAL: u8 = 0x00;

/// Parse `/proc/net/if_inet6` (address, interface index, prefix length, scope, flags, name,
/// hexadecimal; lines that do not fit are skipped).
pub fn parse_if_inet6(text: &str) -> Vec<Ipv6Entry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [addr, _index, _prefix, scope, flags, name] = f.as_slice() else {
                return None;
            };
            if addr.len() != 32 {
                return None;
            }
            let ip = u128::from_str_radix(addr, 16).ok()?;
            Some(Ipv6Entry {
                ip: Ipv6Addr::from(ip),
                scope: u8::from_str_radix(scope, 16).ok()?,
                flags: u8::from_str_radix(flags, 16).ok()?,
                interface: name.to_string(),
            })
        })
        .collect()
}

/// The IPv6 address to advertise: global scope (no loopback, link-local or v4-mapped), not
/// tentative or failed; stable before temporary or deprecated ones, which are taken only when
/// nothing else exists; global unicast (2000::/3) before unique-local (fc00::/7); then the
/// kernel's order.
pub fn pick_ipv6(entries: &[Ipv6Entry]) -> Option<Ipv6Addr> {
    let usable = entries.iter().filter(|e| {
        let ip = e.ip;
        e.scope == SCOPE_GLOBAL
            && e.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED) == 0
            && !ip.is_loopback()
            && !ip.is_unspecified()
            && !ip.is_multicast()
            && ip.segments()[0] & 0xffc0 != 0xfe80
            && ip.to_ipv4_mapped().is_none()
    });
    usable
        .min_by_key(|e| {
            let passing = e.flags & (IFA_F_TEMPORARY | IFA_F_DEPRECATED) != 0;
            let unique_local = e.ip.segments()[0] & 0xfe00 == 0xfc00;
            (passing, unique_local)
        })
        .map(|e| e.ip)
}

/// The host's IPv6 address to advertise ([`pick_ipv6`] over `/proc/net/if_inet6`); none on
/// systems without that file (IPv6 disabled, or not Linux).
pub fn global_ipv6() -> Option<Ipv6Addr> {
    let text = std::fs::read_to_string("/proc/net/if_inet6").ok()?;
    pick_ipv6(&parse_if_inet6(&text))
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

#[cfg(test)]
mod tests {
    use super::*;

    const PROC: &str = "\
00000000000000000000000000000001 01 80 10 80       lo
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
fd000000000000000000000000000002 04 40 00 82     eth0
20010db8000000000000000000000bad 04 40 00 40     eth0
20010db800000000a1b2c3d4e5f60718 04 40 00 01     eth0
20010db8000000000000000000000def 04 40 00 a0     eth0
20010db8000000000000000000000001 04 40 00 80     eth0
garbage line
";

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn reads_proc_net_if_inet6() {
        let entries = parse_if_inet6(PROC);
        assert_eq!(entries.len(), 7, "the garbage line is skipped");
        assert_eq!(
            entries[1],
            Ipv6Entry {
                ip: ip("fe80::fc:ff:fe00:1"),
                scope: 0x20,
                flags: 0x80,
                interface: "eth0".into()
            }
        );
        assert_eq!(entries[4].ip, ip("2001:db8::a1b2:c3d4:e5f6:718"));
    }

    #[test]
    fn picks_a_stable_global_address() {
        let entries = parse_if_inet6(PROC);
        // Not loopback, link-local, tentative (…bad), temporary (…718) or deprecated (…def);
        // global unicast before the unique-local fd00::2.
        assert_eq!(pick_ipv6(&entries), Some(ip("2001:db8::1")));
        // Without it: the unique-local one, still before temporary and deprecated ones.
        let rest: Vec<_> = entries
            .iter()
            .filter(|e| e.ip != ip("2001:db8::1"))
            .cloned()
            .collect();
        assert_eq!(pick_ipv6(&rest), Some(ip("fd00::2")));
        // Only temporary or deprecated addresses left: one of them, since nothing else exists.
        let passing: Vec<_> = entries
            .iter()
            .filter(|e| e.flags & (IFA_F_TEMPORARY | IFA_F_DEPRECATED) != 0)
            .cloned()
            .collect();
        assert_eq!(
            pick_ipv6(&passing),
            Some(ip("2001:db8::a1b2:c3d4:e5f6:718"))
        );
        // Loopback and link-local only: none (an IPv4-only host).
        assert_eq!(pick_ipv6(&entries[..2]), None);
        assert_eq!(pick_ipv6(&[]), None);
    }
}
