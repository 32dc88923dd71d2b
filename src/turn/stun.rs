//! The STUN message codec shared by server-reflexive gathering (`webrtc::stun_gather`) and the
//! TURN client (docs/design.md#turn-client): building requests with attributes and
//! MESSAGE-INTEGRITY, walking a received message's attributes, (XOR-)address values, the
//! long-term credential key. Bounded parsing: malformed input is `None`, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::webrtc::{is_stun, STUN_MAGIC_COOKIE};

/// A STUN transaction id (96 bits).
pub type TransactionId = [u8; 12];

pub const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
pub const ATTR_USERNAME: u16 = 0x0006;
pub const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
pub const ATTR_ERROR_CODE: u16 = 0x0009;
pub const ATTR_CHANNEL_NUMBER: u16 = 0x000C;
pub const ATTR_LIFETIME: u16 = 0x000D;
pub const ATTR_XOR_PEER_ADDRESS: u16 = 0x0012;
pub const ATTR_DATA: u16 = 0x0013;
pub const ATTR_REALM: u16 = 0x0014;
pub const ATTR_NONCE: u16 = 0x0015;
pub const ATTR_XOR_RELAYED_ADDRESS: u16 = 0x0016;
pub const ATTR_REQUESTED_TRANSPORT: u16 = 0x0019;
pub const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// XOR-MAPPED-ADDRESS as some old servers still send it (pre-RFC 5389 draft value).
pub const ATTR_XOR_MAPPED_ADDRESS_OLD: u16 = 0x8020;

/// The class bits of a message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// Message type from method and class (methods below 0x10 only: the class bits are 0x0110).
pub fn message_type(method: u16, class: Class) -> u16 {
    method
        | match class {
            Class::Request => 0x0000,
            Class::Indication => 0x0010,
            Class::Success => 0x0100,
            Class::Error => 0x0110,
        }
}

/// Writes one STUN message: header, attributes (each padded to 4 bytes), then optionally
/// MESSAGE-INTEGRITY over everything before it.
pub struct MessageBuilder {
    buf: Vec<u8>,
}

impl MessageBuilder {
    pub fn new(typ: u16, txid: &TransactionId) -> MessageBuilder {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&typ.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(txid);
        MessageBuilder { buf }
    }

    /// Add an attribute (values longer than 65 535 bytes are cut: no caller sends such).
    pub fn attr(mut self, typ: u16, value: &[u8]) -> MessageBuilder {
        let value = &value[..value.len().min(usize::from(u16::MAX))];
        self.buf.extend_from_slice(&typ.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        let pad = value.len().next_multiple_of(4) - value.len();
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        self
    }

    /// Add an XOR-encoded address attribute (XOR-PEER-ADDRESS and the like).
    pub fn xor_address(self, typ: u16, addr: SocketAddr) -> MessageBuilder {
        let txid: TransactionId = self.buf[8..20].try_into().unwrap_or_default();
        let value = encode_xor_address(addr, &txid);
        self.attr(typ, &value)
    }

    fn set_length(&mut self, len: usize) {
        let len = (len as u16).to_be_bytes();
        self.buf[2..4].copy_from_slice(&len);
    }

    /// The message without integrity.
    pub fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() - 20;
        self.set_length(len);
        self.buf
    }

    /// The message with MESSAGE-INTEGRITY (HMAC-SHA1 keyed with `key`) as its last attribute.
    pub fn finish_with_integrity(mut self, key: &[u8]) -> Vec<u8> {
        let len = self.buf.len() - 20 + 24;
        self.set_length(len);
        let mac = hmac_sha1(key, &self.buf);
        self.buf
            .extend_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
        self.buf.extend_from_slice(&20u16.to_be_bytes());
        self.buf.extend_from_slice(&mac);
        self.buf
    }
}

fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let tag = hmac::sign(&key, data);
    let mut out = [0u8; 20];
    out.copy_from_slice(tag.as_ref());
    out
}

/// A received STUN message, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub typ: u16,
    pub txid: TransactionId,
    bytes: &'a [u8],
}

