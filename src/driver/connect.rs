//! A blocking driver for [`RemoteClient`]: its own small mio loop (signaling WebSocket + one
//! UDP socket), run in the caller's thread. The `connect` command, the tests and the
//! benchmarks use it to play the remote client.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::Message;

use crate::config::{ConnectArgs, GatewayConfig, WsUrl};
use crate::machine::{Machine, Next};
use crate::net::connect::Connecting;
use crate::net::resolve::Resolver;
use crate::net::udp;
use crate::net::ws_client::{Progress, WsClient};
use crate::remote_client::{ClientEvent, ClientOptions, ClientOutput, RemoteClient, Timings};

const WAKER: Token = Token(0);
const SIGNALING: Token = Token(1);
const UDP: Token = Token(2);

/// A connected remote client: the `ma-api` channel is open.
pub struct Connection {
    poll: Poll,
    events: Events,
    resolver: Resolver,
    ws: WsClient,
    udp: UdpSocket,
    udp_queue: udp::SendQueue,
    client: RemoteClient,
    inbox: VecDeque<ClientEvent>,
    buf: Vec<u8>,
    /// Where the gateway's datagrams last came from.
    peer: Option<SocketAddr>,
}

impl Connection {
    /// Connect to `remote_id` through the signaling server at `signaling`, with the client's
    /// UDP socket bound at `bind`; returns once the `ma-api` channel is open.
    pub fn open(
        signaling: &WsUrl,
        tls: Option<Arc<rustls::ClientConfig>>,
        remote_id: &str,
        bind: SocketAddr,
        timeout: Duration,
    ) -> Result<Connection, String> {
        let options = ClientOptions::default();
        Connection::open_with(signaling, tls, remote_id, bind, timeout, options)
    }

