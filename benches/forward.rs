//! In-process end-to-end data-channel forwarding, no sockets: str0m clients (the web app's
//! part, `RemoteClient`) ↔ the gateway core (`Gateway`) ↔ a fake local WebSocket that echoes
//! every message back through `Gateway::handle_ws_message`. Datagrams, signaling messages and
//! WebSocket messages are handed over in memory, so what is measured is CPU: str0m on both
//! sides plus our forwarding (routing, bridges, queues, chunking).
//!
//! The wiring is the test kit's (`ma_webrtc_gateway::testkit`) on a real clock: each step
//! polls both ends dry, carries what they sent across and fires the timeouts that are due, as
//! the driver's loop does. The gateway end reads the echoing WebSocket only while the core
//! allows it (backpressure), like `src/driver/gateway.rs`.
//!
//! Groups:
//! - `forward/echo`: one session, messages of 1, 16 and 64 KiB echoed, pipelined (at most
//!   [`WINDOW`] bytes in flight). Throughput counts each message once (each byte crosses the
//!   gateway twice: client → MA and back). `bare_str0m` is the same client against a str0m peer
//!   that echoes itself (same MTU and hard send budget as the gateway, but no send window and a
//!   drain after every write): naive use of str0m, which the gateway's send path now outruns
//!   (docs/design.md#the-send-window).
//! - `forward/sessions`: 1 KiB echo on one session while 0, 10 or 100 other sessions are
//!   connected and idle (routing and per-turn cost per session count).
//! - `forward/setup`: connect-request → first MA message for one new session (CPU cost of a
//!   session: `Rtc` build, SDP, ICE, DTLS handshake, SCTP, channel open), gateway vs bare.
//!
//! Run: `cargo bench --bench forward` (about 3 minutes).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use ma_webrtc_gateway::identity::Identity;
use ma_webrtc_gateway::remote_client::ClientEvent;
use ma_webrtc_gateway::testkit::{BareEchoEnd, ClientsEnd, Clock, End, GatewayEnd, Ma, Pair};
use ma_webrtc_gateway::webrtc::SessionConfig;

/// Bytes the client keeps in flight (sent, echo not yet received).
const WINDOW: usize = 1024 * 1024;
const SERVER_INFO: &str = r#"{"server_id":"bench","server_version":"2.10.0","schema_version":28}"#;

/// Clients on one side, the gateway or the bare echo peer on the other.
type Harness<P> = Pair<ClientsEnd, P>;

fn peer_addr() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

/// Connect a new client; returns its index once MA's first message arrived.
fn connect<P: End>(h: &mut Harness<P>) -> usize {
    let i = h.a.clients.len();
    let addr: SocketAddr = format!("127.0.0.2:{}", 20_000 + i).parse().unwrap();
    let now = h.now();
    h.a.add(now, addr, &format!("session{i:05}"));
    h.run_until(
        &format!("client {i} to connect"),
        Duration::from_secs(10),
        |h| {
            while let Some(e) = h.a.clients[i].events.pop_front() {
                match e {
                    ClientEvent::Text(t) if t == SERVER_INFO => return true,
                    ClientEvent::Failed(why) => panic!("client {i} failed: {why}"),
                    _ => {}
                }
            }
            false
        },
    );
    i
}

/// Echo `n` messages of `payload` on client `i`, pipelined; returns the time taken.
fn run_echo<P: End>(h: &mut Harness<P>, i: usize, payload: &str, n: u64) -> Duration {
    let in_flight = (WINDOW / payload.len()).max(1) as u64;
    let t0 = Instant::now();
    let (mut sent, mut received) = (0u64, 0u64);
    while received < n {
        let client = &mut h.a.clients[i];
        while sent < n && sent - received < in_flight {
            match client.rc.handle_send_text(Instant::now(), payload) {
                Ok(true) => sent += 1,
                Ok(false) => break,
                Err(e) => panic!("send: {e}"),
            }
        }
        h.step();
        while let Some(e) = h.a.clients[i].events.pop_front() {
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

fn payload(size: usize) -> String {
    let mut s = String::with_capacity(size);
    s.push_str(r#"{"seq":0,"pad":""#);
    let body = size - s.len() - 2;
    s.extend(std::iter::repeat_n('x', body));
    s.push_str("\"}");
    s
}

const SIZES: [(&str, usize); 3] = [("1KiB", 1024), ("16KiB", 16 * 1024), ("64KiB", 64 * 1024)];

/// The gateway core, its local WebSockets played by an echoing MA that speaks first.
fn gateway_harness(identity: &Identity) -> Harness<GatewayEnd> {
    let mut gw = GatewayEnd::new(
        Instant::now(),
        GatewayEnd::config(1000),
        identity,
        peer_addr(),
    );
    gw.ma = Ma::echo(SERVER_INFO);
    Pair::new(Clock::Real, ClientsEnd::new(&identity.remote_id), gw)
}

/// A bare str0m peer with the gateway's session settings, echoing by itself.
fn bare_harness(identity: &Identity) -> Harness<BareEchoEnd> {
    let bare = BareEchoEnd::new(
        identity.dtls_cert(),
        &SessionConfig::default(),
        peer_addr(),
        SERVER_INFO,
    );
    Pair::new(Clock::Real, ClientsEnd::new(&identity.remote_id), bare)
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
        let i = connect(&mut gw);
        g.bench_function(BenchmarkId::new("gateway", name), |b| {
            b.iter_custom(|iters| run_echo(&mut gw, i, &text, iters))
        });
        let mut bare = bare_harness(&identity);
        let i = connect(&mut bare);
        g.bench_function(BenchmarkId::new("bare_str0m", name), |b| {
            b.iter_custom(|iters| run_echo(&mut bare, i, &text, iters))
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
        let active = connect(&mut h);
        for _ in 0..idle {
            connect(&mut h);
        }
        g.bench_function(BenchmarkId::new("1KiB_echo_with_idle", idle), |b| {
            b.iter_custom(|iters| run_echo(&mut h, active, &text, iters))
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
                connect(&mut h);
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
                connect(&mut h);
                total += t0.elapsed();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, echo, sessions, setup);
criterion_main!(benches);
