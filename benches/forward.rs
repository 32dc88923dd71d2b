//! In-process end-to-end data-channel forwarding, no sockets: str0m clients (the web app's
//! part, [`RemoteClient`]) ↔ the gateway core ([`Gateway`]) ↔ a fake local WebSocket that
//! echoes every message back through [`Gateway::ws_message`]. Datagrams, signaling messages and
//! WebSocket messages are handed over in memory, so what is measured is CPU: str0m on both
//! sides plus our forwarding (routing, bridges, queues, chunking).
//!
//! The gateway is driven like `src/driver/gateway.rs` drives it: `handle_timeout` and
//! `poll_timeout` on every turn, every output drained after each input.
//!
//! Groups:
//! - `forward/echo`: one session, messages of 1, 16 and 64 KiB echoed, pipelined (at most
//!   [`WINDOW`] bytes in flight). Throughput counts each message once (each byte crosses the
//!   gateway twice: client → MA and back). `bare_str0m` is the same client against a str0m peer
//!   that echoes itself (same MTU and send budget as the gateway): the gateway's forwarding
//!   overhead is the difference.
//! - `forward/sessions`: 1 KiB echo on one session while 0, 10 or 100 other sessions are
//!   connected and idle (routing and per-turn cost per session count).
//! - `forward/setup`: connect-request → first MA message for one new session (CPU cost of a
//!   session: `Rtc` build, SDP, ICE, DTLS handshake, SCTP, channel open), gateway vs bare.
//!
//! Run: `cargo bench --bench forward` (about 3 minutes).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use ma_webrtc_gateway::config::WsUrl;
use ma_webrtc_gateway::gateway::bridge::BridgeId;
use ma_webrtc_gateway::gateway::{CoreConfig, Gateway, Output as GwOutput};
use ma_webrtc_gateway::identity::Identity;
use ma_webrtc_gateway::machine::{Machine, Next};
use ma_webrtc_gateway::remote_client::{ClientEvent, ClientOutput, RemoteClient};
use ma_webrtc_gateway::webrtc::session::SessionConfig;
use serde_json::{json, Value};
use str0m::change::SdpOffer;
use str0m::channel::ChannelId;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tungstenite::Message;

/// Bytes the client keeps in flight (sent, echo not yet received).
const WINDOW: usize = 1024 * 1024;
const SERVER_INFO: &str = r#"{"server_id":"bench","server_version":"2.10.0","schema_version":28}"#;

/// What the far side (gateway or bare str0m peer) asks the harness to deliver.
enum PeerOut {
    /// A signaling message for the client of this session.
    Signal {
        sid: String,
        text: String,
    },
    Transmit {
        to: SocketAddr,
        bytes: Vec<u8>,
    },
}

trait Peer {
    fn addr(&self) -> SocketAddr;
    fn connect_request(&mut self, now: Instant, sid: &str);
    fn offer(&mut self, now: Instant, sid: &str, sdp: &str);
    fn candidate(&mut self, now: Instant, sid: &str, data: &Value);
    fn datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]);
    /// One loop turn: timers.
    fn turn(&mut self, now: Instant);
    fn poll(&mut self, now: Instant) -> Option<PeerOut>;
}

// ---- the gateway core with an echoing local WebSocket --------------------------------------

struct GwPeer {
    gw: Gateway,
    addr: SocketAddr,
    /// Messages "MA" has for the gateway, per bridge (read while the core allows it).
    ws_in: HashMap<BridgeId, VecDeque<Message>>,
}

impl GwPeer {
    fn new(identity: &Identity, addr: SocketAddr) -> GwPeer {
        let url = WsUrl::parse("ws://127.0.0.1:8095/ws").unwrap();
        let sendspin = WsUrl::parse("ws://127.0.0.1:8927/sendspin").unwrap();
        let mut cfg = CoreConfig::new(url, sendspin, 1000);
        cfg.session = SessionConfig::default();
        let now = Instant::now();
        let mut gw = Gateway::new(now, cfg, identity.dtls_cert());
        gw.handle_host_candidate(now, addr);
        GwPeer {
            gw,
            addr,
            ws_in: HashMap::new(),
        }
    }

    /// Feed one waiting "MA" message if the core reads that bridge now.
    fn feed_ws(&mut self, now: Instant) -> bool {
        for (bridge, q) in self.ws_in.iter_mut() {
            if q.is_empty() || !self.gw.ws_read_allowed(*bridge) {
                continue;
            }
            let msg = q.pop_front().unwrap();
            self.gw.handle_ws_message(now, *bridge, msg);
            return true;
        }
        false
    }
}

