//! UDP routing and STUN parsing on arbitrary datagrams (`webrtc::router`,
//! `webrtc::stun_gather`; docs/design.md, the shared UDP socket).
//!
//! Input: operations on a [`Router`] of 4 sessions, over 24 source addresses, until the
//! bytes run out: register a ufrag (random or `ufrag<k>`), remove a session, note a transmit,
//! route an arbitrary datagram, route a STUN message carrying `USERNAME` (ours or someone
//! else's), and parse a datagram as a STUN Binding response.
//!
//! Properties:
//! - a datagram is routed only to a live session (one whose ufrag was registered and that
//!   was not removed since), a STUN Binding response only to the gatherer when it owns the
//!   transaction, and the drop counter counts exactly the drops;
//! - a STUN message whose `USERNAME` starts with a live session's ufrag goes to that session,
//!   and its source address routes there from then on;
//! - a removed session keeps neither its ufrag nor any address;
//! - a session never holds more than `MAX_ADDRS_PER_SESSION` addresses;
//! - a Binding response parses to the transaction id of its header, and one that we encode
//!   with an XOR-MAPPED-ADDRESS parses back to that address.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{chunk_bytes, Input};
use crate::webrtc::router::MAX_ADDRS_PER_SESSION;
use crate::webrtc::stun_gather::{parse_binding_response, BindingResponse};
use crate::webrtc::{is_stun, Route, Router};

const SESSIONS: u8 = 4;
const MAGIC: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

fn addr(i: u8) -> SocketAddr {
    let i = i % 24;
    let ip = if i.is_multiple_of(3) {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i)))
    } else {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, i))
    };
    SocketAddr::new(ip, 50_000 + u16::from(i))
}

fn fixed_ufrag(k: u8) -> String {
    format!("ufrag{k}")
}

/// A STUN message: type, the USERNAME attribute (when given), a transaction id.
pub fn stun(msg_type: u16, username: Option<&[u8]>, txid: [u8; 12]) -> Vec<u8> {
    let mut attrs = Vec::new();
    if let Some(u) = username {
        attrs.extend_from_slice(&0x0006u16.to_be_bytes());
        attrs.extend_from_slice(&(u.len() as u16).to_be_bytes());
        attrs.extend_from_slice(u);
        attrs.resize(attrs.len().div_ceil(4) * 4, 0);
    }
    let mut m = msg_type.to_be_bytes().to_vec();
    m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    m.extend_from_slice(&MAGIC);
    m.extend_from_slice(&txid);
    m.extend_from_slice(&attrs);
    m
}

