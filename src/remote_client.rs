//! The remote side, as the MA web app plays it (sans-IO): connect through signaling, offer an
//! `ma-api` channel, trickle ICE, pin the answer's fingerprint to the Remote ID, reassemble
//! `__chunk__` frames. Used by the `connect` diagnostic command, the tests and the benchmarks.
//! It speaks docs/protocol.md#client-messages with the types of [`crate::signaling::protocol`],
//! and shows the face of [`crate::machine`]: inputs are `handle_…` methods taking `now` (what
//! the signaling socket and the UDP socket bring, and what the user of the client wants sent),
//! and [`Machine::poll_output`] gives the outputs, then str0m's next deadline.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

use crate::chunk::{Reassembler, ReassemblyLimits};
use crate::identity;
use crate::machine::{Machine, Next};
use crate::signaling::protocol::{
    candidate_init, escaped, FromServer, ParseError, Relay, SessionId, ToServer,
};

/// What the client's driver must do, or what it is told.
#[derive(Debug)]
pub enum ClientOutput {
    /// Send this text on the signaling socket.
    Signal(String),
    /// Send a datagram from the client's UDP socket.
    Transmit {
        destination: SocketAddr,
        contents: Vec<u8>,
    },
    /// Something happened.
    Event(ClientEvent),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The signaling server gave us a session.
    SessionAssigned { session_id: SessionId },
    /// The answer arrived and its fingerprint matches the Remote ID.
    Answered,
    /// ICE and DTLS are up.
    Connected,
    /// The `ma-api` channel is open.
    ChannelOpen,
    /// A complete text message from MA (chunks reassembled).
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// A side channel (opened with [`RemoteClient::handle_open_channel`]) is open.
    SideOpen { label: String },
    /// A message on a side channel.
    Side {
        label: String,
        binary: bool,
        data: Vec<u8>,
    },
    /// A side channel closed.
    SideClosed { label: String },
    /// The connection failed or closed for good.
    Failed(String),
}

/// Timestamps of each step, for the diagnostic report.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub started: Option<Instant>,
    pub session_assigned: Option<Instant>,
    pub answered: Option<Instant>,
    pub connected: Option<Instant>,
    pub channel_open: Option<Instant>,
    pub first_message: Option<Instant>,
}

/// Choices a client makes in its offer.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientOptions {
    /// The `a=max-message-size` to announce (str0m's default when `None`): the largest
    /// message the gateway may send us. The load generator's attacker announces the smallest
    /// the gateway accepts, to make it cut large replies into as many messages as it can.
    pub max_message_size: Option<u32>,
    /// The UDP receive buffer to ask for (the drivers otherwise ask for
    /// [`crate::net::udp::SOCKET_BUFFER`]); smaller plays a phone with Linux's default.
    pub receive_buffer: Option<usize>,
    /// Reach the gateway only at this address, whatever candidates it gives (they are
    /// ignored): a relay in front of it, such as the test kit's lossy path.
    pub gateway_via: Option<SocketAddr>,
    /// Ask this STUN server for our public address and offer it as a server-reflexive
    /// candidate (a client behind a NAT, as browsers do).
    pub stun_server: Option<SocketAddr>,
}

/// Binding requests sent to [`ClientOptions::stun_server`] before giving up, 500 ms apart.
const STUN_TRIES: u32 = 5;

/// The client's server-reflexive discovery: one Binding transaction.
#[derive(Debug)]
struct Reflexive {
    server: SocketAddr,
    txid: crate::turn::stun::TransactionId,
    sent: u32,
    next: Instant,
    /// Our address as the server saw it, once answered.
    mapped: Option<SocketAddr>,
    /// Offered to the gateway already.
    offered: bool,
}

