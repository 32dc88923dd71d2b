//! The TURN client and relays against an in-memory TURN server, on a simulated clock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::framing::{channel_data, parse_channel_data, StreamFramer};
use super::relays::{RelayOutput, Relays, LINGER};
use super::stun::*;
use super::{Received, SendError, TurnClient, TurnConfig, TurnEvent, TurnOutput};
use super::{TurnServer, TurnTransport};
use crate::machine::{Machine, Next};

const USER: &str = "alice";
const PASS: &str = "secret";
const REALM: &str = "lab.example";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

/// A minimal TURN server: long-term auth with a nonce it can make stale, allocations with a
/// fixed relay address, permissions and channels recorded, Send indications recorded.
struct FakeServer {
    nonce: Vec<u8>,
    relay: SocketAddr,
    lifetime: u32,
    key: [u8; 16],
    permissions: Vec<SocketAddr>,
    channels: HashMap<u16, SocketAddr>,
    sent: Vec<(SocketAddr, Vec<u8>)>,
    requests: Vec<(u16, Option<u32>)>,
    /// Answer the next authenticated request with 438 once.
    stale_once: bool,
    password_ok: bool,
}

impl FakeServer {
    fn new() -> FakeServer {
        FakeServer {
            nonce: b"nonce-1".to_vec(),
            relay: addr("203.0.113.1:50000"),
            lifetime: 600,
            key: long_term_key(USER, REALM, PASS),
            permissions: Vec::new(),
            channels: HashMap::new(),
            sent: Vec::new(),
            requests: Vec::new(),
            stale_once: false,
            password_ok: true,
        }
    }

    fn error(&self, m: &Message<'_>, code: u16) -> Vec<u8> {
        let value = [0, 0, (code / 100) as u8, (code % 100) as u8, b'x'];
        MessageBuilder::new(message_type(m.method(), Class::Error), &m.txid)
            .attr(ATTR_ERROR_CODE, &value)
            .attr(ATTR_REALM, REALM.as_bytes())
            .attr(ATTR_NONCE, &self.nonce)
            .finish()
    }

    /// The answer to one message from the client, if any.
    fn handle(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        if let Some((ch, data)) = parse_channel_data(bytes) {
            let peer = self.channels[&ch];
            self.sent.push((peer, data.to_vec()));
            return None;
        }
        let m = Message::parse(bytes).expect("client sends STUN");
        let lifetime = m
            .attr(ATTR_LIFETIME)
            .map(|v| u32::from_be_bytes(v.try_into().unwrap()));
        self.requests.push((m.method(), lifetime));
        if m.class() == Class::Indication {
            let peer = m.xor_address(ATTR_XOR_PEER_ADDRESS).unwrap();
            assert!(self.permissions.iter().any(|p| p.ip() == peer.ip()));
            self.sent.push((peer, m.attr(ATTR_DATA).unwrap().to_vec()));
            return None;
        }
        if m.attr(ATTR_USERNAME).is_none() {
            return Some(self.error(&m, 401));
        }
        assert_eq!(m.attr(ATTR_NONCE), Some(&self.nonce[..]));
        assert_eq!(m.attr(ATTR_USERNAME), Some(USER.as_bytes()));
        if !self.password_ok || !m.check_integrity(&self.key) {
            return Some(self.error(&m, 401));
        }
        if std::mem::take(&mut self.stale_once) {
            self.nonce = b"nonce-2".to_vec();
            return Some(self.error(&m, 438));
        }
        let ok = MessageBuilder::new(message_type(m.method(), Class::Success), &m.txid);
        let ok = match m.method() {
            0x0003 => ok
                .xor_address(ATTR_XOR_RELAYED_ADDRESS, self.relay)
                .xor_address(ATTR_XOR_MAPPED_ADDRESS, addr("203.0.113.2:40000"))
                .attr(ATTR_LIFETIME, &self.lifetime.to_be_bytes()),
            0x0004 => ok.attr(ATTR_LIFETIME, &lifetime.unwrap().to_be_bytes()),
            0x0008 => {
                // The port of a permission's address is 0 (ignored): read the IP alone.
                let mut v = m.attr(ATTR_XOR_PEER_ADDRESS).unwrap().to_vec();
                assert_eq!(&v[2..4], &[0x21, 0x12]);
                v[2..4].copy_from_slice(&[0x21, 0x13]);
                self.permissions
                    .push(parse_address(&v, Some(&m.txid)).unwrap());
                ok
            }
            0x0009 => {
                let ch = u16::from_be_bytes(
                    m.attr(ATTR_CHANNEL_NUMBER).unwrap()[..2]
                        .try_into()
                        .unwrap(),
                );
                let peer = m.xor_address(ATTR_XOR_PEER_ADDRESS).unwrap();
                self.permissions.push(peer);
                self.channels.insert(ch, peer);
                ok
            }
            other => panic!("unexpected method {other:#x}"),
        };
        Some(ok.finish_with_integrity(&self.key))
    }

