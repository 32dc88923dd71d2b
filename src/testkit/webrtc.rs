//! Ends made of WebRTC parts: [`SessionEnd`] (our answerer session behind the router),
//! [`RtcEnd`] (a raw str0m offerer) and [`BareEchoEnd`] (a bare str0m answerer that echoes).

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use serde_json::Value;
use str0m::change::SdpOffer;
use str0m::channel::ChannelId;
use str0m::config::DtlsCert;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

use super::{tail, End, Wire};
use crate::machine::{Machine, Next};
use crate::signaling::protocol::{FromServer, Relay, SessionId, ToServer};
use crate::webrtc::{PeerSession, Route, Router, SessionConfig, SessionEvent, SessionOutput};

/// Slack above the MTU for a datagram of ours (headers str0m does not count).
const MTU_SLACK: usize = 100;

/// One [`PeerSession`] behind a [`Router`] (as the gateway core holds them), without
/// signaling: the test negotiates by calling the session. Every datagram in is routed (STUN
/// by our ufrag, then by source address) and must reach this session; every datagram out is
/// noted with the router and checked against the MTU.
pub struct SessionEnd {
    pub session: PeerSession,
    pub router: Router<u32>,
    /// Its UDP address (the host candidate to give the other side).
    pub addr: SocketAddr,
    /// Session events, oldest first; the test takes what it looks at.
    pub events: Vec<SessionEvent>,
    /// Datagrams the router gave to the session.
    pub routed: u64,
    mtu: usize,
}

impl SessionEnd {
    /// The session's key in [`SessionEnd::router`].
    pub const KEY: u32 = 1;

    pub fn new(
        now: Instant,
        cert: DtlsCert,
        config: &SessionConfig,
        addr: SocketAddr,
    ) -> SessionEnd {
        let session = PeerSession::new(now, cert, config, "test").expect("session");
        let mut router = Router::new();
        router
            .set_ufrag(Self::KEY, session.local_ufrag())
            .expect("ufrag");
        SessionEnd {
            session,
            router,
            addr,
            events: Vec::new(),
            routed: 0,
            mtu: config.mtu,
        }
    }

    /// Take the events so far.
    pub fn take_events(&mut self) -> Vec<SessionEvent> {
        std::mem::take(&mut self.events)
    }
}

impl fmt::Debug for SessionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionEnd")
            .field("addr", &self.addr)
            .field("session", &self.session)
            .field("alive", &self.session.is_alive())
            .field("routed", &self.routed)
            .field("router_dropped", &self.router.dropped())
            .field("events", &self.events.len())
            .field("last_events", &tail(self.events.iter(), 8))
            .finish()
    }
}

impl End for SessionEnd {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        match self.router.route(from, bytes, |_| false) {
            Route::Session(k) => {
                assert_eq!(k, Self::KEY);
                self.routed += 1;
                self.session.handle_receive(now, from, to, bytes);
            }
            Route::Gather => panic!("no gathering here"),
            Route::Drop(_) => {}
        }
    }

    fn handle_signal(&mut self, _now: Instant, _session: &str, _text: &str) {}

    fn handle_timeout(&mut self, now: Instant) {
        self.session.handle_timeout(now);
    }

    fn poll_output(&mut self, _now: Instant) -> Next<Wire> {
        loop {
            match self.session.poll_output() {
                Next::Timeout(t) => {
                    assert!(t.is_some(), "a session always has a deadline");
                    return Next::Timeout(t);
                }
                Next::Output(SessionOutput::Transmit(t)) => {
                    assert!(
                        t.contents.len() <= self.mtu + MTU_SLACK,
                        "datagram {}",
                        t.contents.len()
                    );
                    self.router.note_transmit(Self::KEY, t.destination);
                    return Next::Output(Wire::Datagram {
                        from: t.source,
                        to: t.destination,
                        bytes: t.contents,
                    });
                }
                Next::Output(SessionOutput::Event(e)) => self.events.push(e),
            }
        }
    }
}

