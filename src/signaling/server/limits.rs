//! Whom the per-IP limits count (docs/protocol.md#server-limits): the key of an address (IPv4
//! as it is, IPv6 per /64), the trusted proxies whose forwarding headers are believed, and the
//! per-key records of messages, failed lookups, blocks and open sockets.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Per-key records kept at most; beyond, records of keys without a socket are forgotten.
const MAX_RECORDS: usize = 65_536;
/// Trusted proxy ranges accepted at most.
pub const MAX_TRUSTED_PROXIES: usize = 64;

/// What the per-IP limits count: an IPv4 address, or the /64 an IPv6 address belongs to (one
/// user usually holds a whole /64). IPv4-mapped IPv6 addresses count as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpKey(IpAddr);

impl IpKey {
    pub fn of(ip: IpAddr) -> IpKey {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpKey(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => IpKey(v4),
        }
    }

    pub fn is_loopback(self) -> bool {
        self.0.is_loopback()
    }
}

impl fmt::Display for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
            v4 => write!(f, "{v4}"),
        }
    }
}

/// An address range, `ADDRESS/PREFIX` or a bare address (all bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or ADDRESS/PREFIX"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |a: IpAddr| -> (u128, u8) {
            match a {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let ((net, width), (addr, addr_width)) = (bits(self.addr), bits(ip.to_canonical()));
        if width != addr_width {
            return false;
        }
        let prefix = u32::from(self.prefix);
        let mask = match prefix {
            0 => 0,
            p => !0u128 << (128 - p),
        };
        net & mask == addr & mask
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Comma-separated ranges (`--trusted-proxy`); empty means none.
pub fn parse_cidrs(s: &str) -> Result<Vec<Cidr>, String> {
    let list = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(Cidr::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if list.len() > MAX_TRUSTED_PROXIES {
        return Err(format!("at most {MAX_TRUSTED_PROXIES} ranges"));
    }
    Ok(list)
}

/// The client's address: `peer` (the TCP peer) unless it is a trusted proxy, in which case the
/// forwarding chain (`forwarded`, leftmost = the original client, as the headers list it) is
/// walked from the right past every trusted hop. A hop that cannot be read ends the walk at
/// the last trusted address: nobody can pass a forged address through a proxy we trust.
pub fn client_address(trusted: &[Cidr], peer: IpAddr, forwarded: &[Option<IpAddr>]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let mut client = peer;
    for hop in forwarded.iter().rev() {
        if !is_trusted(client) {
            break;
        }
        match hop {
            Some(ip) => client = *ip,
            None => break,
        }
    }
    client
}

/// What is recorded per key.
#[derive(Debug)]
pub struct Record {
    /// Open sockets counted against this key (any phase).
    pub sockets: usize,
    pub window_start: Instant,
    pub messages: u32,
    pub failed_lookups: u32,
    pub blocked_until: Option<Instant>,
    /// Blocks so far; each one lasts twice as long as the one before, up to the maximum.
    pub blocks: u32,
}

impl Record {
    fn idle(&self) -> bool {
        self.sockets == 0
            && self.messages == 0
            && self.failed_lookups == 0
            && self.blocked_until.is_none()
    }
}

/// The per-key records.
#[derive(Debug, Default)]
pub struct Records {
    map: HashMap<IpKey, Record>,
}

impl Records {
    /// The record of `key`, created if needed (forgetting idle ones when full).
    pub fn entry(
        &mut self,
        now: Instant,
        key: IpKey,
        window: Duration,
        max_block: Duration,
    ) -> &mut Record {
        if !self.map.contains_key(&key) && self.map.len() >= MAX_RECORDS {
            self.prune(now, window, max_block, true);
        }
        self.map.entry(key).or_insert(Record {
            sockets: 0,
            window_start: now,
            messages: 0,
            failed_lookups: 0,
            blocked_until: None,
            blocks: 0,
        })
    }

    pub fn get(&self, key: IpKey) -> Option<&Record> {
        self.map.get(&key)
    }

    pub fn get_mut(&mut self, key: IpKey) -> Option<&mut Record> {
        self.map.get_mut(&key)
    }

    /// Drop the record of a key with nothing worth remembering.
    pub fn forget_idle(&mut self, key: IpKey) {
        if self.map.get(&key).is_some_and(Record::idle) {
            self.map.remove(&key);
        }
    }

    /// Forget records of keys without sockets whose window, block and block memory (one
    /// `max_block` after the last block ended) have passed (`hard`: every record of a key
    /// without sockets).
    pub fn prune(&mut self, now: Instant, window: Duration, max_block: Duration, hard: bool) {
        self.map.retain(|_, r| {
            r.sockets > 0
                || (!hard
                    && (now < r.window_start + window
                        || r.blocked_until.is_some_and(|b| now < b + max_block)))
        });
    }

    #[cfg(test)]
    pub fn contains(&self, key: IpKey) -> bool {
        self.map.contains_key(&key)
    }
}

/// How long the `blocks`-th block lasts (1-based): `base` doubled per repeat, at most `max`.
pub fn block_length(base: Duration, max: Duration, blocks: u32) -> Duration {
    let doublings = blocks.saturating_sub(1).min(20);
    base.saturating_mul(1 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            IpKey::of(ip("2001:db8:1:2:aaaa::1")),
            IpKey::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            IpKey::of(ip("2001:db8:1:2::1")),
            IpKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            IpKey::of(ip("::ffff:192.0.2.1")),
            IpKey::of(ip("192.0.2.1"))
        );
        assert_ne!(IpKey::of(ip("192.0.2.1")), IpKey::of(ip("192.0.2.2")));
        assert_eq!(
            IpKey::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert!(IpKey::of(ip("::ffff:127.0.0.1")).is_loopback());
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(!c.contains(ip("::a00:1")));
        let one = Cidr::parse(" 192.0.2.7 ").unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains(ip("203.0.113.1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "x",
            "10.0.0.0/-1",
            "1.2.3.4/",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_cidrs("127.0.0.1, 10.0.0.0/8,").unwrap(),
            vec![Cidr::parse("127.0.0.1/32").unwrap(), c]
        );
        assert!(parse_cidrs("").unwrap().is_empty());
        assert!(parse_cidrs("127.0.0.1,nope").is_err());
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let trusted = parse_cidrs("127.0.0.1,10.0.0.0/8").unwrap();
        let chain = [
            Some(ip("198.51.100.9")),
            Some(ip("203.0.113.5")),
            Some(ip("10.0.0.2")),
        ];
        // Untrusted peer: its headers mean nothing.
        assert_eq!(
            client_address(&trusted, ip("192.0.2.1"), &chain),
            ip("192.0.2.1")
        );
        // Trusted peer: walk past the trusted hop 10.0.0.2 to 203.0.113.5, which is not
        // trusted, so 198.51.100.9 (which it could have forged) is not believed.
        assert_eq!(
            client_address(&trusted, ip("127.0.0.1"), &chain),
            ip("203.0.113.5")
        );
        assert_eq!(
            client_address(&trusted, ip("127.0.0.1"), &[]),
            ip("127.0.0.1")
        );
        // An unreadable hop stops the walk at the last trusted address.
        let garbled = [Some(ip("198.51.100.9")), None];
        assert_eq!(
            client_address(&trusted, ip("127.0.0.1"), &garbled),
            ip("127.0.0.1")
        );
        // No trusted proxies: never.
        assert_eq!(
            client_address(&[], ip("127.0.0.1"), &chain),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn blocks_double_up_to_the_maximum() {
        let (base, max) = (Duration::from_secs(600), Duration::from_secs(3600));
        let lengths: Vec<u64> = (1..=5)
            .map(|n| block_length(base, max, n).as_secs())
            .collect();
        assert_eq!(lengths, vec![600, 1200, 2400, 3600, 3600]);
        assert_eq!(block_length(base, max, u32::MAX), max);
    }
}
