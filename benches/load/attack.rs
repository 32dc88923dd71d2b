//! `--attack`: the hardening scenarios of docs/design.md#hostile-peers, measured.
//!
//! 1. **Alone**: one genuine session measures its echo round trips (`--size` bytes, one at a
//!    time) for `--attack-time`.
//! 2. **Stall**: the same again while one attacker does its worst on a session of its own: it
//!    announces the smallest `a=max-message-size` the gateway accepts, fetches
//!    `--fetch-size` images on `http_proxy` back to back (so the gateway cuts them into as
//!    many messages as it may), and floods the gateway's UDP port from its own 5-tuple with
//!    `--flood-rate` junk DTLS records a second. Once the first image bytes reached the
//!    attacker, a fresh genuine session measures for `--attack-time` again; its p99 must stay
//!    within 3× of the value alone. The attacker's thread runs at a lower priority
//!    (`--attacker-nice`, 5: the scheduler gives a thread at 0 about three times its share of a
//!    contended core): on a
//!    real path its CPU is its own, here it must not win by starving the genuine client and
//!    the stand-ins of CPU on the same machine.
//! 3. **Squat**: a stranger asks the signaling server for `--squat-rate` sessions a second
//!    that never connect (half of them with an offer whose ICE never completes; the newest
//!    64 sockets stay open so their sessions stay pending), while a genuine client connects
//!    `--squat-clients` times, one after the other. Every one must get MA's first message.
//!
//! The gateway's RSS is sampled every 50 ms during 2 and 3 and its peak reported.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ma_webrtc_gateway::remote_client::ClientOptions;
use ma_webrtc_gateway::testkit::stranger::squat;
use ma_webrtc_gateway::webrtc::session::MIN_REMOTE_MAX_MESSAGE_SIZE;
use serde_json::Value;

use super::{mib, proc_sample, rtt_phase, summary, BenchArgs, Codec, Plan, SessionReport};

/// The p99 round trip under attack may be at most this many times its value alone.
const STALL_LIMIT: f64 = 3.0;
/// Sockets of the squatting stranger kept open at once.
const SQUAT_OPEN: usize = 64;
/// The largest image the stand-in serves.
const MAX_IMAGE: usize = 64 * 1024 * 1024;

// ---- the image server (MA's HTTP side, next to the echo WebSocket) ---------------------------

/// Whether the connection's request is a WebSocket upgrade (looked at without consuming it).
pub fn is_websocket(stream: &TcpStream) -> bool {
    let mut head = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = match stream.peek(&mut head) {
            Ok(n) => n,
            Err(_) => return false,
        };
        let seen = &head[..n];
        if n == 0 || n == head.len() || seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(seen).to_ascii_lowercase();
            return text.contains("upgrade: websocket");
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Serve `GET /imageproxy?bytes=N` (N bytes of a fixed pattern, at most 64 MiB) on a
/// keep-alive connection, as MA's image proxy would serve a large image.
pub fn serve_images(stream: TcpStream) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    // Byte i of every image is i % 251: a block of whole periods, written as often as needed.
    // (Building the largest image for each connection took 100-150 ms, which the first image
    // on a new proxy connection waited for: the big phase's slowest repetition.)
    let block: Vec<u8> = (0..251 * 256).map(|i| (i % 251) as u8).collect();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut head = String::new();
        while head.len() < 16 * 1024 {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            head.push_str(&h);
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let size = path
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("bytes="))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
            .min(MAX_IMAGE);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {size}\r\n\r\n"
        );
        let sent = writer.write_all(head.as_bytes()).and_then(|()| {
            if method == "HEAD" {
                Ok(())
            } else {
                write_pattern(&mut writer, &block, size)
            }
        });
        if sent.is_err() {
            return;
        }
    }
}

/// Write `size` bytes of the repeating `block` (a whole number of pattern periods).
fn write_pattern(w: &mut impl Write, block: &[u8], mut size: usize) -> io::Result<()> {
    while size > 0 {
        let n = size.min(block.len());
        w.write_all(&block[..n])?;
        size -= n;
    }
    Ok(())
}

// ---- the scenario ----------------------------------------------------------------------------

/// Samples a process's RSS until dropped; the peak in KiB.
struct RssWatch {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(sample) = proc_sample(pid) {
                    p.fetch_max(sample.rss_kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssWatch { stop, peak }
    }

