//! The load generator: `cargo bench --bench load -- [FLAGS]` (`--help` lists them).
//!
//! It is a bench target, not part of the binary users install: it starts threads (one per
//! session), child processes and a watchdog, none of which belongs in the gateway. Cargo builds
//! the gateway binary next to it and tells it the path (`CARGO_BIN_EXE_ma-webrtc-gateway`);
//! `LOAD_GATEWAY_BIN=PATH` runs another build instead (A/B comparisons of two builds).
//! Run without `--bench` (as `cargo test --benches` does), it only checks its own codec.
//!
//! N remote clients (one thread each, each a [`Connection`]) connect through a signaling
//! server to a gateway whose local WebSocket is an echo peer, then measure set-up time, echo
//! round trips and throughput, and check every message: a lost, duplicated, reordered or
//! corrupted message makes the exit code 1.
//!
//! The echo peer must send a first message when a socket opens (as MA does) and echo every
//! message back unchanged. A real MA server does not echo: use the echo server built in here,
//! either with `--spawn` (this command starts `signal`, the gateway and the echo server itself,
//! all on loopback, and also measures the gateway's footprint) or with `--echo-listen ADDR` next
//! to a gateway started by hand with `MA_LOCAL_WS_URL=ws://ADDR/ws`. The one-way phases (`up`,
//! `down`) need that echo server; against another echo peer (such as the tests' MA stand-in)
//! they are skipped.
//!
//! Messages carry a header `<kind><session><seq><len>` (hex) and a body cut from a fixed
//! pattern at an offset that depends on session and sequence number, so a message delivered to
//! the wrong session, twice, out of order or with any byte changed is detected.
//!
//! Phases, all sessions together (each starts when every session finished the previous one):
//! set-up (connect-request → MA's first message), idle (footprint), rtt (one message at a time,
//! round-trip times), echo (pipelined, at most `--window` bytes in flight per session), up
//! (client → MA only, checked by the echo server), down (MA → client only).
//!
//! `--attack` runs the hostile scenarios of [`attack`] instead of the phases, `--big` the large
//! replies of [`big`].

mod attack;
mod big;

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::Message;

use clap::{Args, Parser};
use ma_webrtc_gateway::config::{parse_duration, WsUrl};
use ma_webrtc_gateway::driver::connect::Connection;
use ma_webrtc_gateway::remote_client::{ClientEvent, ClientOptions};
use ma_webrtc_gateway::stats::percentile;

/// Header: kind (1) + session (6 hex) + seq (10 hex) + length (8 hex).
const HEADER: usize = 25;
/// Smallest message: the header and a few pattern bytes.
pub const MIN_SIZE: usize = 32;
const PATTERN_PERIOD: usize = 61;
/// The first message of the built-in echo server (like MA's server_info).
const ECHO_HELLO: &str =
    r#"{"server_id":"bench-echo","server_version":"bench","schema_version":28}"#;

const KIND_RTT: u8 = b'R';
const KIND_ECHO: u8 = b'E';
const KIND_UP: u8 = b'U';
const KIND_DOWN: u8 = b'D';

// ---- messages ------------------------------------------------------------------------------

/// The repeating body pattern (printable ASCII, so a text message is valid UTF-8).
fn pattern(len: usize) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..len + PATTERN_PERIOD)
        .map(|i| alphabet[i % PATTERN_PERIOD])
        .collect()
}

fn body_offset(session: u32, seq: u64) -> usize {
    ((seq.wrapping_mul(7) + u64::from(session)) % PATTERN_PERIOD as u64) as usize
}

/// Builds and checks bench messages of one size.
struct Codec {
    size: usize,
    pattern: Vec<u8>,
}

/// What was wrong with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bad {
    Corrupt,
    WrongSession,
}

struct Parsed {
    kind: u8,
    seq: u64,
}

impl Codec {
    fn new(size: usize) -> Codec {
        Codec {
            size,
            pattern: pattern(size),
        }
    }

    fn build(&self, kind: u8, session: u32, seq: u64) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.size);
        m.push(kind);
        let _ = write!(
            m,
            "{:06x}{:010x}{:08x}",
            session & 0xff_ffff,
            seq,
            self.size
        );
        let off = body_offset(session, seq);
        m.extend_from_slice(&self.pattern[off..off + self.size - HEADER]);
        m
    }

    fn check(&self, session: u32, m: &[u8]) -> Result<Parsed, Bad> {
        if m.len() < HEADER || m.len() != self.size {
            return Err(Bad::Corrupt);
        }
        let hex = |r: std::ops::Range<usize>| {
            std::str::from_utf8(&m[r])
                .ok()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
        };
        let (Some(s), Some(seq), Some(len)) = (hex(1..7), hex(7..17), hex(17..25)) else {
            return Err(Bad::Corrupt);
        };
        if len != self.size as u64 {
            return Err(Bad::Corrupt);
        }
        if s != u64::from(session & 0xff_ffff) {
            return Err(Bad::WrongSession);
        }
        let off = body_offset(session, seq);
        if m[HEADER..] != self.pattern[off..off + self.size - HEADER] {
            return Err(Bad::Corrupt);
        }
        Ok(Parsed { kind: m[0], seq })
    }
}

/// Counts of bad messages, and the in-order check.
#[derive(Debug, Default, Clone)]
struct Errors {
    lost: u64,
    duplicated: u64,
    corrupted: u64,
    misrouted: u64,
    other: Vec<String>,
}

impl Errors {
    fn total(&self) -> u64 {
        self.lost + self.duplicated + self.corrupted + self.misrouted + self.other.len() as u64
    }

    fn add(&mut self, o: &Errors) {
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.corrupted += o.corrupted;
        self.misrouted += o.misrouted;
        self.other.extend(o.other.iter().cloned());
    }
}

/// Sequence tracking of one stream of messages (ordered channel: exactly 0, 1, 2, ...).
struct Expect {
    next: u64,
}

impl Expect {
    /// Account for a received sequence number; true if it is the expected one.
    fn take(&mut self, seq: u64, e: &mut Errors) -> bool {
        match seq.cmp(&self.next) {
            std::cmp::Ordering::Equal => {
                self.next += 1;
                true
            }
            std::cmp::Ordering::Greater => {
                e.lost += seq - self.next;
                self.next = seq + 1;
                true
            }
            std::cmp::Ordering::Less => {
                e.duplicated += 1;
                false
            }
        }
    }
}

