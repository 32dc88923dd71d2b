//! SDP offers, trickled candidates and datagrams through the session layer
//! (`webrtc::session::PeerSession`, one str0m answerer; docs/design.md, the WebRTC layer).
//!
//! Input: a mode byte, then operations until the bytes run out. Mode even: one
//! [`PeerSession`]: an SDP offer (arbitrary text; the seeds are real offers), a remote
//! candidate (a `candidate` string in the signaling object, a bare string, or arbitrary
//! JSON), a datagram from one of a few addresses, time passing (then the timeout is
//! handled), our host candidate. Mode odd: the same through the gateway core
//! ([`Gateway`], at most 2 sessions), with `client-connected` and `client-disconnected` for
//! three session ids.
//!
//! Properties:
//! - no panic escapes the session (str0m's are caught and close the session: a finding
//!   there is reported, not a crash);
//! - an accepted offer gets an answer that carries our current ICE ufrag (16 characters
//!   `[A-Za-z0-9]`, what the router keys on) and no other;
//! - `Closed` is reported at most once, and a closed session is no longer alive;
//! - after a timeout is handled, the next deadline is not in the past;
//! - the core: never more sessions than its cap, `session-ready` only for the session that
//!   just connected, an answer only for a live session that sent an offer, every datagram
//!   sent from our host address.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{chunk_bytes, identity, Input};
use crate::gateway::isolation::PANIC_FOR_TESTS;
use crate::gateway::{Gateway, Output as CoreOutput};
use crate::machine::{Machine, Next};
use crate::testkit::GatewayEnd;
use crate::webrtc::{PeerSession, SessionConfig, SessionEvent, SessionOutput};

const LOCAL: &str = "192.168.1.10:8765";
const REMOTES: [&str; 3] = ["192.168.1.20:54321", "203.0.113.7:3478", "[2001:db8::7]:9"];

fn local() -> SocketAddr {
    LOCAL.parse().expect("address")
}

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    if input.u8() % 2 == 1 {
        return core(&mut input);
    }
    let mut now = Instant::now();
    let cert = identity::stored().dtls_cert();
    let mut s = PeerSession::new(now, cert, &SessionConfig::default(), "fuzz").expect("session");
    let mut closed = false;
    while !input.is_empty() {
        let mut timed_out = false;
        match input.u8() % 6 {
            0 | 1 => {
                let sdp = input.text(16 * 1024);
                let before = s.offers_accepted();
                if let Ok(answer) = s.handle_offer(now, &sdp) {
                    let ufrag = s.local_ufrag();
                    assert_eq!(ufrag.len(), 16);
                    assert!(ufrag.bytes().all(|b| b.is_ascii_alphanumeric()));
                    let ufrags: Vec<&str> = answer
                        .lines()
                        .filter_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
                        .collect();
                    assert!(!ufrags.is_empty(), "no ufrag in the answer");
                    assert!(
                        ufrags.iter().all(|u| *u == ufrag),
                        "{ufrags:?} is not {ufrag}"
                    );
                    assert_eq!(s.offers_accepted(), before + 1);
                }
            }
            2 => {
                let text = input.text(300);
                let data = match input.u8() % 3 {
                    0 => json!({"candidate": text, "sdpMid": "0", "sdpMLineIndex": 0,
                                "usernameFragment": "abcd"}),
                    1 => Value::String(text),
                    _ => serde_json::from_str(&text).unwrap_or(Value::Null),
                };
                let _ = s.handle_remote_candidate(now, &data);
            }
            3 => {
                let from: SocketAddr = REMOTES[usize::from(input.u8() % 3)].parse().expect("addr");
                s.handle_receive(now, from, local(), input.chunk(1500));
            }
            4 => {
                now += Duration::from_millis(u64::from(input.u16()));
                s.handle_timeout(now);
                timed_out = true;
            }
            _ => {
                let _ = s.handle_host_candidate(now, local());
            }
        }
        loop {
            match s.poll_output() {
                Next::Output(SessionOutput::Event(SessionEvent::Closed { .. })) => {
                    assert!(!closed, "Closed twice");
                    closed = true;
                }
                Next::Output(_) => {}
                Next::Timeout(t) => {
                    if let (true, Some(t)) = (timed_out, t) {
                        assert!(t >= now, "deadline in the past after a timeout");
                    }
                    break;
                }
            }
        }
        if closed {
            assert!(!s.is_alive(), "alive after Closed");
        }
    }
}

/// The answer carries one ICE ufrag, of 16 `[A-Za-z0-9]` (`ours`, when known).
fn check_answer(answer: &str, ours: Option<&str>) {
    let ufrags: Vec<&str> = answer
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
        .collect();
    let Some(first) = ufrags.first() else {
        panic!("no ufrag in the answer");
    };
    assert!(
        ufrags.iter().all(|u| u == first),
        "several ufrags: {ufrags:?}"
    );
    assert_eq!(first.len(), 16);
    assert!(first.bytes().all(|b| b.is_ascii_alphanumeric()));
    if let Some(ours) = ours {
        assert_eq!(*first, ours, "the answer's ufrag is not the session's");
    }
}