impl Peer for GwPeer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn connect_request(&mut self, now: Instant, sid: &str) {
        self.gw.handle_client_connected(now, sid);
    }
    fn offer(&mut self, now: Instant, sid: &str, sdp: &str) {
        self.gw.handle_offer(now, sid, sdp);
    }
    fn candidate(&mut self, now: Instant, sid: &str, data: &Value) {
        self.gw.handle_remote_candidate(now, sid, data);
    }
    fn datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.gw.handle_datagram(now, from, bytes);
    }
    fn turn(&mut self, now: Instant) {
        // As the driver does on every turn of its loop.
        self.gw.handle_timeout(now);
    }
    fn poll(&mut self, now: Instant) -> Option<PeerOut> {
        loop {
            let Next::Output(o) = self.gw.poll_output() else {
                if self.feed_ws(now) {
                    continue;
                }
                return None;
            };
            match o {
                GwOutput::SessionReady { session_id } => {
                    let text = json!({"type": "connected", "sessionId": session_id,
                                      "remoteId": "X", "iceServers": []})
                    .to_string();
                    return Some(PeerOut::Signal {
                        sid: session_id,
                        text,
                    });
                }
                GwOutput::Answer { session_id, sdp } => {
                    let text = json!({"type": "answer", "sessionId": session_id,
                                      "data": {"type": "answer", "sdp": sdp}})
                    .to_string();
                    return Some(PeerOut::Signal {
                        sid: session_id,
                        text,
                    });
                }
                GwOutput::Candidate {
                    session_id,
                    candidate,
                } => {
                    let text = json!({"type": "ice-candidate", "sessionId": session_id,
                                      "data": candidate})
                    .to_string();
                    return Some(PeerOut::Signal {
                        sid: session_id,
                        text,
                    });
                }
                GwOutput::Transmit(t) => {
                    return Some(PeerOut::Transmit {
                        to: t.destination,
                        bytes: t.contents,
                    })
                }
                GwOutput::OpenWs { bridge, .. } => {
                    self.gw.handle_ws_opened(now, bridge);
                    // MA speaks first.
                    self.ws_in
                        .entry(bridge)
                        .or_default()
                        .push_back(Message::text(SERVER_INFO));
                }
                // The echo: MA sends back what it got.
                GwOutput::WsSend { bridge, msg } => {
                    self.ws_in.entry(bridge).or_default().push_back(msg)
                }
                GwOutput::CloseWs { bridge } => {
                    self.ws_in.remove(&bridge);
                }
                // Resume: the next poll feeds the bridge again. Side channels (Sendspin, the
                // HTTP proxy's fetches) are not exercised here.
                _ => {}
            }
        }
    }
}

// ---- a bare str0m peer that echoes by itself (one session) ---------------------------------

struct BarePeer {
    cert: str0m::config::DtlsCert,
    /// Built at connect-request, like the gateway builds its session then.
    rtc: Option<Rtc>,
    addr: SocketAddr,
    out: VecDeque<PeerOut>,
    /// Echoes waiting to be written: like the gateway, a turn first takes in every datagram,
    /// then writes (and echoes what did not fit the send budget later).
    pending: VecDeque<(ChannelId, bool, Vec<u8>)>,
    timeout: Instant,
}

impl BarePeer {
    fn new(identity: &Identity, addr: SocketAddr, now: Instant) -> BarePeer {
        BarePeer {
            cert: identity.dtls_cert(),
            rtc: None,
            addr,
            out: VecDeque::new(),
            pending: VecDeque::new(),
            timeout: now,
        }
    }

    fn rtc(&mut self) -> &mut Rtc {
        self.rtc.as_mut().expect("connect-request first")
    }

    fn drain(&mut self) {
        let Some(rtc) = self.rtc.as_mut() else {
            return;
        };
        loop {
            match rtc.poll_output().expect("bare peer") {
                Output::Timeout(t) => {
                    self.timeout = t;
                    break;
                }
                Output::Transmit(t) => self.out.push_back(PeerOut::Transmit {
                    to: t.destination,
                    bytes: t.contents.into(),
                }),
                Output::Event(Event::ChannelOpen(id, _)) => {
                    self.pending
                        .push_back((id, false, SERVER_INFO.as_bytes().to_vec()));
                }
                Output::Event(Event::ChannelData(d)) => {
                    self.pending.push_back((d.id, d.binary, d.data));
                }
                Output::Event(_) => {}
            }
        }
    }

    /// Write waiting echoes while the send budget takes them.
    fn flush(&mut self) -> bool {
        let mut wrote = false;
        while let Some((id, binary, data)) = self.pending.pop_front() {
            let Some(mut ch) = self.rtc().channel(id) else {
                continue;
            };
            if !ch.write(binary, &data).expect("write") {
                self.pending.push_front((id, binary, data));
                break;
            }
            wrote = true;
            self.drain();
        }
        wrote
    }
}