// ---- the session threads -------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Rtt,
    Echo,
    Up,
    Down,
}

const PHASES: [Phase; 4] = [Phase::Rtt, Phase::Echo, Phase::Up, Phase::Down];

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Rtt => "rtt",
            Phase::Echo => "echo",
            Phase::Up => "up",
            Phase::Down => "down",
        }
    }
}

#[derive(Debug, Default, Clone)]
struct PhaseResult {
    ran: bool,
    start: Option<Instant>,
    end: Option<Instant>,
    /// Payload bytes moved (each way for echo).
    bytes: u64,
}

impl PhaseResult {
    fn secs(&self) -> Option<f64> {
        Some((self.end? - self.start?).as_secs_f64())
    }
}

#[derive(Debug, Default)]
struct SessionReport {
    setup: Option<Duration>,
    /// Set-up steps, ms: signaling session, answer, ICE+DTLS, channel open, first message.
    steps: [Option<f64>; 5],
    rtts: Vec<f64>,
    phases: Vec<(Phase, PhaseResult)>,
    errors: Errors,
    failure: Option<String>,
}

#[derive(Clone)]
struct Plan {
    signaling: WsUrl,
    tls: Option<Arc<rustls::ClientConfig>>,
    remote_id: String,
    bind: SocketAddr,
    timeout: Duration,
    messages: u64,
    rtt_samples: u64,
    size: usize,
    binary: bool,
    window: usize,
    /// How long each session keeps its connection serviced while the gateway is measured idle.
    idle_hold: Duration,
}

impl Plan {
    /// A session as the web app opens one (`ma-api` open), its offer shaped by `options`.
    fn open(&self, options: ClientOptions) -> Result<Connection, String> {
        let (signaling, tls, id) = (&self.signaling, self.tls.clone(), &self.remote_id);
        Connection::open_with(signaling, tls, id, self.bind, self.timeout, options)
    }

    /// [`Plan::open`], then MA's first message read.
    fn greeted(&self, options: ClientOptions) -> Result<Connection, String> {
        let mut c = self.open(options)?;
        c.recv(self.timeout)?;
        Ok(c)
    }
}

fn send(conn: &mut Connection, plan: &Plan, m: &[u8]) -> Result<(), String> {
    conn.send(plan.binary, m, plan.timeout)
}

fn recv_bytes(conn: &mut Connection, plan: &Plan) -> Result<Vec<u8>, String> {
    match conn.recv(plan.timeout)? {
        ClientEvent::Text(t) => Ok(t.into_bytes()),
        ClientEvent::Binary(b) => Ok(b),
        other => Err(format!("unexpected {other:?}")),
    }
}

/// Keep the connection serviced (ICE consent, SCTP) for `d` without expecting messages.
fn idle(conn: &mut Connection, d: Duration, e: &mut Errors) -> Result<(), String> {
    let until = Instant::now() + d;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match conn.recv(left) {
            Ok(m) => e
                .other
                .push(format!("unexpected message while idle: {m:?}")),
            Err(why) if why.starts_with("timed out") => return Ok(()),
            Err(why) => return Err(why),
        }
    }
    Ok(())
}

struct Gate {
    barrier: Barrier,
    abort: AtomicBool,
}

fn session_thread(
    index: u32,
    plan: Plan,
    gate: Arc<Gate>,
    setup_done: impl FnOnce(),
) -> SessionReport {
    let mut r = SessionReport::default();
    let conn = match plan.open(ClientOptions::default()) {
        Ok(c) => Some(c),
        Err(e) => {
            r.failure = Some(format!("set-up: {e}"));
            None
        }
    };
    let mut bench_echo = false;
    let mut conn = conn.and_then(|mut c| match c.recv(plan.timeout) {
        Ok(first) => {
            if let ClientEvent::Text(t) = &first {
                bench_echo = t.contains("\"bench-echo\"");
            }
            let t = c.timings();
            let points = [
                t.started,
                t.session_assigned,
                t.answered,
                t.connected,
                t.channel_open,
                t.first_message,
            ];
            for (k, w) in points.windows(2).enumerate() {
                r.steps[k] = w[0]
                    .zip(w[1])
                    .map(|(a, b)| b.saturating_duration_since(a).as_secs_f64() * 1000.0);
            }
            r.setup = t
                .started
                .zip(t.first_message)
                .map(|(a, b)| b.saturating_duration_since(a));
            Some(c)
        }
        Err(e) => {
            r.failure = Some(format!("no first message from MA: {e}"));
            None
        }
    });
    setup_done();
    let codec = Codec::new(plan.size);
    // All connected: the gateway is measured with every session open and idle.
    gate.barrier.wait();
    if let Some(c) = conn.as_mut() {
        if let Err(e) = idle(c, plan.idle_hold, &mut r.errors) {
            r.failure = Some(format!("idle: {e}"));
            conn = None;
        }
    }
    gate.barrier.wait();
    for phase in PHASES {
        // Start together, end together (the driver measures the gateway in between).
        gate.barrier.wait();
        let mut res = PhaseResult::default();
        let skip = gate.abort.load(Ordering::Relaxed)
            || (matches!(phase, Phase::Up | Phase::Down) && !bench_echo);
        if let (Some(c), false) = (conn.as_mut(), skip) {
            res.ran = true;
            res.start = Some(Instant::now());
            let outcome = match phase {
                Phase::Rtt => rtt_phase(c, &plan, &codec, index, &mut r),
                Phase::Echo => echo_phase(c, &plan, &codec, index, &mut r.errors, &mut res),
                Phase::Up => up_phase(c, &plan, &codec, index, &mut r.errors, &mut res),
                Phase::Down => down_phase(c, &plan, &codec, index, &mut r.errors, &mut res),
            };
            res.end = Some(Instant::now());
            if let Err(e) = outcome {
                r.failure = Some(format!("{}: {e}", phase.name()));
                conn = None;
            }
        }
        r.phases.push((phase, res));
        gate.barrier.wait();
    }
    if let Some(c) = conn {
        c.close();
    }
    r
}