/// The same inputs through the gateway core.
fn core(input: &mut Input) {
    const IDS: [&str; 3] = ["AbCdEfGhIjKlMnOp", "s-2", "s_3"];
    const MAX: usize = 2;
    let mut now = Instant::now();
    let mut gw = Gateway::new(now, GatewayEnd::config(MAX), identity::stored().dtls_cert());
    gw.handle_host_candidate(now, local());
    // Sessions the core may hold (connected and not disconnected), and which sent an offer.
    let mut live: HashSet<&str> = HashSet::new();
    let mut offered: HashSet<&str> = HashSet::new();
    while !input.is_empty() {
        let op = input.u8();
        let sid = IDS[usize::from(input.u8() % 3)];
        let mut connected = None;
        match op % 7 {
            0 => {
                gw.handle_client_connected(now, sid);
                live.insert(sid);
                offered.remove(sid);
                connected = Some(sid);
            }
            1 | 2 => {
                gw.handle_offer(now, sid, &input.text(16 * 1024));
                offered.insert(sid);
            }
            3 => {
                let data = json!({"candidate": input.text(300), "sdpMid": "0"});
                if data["candidate"] != PANIC_FOR_TESTS {
                    gw.handle_remote_candidate(now, sid, &data);
                }
            }
            4 => {
                let from: SocketAddr = REMOTES[usize::from(input.u8() % 3)].parse().expect("addr");
                gw.handle_datagram(now, from, input.chunk(1500));
            }
            5 => {
                now += Duration::from_millis(u64::from(input.u16()) * 10);
                gw.handle_timeout(now);
            }
            _ => {
                gw.handle_client_disconnected(now, sid);
                live.remove(sid);
            }
        }
        for _ in 0..100_000 {
            match gw.poll_output() {
                Next::Output(CoreOutput::SessionReady { session_id }) => {
                    assert_eq!(
                        Some(session_id.as_str()),
                        connected,
                        "unexpected session-ready"
                    );
                }
                Next::Output(CoreOutput::Answer { session_id, sdp }) => {
                    let sid = session_id.as_str();
                    assert!(
                        live.contains(sid) && offered.contains(sid),
                        "answer for {sid}"
                    );
                    check_answer(&sdp, None);
                }
                Next::Output(CoreOutput::Transmit(t)) => {
                    assert_eq!(t.source, local(), "sent from another address")
                }
                Next::Output(_) => {}
                Next::Timeout(_) => break,
            }
        }
        assert!(gw.session_count() <= MAX, "{} sessions", gw.session_count());
    }
}

/// Offers as str0m makes them (the web app's own test client), and one as Chrome sends it.
fn offers() -> &'static [String] {
    static OFFERS: OnceLock<Vec<String>> = OnceLock::new();
    OFFERS.get_or_init(|| {
        let mut out = vec![CHROME_OFFER.replace('\n', "\r\n")];
        let now = Instant::now();
        let mut rtc = str0m::Rtc::builder().build(now);
        let addr: SocketAddr = REMOTES[0].parse().expect("addr");
        if let Ok(c) = str0m::Candidate::host(addr, "udp") {
            rtc.add_local_candidate(c);
        }
        let mut api = rtc.sdp_api();
        api.add_channel("ma-api".into());
        if let Some((offer, _)) = api.apply() {
            out.push(offer.to_sdp_string());
        }
        out
    })
}

const CHROME_OFFER: &str = "v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0
a=extmap-allow-mixed
a=msid-semantic: WMS
m=application 9 UDP/DTLS/SCTP webrtc-datachannel
c=IN IP4 0.0.0.0
a=candidate:2796272834 1 udp 2113937151 1c0ffee0-0000-4000-8000-000000000000.local 54321 typ host generation 0 network-cost 999
a=ice-ufrag:7YbG
a=ice-pwd:4sdf8CvvW/pJK8PvE7nMXWpe
a=ice-options:trickle
a=fingerprint:sha-256 3C:4A:2F:96:5A:3F:4E:66:9F:B2:1C:A4:81:D2:17:2E:02:4F:CE:50:2D:0C:3E:E0:16:F8:73:8F:5B:E4:1A:2C
a=setup:actpass
a=mid:0
a=sctp-port:5000
a=max-message-size:262144
";

/// An offer, a candidate, a host candidate, a STUN check, time, an ICE restart.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for offer in offers() {
        // The gateway core: client-connected, the offer, a candidate, a check, time.
        let mut c = vec![1, 0, 0, 1, 0];
        chunk_bytes(&mut c, offer.as_bytes());
        c.extend_from_slice(&[3, 0]);
        chunk_bytes(
            &mut c,
            b"candidate:1 1 udp 2122260223 192.168.1.20 54321 typ host generation 0 ufrag abcd",
        );
        c.extend_from_slice(&[4, 0, 0]);
        chunk_bytes(
            &mut c,
            &super::udp::stun(0x0001, Some(b"ufrag:abcd"), *b"0123456789ab"),
        );
        c.extend_from_slice(&[5, 0, 0x01, 0xf4, 6, 0]);
        out.push(c);
        let mut s = vec![0, 5, 0];
        chunk_bytes(&mut s, offer.as_bytes());
        s.push(2);
        chunk_bytes(
            &mut s,
            b"candidate:1 1 udp 2122260223 192.168.1.20 54321 typ host generation 0 ufrag abcd",
        );
        s.push(0);
        s.push(3);
        s.push(0);
        chunk_bytes(
            &mut s,
            &super::udp::stun(0x0001, Some(b"ufrag:abcd"), *b"0123456789ab"),
        );
        s.extend_from_slice(&[4, 0x13, 0x88]);
        s.push(1);
        chunk_bytes(
            &mut s,
            offer.replace("a=ice-ufrag:", "a=ice-ufrag:R").as_bytes(),
        );
        out.push(s);
    }
    out
}
