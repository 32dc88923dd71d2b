//! SDP offers, trickled candidates and datagrams through the session layer
//! (`webrtc::session::PeerSession`, one str0m answerer; docs/design.md, the WebRTC layer).
//!
//! Input: operations until the bytes run out: an SDP offer (arbitrary text; the seeds are
//! real offers), a remote candidate (a `candidate` string in the signaling object, a bare
//! string, or arbitrary JSON), a datagram from one of a few addresses, time passing (then
//! the timeout is handled), our host candidate.
//!
//! Properties:
//! - no panic escapes the session (str0m's are caught and close the session: a finding
//!   there is reported, not a crash);
//! - an accepted offer gets an answer that carries our current ICE ufrag (16 characters
//!   `[A-Za-z0-9]`, what the router keys on) and no other;
//! - `Closed` is reported at most once, and a closed session is no longer alive;
//! - after a timeout is handled, the next deadline is not in the past.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{chunk_bytes, identity, Input};
use crate::machine::{Machine, Next};
use crate::webrtc::{PeerSession, SessionConfig, SessionEvent, SessionOutput};

const LOCAL: &str = "192.168.1.10:8765";
const REMOTES: [&str; 3] = ["192.168.1.20:54321", "203.0.113.7:3478", "[2001:db8::7]:9"];

fn local() -> SocketAddr {
    LOCAL.parse().expect("address")
}

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
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
        let mut s = vec![5, 0];
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