    /// [`Connection::open`] with an offer shaped by `options`.
    pub fn open_with(
        signaling: &WsUrl,
        tls: Option<Arc<rustls::ClientConfig>>,
        remote_id: &str,
        bind: SocketAddr,
        timeout: Duration,
        options: ClientOptions,
    ) -> Result<Connection, String> {
        let deadline = Instant::now() + timeout;
        let poll = Poll::new().map_err(|e| e.to_string())?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(|e| e.to_string())?);
        let mut resolver = Resolver::new(waker);
        let mut udp_socket = udp::bind(bind).map_err(|e| format!("cannot bind UDP {bind}: {e}"))?;
        if let Some(size) = options.receive_buffer {
            socket2::SockRef::from(&udp_socket)
                .set_recv_buffer_size(size)
                .map_err(|e| format!("cannot set the UDP receive buffer: {e}"))?;
        }
        poll.registry()
            .register(
                &mut udp_socket,
                UDP,
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| e.to_string())?;
        let bound = udp_socket.local_addr().map_err(|e| e.to_string())?;
        let local = udp::host_addresses(bound, None)[0];
        let ws = WsClient::start(
            signaling,
            tls,
            WebSocketConfig::default(),
            SIGNALING,
            &mut resolver,
        );
        let client = RemoteClient::with_options(Instant::now(), remote_id, local, options);
        let mut conn = Connection {
            poll,
            events: Events::with_capacity(64),
            resolver,
            ws,
            udp: udp_socket,
            udp_queue: udp::SendQueue::default(),
            client,
            inbox: VecDeque::new(),
            buf: vec![0; crate::net::READ_BUFFER],
            peer: None,
        };
        while !conn.client.is_open() {
            conn.turn(deadline)?;
        }
        Ok(conn)
    }

    pub fn timings(&self) -> &Timings {
        &self.client.timings
    }

    /// The gateway's end of the selected candidate pair and its type (`host`, `srflx`,
    /// `relay`, `prflx`).
    pub fn gateway_path(&self) -> Option<(SocketAddr, String)> {
        self.client.gateway_path()
    }

    pub fn session_id(&self) -> Option<&str> {
        self.client.session_id()
    }

    /// The next message from MA (text or binary), waiting up to `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Result<ClientEvent, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let pos = self.inbox.iter().position(|e| {
                matches!(
                    e,
                    ClientEvent::Text(_) | ClientEvent::Binary(_) | ClientEvent::Failed(_)
                )
            });
            if let Some(pos) = pos {
                match self.inbox.remove(pos) {
                    Some(ClientEvent::Failed(why)) => return Err(why),
                    Some(e) => return Ok(e),
                    None => {}
                }
            }
            // Forget lifecycle events nobody waits for; keep side-channel messages.
            self.inbox
                .retain(|e| matches!(e, ClientEvent::Side { .. } | ClientEvent::SideClosed { .. }));
            self.turn(deadline)?;
        }
    }

    /// The next text message from MA.
    pub fn recv_text(&mut self, timeout: Duration) -> Result<String, String> {
        match self.recv(timeout)? {
            ClientEvent::Text(t) => Ok(t),
            other => Err(format!("expected text, got {other:?}")),
        }
    }

    /// Send a message, waiting for send budget if the channel is backed up.
    pub fn send(&mut self, binary: bool, data: &[u8], timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.client.handle_send(Instant::now(), binary, data)? {
                self.pump();
                return Ok(());
            }
            self.turn(deadline)?;
        }
    }

    pub fn send_text(&mut self, text: &str, timeout: Duration) -> Result<(), String> {
        self.send(false, text.as_bytes(), timeout)
    }

    /// Open a side channel and wait until it is open.
    pub fn open_channel(&mut self, label: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        self.client.handle_open_channel(Instant::now(), label)?;
        self.pump();
        while !self.client.side_open(label) {
            self.turn(deadline)?;
        }
        Ok(())
    }

    /// Send on a side channel, waiting for send budget.
    pub fn send_on(
        &mut self,
        label: &str,
        binary: bool,
        data: &[u8],
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .client
                .handle_send_on(Instant::now(), label, binary, data)?
            {
                self.pump();
                return Ok(());
            }
            self.turn(deadline)?;
        }
    }

    /// The next message on side channel `label` (binary flag and bytes). Messages on other
    /// channels that arrive meanwhile stay queued for their own readers.
    pub fn recv_on(&mut self, label: &str, timeout: Duration) -> Result<(bool, Vec<u8>), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let pos = self.inbox.iter().position(|e| match e {
                ClientEvent::Side { label: l, .. } | ClientEvent::SideClosed { label: l } => {
                    l == label
                }
                ClientEvent::Failed(_) => true,
                _ => false,
            });
            if let Some(pos) = pos {
                match self.inbox.remove(pos) {
                    Some(ClientEvent::Side { binary, data, .. }) => return Ok((binary, data)),
                    Some(ClientEvent::SideClosed { .. }) => {
                        return Err(format!("channel {label} closed"))
                    }
                    Some(ClientEvent::Failed(why)) => return Err(why),
                    _ => {}
                }
            }
            self.turn(deadline)?;
        }
    }

    /// Send `bytes` as one datagram from this client's own UDP socket to the address the
    /// gateway's datagrams come from, outside the WebRTC session: the load generator's flood on
    /// a session's own 5-tuple. `Ok(false)` when the socket is full or no datagram came yet.
    #[cfg(feature = "testkit")]
    pub fn send_raw_datagram(&self, bytes: &[u8]) -> io::Result<bool> {
        let Some(peer) = self.peer else {
            return Ok(false);
        };
        match self.udp.send_to(bytes, peer) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Close politely and let the goodbye packets out.
    pub fn close(mut self) {
        self.client.handle_close(Instant::now());
        self.pump();
        if let Some(ws) = self.ws.socket() {
            let _ = ws.close(None);
            let _ = ws.flush();
        }
    }

    /// One turn of the loop: wait for I/O or the next timer (at most until `deadline`).
    fn turn(&mut self, deadline: Instant) -> Result<(), String> {
        let now = Instant::now();
        if now >= deadline {
            return Err(self.stuck());
        }
        let wake = self.pump().map_or(deadline, |t| t.min(deadline));
        let wait = wake.saturating_duration_since(Instant::now());
        match self.poll.poll(&mut self.events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
        let tokens: Vec<Token> = self.events.iter().map(|e| e.token()).collect();
        for token in tokens {
            match token {
                WAKER => {
                    for (id, answer) in self.resolver.poll() {
                        if self.ws.lookup() == Some(id) {
                            let p = self.ws.on_resolved(self.poll.registry(), answer);
                            self.ws_progress(p)?;
                        }
                    }
                }
                SIGNALING => {
                    let p = self.ws.on_ready(self.poll.registry());
                    self.ws_progress(p)?;
                }
                UDP => {
                    self.udp_queue.flush(&self.udp);
                    loop {
                        match self.udp.recv_from(&mut self.buf) {
                            Ok((n, src)) => {
                                self.peer = Some(src);
                                self.client
                                    .handle_datagram(Instant::now(), src, &self.buf[..n])
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => log::debug!("client UDP error: {e}"),
                        }
                    }
                }
                _ => {}
            }
        }
        self.client.handle_timeout(Instant::now());
        self.pump();
        if let Some(ClientEvent::Failed(why)) = self
            .inbox
            .iter()
            .find(|e| matches!(e, ClientEvent::Failed(_)))
        {
            return Err(why.clone());
        }
        Ok(())
    }

    fn stuck(&self) -> String {
        let t = &self.client.timings;
        let step = if t.session_assigned.is_none() {
            "waiting for the signaling server to assign a session (is the gateway registered?)"
        } else if t.answered.is_none() {
            "waiting for the gateway's answer"
        } else if t.connected.is_none() {
            "waiting for ICE/DTLS to connect (no UDP path between client and gateway?)"
        } else if t.channel_open.is_none() {
            "waiting for the ma-api channel to open"
        } else {
            "waiting for a message from MA"
        };
        format!("timed out {step}")
    }

    /// Signaling trouble is fatal while connecting; once the channel is open the session no
    /// longer needs it, so it is only logged.
    fn ws_progress(&mut self, p: Progress) -> Result<(), String> {
        let result = self.ws_progress_inner(p);
        match result {
            Err(e) if self.client.is_open() => {
                log::debug!("signaling connection lost after the channel opened: {e}");
                self.ws.close(self.poll.registry());
                Ok(())
            }
            other => other,
        }
    }

    fn ws_progress_inner(&mut self, p: Progress) -> Result<(), String> {
        match p {
            Progress::Failed(why) => return Err(why),
            Progress::Pending => return Ok(()),
            Progress::Opened => self.client.handle_signaling_open(Instant::now()),
            Progress::Open => {}
        }
        loop {
            let Some(ws) = self.ws.socket() else {
                return Ok(());
            };
            match ws.read() {
                Ok(Message::Text(t)) => self
                    .client
                    .handle_signaling_text(Instant::now(), t.as_str()),
                Ok(Message::Close(_)) => {
                    return Err("the signaling server closed the connection".into())
                }
                Ok(_) => {}
                Err(e) if crate::net::would_block(&e) => break,
                Err(e) => return Err(format!("signaling: {e}")),
            }
        }
        self.pump();
        Ok(())
    }

    /// Carry out the client's outputs; returns its next deadline.
    fn pump(&mut self) -> Option<Instant> {
        let mut wrote = false;
        let deadline = loop {
            let o = match self.client.poll_output() {
                Next::Output(o) => o,
                Next::Timeout(deadline) => break deadline,
            };
            match o {
                ClientOutput::Signal(text) => {
                    if let Some(ws) = self.ws.socket() {
                        let _ = ws.write(Message::text(text));
                        wrote = true;
                    }
                }
                ClientOutput::Transmit {
                    destination,
                    contents,
                } => self.udp_queue.send(&self.udp, destination, contents),
                ClientOutput::Event(e) => self.inbox.push_back(e),
            }
        };
        if wrote {
            if let Some(ws) = self.ws.socket() {
                let _ = ws.flush();
            }
        }
        deadline
    }
}

fn ms(from: Option<Instant>, to: Option<Instant>) -> String {
    match (from, to) {
        (Some(a), Some(b)) => format!("{:.1} ms", (b - a).as_secs_f64() * 1000.0),
        _ => "-".into(),
    }
}

/// The `connect` command: connect like the web app, print each step's timing, MA's first
/// message and echo round trips. Exit code 0 when MA answered, 1 otherwise.
pub fn run(gateway: &GatewayConfig, args: &ConnectArgs) -> i32 {
    let mut out = io::stdout().lock();
    let tls = if gateway.signaling_url.tls {
        match crate::net::tls::client_config(gateway.signaling_ca_file.as_deref()) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("ma-webrtc-gateway: {e}");
                return 1;
            }
        }
    } else {
        None
    };
    let _ = writeln!(
        out,
        "connecting to {} via {}",
        args.remote_id,
        gateway.signaling_url.to_url()
    );
    let options = ClientOptions {
        stun_server: args.stun,
        ..ClientOptions::default()
    };
    let mut conn = match Connection::open_with(
        &gateway.signaling_url,
        tls,
        &args.remote_id,
        args.bind,
        args.timeout,
        options,
    ) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(out, "FAILED: {e}");
            return 1;
        }
    };
    let first = match conn.recv_text(args.timeout) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(out, "FAILED: no message from MA: {e}");
            return 1;
        }
    };
    let t = conn.timings().clone();
    let _ = writeln!(out, "session {}", conn.session_id().unwrap_or("-"));
    match conn.gateway_path() {
        Some((addr, kind)) => {
            let _ = writeln!(out, "path: gateway candidate {addr} (typ {kind})");
        }
        None => {
            let _ = writeln!(out, "path: -");
        }
    }
    let steps = [
        (
            "connect-request -> connected",
            t.started,
            t.session_assigned,
        ),
        (
            "connected -> answer (pinned)",
            t.session_assigned,
            t.answered,
        ),
        ("answer -> ICE/DTLS up", t.answered, t.connected),
        ("ICE/DTLS up -> channel open", t.connected, t.channel_open),
        (
            "channel open -> first message",
            t.channel_open,
            t.first_message,
        ),
        ("total", t.started, t.first_message),
    ];
    for (step, from, to) in steps {
        let _ = writeln!(out, "  {step:<30} {}", ms(from, to));
    }
    let _ = writeln!(out, "first message from MA: {first}");
    let mut rtts = Vec::new();
    for i in 0..args.echo {
        let id = format!("diag-{i}");
        let msg = serde_json::json!({"message_id": id, "command": "info"}).to_string();
        let t0 = Instant::now();
        if let Err(e) = conn.send_text(&msg, args.timeout) {
            let _ = writeln!(out, "FAILED: send: {e}");
            return 1;
        }
        // MA answers every command with its message_id (an error before login is an answer too).
        loop {
            match conn.recv_text(args.timeout) {
                Ok(reply) if reply.contains(&format!("\"{id}\"")) => break,
                Ok(_) => continue,
                Err(e) => {
                    let _ = writeln!(out, "FAILED: no answer to {id}: {e}");
                    return 1;
                }
            }
        }
        rtts.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    if !rtts.is_empty() {
        rtts.sort_by(f64::total_cmp);
        let p = |q: f64| crate::stats::percentile(&rtts, q);
        let _ = writeln!(
            out,
            "echo round trip over {} messages: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            rtts.len(),
            p(0.5),
            p(0.99),
            rtts[rtts.len() - 1]
        );
    }
    conn.close();
    let _ = writeln!(out, "OK");
    0
}