fn rtt_phase(
    c: &mut Connection,
    plan: &Plan,
    codec: &Codec,
    index: u32,
    r: &mut SessionReport,
) -> Result<(), String> {
    let mut expect = Expect { next: 0 };
    for seq in 0..plan.rtt_samples {
        let m = codec.build(KIND_RTT, index, seq);
        let t0 = Instant::now();
        send(c, plan, &m)?;
        loop {
            let got = recv_bytes(c, plan)?;
            match codec.check(index, &got) {
                Ok(p) if p.kind == KIND_RTT => {
                    if expect.take(p.seq, &mut r.errors) && p.seq == seq {
                        r.rtts.push(t0.elapsed().as_secs_f64() * 1000.0);
                        break;
                    }
                }
                Ok(_) | Err(Bad::Corrupt) => r.errors.corrupted += 1,
                Err(Bad::WrongSession) => r.errors.misrouted += 1,
            }
            if r.errors.total() > 100 {
                return Err("too many bad messages".into());
            }
        }
    }
    Ok(())
}

/// Receive one message of a throughput phase and count it: of `kind` for session `index` and
/// next in sequence, its bytes go to `res`; anything else is counted in `e` (lost, when the
/// connection fails, is everything still expected).
fn receive_next(
    c: &mut Connection,
    plan: &Plan,
    codec: &Codec,
    (index, kind): (u32, u8),
    expect: &mut Expect,
    e: &mut Errors,
    res: &mut PhaseResult,
) -> Result<(), String> {
    let got = recv_bytes(c, plan).inspect_err(|_| e.lost += plan.messages - expect.next)?;
    match codec.check(index, &got) {
        Ok(p) if p.kind == kind => {
            if expect.take(p.seq, e) {
                res.bytes += plan.size as u64;
            }
        }
        Ok(_) | Err(Bad::Corrupt) => e.corrupted += 1,
        Err(Bad::WrongSession) => e.misrouted += 1,
    }
    Ok(())
}

fn echo_phase(
    c: &mut Connection,
    plan: &Plan,
    codec: &Codec,
    index: u32,
    e: &mut Errors,
    res: &mut PhaseResult,
) -> Result<(), String> {
    let in_flight = (plan.window / plan.size).max(1) as u64;
    let mut expect = Expect { next: 0 };
    let (mut sent, mut received) = (0u64, 0u64);
    while expect.next < plan.messages {
        while sent < plan.messages && sent - received < in_flight {
            send(c, plan, &codec.build(KIND_ECHO, index, sent))?;
            sent += 1;
        }
        receive_next(c, plan, codec, (index, KIND_ECHO), &mut expect, e, res)?;
        received += 1;
    }
    Ok(())
}

fn up_phase(
    c: &mut Connection,
    plan: &Plan,
    codec: &Codec,
    index: u32,
    e: &mut Errors,
    res: &mut PhaseResult,
) -> Result<(), String> {
    for seq in 0..plan.messages {
        send(c, plan, &codec.build(KIND_UP, index, seq))?;
    }
    // The echo server checked every message; its report comes after the last one.
    c.send_text(
        &json!({"bench": "report", "session": index}).to_string(),
        plan.timeout,
    )?;
    let reply = c.recv_text(plan.timeout)?;
    let v: Value = serde_json::from_str(&reply).map_err(|_| format!("bad report {reply:.80}"))?;
    let got = v["received"].as_u64().unwrap_or(0);
    e.lost += v["lost"].as_u64().unwrap_or(0);
    e.duplicated += v["duplicated"].as_u64().unwrap_or(0);
    e.corrupted += v["corrupted"].as_u64().unwrap_or(0);
    e.misrouted += v["misrouted"].as_u64().unwrap_or(0);
    if got < plan.messages {
        e.lost += plan.messages - got;
    }
    res.bytes = got.min(plan.messages) * plan.size as u64;
    Ok(())
}

fn down_phase(
    c: &mut Connection,
    plan: &Plan,
    codec: &Codec,
    index: u32,
    e: &mut Errors,
    res: &mut PhaseResult,
) -> Result<(), String> {
    c.send_text(
        &json!({"bench": "down", "session": index, "count": plan.messages,
                "size": plan.size, "binary": plan.binary})
        .to_string(),
        plan.timeout,
    )?;
    let mut expect = Expect { next: 0 };
    while expect.next < plan.messages {
        receive_next(c, plan, codec, (index, KIND_DOWN), &mut expect, e, res)?;
    }
    Ok(())
}

// ---- the echo server -----------------------------------------------------------------------

/// Start the echo WebSocket server on `listen` (thread per connection); returns its address.
pub fn start_echo_server(listen: SocketAddr) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            std::thread::spawn(move || echo_connection(stream));
        }
    });
    Ok(addr)
}

fn echo_connection(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // MA serves its image proxy on the same port: so does the stand-in.
    if !attack::is_websocket(&stream) {
        attack::serve_images(stream);
        return;
    }
    let Ok(mut ws) = tungstenite::accept(stream) else {
        return;
    };
    if ws.send(Message::text(ECHO_HELLO)).is_err() {
        return;
    }
    // Checks of the one-way (up) stream, per session.
    let mut sink: Option<(u32, Codec, Expect, Errors, u64)> = None;
    loop {
        let msg = match ws.read() {
            Ok(m) => m,
            Err(_) => return,
        };
        let (binary, data) = match msg {
            Message::Text(t) => (false, tungstenite::Bytes::from(t)),
            Message::Binary(b) => (true, b),
            Message::Close(_) => return,
            _ => continue,
        };
        if data.first() == Some(&KIND_UP) && data.len() >= HEADER {
            let session = std::str::from_utf8(&data[1..7])
                .ok()
                .and_then(|s| u32::from_str_radix(s, 16).ok())
                .unwrap_or(0);
            let s = sink.get_or_insert_with(|| {
                (
                    session,
                    Codec::new(data.len()),
                    Expect { next: 0 },
                    Errors::default(),
                    0,
                )
            });
            match s.1.check(s.0, &data) {
                Ok(p) if p.kind == KIND_UP => {
                    if s.2.take(p.seq, &mut s.3) {
                        s.4 += 1;
                    }
                }
                Ok(_) | Err(Bad::Corrupt) => s.3.corrupted += 1,
                Err(Bad::WrongSession) => s.3.misrouted += 1,
            }
            continue;
        }
        if !binary && data.first() == Some(&b'{') {
            if let Ok(cmd) = serde_json::from_slice::<Value>(&data) {
                match cmd.get("bench").and_then(Value::as_str) {
                    Some("report") => {
                        let (received, e) = match sink.take() {
                            Some((_, _, _, e, n)) => (n, e),
                            None => (0, Errors::default()),
                        };
                        let report = json!({"bench": "report", "received": received,
                            "lost": e.lost, "duplicated": e.duplicated,
                            "corrupted": e.corrupted, "misrouted": e.misrouted});
                        if ws.send(Message::text(report.to_string())).is_err() {
                            return;
                        }
                        continue;
                    }
                    Some("down") => {
                        let session = cmd["session"].as_u64().unwrap_or(0) as u32;
                        let count = cmd["count"].as_u64().unwrap_or(0);
                        let size = cmd["size"].as_u64().unwrap_or(0) as usize;
                        let binary = cmd["binary"].as_bool().unwrap_or(false);
                        let codec = Codec::new(size.max(MIN_SIZE));
                        for seq in 0..count {
                            let m = codec.build(KIND_DOWN, session, seq);
                            let msg = if binary {
                                Message::binary(m)
                            } else {
                                // The pattern is ASCII.
                                Message::text(String::from_utf8(m).unwrap_or_default())
                            };
                            if ws.write(msg).is_err() {
                                return;
                            }
                        }
                        if ws.flush().is_err() {
                            return;
                        }
                        continue;
                    }
                    _ => {}
                }
            }
        }
        let echo = if binary {
            Message::Binary(data)
        } else {
            match tungstenite::Utf8Bytes::try_from(data) {
                Ok(t) => Message::Text(t),
                Err(_) => return,
            }
        };
        if ws.send(echo).is_err() {
            return;
        }
    }
}