pub struct RemoteClient {
    remote_id: String,
    /// [`ClientOptions::gateway_via`].
    gateway_via: Option<SocketAddr>,
    local_addr: SocketAddr,
    label: String,
    rtc: Rtc,
    pending: Option<SdpPendingOffer>,
    channel: Option<ChannelId>,
    /// Side channels by id, with their label and whether they are open.
    side: HashMap<ChannelId, (String, bool)>,
    session_id: Option<SessionId>,
    reassembler: Reassembler,
    out: VecDeque<ClientOutput>,
    /// str0m's next timeout, as of the last drain (every input ends with one).
    rtc_timeout: Option<Instant>,
    failed: bool,
    pub timings: Timings,
    reflexive: Option<Reflexive>,
    /// The gateway's candidates by address, with their type (`host`, `srflx`, `relay`).
    gateway_candidates: HashMap<SocketAddr, String>,
    /// Where the data went once connected: the gateway's end of the selected pair.
    path: Option<SocketAddr>,
}

impl RemoteClient {
    /// A client for `remote_id` whose UDP socket is bound at `local_addr` (an address the
    /// gateway can reach: on loopback tests, 127.0.0.1).
    pub fn new(now: Instant, remote_id: &str, local_addr: SocketAddr) -> RemoteClient {
        RemoteClient::with_options(now, remote_id, local_addr, ClientOptions::default())
    }

    /// [`RemoteClient::new`] with an offer shaped by `options`.
    pub fn with_options(
        now: Instant,
        remote_id: &str,
        local_addr: SocketAddr,
        options: ClientOptions,
    ) -> RemoteClient {
        let mut builder = Rtc::builder().set_sctp_max_buffered_amount(512 * 1024);
        if let Some(max) = options.max_message_size {
            builder = builder.set_sctp_max_message_size(max);
        }
        let rtc = builder.build(now);
        let mut client = RemoteClient {
            remote_id: remote_id.trim().to_string(),
            gateway_via: options.gateway_via,
            local_addr,
            label: "ma-api".into(),
            rtc,
            pending: None,
            channel: None,
            side: HashMap::new(),
            session_id: None,
            reassembler: Reassembler::new(ReassemblyLimits::default()),
            out: VecDeque::new(),
            rtc_timeout: None,
            failed: false,
            timings: Timings {
                started: Some(now),
                ..Timings::default()
            },
            reflexive: None,
            gateway_candidates: HashMap::new(),
            path: None,
        };
        if let Some(server) = options.stun_server {
            if let Some(txid) = crate::turn::stun::random_txid() {
                client.reflexive = Some(Reflexive {
                    server,
                    txid,
                    sent: 0,
                    next: now,
                    mapped: None,
                    offered: false,
                });
                client.stun_tick(now);
            }
        }
        client.drain(now);
        client
    }

    /// The gateway's end of the candidate pair the data flows over, and its type as the
    /// gateway announced it (`host`, `srflx`, `relay`; `prflx` for an address it did not
    /// announce), once connected.
    pub fn gateway_path(&self) -> Option<(SocketAddr, String)> {
        let addr = self.path?;
        let kind = self.gateway_candidates.get(&addr).cloned();
        Some((addr, kind.unwrap_or_else(|| "prflx".into())))
    }

    /// Our public address as the STUN server saw it, if asked and answered.
    pub fn reflexive_address(&self) -> Option<SocketAddr> {
        self.reflexive.as_ref().and_then(|r| r.mapped)
    }

    /// Send (or resend) the Binding request when due.
    fn stun_tick(&mut self, now: Instant) {
        let Some(r) = self.reflexive.as_mut() else {
            return;
        };
        if r.mapped.is_some() || r.sent >= STUN_TRIES || now < r.next {
            return;
        }
        r.sent += 1;
        r.next = now + std::time::Duration::from_millis(500);
        self.out.push_back(ClientOutput::Transmit {
            destination: r.server,
            contents: crate::webrtc::stun_gather::binding_request(&r.txid).to_vec(),
        });
    }