/// A raw str0m `Rtc` at one address, without signaling: the test drives it (offers, channels,
/// candidates) directly; this end feeds it datagrams and time and keeps its events. Every
/// str0m error panics.
pub struct RtcEnd {
    pub rtc: Rtc,
    /// Its UDP address (the host candidate to give the other side).
    pub addr: SocketAddr,
    /// str0m's events, oldest first.
    pub events: Vec<Event>,
    /// What str0m said after the last input, not polled yet.
    out: VecDeque<Wire>,
}

impl RtcEnd {
    pub fn new(rtc: Rtc, addr: SocketAddr) -> RtcEnd {
        RtcEnd {
            rtc,
            addr,
            events: Vec::new(),
            out: VecDeque::new(),
        }
    }

    /// One output of str0m: a datagram, or its timeout (events are kept).
    fn poll_rtc(&mut self) -> Next<Wire> {
        loop {
            match self.rtc.poll_output().expect("client poll") {
                Output::Timeout(t) => return Next::Timeout(Some(t)),
                Output::Transmit(t) => {
                    return Next::Output(Wire::Datagram {
                        from: t.source,
                        to: t.destination,
                        bytes: t.contents.into(),
                    })
                }
                Output::Event(e) => self.events.push(e),
            }
        }
    }

    /// str0m wants polling to its timeout after every input.
    fn drain(&mut self) {
        while let Next::Output(w) = self.poll_rtc() {
            self.out.push_back(w);
        }
    }
}

impl fmt::Debug for RtcEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RtcEnd")
            .field("addr", &self.addr)
            .field("connected", &self.rtc.is_connected())
            .field("events", &self.events.len())
            .field("last_events", &tail(self.events.iter(), 8))
            .finish_non_exhaustive()
    }
}

impl End for RtcEnd {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let receive = Receive::new(Protocol::Udp, from, to, bytes).expect("parse");
        self.rtc
            .handle_input(Input::Receive(now, receive))
            .expect("client input");
        self.drain();
    }

    fn handle_signal(&mut self, _now: Instant, _session: &str, _text: &str) {}

    fn handle_timeout(&mut self, now: Instant) {
        self.rtc
            .handle_input(Input::Timeout(now))
            .expect("client timeout");
        self.drain();
    }

    fn poll_output(&mut self, _now: Instant) -> Next<Wire> {
        // The test may have called the Rtc since: what it said then comes from str0m itself.
        match self.out.pop_front() {
            Some(w) => Next::Output(w),
            None => self.poll_rtc(),
        }
    }
}

/// A bare str0m answerer that echoes every message on the channel it arrived on, and greets
/// each channel that opens with `first_message`: what the gateway does with an echoing MA,
/// without the gateway. It answers one session's signaling like the gateway (the `Rtc` is
/// built at `connect-request`, as the core builds its session then) with the same MTU and send
/// budget, and trusts the candidate in the client's offer.
pub struct BareEchoEnd {
    cert: DtlsCert,
    config: SessionConfig,
    first_message: Vec<u8>,
    pub addr: SocketAddr,
    pub rtc: Option<Rtc>,
    session: Option<String>,
    out: VecDeque<Wire>,
    /// Echoes waiting to be written: like the gateway, a turn first takes in every datagram,
    /// then writes (what does not fit the send budget waits).
    pending: VecDeque<(ChannelId, bool, Vec<u8>)>,
    timeout: Option<Instant>,
}

impl BareEchoEnd {
    pub fn new(
        cert: DtlsCert,
        config: &SessionConfig,
        addr: SocketAddr,
        first_message: &str,
    ) -> BareEchoEnd {
        BareEchoEnd {
            cert,
            config: config.clone(),
            first_message: first_message.as_bytes().to_vec(),
            addr,
            rtc: None,
            session: None,
            out: VecDeque::new(),
            pending: VecDeque::new(),
            timeout: None,
        }
    }

    fn rtc(&mut self) -> &mut Rtc {
        self.rtc.as_mut().expect("connect-request first")
    }

    fn signal(&mut self, msg: FromServer) {
        let session = self.session.clone().expect("a session");
        self.out.push_back(Wire::Signal {
            session,
            text: msg.to_text(),
        });
    }