// ---- processes under test ------------------------------------------------------------------

/// A child process (signal or gateway) killed when dropped. Two threads drain its stderr
/// (logs, quoted in errors and written to `--log-dir`) and its stdout (the gateway's events,
/// one JSON object per line) for as long as it runs: a full pipe would stall it.
struct Spawned {
    name: &'static str,
    child: Child,
    logs: mpsc::Receiver<String>,
    events: mpsc::Receiver<String>,
    /// Log lines read so far.
    seen: Vec<String>,
}

impl Spawned {
    fn start(
        name: &'static str,
        args: &[&str],
        envs: &[(&str, String)],
        log: Option<PathBuf>,
    ) -> Result<Spawned, String> {
        // LOAD_GATEWAY_BIN: another build of the gateway (and its `signal`), for A/B runs of
        // two builds under the same load generator.
        let exe = std::env::var_os("LOAD_GATEWAY_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_ma-webrtc-gateway").into());
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("MA_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", "info");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let file = Arc::new(Mutex::new(log.and_then(|p| std::fs::File::create(p).ok())));
        let (tx, logs) = mpsc::channel();
        drain(
            child.stderr.take().ok_or("no stderr")?,
            "",
            file.clone(),
            tx,
        );
        let (tx, events) = mpsc::channel();
        drain(child.stdout.take().ok_or("no stdout")?, "event: ", file, tx);
        Ok(Spawned {
            name,
            child,
            logs,
            events,
            seen: Vec::new(),
        })
    }

    /// Wait for a log line containing `needle` (for `signal`, which has no events).
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(e) => return Err(self.failed(&format!("log {needle:?}"), timeout, e)),
            }
        }
    }

    /// Wait for the next event (stdout line) whose `"event"` is `name`; returns it.
    fn wait_for_event(&mut self, name: &str, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(line) => {
                    let event: Value = serde_json::from_str(&line).map_err(|e| {
                        format!(
                            "{} wrote a stdout line that is not JSON ({e}): {line:?}",
                            self.name
                        )
                    })?;
                    if event["event"] == name {
                        return Ok(event);
                    }
                }
                Err(e) => return Err(self.failed(&format!("send a {name:?} event"), timeout, e)),
            }
        }
    }

    /// Why a wait failed, with the last lines of the log.
    fn failed(&mut self, what: &str, timeout: Duration, e: mpsc::RecvTimeoutError) -> String {
        // The last lines may still be on their way, and the process on its way out.
        let until = Instant::now() + Duration::from_secs(1);
        while let Ok(line) = self
            .logs
            .recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
        let when = match e {
            mpsc::RecvTimeoutError::Timeout => format!("within {timeout:?}"),
            mpsc::RecvTimeoutError::Disconnected => loop {
                match self.child.try_wait() {
                    Ok(Some(status)) => break format!("before it exited ({status})"),
                    Ok(None) if Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => break "before it closed its output".into(),
                }
            },
        };
        let tail = &self.seen[self.seen.len().saturating_sub(20)..];
        format!(
            "{} did not {what} {when}; its last log lines:\n{}",
            self.name,
            tail.join("\n")
        )
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Read `pipe` line by line until it closes: each line to `tx` (while anyone listens) and,
/// with `prefix`, to the log file.
fn drain(
    pipe: impl io::Read + Send + 'static,
    prefix: &'static str,
    file: Arc<Mutex<Option<std::fs::File>>>,
    tx: mpsc::Sender<String>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(f) = file.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                let _ = writeln!(f, "{prefix}{line}");
            }
            let _ = tx.send(line);
        }
    });
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counters of a process from /proc (Linux), summed over its threads.
#[derive(Debug, Clone, Copy, Default)]
struct ProcSample {
    at: Option<Instant>,
    rss_kib: u64,
    hwm_kib: u64,
    cpu_ns: u64,
    switches: u64,
    threads: u64,
}

fn proc_sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let mut s = ProcSample {
        at: Some(Instant::now()),
        rss_kib: field(&status, "VmRSS:")?,
        hwm_kib: field(&status, "VmHWM:").unwrap_or(0),
        ..ProcSample::default()
    };
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let dir = task.path();
        if let Ok(st) = std::fs::read_to_string(dir.join("status")) {
            s.switches += field(&st, "voluntary_ctxt_switches:").unwrap_or(0)
                + field(&st, "nonvoluntary_ctxt_switches:").unwrap_or(0);
        }
        if let Ok(ss) = std::fs::read_to_string(dir.join("schedstat")) {
            s.cpu_ns += ss
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        s.threads += 1;
    }
    Some(s)
}