    /// Offer the server-reflexive candidate once both it and the session are there.
    fn offer_reflexive(&mut self) {
        let Some(sid) = self.session_id.clone() else {
            return;
        };
        let Some(r) = self.reflexive.as_mut() else {
            return;
        };
        let Some(mapped) = r.mapped.filter(|_| !r.offered) else {
            return;
        };
        r.offered = true;
        let c = match Candidate::server_reflexive(mapped, self.local_addr, "udp") {
            Ok(c) => c,
            Err(e) => return log::warn!("server-reflexive candidate {mapped} refused: {e}"),
        };
        if let Some(c) = self.rtc.add_local_candidate(c).map(|c| c.to_sdp_string()) {
            let candidate =
                ToServer::IceCandidate(Relay::candidate(sid, candidate_init(&c, "0", 0)));
            self.out
                .push_back(ClientOutput::Signal(candidate.to_text()));
        }
    }

    /// Note a gateway candidate's type from its SDP text.
    fn note_gateway_candidate(&mut self, text: &str) {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let addr = fields.get(4).zip(fields.get(5)).and_then(|(ip, port)| {
            format!("{ip}:{port}")
                .parse::<SocketAddr>()
                .ok()
                .or_else(|| format!("[{ip}]:{port}").parse().ok())
        });
        let kind = fields
            .iter()
            .position(|f| *f == "typ")
            .and_then(|i| fields.get(i + 1));
        if let (Some(addr), Some(kind)) = (addr, kind) {
            self.gateway_candidates.insert(addr, kind.to_string());
        }
    }