/// A Binding success response with an XOR-MAPPED-ADDRESS.
pub fn binding_success(txid: [u8; 12], mapped: SocketAddr) -> Vec<u8> {
    let mut value = vec![0, 0];
    let port = mapped.port() ^ 0x2112;
    let ip = match mapped.ip() {
        IpAddr::V4(v4) => {
            value[1] = 1;
            v4.octets()
                .iter()
                .zip(MAGIC)
                .map(|(b, k)| b ^ k)
                .collect::<Vec<_>>()
        }
        IpAddr::V6(v6) => {
            value[1] = 2;
            let key = MAGIC.iter().chain(txid.iter());
            v6.octets().iter().zip(key).map(|(b, k)| b ^ k).collect()
        }
    };
    value.extend_from_slice(&port.to_be_bytes());
    value.extend_from_slice(&ip);
    let mut m = 0x0101u16.to_be_bytes().to_vec();
    m.extend_from_slice(&((value.len() + 4) as u16).to_be_bytes());
    m.extend_from_slice(&MAGIC);
    m.extend_from_slice(&txid);
    m.extend_from_slice(&0x0020u16.to_be_bytes());
    m.extend_from_slice(&(value.len() as u16).to_be_bytes());
    m.extend_from_slice(&value);
    m
}

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let mut router: Router<u8> = Router::new();
    let mut live: HashMap<u8, String> = HashMap::new();
    let mut ufrags: HashSet<String> = HashSet::new();
    let mut drops = 0u64;
    while !input.is_empty() {
        let op = input.u8();
        let k = input.u8() % SESSIONS;
        match op % 7 {
            0 | 1 => {
                let ufrag = if op.is_multiple_of(7) {
                    fixed_ufrag(k)
                } else {
                    input.text(20)
                };
                let taken = router.session_for_ufrag(&ufrag).is_some_and(|o| o != k);
                let result = router.set_ufrag(k, &ufrag);
                let valid = !ufrag.is_empty() && !ufrag.contains(':');
                assert_eq!(
                    result.is_ok(),
                    valid && !taken,
                    "set_ufrag({ufrag:?}): {result:?}"
                );
                if result.is_ok() {
                    live.insert(k, ufrag.clone());
                    ufrags.insert(ufrag);
                }
            }
            2 => {
                router.remove_session(k);
                live.remove(&k);
                for u in &ufrags {
                    assert_ne!(router.session_for_ufrag(u), Some(k), "ufrag kept");
                }
                for a in 0..24 {
                    assert_ne!(router.session_for_addr(addr(a)), Some(k), "address kept");
                }
            }
            3 => router.note_transmit(k, addr(input.u8())),
            4 | 5 => {
                let source = addr(input.u8());
                let gather = input.bool();
                let (bytes, ours) = if op % 7 == 4 {
                    (input.chunk(600).to_vec(), None)
                } else {
                    let mut txid = [0u8; 12];
                    txid.copy_from_slice(&format!("{:012}", input.u16()).into_bytes());
                    let msg_type = [0x0001, 0x0101, 0x0111, 0x0011][usize::from(input.u8() % 4)];
                    let name = match live.get(&k) {
                        Some(u) if input.bool() => format!("{u}:remote"),
                        _ => input.text(40),
                    };
                    let ours = live
                        .iter()
                        .find(|(_, u)| name.split(':').next() == Some(u.as_str()));
                    (
                        stun(msg_type, Some(name.as_bytes()), txid),
                        ours.map(|(k, _)| *k),
                    )
                };
                let route = router.route(source, &bytes, |_| gather);
                let response = is_stun(&bytes) && bytes[0] & 0x01 == 0x01;
                match route {
                    Route::Session(s) => {
                        assert!(live.contains_key(&s), "routed to a dead session {s}");
                        if let (false, Some(o)) = (gather && response, ours) {
                            assert_eq!(s, o, "STUN for {o} went to {s}");
                            assert_eq!(router.session_for_addr(source), Some(o));
                        }
                    }
                    Route::Gather => assert!(gather && response, "not ours to gather"),
                    Route::Drop(_) => {
                        drops += 1;
                        assert!(ours.is_none() || (gather && response), "our STUN dropped");
                    }
                }
                assert_eq!(router.dropped(), drops, "drop counter");
            }
            _ => {
                let bytes = input.chunk(200);
                if let Some((txid, _)) = parse_binding_response(bytes) {
                    assert!(is_stun(bytes));
                    assert_eq!(&txid[..], &bytes[8..20]);
                }
                let mapped = addr(input.u8());
                let txid = [k; 12];
                assert_eq!(
                    parse_binding_response(&binding_success(txid, mapped)),
                    Some((txid, BindingResponse::Success(Some(mapped))))
                );
            }
        }
        for s in 0..SESSIONS {
            let held = (0..24)
                .filter(|a| router.session_for_addr(addr(*a)) == Some(s))
                .count();
            assert!(held <= MAX_ADDRS_PER_SESSION);
        }
    }
}

/// Sessions registered, connectivity checks as browsers send them, a gathering response,
/// garbage.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut s = vec![0, 0, 0, 1, 1, 0, 5, 0, 3, 0, 0x12, 0x34, 1, 1, 3, 2, 7];
    s.extend_from_slice(&[4, 2, 9, 0]);
    chunk_bytes(&mut s, &[0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20]);
    s.extend_from_slice(&[5, 3, 9, 1, 0x00, 0x01, 1, 2]);
    s.extend_from_slice(&[6, 2]);
    let real = stun(0x0001, Some(b"ufrag1:abcd"), *b"0123456789ab");
    chunk_bytes(&mut s, &real);
    s.push(4);
    let mut g = vec![6, 1];
    chunk_bytes(&mut g, &binding_success(*b"txid00000001", addr(4)));
    g.push(7);
    vec![s, g]
}