/// CPU time of a whole process, exited threads included (`/proc/PID/stat`, in USER_HZ ticks,
/// which is 100 on Linux).
fn process_cpu_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10_000_000)
}

fn own_sample() -> Option<ProcSample> {
    let mut s = proc_sample(std::process::id())?;
    s.cpu_ns = process_cpu_ns(std::process::id())?;
    Some(s)
}

struct Stack {
    _signal: Spawned,
    gateway: Spawned,
    signaling: WsUrl,
    remote_id: String,
    data_dir: PathBuf,
}

fn spawn_stack(args: &BenchArgs, echo: SocketAddr) -> Result<Stack, String> {
    let wait = Duration::from_secs(20);
    let mut signal = Spawned::start(
        "signal",
        &["signal", "--listen", "127.0.0.1:0"],
        &[],
        args.log_dir.as_ref().map(|d| d.join("signal.log")),
    )?;
    let line = signal.wait_for("listening on ", wait)?;
    let addr: SocketAddr = line
        .split("listening on ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("cannot read the signal address from {line:?}"))?;
    let signaling = WsUrl::parse(&format!("ws://{addr}/ws"))?;
    let data_dir =
        std::env::temp_dir().join(format!("ma-webrtc-gateway-bench-{}", std::process::id()));
    std::fs::create_dir_all(&data_dir).map_err(|e| e.to_string())?;
    let mut env = vec![
        ("MA_SIGNALING_URL", signaling.to_url()),
        ("MA_LOCAL_WS_URL", format!("ws://{echo}/ws")),
        ("MA_DATA_DIR", data_dir.display().to_string()),
        ("MA_UDP_BIND", "127.0.0.1:0".into()),
        ("MA_ICE_SERVERS", "[]".into()),
        (
            "MA_MAX_SESSIONS",
            (args.sessions + args.warmup + 8).max(32).to_string(),
        ),
    ];
    for kv in &args.gateway_env {
        if let Some((k, v)) = kv.split_once('=') {
            env.push((Box::leak(k.to_string().into_boxed_str()), v.to_string()));
        }
    }
    let mut gateway = Spawned::start(
        "gateway",
        &[],
        &env,
        args.log_dir.as_ref().map(|d| d.join("gateway.log")),
    )?;
    let registered = gateway.wait_for_event("registered", wait)?;
    let remote_id = registered["remote_id"]
        .as_str()
        .ok_or_else(|| format!("no remote_id in the registered event {registered}"))?
        .to_string();
    Ok(Stack {
        _signal: signal,
        gateway,
        signaling,
        remote_id,
        data_dir,
    })
}

// ---- reporting -----------------------------------------------------------------------------

fn plan_bind_for_warmup(bind: SocketAddr) -> SocketAddr {
    if bind.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], 9))
    } else {
        bind
    }
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

fn summary(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    format!(
        "min {:.2}  p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
        values.first().copied().unwrap_or(f64::NAN),
        percentile(values, 0.50),
        percentile(values, 0.95),
        percentile(values, 0.99),
        values.last().copied().unwrap_or(f64::NAN),
    )
}

/// Measure the process idle for `secs`: wake-ups (context switches) per second and CPU.
fn idle_footprint(out: &mut impl Write, pid: u32, label: &str, secs: Duration) {
    if secs.is_zero() {
        return;
    }
    let Some(a) = proc_sample(pid) else { return };
    std::thread::sleep(secs);
    let Some(b) = proc_sample(pid) else { return };
    let dt = secs.as_secs_f64();
    let _ = writeln!(
        out,
        "gateway {label}: RSS {:.1} MiB, {} threads, {:.2} wake-ups/s, CPU {:.3} ms/s (over {:.0} s)",
        b.rss_kib as f64 / 1024.0,
        b.threads,
        b.switches.saturating_sub(a.switches) as f64 / dt,
        b.cpu_ns.saturating_sub(a.cpu_ns) as f64 / 1e6 / dt,
        dt
    );
}

/// Settings of the load generator (it also reads MA_SIGNALING_URL unless --spawn).
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The Remote ID to connect to (not needed with --spawn).
    pub remote_id: Option<String>,

    /// Concurrent sessions.
    #[arg(long, default_value_t = 1)]
    pub sessions: usize,

    /// Messages per session in each throughput phase (echo, up, down).
    #[arg(long, default_value_t = 1000)]
    pub messages: u64,

    /// Message size in bytes (at least 32).
    #[arg(long, default_value_t = 16384)]
    pub size: usize,

    /// Send binary messages instead of text.
    #[arg(long)]
    pub binary: bool,

    /// Round trips measured per session, one message at a time.
    #[arg(long, default_value_t = 100)]
    pub rtt_samples: u64,

    /// Bytes in flight per session in the echo phase.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub window: usize,

    /// Sessions connecting at the same time.
    #[arg(long, default_value_t = 8)]
    pub connect_concurrency: usize,

    /// Sessions connected and closed one by one before measuring (a fresh signal server or
    /// gateway pays a one-time crypto set-up on its first session).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,

    /// Give up on a step (connect, a message) after this long.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Stop the whole run (exit code 3) after this long.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub max_time: Duration,

    /// How long the gateway is watched idle (wake-ups, CPU), with no session and with all open.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub idle: Duration,

    /// Local UDP address of each client.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub bind: SocketAddr,

    /// Start `signal`, the gateway (the binary Cargo built) and the echo server on loopback,
    /// and measure the gateway's footprint.
    #[arg(long)]
    pub spawn: bool,

    /// Run the echo server (first message, then echo) on this address, for a gateway started
    /// by hand with MA_LOCAL_WS_URL=ws://ADDR/ws. Without a REMOTE_ID: only serve echo, for
    /// --max-time.
    #[arg(long)]
    pub echo_listen: Option<SocketAddr>,

    /// Measure this (hand-started) gateway process: memory, CPU, wake-ups.
    #[arg(long)]
    pub gateway_pid: Option<u32>,

    /// Extra environment for the spawned gateway, NAME=VALUE (repeatable).
    #[arg(long)]
    pub gateway_env: Vec<String>,

    /// Write the spawned processes' logs to this folder.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,

    /// Run the attack scenarios (stall, squat) instead of the phases; needs --spawn.
    #[arg(long, requires = "spawn")]
    pub attack: bool,

    /// --attack: junk datagrams a second the attacker sends from its own 5-tuple.
    #[arg(long, default_value_t = 20_000)]
    pub flood_rate: u64,

    /// --attack: size of each image the attacker fetches on http_proxy, back to back.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    pub fetch_size: usize,

    /// --attack: how long the genuine session measures, alone and under attack.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub attack_time: Duration,

    /// Time large replies (1 and 3 MB on ma-api, a 3 MB image on http_proxy) instead of the
    /// phases; needs --spawn.
    #[arg(long, requires = "spawn", conflicts_with = "attack")]
    pub big: bool,

    /// --big: repetitions of each reply.
    #[arg(long, default_value_t = 20)]
    pub big_repeats: u64,

    /// --big: the client's UDP receive buffer in bytes (Linux's default, as at a phone).
    #[arg(long, default_value_t = 212_992)]
    pub client_rcvbuf: usize,

    /// --big: put a lossy path (the test kit's UDP relay) between client and gateway with
    /// this one-way delay (e.g. 20ms for a 40 ms round trip).
    #[arg(long, value_parser = parse_duration)]
    pub path_delay: Option<Duration>,

    /// --big: the lossy path drops this share of datagrams each way (e.g. 0.01).
    #[arg(long, default_value_t = 0.0)]
    pub path_loss: f64,

    /// --attack: the nice value of the attacker's thread (0 to 19), so that on a machine shared
    /// with the genuine client it cannot win by taking the client's CPU.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub attacker_nice: i32,

    /// --attack: sessions a second the squatting stranger asks for.
    #[arg(long, default_value_t = 20)]
    pub squat_rate: u64,

    /// --attack: genuine clients connecting, one after the other, during the squat.
    #[arg(long, default_value_t = 10)]
    pub squat_clients: usize,
}