    pub fn is_open(&self) -> bool {
        self.channel.is_some() && !self.failed
    }

    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }

    fn fail(&mut self, why: String) {
        if !self.failed {
            self.failed = true;
            self.out
                .push_back(ClientOutput::Event(ClientEvent::Failed(why)));
        }
    }

    /// The signaling socket is open: ask for a session.
    pub fn handle_signaling_open(&mut self, _now: Instant) {
        let request = ToServer::ConnectRequest {
            remote_id: Some(self.remote_id.clone()),
        };
        self.out.push_back(ClientOutput::Signal(request.to_text()));
    }

    /// A text frame from the signaling server.
    pub fn handle_signaling_text(&mut self, now: Instant, text: &str) {
        match FromServer::parse(text) {
            Ok(FromServer::Connected {
                session_id: Some(session_id),
                ..
            }) => self.on_connected(now, session_id),
            Ok(FromServer::Connected {
                session_id: None, ..
            }) => self.fail("`connected` without sessionId".into()),
            Ok(FromServer::Answer(relay)) => self.on_answer(now, relay.sdp().unwrap_or_default()),
            Ok(FromServer::IceCandidate(relay)) => {
                if let Some(c) = relay.candidate_line() {
                    self.on_candidate(c);
                }
            }
            Ok(FromServer::Error { error, message }) => {
                let e = error.or(message).unwrap_or_else(|| "(no text)".into());
                self.fail(format!("signaling error: {e}"));
            }
            Ok(FromServer::PeerDisconnected { .. }) => {
                self.fail("the gateway left the signaling server".into())
            }
            Ok(FromServer::Ping) => self
                .out
                .push_back(ClientOutput::Signal(ToServer::Pong.to_text())),
            Err(ParseError::NotJson(_)) => {
                log::warn!(
                    "signaling sent something that is not JSON: {}",
                    escaped(text, 100)
                );
                return;
            }
            // A server that hands out invalid session ids is not one to go on with.
            Err(e @ ParseError::InvalidSessionId { .. }) => {
                self.fail(format!("signaling sent {e}"))
            }
            _ => log::debug!("signaling: ignoring {}", escaped(text, 100)),
        }
        self.drain(now);
    }

    fn on_connected(&mut self, now: Instant, sid: SessionId) {
        self.session_id = Some(sid.clone());
        self.timings.session_assigned = Some(now);
        self.out
            .push_back(ClientOutput::Event(ClientEvent::SessionAssigned {
                session_id: sid.clone(),
            }));
        let candidate = match Candidate::host(self.local_addr, "udp") {
            Ok(c) => c,
            Err(e) => return self.fail(format!("bad local address {}: {e}", self.local_addr)),
        };
        let local = self
            .rtc
            .add_local_candidate(candidate)
            .map(|c| c.to_sdp_string());
        let mut api = self.rtc.sdp_api();
        self.channel = None;
        let _cid = api.add_channel(self.label.clone());
        let Some((offer, pending)) = api.apply() else {
            return self.fail("str0m produced no offer".into());
        };
        self.pending = Some(pending);
        let offer = ToServer::Offer(Relay::offer(sid.clone(), &offer.to_sdp_string()));
        self.out.push_back(ClientOutput::Signal(offer.to_text()));
        // Trickle our candidate too (it is also in the offer), as browsers do.
        if let Some(c) = local {
            let candidate =
                ToServer::IceCandidate(Relay::candidate(sid, candidate_init(&c, "0", 0)));
            self.out
                .push_back(ClientOutput::Signal(candidate.to_text()));
        }
        self.offer_reflexive();
    }

    fn on_answer(&mut self, now: Instant, sdp: &str) {
        // Pin check first, exactly as the web app does: a mismatch is never retried.
        if let Err(e) = identity::verify_answer_fingerprint(sdp, &self.remote_id) {
            return self.fail(format!(
                "the gateway's certificate does not match Remote ID {}: {e}",
                self.remote_id
            ));
        }
        let Some(pending) = self.pending.take() else {
            log::debug!("an answer without a pending offer; ignored");
            return;
        };
        let sdp = match self.gateway_via {
            None => sdp.to_string(),
            Some(_) => sdp
                .split_inclusive('\n')
                .filter(|l| !l.starts_with("a=candidate"))
                .collect(),
        };
        for line in sdp.lines() {
            if let Some(c) = line.strip_prefix("a=") {
                if c.starts_with("candidate:") {
                    self.note_gateway_candidate(c);
                }
            }
        }
        let answer = match SdpAnswer::from_sdp_string(&sdp) {
            Ok(a) => a,
            Err(e) => return self.fail(format!("unparsable answer: {e}")),
        };
        if let Err(e) = self.rtc.sdp_api().accept_answer(pending, answer) {
            return self.fail(format!("answer refused: {e}"));
        }
        if let Some(via) = self.gateway_via {
            match Candidate::host(via, "udp") {
                Ok(c) => self.rtc.add_remote_candidate(c),
                Err(e) => return self.fail(format!("bad relay address {via}: {e}")),
            }
        }
        self.timings.answered = Some(now);
        self.out
            .push_back(ClientOutput::Event(ClientEvent::Answered));
    }

    fn on_candidate(&mut self, candidate: &str) {
        if candidate.is_empty() || self.gateway_via.is_some() {
            return;
        }
        let text = if candidate.starts_with("candidate:") {
            candidate.to_string()
        } else {
            format!("candidate:{candidate}")
        };
        self.note_gateway_candidate(&text);
        match Candidate::from_sdp_string(&text) {
            Ok(c) => self.rtc.add_remote_candidate(c),
            Err(e) => log::warn!("gateway candidate {candidate:?} refused: {e}"),
        }
    }

    /// A datagram for the client's socket.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, bytes: &[u8]) {
        if let Some(r) = self.reflexive.as_mut().filter(|r| r.server == source) {
            use crate::webrtc::stun_gather::{parse_binding_response, BindingResponse};
            if let Some((txid, response)) = parse_binding_response(bytes) {
                if txid == r.txid && r.mapped.is_none() {
                    if let BindingResponse::Success(Some(mapped)) = response {
                        r.mapped = Some(mapped);
                        self.offer_reflexive();
                    }
                }
                return;
            }
        }
        let Ok(receive) = Receive::new(Protocol::Udp, source, self.local_addr, bytes) else {
            return;
        };
        if let Err(e) = self.rtc.handle_input(Input::Receive(now, receive)) {
            self.fail(format!("WebRTC error: {e}"));
        }
        self.drain(now);
    }

    /// Send a text message on `ma-api`. `Ok(false)`: the send budget is full, try later.
    pub fn handle_send_text(&mut self, now: Instant, text: &str) -> Result<bool, String> {
        self.handle_send(now, false, text.as_bytes())
    }

    /// Send a message on `ma-api`.
    pub fn handle_send(&mut self, now: Instant, binary: bool, data: &[u8]) -> Result<bool, String> {
        let id = self.channel.ok_or("the channel is not open")?;
        self.write(now, id, binary, data)
    }

    /// Open a side channel (in-band, no renegotiation), e.g. `sendspin` or `http_proxy`.
    pub fn handle_open_channel(&mut self, now: Instant, label: &str) -> Result<(), String> {
        if self.channel.is_none() {
            return Err("open ma-api first".into());
        }
        let id = self.rtc.direct_api().create_data_channel(ChannelConfig {
            label: label.to_string(),
            ..ChannelConfig::default()
        });
        self.side.insert(id, (label.to_string(), false));
        self.drain(now);
        Ok(())
    }

    /// Whether the side channel `label` is open.
    pub fn side_open(&self, label: &str) -> bool {
        self.side.values().any(|(l, open)| l == label && *open)
    }

    /// Send on an open side channel.
    pub fn handle_send_on(
        &mut self,
        now: Instant,
        label: &str,
        binary: bool,
        data: &[u8],
    ) -> Result<bool, String> {
        let id = self
            .side
            .iter()
            .find(|(_, (l, open))| l == label && *open)
            .map(|(id, _)| *id)
            .ok_or_else(|| format!("channel {label} is not open"))?;
        self.write(now, id, binary, data)
    }

    fn write(
        &mut self,
        now: Instant,
        id: ChannelId,
        binary: bool,
        data: &[u8],
    ) -> Result<bool, String> {
        let mut ch = self.rtc.channel(id).ok_or("the channel is gone")?;
        let accepted = ch.write(binary, data).map_err(|e| e.to_string())?;
        self.drain(now);
        Ok(accepted)
    }

    /// Close the connection politely.
    pub fn handle_close(&mut self, now: Instant) {
        self.rtc.disconnect();
        self.drain(now);
    }

    /// Take everything str0m has to say after an input, up to its next timeout.
    fn drain(&mut self, now: Instant) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.rtc_timeout = Some(t);
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    // Once connected, the first datagram that is not STUN goes over the
                    // selected pair.
                    let stun = t.contents.first().is_some_and(|b| *b < 2);
                    if self.path.is_none() && self.timings.connected.is_some() && !stun {
                        self.path = Some(t.destination);
                    }
                    self.out.push_back(ClientOutput::Transmit {
                        destination: t.destination,
                        contents: t.contents.into(),
                    })
                }
                Ok(Output::Event(e)) => self.event(now, e),
                Err(e) => {
                    // The client has failed for good: no timer to keep.
                    self.rtc_timeout = None;
                    self.fail(format!("WebRTC error: {e}"));
                    return;
                }
            }
        }
    }

    fn event(&mut self, now: Instant, e: Event) {
        match e {
            Event::Connected => {
                self.timings.connected = Some(now);
                self.out
                    .push_back(ClientOutput::Event(ClientEvent::Connected));
            }
            Event::Closed => self.fail("the gateway closed the connection".into()),
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.fail("ICE disconnected".into())
            }
            Event::ChannelOpen(id, label) if label == self.label => {
                self.channel = Some(id);
                self.timings.channel_open = Some(now);
                self.out
                    .push_back(ClientOutput::Event(ClientEvent::ChannelOpen));
            }
            Event::ChannelData(d) if Some(d.id) == self.channel => {
                if self.timings.first_message.is_none() {
                    self.timings.first_message = Some(now);
                }
                if d.binary {
                    self.out
                        .push_back(ClientOutput::Event(ClientEvent::Binary(d.data)));
                    return;
                }
                let text = match String::from_utf8(d.data) {
                    Ok(t) => t,
                    Err(_) => return self.fail("MA sent a text message with invalid UTF-8".into()),
                };
                match self.reassembler.push(text) {
                    Ok(Some(text)) => self
                        .out
                        .push_back(ClientOutput::Event(ClientEvent::Text(text))),
                    Ok(None) => {}
                    Err(e) => self.fail(format!("bad __chunk__ frames: {e:?}")),
                }
            }
            Event::ChannelOpen(id, label) if self.side.contains_key(&id) => {
                self.side.insert(id, (label.clone(), true));
                self.out
                    .push_back(ClientOutput::Event(ClientEvent::SideOpen { label }));
            }
            Event::ChannelData(d) if self.side.contains_key(&d.id) => {
                let label = self.side[&d.id].0.clone();
                self.out.push_back(ClientOutput::Event(ClientEvent::Side {
                    label,
                    binary: d.binary,
                    data: d.data,
                }));
            }
            Event::ChannelClose(id) if self.side.contains_key(&id) => {
                if let Some((label, _)) = self.side.remove(&id) {
                    self.out
                        .push_back(ClientOutput::Event(ClientEvent::SideClosed { label }));
                }
            }
            Event::ChannelClose(id) if Some(id) == self.channel => {
                self.channel = None;
                self.fail("the gateway closed the ma-api channel".into());
            }
            _ => {}
        }
    }
}