impl<'a> Message<'a> {
    /// Parse a whole STUN message (`bytes` may carry trailing bytes beyond its length, which
    /// are ignored). `None` for anything that is not well-formed STUN.
    pub fn parse(bytes: &'a [u8]) -> Option<Message<'a>> {
        if !is_stun(bytes) {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        if len % 4 != 0 {
            return None;
        }
        let bytes = bytes.get(..20 + len)?;
        let mut txid = [0u8; 12];
        txid.copy_from_slice(&bytes[8..20]);
        let m = Message {
            typ: u16::from_be_bytes([bytes[0], bytes[1]]),
            txid,
            bytes,
        };
        // Every attribute must fit.
        let mut walked = 20;
        for (_, value, next) in m.walk() {
            let _ = value;
            walked = next;
        }
        (walked == bytes.len()).then_some(m)
    }

    /// The method (class bits cleared).
    pub fn method(&self) -> u16 {
        self.typ & !0x0110
    }

    pub fn class(&self) -> Class {
        match self.typ & 0x0110 {
            0x0000 => Class::Request,
            0x0010 => Class::Indication,
            0x0100 => Class::Success,
            _ => Class::Error,
        }
    }

    /// Attributes with their value and the offset just past them (padding included).
    fn walk(&self) -> impl Iterator<Item = (u16, &'a [u8], usize)> + '_ {
        let bytes = self.bytes;
        let mut i = 20usize;
        std::iter::from_fn(move || {
            let head = bytes.get(i..i + 4)?;
            let typ = u16::from_be_bytes([head[0], head[1]]);
            let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let value = bytes.get(i + 4..i + 4 + len)?;
            let next = (i + 4 + len.next_multiple_of(4)).min(bytes.len());
            i = next;
            Some((typ, value, next))
        })
    }

    /// The attributes in order.
    pub fn attrs(&self) -> impl Iterator<Item = (u16, &'a [u8])> + '_ {
        self.walk().map(|(t, v, _)| (t, v))
    }

    /// The first attribute of this type.
    pub fn attr(&self, typ: u16) -> Option<&'a [u8]> {
        self.attrs().find(|(t, _)| *t == typ).map(|(_, v)| v)
    }

    /// An XOR-encoded address attribute.
    pub fn xor_address(&self, typ: u16) -> Option<SocketAddr> {
        parse_address(self.attr(typ)?, Some(&self.txid))
    }

    /// ERROR-CODE as a number (`None` without one).
    pub fn error_code(&self) -> Option<u16> {
        parse_error_code(self.attr(ATTR_ERROR_CODE)?)
    }

    /// Whether MESSAGE-INTEGRITY is present and right for `key`.
    pub fn check_integrity(&self, key: &[u8]) -> bool {
        let Some((_, value, next)) = self.walk().find(|(t, _, _)| *t == ATTR_MESSAGE_INTEGRITY)
        else {
            return false;
        };
        if value.len() != 20 {
            return false;
        }
        let start = next - 24;
        let mut head = self.bytes[..start].to_vec();
        let len = ((next - 20) as u16).to_be_bytes();
        head[2..4].copy_from_slice(&len);
        let mac = hmac_sha1(key, &head);
        aws_lc_rs::constant_time::verify_slices_are_equal(&mac, value).is_ok()
    }
}

/// ERROR-CODE value: reserved, class (hundreds), number.
pub fn parse_error_code(value: &[u8]) -> Option<u16> {
    (value.len() >= 4).then(|| u16::from(value[2] & 0x07) * 100 + u16::from(value[3]))
}

/// XOR-encoded address value (family, port, address).
pub fn encode_xor_address(addr: SocketAddr, txid: &TransactionId) -> Vec<u8> {
    let cookie = STUN_MAGIC_COOKIE.to_be_bytes();
    let port = addr.port() ^ (STUN_MAGIC_COOKIE >> 16) as u16;
    let mut v = vec![0u8];
    match addr.ip() {
        IpAddr::V4(ip) => {
            v.push(1);
            v.extend_from_slice(&port.to_be_bytes());
            v.extend(ip.octets().iter().zip(cookie).map(|(a, k)| a ^ k));
        }
        IpAddr::V6(ip) => {
            v.push(2);
            v.extend_from_slice(&port.to_be_bytes());
            let key = cookie.iter().chain(txid.iter());
            v.extend(ip.octets().iter().zip(key).map(|(a, k)| a ^ k));
        }
    }
    v
}

/// (XOR-)MAPPED-ADDRESS value: reserved, family, port, address. XORed when `txid` is given.
/// An unspecified address or port 0 is `None`.
pub fn parse_address(v: &[u8], txid: Option<&TransactionId>) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let cookie = STUN_MAGIC_COOKIE.to_be_bytes();
    let mut port = u16::from_be_bytes([v[2], v[3]]);
    if txid.is_some() {
        port ^= (STUN_MAGIC_COOKIE >> 16) as u16;
    }
    let ip = match v[1] {
        0x01 => {
            let mut a: [u8; 4] = v.get(4..8)?.try_into().ok()?;
            if txid.is_some() {
                for (b, k) in a.iter_mut().zip(cookie) {
                    *b ^= k;
                }
            }
            IpAddr::V4(Ipv4Addr::from(a))
        }
        0x02 => {
            let mut a: [u8; 16] = v.get(4..20)?.try_into().ok()?;
            if let Some(t) = txid {
                let key = cookie.iter().chain(t.iter());
                for (b, k) in a.iter_mut().zip(key) {
                    *b ^= *k;
                }
            }
            IpAddr::V6(Ipv6Addr::from(a))
        }
        _ => return None,
    };
    if ip.is_unspecified() || port == 0 {
        return None;
    }
    Some(SocketAddr::new(ip, port))
}

/// A fresh random transaction id (`None` without randomness).
pub fn random_txid() -> Option<TransactionId> {
    let mut txid = [0u8; 12];
    aws_lc_rs::rand::fill(&mut txid).ok()?;
    Some(txid)
}

/// The long-term credential key (RFC 8489 §9.2.2): MD5(username ":" realm ":" password).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    md5(format!("{username}:{realm}:{password}").as_bytes())
}

/// MD5 (RFC 1321), only for the long-term credential key, which the TURN protocol fixes;
/// aws-lc-rs does not offer it.
fn md5(input: &[u8]) -> [u8; 16] {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    // K[i] = floor(abs(sin(i + 1)) * 2^32).
    let k: Vec<u32> = (0..64)
        .map(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32)
        .collect();
    let mut msg = input.to_vec();
    let bit_len = (input.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_le_bytes());
    let (mut a0, mut b0, mut c0, mut d0) = (
        0x6745_2301u32,
        0xefcd_ab89u32,
        0x98ba_dcfeu32,
        0x1032_5476u32,
    );
    for chunk in msg.chunks_exact(64) {
        let m: Vec<u32> = chunk
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        a0 = a0.wrapping_add(a);
        b0 = b0.wrapping_add(b);
        c0 = c0.wrapping_add(c);
        d0 = d0.wrapping_add(d);
    }
    let mut out = [0u8; 16];
    for (i, w) in [a0, b0, c0, d0].iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn md5_vectors() {
        assert_eq!(hex(&md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(hex(&md5(b"abc")), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            hex(&md5(
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
            )),
            "57edf4a22be3c955ac49da2e2107b67a"
        );
    }

    #[test]
    fn build_parse_integrity_round_trip() {
        let txid = [7u8; 12];
        let key = long_term_key("u", "r", "p");
        let peer: SocketAddr = "203.0.113.9:4000".parse().unwrap();
        let peer6: SocketAddr = "[2001:db8::9]:4000".parse().unwrap();
        let m = MessageBuilder::new(message_type(0x0008, Class::Request), &txid)
            .attr(ATTR_USERNAME, b"u")
            .xor_address(ATTR_XOR_PEER_ADDRESS, peer)
            .attr(ATTR_REALM, b"r")
            .finish_with_integrity(&key);
        let p = Message::parse(&m).expect("parse");
        assert_eq!(p.method(), 0x0008);
        assert_eq!(p.class(), Class::Request);
        assert_eq!(p.attr(ATTR_USERNAME), Some(&b"u"[..]));
        assert_eq!(p.xor_address(ATTR_XOR_PEER_ADDRESS), Some(peer));
        assert!(p.check_integrity(&key));
        assert!(!p.check_integrity(&long_term_key("u", "r", "q")));
        let v6 = encode_xor_address(peer6, &txid);
        assert_eq!(parse_address(&v6, Some(&txid)), Some(peer6));
        // Integrity followed by another attribute (as FINGERPRINT would be) still checks.
        let mut with_more = m.clone();
        with_more.extend_from_slice(&[0x80, 0x28, 0, 4, 1, 2, 3, 4]);
        let len = (with_more.len() - 20) as u16;
        with_more[2..4].copy_from_slice(&len.to_be_bytes());
        assert!(Message::parse(&with_more).unwrap().check_integrity(&key));
        // Tampered: refused.
        let mut bad = m.clone();
        bad[25] ^= 1;
        assert!(!Message::parse(&bad).unwrap().check_integrity(&key));
    }

    #[test]
    fn malformed_is_none() {
        let txid = [1u8; 12];
        let m = MessageBuilder::new(0x0101, &txid)
            .attr(ATTR_ERROR_CODE, &[0, 0, 4, 1])
            .finish();
        assert_eq!(Message::parse(&m).unwrap().error_code(), Some(401));
        let mut t = m.clone();
        t.truncate(t.len() - 1);
        assert!(Message::parse(&t).is_none());
        let mut t = m.clone();
        t[3] = 3;
        assert!(Message::parse(&t).is_none());
        // An attribute claiming more than the message holds.
        let mut t = m.clone();
        t[23] = 40;
        assert!(Message::parse(&t).is_none());
        assert!(Message::parse(&[0u8; 10]).is_none());
    }
}