/// The signaling server to use when not `--spawn`ing one, as the gateway reads it.
#[derive(Debug, Clone, Args)]
struct SignalingArgs {
    /// Signaling server (ws:// or wss://).
    #[arg(long, env = "MA_SIGNALING_URL", default_value = "wss://signaling.music-assistant.io/ws", value_parser = WsUrl::parse)]
    signaling_url: WsUrl,
    /// Extra CA certificate (PEM) for the signaling server.
    #[arg(long, env = "MA_SIGNALING_CA_FILE")]
    signaling_ca_file: Option<PathBuf>,
}

#[derive(Debug, Parser)]
#[command(
    name = "load",
    bin_name = "cargo bench --bench load --",
    about = "Load generator for ma-webrtc-gateway (see benches/load/main.rs)"
)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
    #[command(flatten)]
    signaling: SignalingArgs,
}

fn main() {
    let mut argv: Vec<String> = std::env::args().collect();
    let benching = argv.iter().any(|a| a == "--bench");
    if !benching {
        self_check();
        return;
    }
    // `cargo bench` adds `--bench`; the rest are ours.
    argv.retain(|a| a != "--bench");
    let cli = Cli::parse_from(argv);
    std::process::exit(run(&cli.signaling, &cli.bench));
}

/// Run the load generator; returns the exit code (1 on any failure or bad message).
fn run(gateway: &SignalingArgs, args: &BenchArgs) -> i32 {
    match run_inner(gateway, args) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("load: {e}");
            1
        }
    }
}