    /// A Data indication from `peer`.
    fn data_indication(&self, peer: SocketAddr, data: &[u8]) -> Vec<u8> {
        MessageBuilder::new(message_type(0x0007, Class::Indication), &[5; 12])
            .xor_address(ATTR_XOR_PEER_ADDRESS, peer)
            .attr(ATTR_DATA, data)
            .finish()
    }
}

/// Run client and server against each other until both are quiet; returns the client's
/// events.
fn exchange(c: &mut TurnClient, s: &mut FakeServer, now: Instant) -> Vec<TurnEvent> {
    let mut events = Vec::new();
    while let Next::Output(o) = c.poll_output() {
        match o {
            TurnOutput::Transmit(bytes) => {
                if let Some(answer) = s.handle(&bytes) {
                    assert_eq!(c.handle_input(now, &answer), Received::Nothing);
                }
            }
            TurnOutput::Event(e) => events.push(e),
        }
    }
    events
}

fn deadline(c: &mut TurnClient) -> Option<Instant> {
    match c.poll_output() {
        Next::Timeout(t) => t,
        Next::Output(o) => panic!("unexpected {o:?}"),
    }
}

fn allocated(now: Instant, stream: bool) -> (TurnClient, FakeServer) {
    let mut c = TurnClient::new(now, TurnConfig::default(), USER, PASS, stream);
    let mut s = FakeServer::new();
    c.handle_start(now);
    let ev = exchange(&mut c, &mut s, now);
    assert_eq!(
        ev,
        vec![TurnEvent::Allocated {
            relay: s.relay,
            mapped: Some(addr("203.0.113.2:40000"))
        }]
    );
    (c, s)
}

#[test]
fn allocates_after_401_and_refreshes_before_expiry() {
    let t0 = Instant::now();
    let (mut c, mut s) = allocated(t0, false);
    assert_eq!(c.relay(), Some(s.relay));
    // Unauthenticated first, then with credentials.
    assert_eq!(s.requests, vec![(3, Some(600)), (3, Some(600))]);
    // Refresh a minute before the lifetime ends; the nonce went stale meanwhile.
    let due = deadline(&mut c).expect("refresh armed");
    assert_eq!(due, t0 + Duration::from_secs(540));
    s.stale_once = true;
    c.handle_timeout(due);
    assert!(exchange(&mut c, &mut s, due).is_empty());
    assert_eq!(&s.requests[2..], &[(4, Some(600)), (4, Some(600))]);
    assert_eq!(c.relay(), Some(s.relay));
    assert_eq!(deadline(&mut c), Some(due + Duration::from_secs(540)));
}

#[test]
fn sends_wait_for_the_permission_then_use_a_channel() {
    let t0 = Instant::now();
    let (mut c, mut s) = allocated(t0, false);
    let peer = addr("198.51.100.7:61000");
    // Before the permission: queued; the CreatePermission goes out.
    let mut pending = Vec::new();
    c.handle_send(t0, peer, b"one").unwrap();
    while let Next::Output(TurnOutput::Transmit(b)) = c.poll_output() {
        pending.push(b);
    }
    assert_eq!(pending.len(), 1);
    assert!(s.sent.is_empty());
    // The permission arrives: the queued datagram goes as a Send indication, a channel is
    // bound.
    let answer = s.handle(&pending[0]).unwrap();
    c.handle_input(t0, &answer);
    exchange(&mut c, &mut s, t0);
    assert_eq!(s.sent, vec![(peer, b"one".to_vec())]);
    assert_eq!(s.channels.len(), 1);
    // Bound: ChannelData from now on.
    c.handle_send(t0, peer, b"two").unwrap();
    match c.poll_output() {
        Next::Output(TurnOutput::Transmit(b)) => {
            let (ch, data) = parse_channel_data(&b).unwrap();
            assert!((0x4000..=0x4fff).contains(&ch));
            assert_eq!(data, b"two");
            s.handle(&b);
        }
        o => panic!("{o:?}"),
    }
    // Data back, both forms.
    let ch = *s.channels.keys().next().unwrap();
    let cd = channel_data(ch, b"back", false);
    assert_eq!(
        c.handle_input(t0, &cd),
        Received::Data {
            peer,
            data: b"back"
        }
    );
    let ind = s.data_indication(addr("198.51.100.8:1"), b"x");
    assert_eq!(
        c.handle_input(t0, &ind),
        Received::Data {
            peer: addr("198.51.100.8:1"),
            data: b"x"
        }
    );
    // Unknown channel, garbage: nothing.
    assert_eq!(
        c.handle_input(t0, &channel_data(0x4abc, b"?", false)),
        Received::Nothing
    );
    assert_eq!(c.handle_input(t0, &[0x40, 0, 0, 9]), Received::Nothing);
    assert_eq!(
        c.handle_input(t0, b"junk junk junk junk junk"),
        Received::Nothing
    );
}