    fn drain(&mut self) {
        let Some(rtc) = self.rtc.as_mut() else {
            return;
        };
        loop {
            match rtc.poll_output().expect("bare peer") {
                Output::Timeout(t) => {
                    self.timeout = Some(t);
                    break;
                }
                Output::Transmit(t) => self.out.push_back(Wire::Datagram {
                    from: self.addr,
                    to: t.destination,
                    bytes: t.contents.into(),
                }),
                Output::Event(Event::ChannelOpen(id, _)) => {
                    self.pending
                        .push_back((id, false, self.first_message.clone()));
                }
                Output::Event(Event::ChannelData(d)) => {
                    self.pending.push_back((d.id, d.binary, d.data));
                }
                Output::Event(_) => {}
            }
        }
    }

    /// Write waiting echoes while the send budget takes them.
    fn flush(&mut self) {
        while let Some((id, binary, data)) = self.pending.pop_front() {
            let Some(mut ch) = self.rtc().channel(id) else {
                continue;
            };
            if !ch.write(binary, &data).expect("write") {
                self.pending.push_front((id, binary, data));
                break;
            }
            self.drain();
        }
    }

    fn connect_request(&mut self, now: Instant, session: &str) {
        assert!(self.rtc.is_none(), "the bare peer serves one session");
        let cfg = &self.config;
        let mut rtc = Rtc::builder()
            .set_dtls_cert(self.cert.clone())
            .set_ice_lite(false)
            .set_mtu(cfg.mtu..=cfg.mtu.max(str0m::DATAGRAM_MTU_WARN))
            .set_sctp_max_buffered_amount(cfg.sctp_max_buffered_amount)
            .set_sctp_max_message_size(cfg.max_message_size)
            .build(now);
        rtc.add_local_candidate(Candidate::host(self.addr, "udp").expect("candidate"));
        self.rtc = Some(rtc);
        self.session = Some(session.to_string());
        self.signal(FromServer::Connected {
            remote_id: None,
            session_id: Some(SessionId::parse(session).expect("session id")),
            ice_servers: Some(Value::Array(Vec::new())),
        });
    }

    fn offer(&mut self, session: &str, sdp: &str) {
        let offer = SdpOffer::from_sdp_string(sdp).expect("offer");
        let answer = self.rtc().sdp_api().accept_offer(offer).expect("answer");
        let id = SessionId::parse(session).expect("session id");
        self.signal(FromServer::Answer(Relay::answer(
            id,
            &answer.to_sdp_string(),
        )));
        self.drain();
    }
}

impl fmt::Debug for BareEchoEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BareEchoEnd")
            .field("addr", &self.addr)
            .field("session", &self.session)
            .field("connected", &self.rtc.as_ref().map(Rtc::is_connected))
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl End for BareEchoEnd {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, _to: SocketAddr, bytes: &[u8]) {
        let receive = Receive::new(Protocol::Udp, from, self.addr, bytes).expect("parse");
        self.rtc()
            .handle_input(Input::Receive(now, receive))
            .expect("bare peer input");
        self.drain();
    }

    fn handle_signal(&mut self, now: Instant, session: &str, text: &str) {
        match ToServer::parse(text) {
            Ok(ToServer::ConnectRequest { .. }) => self.connect_request(now, session),
            Ok(ToServer::Offer(relay)) => self.offer(session, relay.sdp().expect("sdp")),
            // The client's candidate is in its offer already.
            Ok(ToServer::IceCandidate(_) | ToServer::Ping | ToServer::Pong) => {}
            Ok(other) => panic!("a client sent {}: {text}", other.kind()),
            Err(e) => panic!("a client sent {e}: {text}"),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Some(rtc) = self.rtc.as_mut() {
            rtc.handle_input(Input::Timeout(now))
                .expect("bare peer timeout");
            self.drain();
        }
    }

    fn poll_output(&mut self, _now: Instant) -> Next<Wire> {
        if self.out.is_empty() && self.rtc.is_some() {
            self.flush();
        }
        match self.out.pop_front() {
            Some(w) => Next::Output(w),
            None => Next::Timeout(self.timeout),
        }
    }
}