impl Peer for BarePeer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn connect_request(&mut self, now: Instant, sid: &str) {
        let cfg = SessionConfig::default();
        let mut rtc = Rtc::builder()
            .set_dtls_cert(self.cert.clone())
            .set_ice_lite(false)
            .set_mtu(cfg.mtu..=cfg.mtu.max(str0m::DATAGRAM_MTU_WARN))
            .set_sctp_max_buffered_amount(cfg.sctp_max_buffered_amount)
            .set_sctp_max_message_size(cfg.max_message_size)
            .build(now);
        rtc.add_local_candidate(Candidate::host(self.addr, "udp").unwrap());
        self.rtc = Some(rtc);
        self.out.push_back(PeerOut::Signal {
            sid: sid.to_string(),
            text: json!({"type": "connected", "sessionId": sid, "iceServers": []}).to_string(),
        });
    }
    fn offer(&mut self, _now: Instant, sid: &str, sdp: &str) {
        let offer = SdpOffer::from_sdp_string(sdp).unwrap();
        let answer = self.rtc().sdp_api().accept_offer(offer).unwrap();
        self.out.push_back(PeerOut::Signal {
            sid: sid.to_string(),
            text: json!({"type": "answer", "sessionId": sid,
                         "data": {"type": "answer", "sdp": answer.to_sdp_string()}})
            .to_string(),
        });
        self.drain();
    }
    fn candidate(&mut self, _now: Instant, _sid: &str, _data: &Value) {
        // The client's candidate is in its offer already.
    }
    fn datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let r = Receive::new(Protocol::Udp, from, self.addr, bytes).unwrap();
        self.rtc().handle_input(Input::Receive(now, r)).unwrap();
        self.drain();
    }
    fn turn(&mut self, now: Instant) {
        if self.rtc.is_some() && now >= self.timeout {
            self.rtc().handle_input(Input::Timeout(now)).unwrap();
            self.drain();
        }
    }
    fn poll(&mut self, _now: Instant) -> Option<PeerOut> {
        if self.out.is_empty() {
            self.flush();
        }
        self.out.pop_front()
    }
}

// ---- clients and the wire between them -----------------------------------------------------

struct Client {
    rc: RemoteClient,
    addr: SocketAddr,
    sid: String,
    events: VecDeque<ClientEvent>,
}

struct Harness<P: Peer> {
    peer: P,
    remote_id: String,
    clients: Vec<Client>,
    by_addr: HashMap<SocketAddr, usize>,
    by_sid: HashMap<String, usize>,
    to_peer: Vec<(SocketAddr, Vec<u8>)>,
}

impl<P: Peer> Harness<P> {
    fn new(peer: P, remote_id: &str) -> Harness<P> {
        Harness {
            peer,
            remote_id: remote_id.to_string(),
            clients: Vec::new(),
            by_addr: HashMap::new(),
            by_sid: HashMap::new(),
            to_peer: Vec::new(),
        }
    }

    /// Connect a new client; returns its index once MA's first message arrived.
    fn connect(&mut self) -> usize {
        let now = Instant::now();
        let i = self.clients.len();
        let addr: SocketAddr = format!("127.0.0.2:{}", 20_000 + i).parse().unwrap();
        let mut rc = RemoteClient::new(now, &self.remote_id, addr);
        rc.handle_signaling_open(now);
        let sid = format!("session{i:05}");
        self.by_addr.insert(addr, i);
        self.by_sid.insert(sid.clone(), i);
        self.clients.push(Client {
            rc,
            addr,
            sid,
            events: VecDeque::new(),
        });
        let deadline = now + Duration::from_secs(10);
        loop {
            self.step();
            while let Some(e) = self.clients[i].events.pop_front() {
                match e {
                    ClientEvent::Text(t) if t == SERVER_INFO => return i,
                    ClientEvent::Failed(why) => panic!("client {i} failed: {why}"),
                    _ => {}
                }
            }
            assert!(Instant::now() < deadline, "client {i} did not connect");
        }
    }