#[test]
fn permissions_and_channels_refresh_while_used_and_lapse_when_not() {
    let t0 = Instant::now();
    let (mut c, mut s) = allocated(t0, false);
    let used = addr("198.51.100.7:61000");
    c.handle_permit(t0, used.ip());
    c.handle_permit(t0, addr("198.51.100.9:1").ip());
    exchange(&mut c, &mut s, t0);
    c.handle_send(t0, used, b"a").unwrap();
    exchange(&mut c, &mut s, t0);
    assert_eq!(s.permissions.len(), 3, "two permissions and one channel");
    let before = s.requests.len();
    // Four minutes on, still in use: both refreshed; the idle permission lapses.
    let t1 = t0 + Duration::from_secs(241);
    c.handle_send(t1, used, b"b").unwrap();
    c.handle_timeout(t1);
    exchange(&mut c, &mut s, t1);
    let t2 = t0 + Duration::from_secs(301);
    c.handle_timeout(t2);
    exchange(&mut c, &mut s, t2);
    let methods: Vec<u16> = s.requests[before..].iter().map(|r| r.0).collect();
    assert!(methods.contains(&0x0008), "{methods:?}");
    // The unused one is not asked again.
    let asked_for_idle = s
        .permissions
        .iter()
        .filter(|p| p.ip() == addr("198.51.100.9:1").ip())
        .count();
    assert_eq!(asked_for_idle, 1);
}

#[test]
fn permits_asked_before_the_allocation_are_created_once_it_succeeds() {
    let t0 = Instant::now();
    let mut c = TurnClient::new(t0, TurnConfig::default(), USER, PASS, false);
    let mut s = FakeServer::new();
    c.handle_permit(t0, addr("198.51.100.7:1").ip());
    c.handle_start(t0);
    c.handle_permit(t0, addr("198.51.100.8:1").ip());
    exchange(&mut c, &mut s, t0);
    let ips: Vec<_> = s.permissions.iter().map(|p| p.ip()).collect();
    assert_eq!(
        ips,
        [addr("198.51.100.7:1").ip(), addr("198.51.100.8:1").ip()]
    );
}

#[test]
fn release_sends_lifetime_zero() {
    let t0 = Instant::now();
    let (mut c, mut s) = allocated(t0, false);
    c.handle_release(t0);
    assert_eq!(exchange(&mut c, &mut s, t0), vec![TurnEvent::Released]);
    assert_eq!(s.requests.last(), Some(&(4, Some(0))));
    assert!(c.is_done());
    assert_eq!(
        c.handle_send(t0, addr("198.51.100.7:1"), b"x"),
        Err(SendError::NotAllocated)
    );
}