fn run_inner(gateway: &SignalingArgs, args: &BenchArgs) -> Result<bool, String> {
    // A lossy path needs the gateway's UDP socket at a known address.
    let lossy = args.big && (args.path_delay.is_some() || args.path_loss > 0.0);
    let gateway_udp = match lossy {
        true => Some(
            std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .map_err(|e| e.to_string())?,
        ),
        false => None,
    };
    let mut with_udp;
    let args = match gateway_udp {
        Some(udp) => {
            with_udp = args.clone();
            with_udp.gateway_env.push(format!("MA_UDP_BIND={udp}"));
            &with_udp
        }
        None => args,
    };
    if args.size < MIN_SIZE {
        return Err(format!("--size must be at least {MIN_SIZE} bytes"));
    }
    if args.sessions == 0 || args.sessions > 10_000 {
        return Err("--sessions must be from 1 to 10000".into());
    }
    let mut out = io::stdout().lock();
    let echo_addr = match (args.spawn, args.echo_listen) {
        (_, Some(listen)) => Some(start_echo_server(listen).map_err(|e| e.to_string())?),
        (true, None) => Some(
            start_echo_server("127.0.0.1:0".parse().map_err(|_| "address")?)
                .map_err(|e| e.to_string())?,
        ),
        (false, None) => None,
    };
    if let Some(a) = echo_addr {
        let _ = writeln!(out, "echo server on ws://{a}/ws");
        if !args.spawn && args.remote_id.is_none() {
            // Only the echo server, for a gateway and a bench run started by hand.
            let _ = writeln!(out, "serving echo only, for {:?}", args.max_time);
            let _ = out.flush();
            std::thread::sleep(args.max_time);
            return Ok(true);
        }
    }
    let stack = if args.spawn {
        let s = spawn_stack(args, echo_addr.ok_or("no echo server")?)?;
        let _ = writeln!(
            out,
            "spawned signal ({}) and gateway (pid {}), Remote ID {}",
            s.signaling.to_url(),
            s.gateway.pid(),
            s.remote_id
        );
        Some(s)
    } else {
        None
    };
    let gateway_pid = stack.as_ref().map(|s| s.gateway.pid()).or(args.gateway_pid);
    let (signaling, remote_id) = match &stack {
        Some(s) => (s.signaling.clone(), s.remote_id.clone()),
        None => (
            gateway.signaling_url.clone(),
            args.remote_id
                .clone()
                .ok_or("give the REMOTE_ID to connect to, or --spawn")?,
        ),
    };
    let tls = if signaling.tls {
        Some(ma_webrtc_gateway::net::tls::client_config(
            gateway.signaling_ca_file.as_deref(),
        )?)
    } else {
        None
    };
    // The whole run is bounded: past --max-time a watchdog kills the children and exits.
    let deadline = Instant::now() + args.max_time;
    let watchdog_pids: Vec<u32> = stack
        .as_ref()
        .map(|s| vec![s.gateway.pid(), s._signal.pid()])
        .unwrap_or_default();
    std::thread::spawn(move || {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        eprintln!("load: --max-time reached; giving up");
        for pid in watchdog_pids {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        std::process::exit(3);
    });

    let idle_secs = args.idle;
    if let Some(pid) = gateway_pid {
        std::thread::sleep(Duration::from_millis(500));
        idle_footprint(&mut out, pid, "registered, no session", idle_secs);
    }
    let _ = writeln!(
        out,
        "{} sessions to {remote_id} via {}; {} messages of {} bytes ({}), window {} KiB, {} RTT samples",
        args.sessions,
        signaling.to_url(),
        args.messages,
        args.size,
        if args.binary { "binary" } else { "text" },
        args.window / 1024,
        args.rtt_samples,
    );
    // The first str0m instance of a process pays a one-time crypto initialisation (tens of
    // ms); a browser has long paid it. Keep it out of the first session's set-up time.
    drop(ma_webrtc_gateway::remote_client::RemoteClient::new(
        Instant::now(),
        &remote_id,
        plan_bind_for_warmup(args.bind),
    ));
    let settle = Duration::from_secs(1);
    let mut plan = Plan {
        signaling,
        tls,
        remote_id,
        bind: args.bind,
        timeout: args.timeout,
        messages: args.messages,
        rtt_samples: args.rtt_samples,
        size: args.size,
        binary: args.binary,
        window: args.window.max(args.size),
        idle_hold: if gateway_pid.is_some() {
            settle + idle_secs + Duration::from_millis(500)
        } else {
            Duration::ZERO
        },
    };
    // Warm-up sessions, one after the other, not measured: a freshly started signal server or
    // gateway pays a one-time crypto initialisation on its first session.
    for i in 0..args.warmup {
        let hold = std::mem::replace(&mut plan.idle_hold, Duration::ZERO);
        let c = plan
            .greeted(ClientOptions::default())
            .map_err(|e| format!("warm-up session {i}: {e}"))?;
        c.close();
        plan.idle_hold = hold;
    }
    if args.warmup > 0 {
        // Let the gateway notice the warm-up sessions left.
        std::thread::sleep(Duration::from_millis(300));
    }
    if args.attack || args.big {
        let pid = gateway_pid.ok_or("--attack and --big need --spawn")?;
        drop(out);
        let ok = if args.attack {
            attack::run(args, &plan, pid)
        } else {
            let path = gateway_udp.map(|udp| {
                let cfg = ma_webrtc_gateway::testkit::path::PathConfig {
                    delay: args.path_delay.unwrap_or_default(),
                    loss: args.path_loss,
                    ..ma_webrtc_gateway::testkit::path::PathConfig::clean()
                };
                (udp, cfg)
            });
            big::run(&plan, args.big_repeats, args.client_rcvbuf, path)
        };
        if let Some(s) = stack {
            let dir = s.data_dir.clone();
            drop(s);
            let _ = std::fs::remove_dir_all(dir);
        }
        return ok;
    }
    let gate = Arc::new(Gate {
        barrier: Barrier::new(args.sessions + 1),
        abort: AtomicBool::new(false),
    });
    // Set-up: at most --connect-concurrency sessions connecting at once.
    let slots = Arc::new((
        Mutex::new(args.connect_concurrency.max(1)),
        std::sync::Condvar::new(),
    ));
    let t_setup = Instant::now();
    let mut handles = Vec::new();
    for i in 0..args.sessions {
        let plan = plan.clone();
        let gate = gate.clone();
        let slots = slots.clone();
        let h = std::thread::Builder::new()
            .name(format!("session-{i}"))
            .stack_size(512 * 1024)
            .spawn(move || {
                let (m, cv) = &*slots;
                {
                    let mut free = m.lock().unwrap_or_else(|e| e.into_inner());
                    while *free == 0 {
                        free = cv.wait(free).unwrap_or_else(|e| e.into_inner());
                    }
                    *free -= 1;
                }
                // The slot is held until this session is connected (or failed to).
                session_thread(i as u32, plan, gate, || {
                    *m.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                    cv.notify_one();
                })
            })
            .map_err(|e| format!("cannot start a session thread: {e}"))?;
        handles.push(h);
    }
    // Every session connected (or failed).
    gate.barrier.wait();
    let setup_wall = t_setup.elapsed();
    if let Some(pid) = gateway_pid {
        std::thread::sleep(settle);
        idle_footprint(
            &mut out,
            pid,
            &format!("{} sessions open, idle", args.sessions),
            idle_secs,
        );
    }
    gate.barrier.wait();
    let mut cpu = Vec::new();
    let mut own_cpu = Vec::new();
    for phase in PHASES {
        gate.barrier.wait();
        eprintln!("bench: {} phase", phase.name());
        let a = gateway_pid.and_then(proc_sample);
        let own_a = own_sample();
        gate.barrier.wait();
        let b = gateway_pid.and_then(proc_sample);
        let own_b = own_sample();
        cpu.push(a.zip(b));
        own_cpu.push(own_a.zip(own_b));
    }
    let reports: Vec<SessionReport> = handles
        .into_iter()
        .map(|h| {
            h.join().unwrap_or_else(|_| SessionReport {
                failure: Some("session thread panicked".into()),
                ..SessionReport::default()
            })
        })
        .collect();
    let final_sample = gateway_pid.and_then(proc_sample);
    drop(out);
    let ok = report(args, &reports, setup_wall, &cpu, &own_cpu, final_sample);
    if let Some(s) = stack {
        let dir = s.data_dir.clone();
        drop(s);
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(ok)
}

fn report(
    args: &BenchArgs,
    reports: &[SessionReport],
    setup_wall: Duration,
    cpu: &[Option<(ProcSample, ProcSample)>],
    own_cpu: &[Option<(ProcSample, ProcSample)>],
    final_sample: Option<ProcSample>,
) -> bool {
    let mut out = io::stdout().lock();
    let mut errors = Errors::default();
    let mut failures = Vec::new();
    for (i, r) in reports.iter().enumerate() {
        errors.add(&r.errors);
        if let Some(f) = &r.failure {
            failures.push(format!("session {i}: {f}"));
        }
    }
    let mut setups: Vec<f64> = reports
        .iter()
        .filter_map(|r| r.setup.map(|d| d.as_secs_f64() * 1000.0))
        .collect();
    let _ = writeln!(
        out,
        "setup (connect-request -> first MA message), ms: {} ({} of {} sessions, all in {:.0} ms)",
        summary(&mut setups),
        setups.len(),
        reports.len(),
        setup_wall.as_secs_f64() * 1000.0
    );
    let names = [
        "connected (signaling)",
        "answer",
        "ICE+DTLS",
        "channel open",
        "first message",
    ];
    let steps: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let mut v: Vec<f64> = reports.iter().filter_map(|r| r.steps[k]).collect();
            v.sort_by(f64::total_cmp);
            format!("{name} {:.1}", percentile(&v, 0.5))
        })
        .collect();
    let _ = writeln!(out, "  set-up steps, p50 ms: {}", steps.join(", "));
    let mut rtts: Vec<f64> = reports
        .iter()
        .flat_map(|r| r.rtts.iter().copied())
        .collect();
    if !rtts.is_empty() {
        let _ = writeln!(
            out,
            "echo round trip ({} bytes), ms: {} ({} samples)",
            args.size,
            summary(&mut rtts),
            rtts.len()
        );
    }
    for (k, phase) in PHASES.iter().enumerate() {
        if *phase == Phase::Rtt {
            continue;
        }
        let results: Vec<&PhaseResult> = reports
            .iter()
            .filter_map(|r| r.phases.get(k).map(|(_, p)| p))
            .filter(|p| p.ran)
            .collect();
        if results.is_empty() {
            let _ = writeln!(
                out,
                "{}: skipped (needs the built-in echo server: --spawn or --echo-listen)",
                phase.name()
            );
            continue;
        }
        let start = results.iter().filter_map(|p| p.start).min();
        let end = results.iter().filter_map(|p| p.end).max();
        let bytes: u64 = results.iter().map(|p| p.bytes).sum();
        let wall = start
            .zip(end)
            .map(|(a, b)| (b - a).as_secs_f64())
            .unwrap_or(f64::NAN);
        let mut per: Vec<f64> = results
            .iter()
            .filter_map(|p| p.secs().map(|s| mib(p.bytes as f64) / s))
            .collect();
        let what = match phase {
            Phase::Echo => "each way (client -> MA -> client)",
            Phase::Up => "client -> MA",
            _ => "MA -> client",
        };
        let _ = writeln!(
            out,
            "{}: {:.1} MiB/s aggregate {what}, {:.1} MiB in {:.2} s; per session MiB/s: {}",
            phase.name(),
            mib(bytes as f64) / wall,
            mib(bytes as f64),
            wall,
            summary(&mut per)
        );
        if let Some(Some((a, b))) = cpu.get(k) {
            // Bytes through the gateway: both directions for echo.
            let through = if *phase == Phase::Echo {
                2 * bytes
            } else {
                bytes
            };
            let cpu_s = b.cpu_ns.saturating_sub(a.cpu_ns) as f64 / 1e9;
            let gib = through as f64 / (1u64 << 30) as f64;
            let dt =
                b.at.zip(a.at)
                    .map(|(b, a)| (b - a).as_secs_f64())
                    .unwrap_or(f64::NAN);
            let _ = writeln!(
                out,
                "  gateway CPU {:.2} s over {:.2} s ({:.0} %), {:.1} CPU s per GiB forwarded, RSS {:.1} MiB",
                cpu_s,
                dt,
                100.0 * cpu_s / dt,
                cpu_s / gib,
                b.rss_kib as f64 / 1024.0
            );
        }
        if let Some(Some((a, b))) = own_cpu.get(k) {
            let cpu_s = b.cpu_ns.saturating_sub(a.cpu_ns) as f64 / 1e9;
            let dt =
                b.at.zip(a.at)
                    .map(|(b, a)| (b - a).as_secs_f64())
                    .unwrap_or(f64::NAN);
            let _ = writeln!(
                out,
                "  load generator (clients and echo server) CPU {:.2} s ({:.0} % of one core)",
                cpu_s,
                100.0 * cpu_s / dt
            );
        }
    }
    if let Some(s) = final_sample {
        let _ = writeln!(
            out,
            "gateway peak RSS (VmHWM) {:.1} MiB",
            s.hwm_kib as f64 / 1024.0
        );
    }
    let _ = writeln!(
        out,
        "messages: {} lost, {} duplicated, {} corrupted, {} misrouted; {} failed sessions",
        errors.lost,
        errors.duplicated,
        errors.corrupted,
        errors.misrouted,
        failures.len()
    );
    for f in failures.iter().chain(errors.other.iter()).take(20) {
        let _ = writeln!(out, "  {f}");
    }
    let ok = errors.total() == 0 && failures.is_empty();
    let _ = writeln!(out, "{}", if ok { "OK" } else { "FAILED" });
    ok
}