    /// Move everything that is ready one hop; timers.
    fn step(&mut self) {
        let now = Instant::now();
        for c in self.clients.iter_mut() {
            let mut timed_out = false;
            loop {
                let o = match c.rc.poll_output() {
                    Next::Output(o) => o,
                    Next::Timeout(Some(t)) if t <= now && !timed_out => {
                        timed_out = true;
                        c.rc.handle_timeout(now);
                        continue;
                    }
                    Next::Timeout(_) => break,
                };
                match o {
                    ClientOutput::Signal(text) => {
                        let v: Value = serde_json::from_str(&text).unwrap();
                        match v["type"].as_str() {
                            Some("connect-request") => self.peer.connect_request(now, &c.sid),
                            Some("offer") => self.peer.offer(
                                now,
                                &c.sid,
                                v.pointer("/data/sdp").and_then(Value::as_str).unwrap(),
                            ),
                            Some("ice-candidate") => self.peer.candidate(now, &c.sid, &v["data"]),
                            _ => {}
                        }
                    }
                    ClientOutput::Transmit { contents, .. } => {
                        self.to_peer.push((c.addr, contents))
                    }
                    ClientOutput::Event(e) => c.events.push_back(e),
                }
            }
        }
        for (from, bytes) in self.to_peer.drain(..) {
            self.peer.datagram(now, from, &bytes);
        }
        self.peer.turn(now);
        let from = self.peer.addr();
        while let Some(o) = self.peer.poll(now) {
            match o {
                PeerOut::Signal { sid, text } => {
                    let i = self.by_sid[&sid];
                    self.clients[i].rc.handle_signaling_text(now, &text);
                }
                PeerOut::Transmit { to, bytes } => {
                    if let Some(i) = self.by_addr.get(&to) {
                        self.clients[*i].rc.handle_datagram(now, from, &bytes);
                    }
                }
            }
        }
    }

    /// Echo `n` messages of `payload` on client `i`, pipelined; returns the time taken.
    fn echo(&mut self, i: usize, payload: &str, n: u64) -> Duration {
        let in_flight = (WINDOW / payload.len()).max(1) as u64;
        let t0 = Instant::now();
        let (mut sent, mut received) = (0u64, 0u64);
        while received < n {
            while sent < n && sent - received < in_flight {
                match self.clients[i].rc.handle_send_text(Instant::now(), payload) {
                    Ok(true) => sent += 1,
                    Ok(false) => break,
                    Err(e) => panic!("send: {e}"),
                }
            }
            self.step();
            while let Some(e) = self.clients[i].events.pop_front() {
                match e {
                    ClientEvent::Text(t) => {
                        assert_eq!(t.len(), payload.len());
                        received += 1;
                    }
                    ClientEvent::Failed(why) => panic!("client failed: {why}"),
                    _ => {}
                }
            }
        }
        t0.elapsed()
    }
}

fn payload(size: usize) -> String {
    let mut s = String::with_capacity(size);
    s.push_str(r#"{"seq":0,"pad":""#);
    let body = size - s.len() - 2;
    s.extend(std::iter::repeat_n('x', body));
    s.push_str("\"}");
    s
}

const SIZES: [(&str, usize); 3] = [("1KiB", 1024), ("16KiB", 16 * 1024), ("64KiB", 64 * 1024)];

fn gateway_harness(identity: &Identity) -> Harness<GwPeer> {
    let addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    Harness::new(GwPeer::new(identity, addr), &identity.remote_id)
}

fn bare_harness(identity: &Identity) -> Harness<BarePeer> {
    let addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    Harness::new(
        BarePeer::new(identity, addr, Instant::now()),
        &identity.remote_id,
    )
}

fn echo(c: &mut Criterion) {
    let identity = Identity::generate().unwrap();
    let mut g = c.benchmark_group("forward/echo");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(15)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    for (name, size) in SIZES {
        let text = payload(size);
        g.throughput(Throughput::Bytes(size as u64));
        let mut gw = gateway_harness(&identity);
        let i = gw.connect();
        g.bench_function(BenchmarkId::new("gateway", name), |b| {
            b.iter_custom(|iters| gw.echo(i, &text, iters))
        });
        let mut bare = bare_harness(&identity);
        let i = bare.connect();
        g.bench_function(BenchmarkId::new("bare_str0m", name), |b| {
            b.iter_custom(|iters| bare.echo(i, &text, iters))
        });
    }
    g.finish();
}

fn sessions(c: &mut Criterion) {
    let identity = Identity::generate().unwrap();
    let mut g = c.benchmark_group("forward/sessions");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(15)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    let text = payload(1024);
    g.throughput(Throughput::Bytes(1024));
    for idle in [0usize, 10, 100] {
        let mut h = gateway_harness(&identity);
        let active = h.connect();
        for _ in 0..idle {
            h.connect();
        }
        g.bench_function(BenchmarkId::new("1KiB_echo_with_idle", idle), |b| {
            b.iter_custom(|iters| h.echo(active, &text, iters))
        });
    }
    g.finish();
}

fn setup(c: &mut Criterion) {
    let identity = Identity::generate().unwrap();
    let mut g = c.benchmark_group("forward/setup");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .measurement_time(Duration::from_secs(8));
    g.bench_function("gateway", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut h = gateway_harness(&identity);
                let t0 = Instant::now();
                h.connect();
                total += t0.elapsed();
            }
            total
        })
    });
    g.bench_function("bare_str0m", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut h = bare_harness(&identity);
                let t0 = Instant::now();
                h.connect();
                total += t0.elapsed();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, echo, sessions, setup);
criterion_main!(benches);