#[test]
fn wrong_password_fails_with_a_hint() {
    let t0 = Instant::now();
    let mut c = TurnClient::new(t0, TurnConfig::default(), USER, "wrong", false);
    let mut s = FakeServer::new();
    s.password_ok = false;
    c.handle_start(t0);
    let ev = exchange(&mut c, &mut s, t0);
    match &ev[..] {
        [TurnEvent::Failed(why)] => {
            assert!(why.contains("401") && why.contains("credential"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    // One unauthenticated try and three with credentials, then it stops.
    assert_eq!(s.requests.len(), 4);
}

#[test]
fn udp_retransmits_then_gives_up_stream_does_not_retransmit() {
    let t0 = Instant::now();
    let mut c = TurnClient::new(t0, TurnConfig::default(), USER, PASS, false);
    c.handle_start(t0);
    let first = match c.poll_output() {
        Next::Output(TurnOutput::Transmit(b)) => b,
        o => panic!("{o:?}"),
    };
    let mut sends = vec![0u128];
    let mut now = t0;
    while let Some(t) = deadline(&mut c) {
        now = t;
        c.handle_timeout(now);
        match c.poll_output() {
            Next::Output(TurnOutput::Transmit(b)) => {
                assert_eq!(b, first);
                sends.push((now - t0).as_millis());
            }
            Next::Output(TurnOutput::Event(TurnEvent::Failed(why))) => {
                assert!(why.contains("no answer"));
                break;
            }
            o => panic!("{o:?}"),
        }
    }
    assert_eq!(sends, vec![0, 500, 1500, 3500, 7500, 15500]);
    assert_eq!((now - t0).as_millis(), 31500);

    let mut c = TurnClient::new(t0, TurnConfig::default(), USER, PASS, true);
    c.handle_start(t0);
    assert!(matches!(
        c.poll_output(),
        Next::Output(TurnOutput::Transmit(_))
    ));
    let t = deadline(&mut c).unwrap();
    assert_eq!(t, t0 + Duration::from_secs(10));
    c.handle_timeout(t);
    assert!(matches!(
        c.poll_output(),
        Next::Output(TurnOutput::Event(TurnEvent::Failed(_)))
    ));
}

#[test]
fn waiting_queue_and_peers_are_bounded() {
    let t0 = Instant::now();
    let cfg = TurnConfig {
        max_waiting: 2,
        max_peers: 2,
        ..TurnConfig::default()
    };
    let mut c = TurnClient::new(t0, cfg, USER, PASS, false);
    let mut s = FakeServer::new();
    c.handle_start(t0);
    exchange(&mut c, &mut s, t0);
    let peer = addr("198.51.100.7:1");
    assert_eq!(c.handle_send(t0, peer, b"1"), Ok(()));
    assert_eq!(c.handle_send(t0, peer, b"2"), Ok(()));
    assert_eq!(c.handle_send(t0, peer, b"3"), Err(SendError::QueueFull));
    c.handle_permit(t0, addr("198.51.100.8:1").ip());
    assert_eq!(
        c.handle_send(t0, addr("198.51.100.9:1"), b"x"),
        Err(SendError::TooManyPeers)
    );
}

#[test]
fn stream_channel_data_is_padded_and_framed() {
    let t0 = Instant::now();
    let (mut c, mut s) = allocated(t0, true);
    let peer = addr("198.51.100.7:61000");
    c.handle_permit(t0, peer.ip());
    exchange(&mut c, &mut s, t0);
    c.handle_send(t0, peer, b"hi").unwrap();
    exchange(&mut c, &mut s, t0);
    c.handle_send(t0, peer, b"abcde").unwrap();
    let Next::Output(TurnOutput::Transmit(b)) = c.poll_output() else {
        panic!("no transmit")
    };
    assert_eq!(b.len(), 12, "4 + 5 padded to 8");
    let mut f = StreamFramer::default();
    f.push(&b);
    assert_eq!(
        parse_channel_data(f.next_frame().unwrap().unwrap())
            .unwrap()
            .1,
        b"abcde"
    );
}

/// One UDP relay allocated for session 1 from a fake server: the relays, the server, its
/// configuration and its address.
fn one_allocated_relay(t0: Instant) -> (Relays<u32>, FakeServer, TurnServer, SocketAddr) {
    let server = TurnServer {
        host: "203.0.113.1".into(),
        port: 3478,
        transport: TurnTransport::Udp,
        username: USER.into(),
        credential: PASS.into(),
    };
    let server_addr = addr("203.0.113.1:3478");
    let mut relays: Relays<u32> = Relays::default();
    let mut fake = FakeServer::new();
    assert!(relays
        .handle_allocate(t0, 1, std::slice::from_ref(&server))
        .is_empty());
    let Next::Output(RelayOutput::Lookup { relay, .. }) = relays.poll_output() else {
        panic!("lookup first")
    };
    relays.handle_resolved(t0, relay, Ok(vec![server_addr]), |_| true);
    // Pump until allocated.
    let mut allocated = None;
    for _ in 0..10 {
        match relays.poll_output() {
            Next::Output(RelayOutput::Transmit {
                destination,
                contents,
            }) => {
                assert_eq!(destination, server_addr);
                if let Some(a) = fake.handle(&contents) {
                    assert!(relays.handle_datagram(t0, server_addr, &a, |_, _, _| panic!()));
                }
            }
            Next::Output(RelayOutput::Allocated { address, .. }) => allocated = Some(address),
            Next::Output(o) => panic!("{o:?}"),
            Next::Timeout(_) => break,
        }
    }
    assert_eq!(allocated, Some(fake.relay));
    (relays, fake, server, server_addr)
}

#[test]
fn relays_share_allocations_and_release_after_linger() {
    let t0 = Instant::now();
    let (mut relays, mut fake, server, server_addr) = one_allocated_relay(t0);
    assert!(relays.is_relay_address(fake.relay));
    // A second session shares it, at once.
    assert_eq!(relays.handle_allocate(t0, 2, &[server]), vec![fake.relay]);
    assert_eq!(relays.len(), 1);
    // Data from a peer comes back with the relay address as destination.
    let peer = addr("198.51.100.7:5");
    let ind = fake.data_indication(peer, b"stun?");
    let mut got = None;
    relays.handle_datagram(t0, server_addr, &ind, |p, a, d| {
        got = Some((p, a, d.to_vec()))
    });
    assert_eq!(got, Some((peer, fake.relay, b"stun?".to_vec())));
    // Not from the server: not ours.
    assert!(!relays.handle_datagram(t0, peer, &ind, |_, _, _| {}));
    // Both sessions leave: released after the linger.
    relays.handle_session_gone(t0, 1);
    relays.handle_session_gone(t0, 2);
    let t1 = t0 + LINGER;
    match relays.poll_output() {
        Next::Timeout(Some(t)) => assert!(t <= t1),
        o => panic!("{o:?}"),
    }
    relays.handle_timeout(t1);
    let Next::Output(RelayOutput::Transmit { contents, .. }) = relays.poll_output() else {
        panic!("refresh 0")
    };
    let answer = fake.handle(&contents).unwrap();
    relays.handle_datagram(t1, server_addr, &answer, |_, _, _| {});
    assert!(relays.is_empty());
    assert_eq!(fake.requests.last(), Some(&(4, Some(0))));
}

#[test]
fn junk_and_mangled_messages_are_ignored_without_panic() {
    let t0 = Instant::now();
    let (mut c, mut s) = allocated(t0, true);
    let peer = addr("198.51.100.7:61000");
    c.handle_send(t0, peer, b"x").unwrap();
    exchange(&mut c, &mut s, t0);
    // Valid messages to mangle: a success, a Data indication, ChannelData.
    let ok = MessageBuilder::new(0x0103, &[1; 12])
        .xor_address(ATTR_XOR_RELAYED_ADDRESS, s.relay)
        .attr(ATTR_LIFETIME, &600u32.to_be_bytes())
        .finish_with_integrity(&s.key);
    let samples = [
        ok,
        s.data_indication(peer, b"hello"),
        channel_data(0x4000, b"hello", true),
    ];
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut framer = StreamFramer::default();
    for i in 0..20_000 {
        let mut m = samples[i % samples.len()].clone();
        match next() % 3 {
            0 => {
                let at = (next() as usize) % m.len();
                m[at] ^= 1 << (next() % 8);
            }
            1 => m.truncate((next() as usize) % (m.len() + 1)),
            _ => {
                let n = (next() % 64) as usize;
                m = (0..n).map(|_| next() as u8).collect();
            }
        }
        let _ = c.handle_input(t0, &m);
        framer.push(&m);
        while let Ok(Some(frame)) = framer.next_frame() {
            let _ = c.handle_input(t0, frame);
        }
        if framer.next_frame().is_err() {
            framer = StreamFramer::default();
        }
    }
    // Still allocated and working.
    assert_eq!(c.relay(), Some(s.relay));
    c.handle_send(t0, peer, b"still").unwrap();
}

#[test]
fn a_session_that_comes_while_a_relay_is_released_gets_a_new_one() {
    let t0 = Instant::now();
    let (mut relays, _fake, server, _) = one_allocated_relay(t0);
    relays.handle_session_gone(t0, 1);
    let t1 = t0 + LINGER;
    relays.handle_timeout(t1);
    let Next::Output(RelayOutput::Transmit { .. }) = relays.poll_output() else {
        panic!("refresh 0")
    };
    // Released, not answered yet: a newcomer does not join it.
    assert!(relays
        .handle_allocate(t1, 2, std::slice::from_ref(&server))
        .is_empty());
    assert_eq!(relays.len(), 2);
}