/// What `cargo test --benches` runs: the message codec catches every kind of damage.
fn self_check() {
    messages_round_trip_and_damage_is_caught();
    sequence_gaps_and_repeats_are_counted();
    println!("load: self-check passed (run `cargo bench --bench load -- --help` to generate load)");
}

fn messages_round_trip_and_damage_is_caught() {
    let c = Codec::new(100);
    let m = c.build(KIND_ECHO, 7, 42);
    assert_eq!(m.len(), 100);
    assert!(std::str::from_utf8(&m).is_ok());
    let p = c.check(7, &m).unwrap();
    assert_eq!((p.kind, p.seq), (KIND_ECHO, 42));
    assert_eq!(c.check(8, &m).err(), Some(Bad::WrongSession));
    let mut bad = m.clone();
    bad[60] ^= 1;
    assert_eq!(c.check(7, &bad).err(), Some(Bad::Corrupt));
    // Another message's body under this header.
    let mut swapped = c.build(KIND_ECHO, 7, 43);
    swapped[..HEADER].copy_from_slice(&m[..HEADER]);
    assert_eq!(c.check(7, &swapped).err(), Some(Bad::Corrupt));
    assert_eq!(c.check(7, &m[..99]).err(), Some(Bad::Corrupt));
}

fn sequence_gaps_and_repeats_are_counted() {
    let mut e = Errors::default();
    let mut x = Expect { next: 0 };
    assert!(x.take(0, &mut e));
    assert!(x.take(3, &mut e));
    assert!(!x.take(2, &mut e));
    assert!(x.take(4, &mut e));
    assert_eq!((e.lost, e.duplicated), (2, 1));
}