    fn peak_mib(&self) -> f64 {
        self.peak.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What the stall attacker managed.
#[derive(Default)]
struct AttackerReport {
    fetched: u64,
    body_bytes: u64,
    datagrams: u64,
    failure: Option<String>,
}

/// A junk DTLS 1.2 application-data record (epoch 1): the gateway must try to decrypt it.
fn junk_record(seq: u64) -> Vec<u8> {
    let mut d = vec![23, 0xfe, 0xfd, 0, 1];
    d.extend_from_slice(&seq.to_be_bytes()[2..]);
    d.extend_from_slice(&120u16.to_be_bytes());
    d.extend((0..120u64).map(|i| (i.wrapping_mul(31) ^ seq) as u8));
    d
}

/// Lower this thread's priority (Linux: a thread is a task of its own). On a real path the
/// attacker's CPU is its own; here it shares the machine with the genuine client and the
/// stand-ins, and must not win simply by starving them of CPU.
fn yield_cpu_to_others(nice: i32) {
    // SAFETY: plain system calls on the calling thread, no memory is passed.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice);
    }
}

fn stall_attacker(
    plan: &Plan,
    args: &BenchArgs,
    stop: &AtomicBool,
    received: &AtomicU64,
) -> AttackerReport {
    yield_cpu_to_others(args.attacker_nice);
    let mut r = AttackerReport::default();
    let options = ClientOptions {
        max_message_size: Some(MIN_REMOTE_MAX_MESSAGE_SIZE as u32),
        ..ClientOptions::default()
    };
    let opened = plan
        .greeted(options)
        .and_then(|mut c| c.open_channel("http_proxy", plan.timeout).map(|()| c));
    let mut c = match opened {
        Ok(c) => c,
        Err(e) => {
            r.failure = Some(format!("attacker set-up: {e}"));
            return r;
        }
    };
    let started = Instant::now();
    // Expected body bytes of the response being received (None: none asked for yet).
    let mut expecting: Option<(u64, u64)> = None;
    while !stop.load(Ordering::Relaxed) {
        if expecting.is_none() {
            let request = format!(
                r#"{{"type":"http-proxy-request","id":"attack-{}","method":"GET","path":"/imageproxy?bytes={}","headers":{{}}}}"#,
                r.fetched, args.fetch_size
            );
            if let Err(e) = c.send_on("http_proxy", false, request.as_bytes(), plan.timeout) {
                r.failure = Some(format!("attacker request: {e}"));
                return r;
            }
            expecting = Some((u64::MAX, 0));
        }
        // The flood: catch up with the rate since the start.
        let due = (started.elapsed().as_secs_f64() * args.flood_rate as f64) as u64;
        while r.datagrams < due {
            match c.send_raw_datagram(&junk_record(r.datagrams)) {
                Ok(true) => r.datagrams += 1,
                Ok(false) | Err(_) => break,
            }
        }
        match c.recv_on("http_proxy", Duration::from_millis(2)) {
            Ok((false, text)) => {
                let head: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
                let size = head["size"].as_u64().unwrap_or(0);
                if head["status"].as_u64() != Some(200) {
                    // A 503 is the gateway's right under pressure: ask again.
                    expecting = None;
                } else if size == 0 {
                    expecting = None;
                    r.fetched += 1;
                } else {
                    expecting = Some((size, 0));
                }
            }
            Ok((true, frame)) => {
                if let Some((size, got)) = expecting.as_mut() {
                    *got += frame.len() as u64;
                    r.body_bytes += frame.len() as u64;
                    received.store(r.body_bytes, Ordering::Relaxed);
                    if *got >= *size {
                        expecting = None;
                        r.fetched += 1;
                    }
                }
            }
            Err(e) if e.starts_with("timed out") => {}
            Err(e) => {
                r.failure = Some(format!("attacker: {e}"));
                return r;
            }
        }
    }
    c.close();
    r
}

/// Echo round trips of one fresh genuine session: `plan.rtt_samples`, and more (in batches of
/// that many) until `until`.
fn genuine_rtts(plan: &Plan, index: u32, until: Instant) -> Result<Vec<f64>, String> {
    let mut c = plan.greeted(ClientOptions::default())?;
    let mut r = SessionReport::default();
    let codec = Codec::new(plan.size);
    loop {
        rtt_phase(&mut c, plan, &codec, index, &mut r)?;
        if Instant::now() >= until {
            break;
        }
    }
    c.close();
    if r.errors.total() > 0 {
        return Err(format!("{} bad messages", r.errors.total()));
    }
    Ok(r.rtts)
}

/// Run the three scenarios against the spawned gateway; true when every bound held.
pub fn run(args: &BenchArgs, plan: &Plan, gateway_pid: u32) -> Result<bool, String> {
    let mut out = io::stdout().lock();
    let mut ok = true;
    let mut alone = genuine_rtts(plan, 1, Instant::now() + args.attack_time)?;
    let _ = writeln!(
        out,
        "attack: genuine echo round trip alone ({} bytes), ms: {}",
        plan.size,
        summary(&mut alone)
    );
    let p99_alone = ma_webrtc_gateway::stats::percentile(&alone, 0.99);

    // 2. Stall.
    let watch = RssWatch::start(gateway_pid);
    let cpu_before = proc_sample(gateway_pid).map(|s| (Instant::now(), s.cpu_ns));
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let attacker = {
        let (plan, args, stop) = (plan.clone(), args.clone(), stop.clone());
        let received = received.clone();
        std::thread::spawn(move || stall_attacker(&plan, &args, &stop, &received))
    };
    // Measure once the attack is under way: the first image bytes arrived at the attacker.
    let started = Instant::now();
    while received.load(Ordering::Relaxed) == 0 && started.elapsed() < plan.timeout {
        std::thread::sleep(Duration::from_millis(10));
    }
    let under = genuine_rtts(plan, 2, Instant::now() + args.attack_time);
    let cpu = cpu_before.zip(proc_sample(gateway_pid)).map(|((t, a), b)| {
        let busy = b.cpu_ns.saturating_sub(a) as f64 / 1e9;
        (busy, t.elapsed().as_secs_f64())
    });
    stop.store(true, Ordering::Relaxed);
    let a = attacker.join().unwrap_or_else(|_| AttackerReport {
        failure: Some("attacker thread panicked".into()),
        ..AttackerReport::default()
    });
    let mut under = under.map_err(|e| format!("genuine session under attack: {e}"))?;
    let p99_under = ma_webrtc_gateway::stats::percentile(
        &{
            under.sort_by(f64::total_cmp);
            under.clone()
        },
        0.99,
    );
    let ratio = p99_under / p99_alone;
    let _ = writeln!(
        out,
        "attack: under a stall attack ({} B frames, {} junk datagrams/s, {} MiB fetches), ms: {}",
        MIN_REMOTE_MAX_MESSAGE_SIZE,
        args.flood_rate,
        args.fetch_size / (1024 * 1024),
        summary(&mut under)
    );
    let held = ratio <= STALL_LIMIT;
    ok &= held;
    let _ = writeln!(
        out,
        "attack: p99 {p99_under:.2} ms against {p99_alone:.2} ms alone: {ratio:.2}x (bound {STALL_LIMIT}x) {}",
        if held { "held" } else { "EXCEEDED" }
    );
    let _ = writeln!(
        out,
        "attack: the attacker fetched {} bodies ({:.1} MiB) and sent {} junk datagrams{}",
        a.fetched,
        mib(a.body_bytes as f64),
        a.datagrams,
        a.failure
            .as_ref()
            .map(|f| format!("; it ended with: {f}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "attack: gateway peak RSS during the stall attack {:.1} MiB{}",
        watch.peak_mib(),
        cpu.map(|(busy, wall)| format!(
            ", CPU {busy:.1} s over {wall:.1} s ({:.0} % of one core)",
            100.0 * busy / wall
        ))
        .unwrap_or_default()
    );
    drop(watch);

    // 3. Squat.
    let watch = RssWatch::start(gateway_pid);
    let stop = Arc::new(AtomicBool::new(false));
    let stranger = {
        let (stop, remote_id, port) = (stop.clone(), plan.remote_id.clone(), plan.signaling.port);
        let pause = Duration::from_secs_f64(1.0 / args.squat_rate.max(1) as f64);
        let wait = plan.timeout;
        std::thread::spawn(move || {
            let mut open = std::collections::VecDeque::new();
            let mut asked = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(ws) = squat(port, &remote_id, asked.is_multiple_of(2), wait) {
                    open.push_back(ws);
                }
                if open.len() > SQUAT_OPEN {
                    open.pop_front();
                }
                asked += 1;
                std::thread::sleep(pause);
            }
            asked
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let mut setups = Vec::new();
    let mut failures = Vec::new();
    for i in 0..args.squat_clients {
        let t0 = Instant::now();
        match plan.greeted(ClientOptions::default()) {
            Ok(c) => {
                setups.push(t0.elapsed().as_secs_f64() * 1000.0);
                c.close();
            }
            Err(e) => failures.push(format!("genuine client {i}: {e}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let asked = stranger.join().unwrap_or(0);
    let _ = writeln!(
        out,
        "attack: {}/{} genuine clients got MA's first message while a stranger asked for {asked} \
         sessions ({}/s); set-up ms: {}",
        setups.len(),
        args.squat_clients,
        args.squat_rate,
        summary(&mut setups)
    );
    for f in &failures {
        let _ = writeln!(out, "  {f}");
    }
    ok &= failures.is_empty();
    let _ = writeln!(
        out,
        "attack: gateway peak RSS during the squat attack {:.1} MiB",
        watch.peak_mib()
    );
    drop(watch);
    let _ = writeln!(out, "{}", if ok { "OK" } else { "FAILED" });
    Ok(ok)
}