impl Machine for RemoteClient {
    type Output = ClientOutput;

    /// Drive str0m's timers.
    fn handle_timeout(&mut self, now: Instant) {
        self.stun_tick(now);
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            self.fail(format!("WebRTC error: {e}"));
        }
        self.drain(now);
    }

    fn poll_output(&mut self) -> Next<ClientOutput> {
        match self.out.pop_front() {
            Some(out) => Next::Output(out),
            None => {
                let stun = self
                    .reflexive
                    .as_ref()
                    .filter(|r| r.mapped.is_none() && r.sent < STUN_TRIES)
                    .map(|r| r.next);
                Next::Timeout(crate::machine::earliest(self.rtc_timeout, stun))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::stun::{MessageBuilder, ATTR_XOR_MAPPED_ADDRESS};
    use serde_json::{json, Value};

    const ID: &str = "QCPJJTJMI3IDBNURU6XJJENRYU";

    fn client() -> (RemoteClient, Instant) {
        let now = Instant::now();
        let c = RemoteClient::new(now, ID, "127.0.0.1:50000".parse().unwrap());
        (c, now)
    }

    fn outputs(c: &mut RemoteClient) -> Vec<ClientOutput> {
        std::iter::from_fn(|| c.poll_output().output()).collect()
    }

    fn signals(outs: &[ClientOutput]) -> Vec<Value> {
        outs.iter()
            .filter_map(|o| match o {
                ClientOutput::Signal(text) => Some(serde_json::from_str(text).unwrap()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn asks_offers_and_trickles_like_the_web_app() {
        let (mut c, now) = client();
        c.handle_signaling_open(now);
        assert_eq!(
            signals(&outputs(&mut c)),
            [json!({"type": "connect-request", "remoteId": ID})]
        );
        c.handle_signaling_text(now, r#"{"type":"ping"}"#);
        assert_eq!(signals(&outputs(&mut c)), [json!({"type": "pong"})]);
        c.handle_signaling_text(
            now,
            &json!({"type": "connected", "remoteId": ID, "sessionId": "s-1", "iceServers": []})
                .to_string(),
        );
        let outs = outputs(&mut c);
        assert!(outs.iter().any(|o| matches!(o,
            ClientOutput::Event(ClientEvent::SessionAssigned { session_id }) if session_id == "s-1")));
        let sent = signals(&outs);
        assert_eq!(sent[0]["type"], "offer");
        assert_eq!(sent[0]["sessionId"], "s-1");
        assert_eq!(sent[0]["data"]["type"], "offer");
        assert!(sent[0]["data"]["sdp"].as_str().unwrap().starts_with("v=0"));
        assert_eq!(sent[1]["type"], "ice-candidate");
        assert_eq!(sent[1]["sessionId"], "s-1");
        assert!(sent[1]["data"]["candidate"]
            .as_str()
            .unwrap()
            .starts_with("candidate:"));
        assert_eq!(sent[1]["data"]["sdpMid"], "0");
        assert_eq!(sent[1]["data"]["sdpMLineIndex"], 0);
        assert_eq!(c.session_id(), Some("s-1"));
    }

    #[test]
    fn asks_stun_for_its_public_address_and_trickles_it_once_in_a_session() {
        let now = Instant::now();
        let local: SocketAddr = "198.51.100.10:50000".parse().unwrap();
        let stun: SocketAddr = "203.0.113.1:3478".parse().unwrap();
        let options = ClientOptions {
            stun_server: Some(stun),
            ..ClientOptions::default()
        };
        let mut c = RemoteClient::with_options(now, ID, local, options);
        let request = match outputs(&mut c).as_slice() {
            [ClientOutput::Transmit {
                destination,
                contents,
            }] if *destination == stun => contents.clone(),
            other => panic!("{other:?}"),
        };
        // Unanswered: asked again 500 ms later.
        let later = now + std::time::Duration::from_millis(500);
        c.handle_timeout(later);
        let again = outputs(&mut c);
        assert!(again
            .iter()
            .any(|o| matches!(o, ClientOutput::Transmit { contents, .. } if *contents == request)));
        // The answer, before any session: kept until there is one.
        let mapped: SocketAddr = "203.0.113.3:61000".parse().unwrap();
        let txid: [u8; 12] = request[8..20].try_into().unwrap();
        let answer = MessageBuilder::new(0x0101, &txid)
            .xor_address(ATTR_XOR_MAPPED_ADDRESS, mapped)
            .finish();
        c.handle_datagram(later, stun, &answer);
        assert_eq!(c.reflexive_address(), Some(mapped));
        assert!(signals(&outputs(&mut c)).is_empty());
        c.handle_signaling_open(later);
        c.handle_signaling_text(
            later,
            &json!({"type": "connected", "remoteId": ID, "sessionId": "s-1", "iceServers": []})
                .to_string(),
        );
        let sent = signals(&outputs(&mut c));
        let candidates: Vec<&str> = sent
            .iter()
            .filter(|m| m["type"] == "ice-candidate")
            .filter_map(|m| m["data"]["candidate"].as_str())
            .collect();
        assert_eq!(candidates.len(), 2, "{sent:?}");
        assert!(
            candidates[1].contains("203.0.113.3 61000 typ srflx"),
            "{candidates:?}"
        );
        // No more requests once answered.
        c.handle_timeout(later + std::time::Duration::from_secs(5));
        assert!(!outputs(&mut c).iter().any(
            |o| matches!(o, ClientOutput::Transmit { destination, .. } if *destination == stun)
        ));
    }

    #[test]
    fn an_invalid_session_id_fails_the_connection() {
        let (mut c, now) = client();
        c.handle_signaling_text(
            now,
            r#"{"type":"connected","remoteId":"X","sessionId":"a\r\nb","iceServers":[]}"#,
        );
        let outs = outputs(&mut c);
        assert!(signals(&outs).is_empty(), "no offer");
        assert!(
            outs.iter().any(|o| matches!(o,
                ClientOutput::Event(ClientEvent::Failed(why)) if why.contains(r#""a\r\nb""#))),
            "{outs:?}"
        );
        assert_eq!(c.session_id(), None);
    }
}
