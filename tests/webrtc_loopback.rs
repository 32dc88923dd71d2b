//! A str0m *offerer* (playing the client app) against a gateway `PeerSession` behind the
//! `Router`, wired in memory by the test kit with a simulated clock: no sockets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ma_webrtc_gateway::testkit::{Clock, Pair, RtcEnd, SessionEnd};
use ma_webrtc_gateway::webrtc::{
    ChannelId, CloseReason, DtlsCert, PeerSession, RemoteCandidateOutcome, SessionConfig,
    SessionError, SessionEvent,
};
use serde_json::{json, Value};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::{Candidate, Event, IceConnectionState, Rtc};

const KEY: u32 = SessionEnd::KEY;

/// `a`: the client, `b`: the gateway's session.
type Net = Pair<RtcEnd, SessionEnd>;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

fn test_cert() -> DtlsCert {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Music Assistant WebRTC");
    let cert = params.self_signed(&key).expect("cert");
    DtlsCert {
        certificate: cert.der().to_vec(),
        private_key: key.serialize_der(),
    }
}

fn sha256_fingerprint(der: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn new_net(config: &SessionConfig) -> (Net, DtlsCert) {
    let clock = Clock::simulated();
    let now = clock.now();
    let cert = test_cert();
    let gw = SessionEnd::new(now, cert.clone(), config, addr("10.0.0.1:4000"));
    let client = Rtc::builder()
        .set_sctp_max_buffered_amount(1024 * 1024)
        .build(now);
    let client = RtcEnd::new(client, addr("10.0.0.2:5000"));
    (Pair::new(clock, client, gw), cert)
}

/// What these tests do on the pair, spelled once.
trait Loopback {
    /// Client offer with the "ma-api" channel → gateway answer → client; the gateway's host
    /// candidate is trickled (not in the answer). Returns the client's channel id and answer.
    fn negotiate(&mut self) -> (ChannelId, String);
    fn accept_answer(&mut self, pending: SdpPendingOffer, answer: &str);
    fn add_candidate_to_client(&mut self, json: &Value);
    /// Connect and wait for the "ma-api" channel on both sides; returns (client id, gw id).
    fn connect(&mut self) -> (ChannelId, ChannelId);
    fn client_send(&mut self, cid: ChannelId, binary: bool, data: &[u8]);
    /// Wait for one message at the gateway.
    fn gw_recv(&mut self) -> (bool, Vec<u8>);
    /// Wait for one message at the client.
    fn client_recv(&mut self) -> (bool, Vec<u8>);
    fn echo_both_ways(&mut self, cid: ChannelId, gid: ChannelId, tag: &str);
}

impl Loopback for Net {
    fn negotiate(&mut self) -> (ChannelId, String) {
        let now = self.now();
        let client_cand = Candidate::host(self.a.addr, "udp").expect("cand");
        let client_cand = self
            .a
            .rtc
            .add_local_candidate(client_cand)
            .expect("added")
            .to_sdp_string();
        let mut api = self.a.rtc.sdp_api();
        let cid = api.add_channel("ma-api".into());
        let (offer, pending) = api.apply().expect("offer");
        let offer_sdp = offer.to_sdp_string();
        let answer = self
            .b
            .session
            .handle_offer(now, &offer_sdp)
            .expect("answer");
        self.accept_answer(pending, &answer);

        // Trickle the gateway's host candidate to the client, and the client's to the gateway.
        let gw_addr = self.b.addr;
        let json = self
            .b
            .session
            .handle_host_candidate(now, gw_addr)
            .expect("candidate")
            .expect("added");
        self.add_candidate_to_client(&json);
        let outcome = self
            .b
            .session
            .handle_remote_candidate(now, &json!({"candidate": client_cand, "sdpMid": "0"}))
            .expect("remote candidate");
        // Already in the offer: str0m ignores the duplicate, we report it as handed to ICE.
        assert_eq!(outcome, RemoteCandidateOutcome::Added);
        (cid, answer)
    }

    fn accept_answer(&mut self, pending: SdpPendingOffer, answer: &str) {
        let answer = SdpAnswer::from_sdp_string(answer).expect("answer parses");
        self.a
            .rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("accept answer");
    }

    fn add_candidate_to_client(&mut self, json: &Value) {
        // The mid of the offer's application m-line (str0m makes random ones; browsers "0").
        assert_eq!(json["sdpMid"], json!(self.b.session.app_mid()));
        assert_eq!(json["sdpMLineIndex"], json!(0));
        let s = json["candidate"].as_str().expect("string");
        assert!(s.starts_with("candidate:"), "{s}");
        let c = Candidate::from_sdp_string(s).expect("parses");
        self.a.rtc.add_remote_candidate(c);
    }

    fn connect(&mut self) -> (ChannelId, ChannelId) {
        let (cid, _) = self.negotiate();
        let mut gw_id = None;
        self.run_until("channel open", Duration::from_secs(10), |n| {
            for e in n.b.take_events() {
                if let SessionEvent::ChannelOpen { id, label } = e {
                    assert_eq!(label, "ma-api");
                    gw_id = Some(id);
                }
            }
            gw_id.is_some() && n.a.rtc.channel(cid).is_some()
        });
        assert!(self.b.session.is_connected());
        (cid, gw_id.expect("open"))
    }

    fn client_send(&mut self, cid: ChannelId, binary: bool, data: &[u8]) {
        let accepted = self
            .a
            .rtc
            .channel(cid)
            .expect("client channel")
            .write(binary, data)
            .expect("client write");
        assert!(accepted, "client budget");
    }

    fn gw_recv(&mut self) -> (bool, Vec<u8>) {
        let mut got = None;
        self.run_until("gateway data", Duration::from_secs(20), |n| {
            let mut keep = Vec::new();
            for e in n.b.take_events() {
                match e {
                    SessionEvent::ChannelData { binary, data, .. } if got.is_none() => {
                        got = Some((binary, data));
                    }
                    other => keep.push(other),
                }
            }
            n.b.events = keep;
            got.is_some()
        });
        got.expect("data")
    }

    fn client_recv(&mut self) -> (bool, Vec<u8>) {
        let mut got = None;
        self.run_until("client data", Duration::from_secs(20), |n| {
            let events = &mut n.a.events;
            if let Some(i) = events
                .iter()
                .position(|e| matches!(e, Event::ChannelData(_)))
            {
                if let Event::ChannelData(d) = events.remove(i) {
                    got = Some((d.binary, d.data));
                }
            }
            got.is_some()
        });
        got.expect("data")
    }

    fn echo_both_ways(&mut self, cid: ChannelId, gid: ChannelId, tag: &str) {
        let up = format!("{{\"command\":\"ping\",\"tag\":\"{tag}\"}}");
        self.client_send(cid, false, up.as_bytes());
        assert_eq!(self.gw_recv(), (false, up.into_bytes()));
        let down = format!("{{\"result\":\"pong\",\"tag\":\"{tag}\"}}");
        assert_eq!(
            self.b
                .session
                .write(self.now(), gid, false, down.as_bytes()),
            Ok(true)
        );
        assert_eq!(self.client_recv(), (false, down.into_bytes()));
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    // Printable, varied, so a shifted or truncated copy cannot compare equal.
    (0..len)
        .map(|i| b'!' + ((i * 7 + usize::from(seed) + i / 251) % 90) as u8)
        .collect()
}

#[test]
fn connect_exchange_and_large_messages() {
    let (mut net, cert) = new_net(&SessionConfig::default());
    let (cid, answer) = net.negotiate();

    // The answer carries exactly our certificate's sha-256 fingerprint (clients pin it).
    let fp = sha256_fingerprint(&cert.certificate);
    assert!(
        answer.contains(&format!("a=fingerprint:sha-256 {fp}")),
        "{answer}"
    );
    assert_eq!(net.b.session.local_fingerprint().bytes.len(), 32);
    assert!(answer.contains(&format!("a=ice-ufrag:{}", net.b.session.local_ufrag())));
    assert!(answer.contains("a=setup:passive") || answer.contains("a=setup:active"));
    assert!(!answer.contains("a=ice-lite"));
    assert!(answer.contains("a=max-message-size:262144"));
    // str0m's offer advertises 256 KiB.
    assert_eq!(net.b.session.remote_max_message_size(), Some(262_144));
    assert_eq!(net.b.session.max_send_message_size(), 262_144);
    let offer_mid = answer
        .lines()
        .find_map(|l| l.strip_prefix("a=mid:"))
        .expect("mid");
    assert_eq!(net.b.session.app_mid(), offer_mid);

    let mut gid = None;
    let mut connected = false;
    net.run_until("channel open", Duration::from_secs(10), |n| {
        for e in n.b.take_events() {
            match e {
                SessionEvent::Connected => connected = true,
                SessionEvent::ChannelOpen { id, label } => {
                    assert_eq!(label, "ma-api");
                    gid = Some(id);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        gid.is_some() && n.a.rtc.channel(cid).is_some()
    });
    assert!(connected);
    let gid = gid.expect("gw channel");
    assert_eq!(net.b.session.channel_label(gid), Some("ma-api"));
    assert_eq!(net.b.router.session_for_addr(net.a.addr), Some(KEY));
    assert!(net.b.routed > 0);
    assert_eq!(
        net.b.router.dropped(),
        0,
        "nothing dropped: STUN taught the address first"
    );

    // Text both ways.
    net.echo_both_ways(cid, gid, "one");

    // 200 KiB text client → gateway, byte-exact.
    let big_up = pattern(200 * 1024, 1);
    net.client_send(cid, false, &big_up);
    let (binary, data) = net.gw_recv();
    assert!(!binary);
    assert_eq!(data.len(), big_up.len());
    assert!(data == big_up, "200 KiB upload differs");

    // 200 KiB text gateway → client (within the client's 256 KiB), byte-exact.
    let big_down = pattern(200 * 1024, 2);
    assert_eq!(
        net.b.session.write(net.now(), gid, false, &big_down),
        Ok(true)
    );
    let (binary, data) = net.client_recv();
    assert!(!binary);
    assert!(data == big_down, "200 KiB download differs");

    // Binary both ways (including all byte values).
    let bin: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    net.client_send(cid, true, &bin);
    assert_eq!(net.gw_recv(), (true, bin.clone()));
    // Larger than the window: it goes once the last message is acknowledged.
    net.run_until("nothing in flight", Duration::from_secs(10), |n| {
        n.b.session.buffered_amount(gid) == 0
    });
    assert_eq!(net.b.session.write(net.now(), gid, true, &bin), Ok(true));
    assert_eq!(net.client_recv(), (true, bin));

    // Empty messages are refused: sctp-proto 0.10.8 would send nothing but use up a stream
    // sequence number, stalling every later message on the (ordered) channel.
    assert_eq!(
        net.b.session.write(net.now(), gid, false, b""),
        Err(SessionError::EmptyMessage)
    );
    assert_eq!(
        net.b.session.write(net.now(), gid, true, b""),
        Err(SessionError::EmptyMessage)
    );

    // Above the peer's limit: refused without touching str0m.
    assert_eq!(
        net.b
            .session
            .write(net.now(), gid, false, &vec![b'x'; 262_145]),
        Err(SessionError::MessageTooLarge {
            len: 262_145,
            max: 262_144
        })
    );
    net.echo_both_ways(cid, gid, "after");
    assert!(net.b.session.is_alive());
}

#[test]
fn backpressure_then_writable() {
    let config = SessionConfig {
        send_window: 256 * 1024,
        ..SessionConfig::default()
    };
    let (mut net, _) = new_net(&config);
    let (_cid, gid) = net.connect();
    let msg = pattern(60 * 1024, 3);
    let mut accepted = 0;
    loop {
        match net.b.session.write(net.now(), gid, false, &msg) {
            Ok(true) => accepted += 1,
            Ok(false) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(accepted < 100, "the budget never filled");
    }
    assert!(accepted >= 4, "accepted {accepted}");
    assert!(net.b.session.buffered_amount(gid) + msg.len() > config.send_window);
    assert!(net.b.session.buffered_amount(gid) > 0);
    let mut writable = false;
    net.run_until("writable", Duration::from_secs(10), |n| {
        for e in n.b.take_events() {
            if let SessionEvent::Writable = e {
                writable = true;
            }
        }
        writable
    });
    assert_eq!(net.b.session.write(net.now(), gid, false, &msg), Ok(true));
    // All of it arrives, in order.
    for _ in 0..=accepted {
        assert_eq!(net.client_recv(), (false, msg.clone()));
    }
}

#[test]
fn the_send_window_holds_back_writes_but_never_a_lone_large_message() {
    let config = SessionConfig::default();
    let (mut net, _) = new_net(&config);
    let (_cid, gid) = net.connect();
    net.run_until("nothing in flight", Duration::from_secs(10), |n| {
        n.b.session.buffered_amount(gid) == 0
    });
    // Larger than the window, within the peer's limit: goes when nothing is in flight.
    let big = pattern(config.send_window + 50_000, 5);
    assert_eq!(net.b.session.write(net.now(), gid, true, &big), Ok(true));
    // Anything more waits until the peer acknowledged enough.
    let small = pattern(1000, 6);
    assert_eq!(net.b.session.write(net.now(), gid, true, &small), Ok(false));
    let mut writable = false;
    net.run_until("writable", Duration::from_secs(10), |n| {
        writable |=
            n.b.take_events()
                .iter()
                .any(|e| matches!(e, SessionEvent::Writable));
        writable
    });
    assert_eq!(net.b.session.write(net.now(), gid, true, &small), Ok(true));
    assert_eq!(net.client_recv(), (true, big));
    assert_eq!(net.client_recv(), (true, small));
}

/// The window grows with the round trip of the path (docs/design.md#the-send-window), from
/// the smallest on a short path to the largest on a long one, and never from a single write.
#[test]
fn the_send_window_follows_the_measured_round_trip() {
    let config = SessionConfig::default();
    for (one_way, expected) in [
        (Duration::ZERO, config.send_window),
        (Duration::from_millis(2), config.send_window),
        (Duration::from_millis(12), config.send_window * 3),
        (Duration::from_millis(40), config.max_send_window),
    ] {
        let (mut net, _) = new_net(&config);
        net.latency = one_way;
        let (_cid, gid) = net.connect();
        assert_eq!(net.b.session.data_rtt(), None);
        assert_eq!(net.b.session.send_window(), config.send_window);
        // A write below the probe's size measures nothing: a lone packet is acknowledged late.
        assert_eq!(net.b.session.write(net.now(), gid, true, b"tiny"), Ok(true));
        net.client_recv();
        net.run_until("nothing in flight", Duration::from_secs(10), |n| {
            n.b.session.buffered_amount(gid) == 0
        });
        assert_eq!(net.b.session.data_rtt(), None);
        let msg = pattern(16 * 1024, 1);
        assert_eq!(net.b.session.write(net.now(), gid, true, &msg), Ok(true));
        net.client_recv();
        net.run_until("an RTT sample", Duration::from_secs(10), |n| {
            n.b.session.data_rtt().is_some()
        });
        let rtt = net.b.session.data_rtt().unwrap();
        assert!(rtt >= one_way * 2, "{rtt:?} for {one_way:?} each way");
        assert!(
            rtt <= one_way * 2 + Duration::from_millis(5),
            "{rtt:?} for {one_way:?}"
        );
        let window = net.b.session.send_window();
        let slack = config.send_window; // the receiver's delayed acknowledgement and the 1 ms clock step
        assert!(
            window >= expected && window <= (expected + slack).min(config.max_send_window),
            "{one_way:?} each way: window {window}, expected about {expected}"
        );
    }
}

#[test]
fn ice_restart_same_path() {
    let (mut net, _) = new_net(&SessionConfig::default());
    let (cid, gid) = net.connect();
    let old_ufrag = net.b.session.local_ufrag().to_string();

    let mut api = net.a.rtc.sdp_api();
    api.ice_restart(true);
    let (offer, pending) = api.apply().expect("restart offer");
    let answer = net
        .b
        .session
        .handle_offer(net.now(), &offer.to_sdp_string())
        .expect("answer to the restart");
    let new_ufrag = net.b.session.local_ufrag().to_string();
    assert_ne!(new_ufrag, old_ufrag);
    assert_eq!(new_ufrag.len(), 16);
    assert_eq!(net.b.session.ice_restarts(), 1);
    assert_eq!(net.b.session.offers_accepted(), 2);
    assert!(
        answer.contains(&format!("a=ice-ufrag:{new_ufrag}")),
        "{answer}"
    );
    assert!(!answer.contains(&old_ufrag));
    // Candidates in the answer carry the new ufrag too.
    for line in answer.lines().filter(|l| l.starts_with("a=candidate:")) {
        assert!(line.ends_with(&format!("ufrag {new_ufrag}")), "{line}");
    }
    net.b
        .router
        .set_ufrag(KEY, &new_ufrag)
        .expect("re-register");
    assert_eq!(net.b.router.session_for_ufrag(&old_ufrag), None);
    net.accept_answer(pending, &answer);

    // The client's ICE comes back to connected with the new credentials; data still flows.
    net.a.events.clear();
    net.run_until("client ICE connected", Duration::from_secs(10), |n| {
        n.a.events.iter().any(|e| {
            matches!(
                e,
                Event::IceConnectionStateChange(
                    IceConnectionState::Connected | IceConnectionState::Completed
                )
            )
        })
    });
    net.echo_both_ways(cid, gid, "restarted");
    // The gateway did not lose the session.
    assert!(net.b.session.is_connected());
    assert!(net
        .b
        .events
        .iter()
        .all(|e| !matches!(e, SessionEvent::Closed { .. })));
}

#[test]
fn ice_restart_after_network_change() {
    let (mut net, _) = new_net(&SessionConfig::default());
    let (cid, gid) = net.connect();
    net.echo_both_ways(cid, gid, "before");

    // The phone moves to another network: its old address is gone.
    let old_addr = net.a.addr;
    let new_addr = addr("10.0.9.9:7000");
    net.dead.insert(old_addr);
    net.a.addr = new_addr;

    let mut api = net.a.rtc.sdp_api();
    api.ice_restart(false);
    let (offer, pending) = api.apply().expect("restart offer");
    let answer = net
        .b
        .session
        .handle_offer(net.now(), &offer.to_sdp_string())
        .expect("answer");
    net.b
        .router
        .set_ufrag(KEY, net.b.session.local_ufrag())
        .expect("re-register");
    net.accept_answer(pending, &answer);
    // The answer already carried the gateway's candidate; the client trickles its new one,
    // without the "candidate:" prefix and without sdpMLineIndex (both seen in the field).
    let c = Candidate::host(new_addr, "udp").expect("cand");
    let s = net
        .a
        .rtc
        .add_local_candidate(c)
        .expect("added")
        .to_sdp_string();
    let bare = s.strip_prefix("candidate:").expect("prefix").to_string();
    assert_eq!(
        net.b
            .session
            .handle_remote_candidate(Instant::now(), &json!({"candidate": bare, "sdpMid": "0"})),
        Ok(RemoteCandidateOutcome::Added)
    );

    net.echo_both_ways(cid, gid, "moved");
    assert_eq!(net.b.router.session_for_addr(new_addr), Some(KEY));
    assert!(net.b.session.is_connected());
}

#[test]
fn remote_candidate_variants() {
    let (mut net, _) = new_net(&SessionConfig::default());
    net.negotiate();
    let gw = &mut net.b.session;
    let ok = [
        json!({"candidate": "candidate:1 1 udp 2122260223 192.168.1.5 54321 typ host generation 0 ufrag x network-id 1", "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "x"}),
        json!({"candidate": "2 1 udp 2122260223 192.168.1.6 54321 typ host", "sdpMid": "0"}),
        json!({"candidate": "candidate:3 1 udp 1686052607 203.0.113.9 40000 typ srflx raddr 192.168.1.5 rport 54321", "sdpMLineIndex": 0}),
        json!({"candidate": "candidate:4 1 udp 2122262783 2001:db8::5 54322 typ host"}),
        json!("candidate:5 1 udp 2122260223 192.168.1.7 54321 typ host"),
    ];
    for c in &ok {
        assert_eq!(
            gw.handle_remote_candidate(Instant::now(), c),
            Ok(RemoteCandidateOutcome::Added),
            "{c}"
        );
    }
    let end = [
        json!({"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}),
        json!({"candidate": null}),
        json!({"sdpMid": "0"}),
        Value::Null,
    ];
    for c in &end {
        assert_eq!(
            gw.handle_remote_candidate(Instant::now(), c),
            Ok(RemoteCandidateOutcome::EndOfCandidates),
            "{c}"
        );
    }
    assert_eq!(
        gw.handle_remote_candidate(Instant::now(), &json!({"candidate": "candidate:6 1 udp 2122260223 0b5e1c4a-1d2f-4c1e-9c38-8a1f0e9b7c11.local 54321 typ host"})),
        Ok(RemoteCandidateOutcome::IgnoredMdns)
    );
    assert_eq!(
        gw.handle_remote_candidate(Instant::now(), &json!({"candidate": "candidate:7 1 tcp 1518280447 192.168.1.5 9 typ host tcptype active"})),
        Ok(RemoteCandidateOutcome::IgnoredProtocol)
    );
    for bad in [
        json!({"candidate": "garbage"}),
        json!({"candidate": "candidate:1 1 udp x 1.2.3.4 5 typ host"}),
        json!({"candidate": 5}),
        json!(42),
        json!([1, 2]),
    ] {
        match gw.handle_remote_candidate(Instant::now(), &bad) {
            Err(SessionError::Candidate(msg)) => assert!(!msg.is_empty()),
            other => panic!("{bad}: {other:?}"),
        }
    }
    assert!(gw.is_alive());
}

#[test]
fn candidate_limit() {
    let config = SessionConfig {
        max_remote_candidates: 3,
        ..SessionConfig::default()
    };
    let (mut net, _) = new_net(&config);
    for i in 0..5u8 {
        let c = json!({"candidate": format!("candidate:{i} 1 udp 2122260223 192.168.1.{i} 5000 typ host")});
        let expected = if i < 3 {
            RemoteCandidateOutcome::Added
        } else {
            RemoteCandidateOutcome::IgnoredLimit
        };
        assert_eq!(
            net.b.session.handle_remote_candidate(Instant::now(), &c),
            Ok(expected)
        );
    }
}

#[test]
fn bad_offers_are_errors_not_deaths() {
    let (mut net, _) = new_net(&SessionConfig::default());
    let now = net.now();
    assert!(matches!(
        net.b.session.handle_offer(now, "garbage"),
        Err(SessionError::Sdp(_))
    ));
    assert!(matches!(
        net.b.session.handle_offer(now, ""),
        Err(SessionError::Sdp(_))
    ));
    let audio_only =
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";
    assert!(matches!(
        net.b.session.handle_offer(now, audio_only),
        Err(SessionError::Sdp(_))
    ));
    let huge = "v=0\r\n".repeat(100_000);
    assert!(matches!(
        net.b.session.handle_offer(now, &huge),
        Err(SessionError::Sdp(_))
    ));
    assert!(net.b.session.is_alive());
    // A good offer still works afterwards.
    let (cid, gid) = net.connect();
    net.echo_both_ways(cid, gid, "ok");
}

#[test]
fn offer_with_lf_line_endings() {
    let (mut net, _) = new_net(&SessionConfig::default());
    let mut api = net.a.rtc.sdp_api();
    api.add_channel("ma-api".into());
    let (offer, _pending) = api.apply().expect("offer");
    let lf = offer.to_sdp_string().replace("\r\n", "\n");
    let now = net.now();
    // Either accepted or a clean error; never a panic or a dead session.
    match net.b.session.handle_offer(now, &lf) {
        Ok(answer) => assert!(answer.contains("a=ice-ufrag:")),
        Err(SessionError::Sdp(_)) => {}
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn connect_timeout_closes() {
    let config = SessionConfig {
        connect_timeout: Duration::from_secs(5),
        ..SessionConfig::default()
    };
    let (mut net, _) = new_net(&config);
    let start = net.now();
    let mut closed = None;
    net.run_until("connect timeout", Duration::from_secs(10), |n| {
        for e in n.b.take_events() {
            if let SessionEvent::Closed { reason } = e {
                closed = Some(reason);
            }
        }
        closed.is_some()
    });
    assert_eq!(closed, Some(CloseReason::ConnectTimeout));
    assert!(net.now() >= start + Duration::from_secs(5));
    assert!(
        net.now() < start + Duration::from_secs(6),
        "{:?}",
        net.now() - start
    );
    assert!(!net.b.session.is_alive());
    assert_eq!(
        net.b.session.handle_offer(net.now(), "v=0"),
        Err(SessionError::Closed)
    );
}

#[test]
fn local_close_reaches_the_client() {
    let (mut net, _) = new_net(&SessionConfig::default());
    let (_cid, _gid) = net.connect();
    net.b.session.handle_close(net.now());
    let mut reason = None;
    net.run_until("client sees close", Duration::from_secs(10), |n| {
        for e in n.b.take_events() {
            if let SessionEvent::Closed { reason: r } = e {
                reason = Some(r);
            }
        }
        n.a.events.iter().any(|e| matches!(e, Event::Closed))
    });
    assert_eq!(reason, Some(CloseReason::Local));
    assert!(!net.b.session.is_alive());
}

#[test]
fn peer_disappears_then_ice_timeout() {
    let config = SessionConfig {
        disconnected_timeout: Duration::from_secs(5),
        ..SessionConfig::default()
    };
    let (mut net, _) = new_net(&config);
    let _ = net.connect();
    net.b.take_events();
    let client_addr = net.a.addr;
    net.dead.insert(client_addr);
    let mut seen = Vec::new();
    net.run_until("closed", Duration::from_secs(120), |n| {
        for e in n.b.take_events() {
            seen.push(format!("{e:?}"));
            if let SessionEvent::Closed { reason } = e {
                // ICE notices first (consent); SCTP may give up on its own later.
                assert!(
                    matches!(reason, CloseReason::IceTimeout | CloseReason::Remote),
                    "{reason:?}"
                );
                return true;
            }
        }
        false
    });
    assert!(seen.iter().any(|e| e == "Disconnected"), "{seen:?}");
}

#[test]
fn junk_from_a_routed_address_is_harmless() {
    let (mut net, _) = new_net(&SessionConfig::default());
    let (cid, gid) = net.connect();
    let (src, dst, now) = (net.a.addr, net.b.addr, net.now());
    // A bogus DTLS application-data record, a bogus handshake record, a non-WebRTC byte.
    net.b.session.handle_receive(
        now,
        src,
        dst,
        &[23, 254, 253, 0, 1, 0, 0, 0, 0, 0, 9, 0, 3, 1, 2, 3],
    );
    net.b.session.handle_receive(
        now,
        src,
        dst,
        &[22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 9],
    );
    net.b.session.handle_receive(now, src, dst, &[200, 1, 2, 3]);
    net.b.session.handle_receive(now, src, dst, &[]);
    assert!(net.b.session.is_alive(), "{:?}", net.b.events);
    net.echo_both_ways(cid, gid, "still here");
}

#[test]
fn channel_close_and_write_errors() {
    let (mut net, _) = new_net(&SessionConfig::default());
    let (_cid, gid) = net.connect();
    net.b.session.close_channel(gid);
    let mut closed = false;
    net.run_until("channel close", Duration::from_secs(10), |n| {
        for e in n.b.take_events() {
            if let SessionEvent::ChannelClose { id } = e {
                assert_eq!(id, gid);
                closed = true;
            }
        }
        closed
    });
    assert_eq!(
        net.b.session.write(net.now(), gid, false, b"x"),
        Err(SessionError::ChannelNotOpen)
    );
    assert_eq!(net.b.session.channel_label(gid), None);
    assert!(net.b.session.is_alive());
}

#[test]
fn bad_certificate_is_an_error_not_a_crash() {
    let cert = DtlsCert {
        certificate: vec![1, 2, 3],
        private_key: vec![4, 5, 6],
    };
    match PeerSession::new(Instant::now(), cert, &SessionConfig::default(), "bad") {
        Err(SessionError::Panic(_)) | Err(SessionError::Rtc(_)) => {}
        Ok(_) => panic!("a garbage certificate was accepted"),
        Err(e) => panic!("unexpected error {e}"),
    }
}
