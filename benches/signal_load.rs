//! Load and abuse run of `ma-webrtc-gateway signal` (issue 12, item 4): 200 gateways and 2 000
//! client sockets held open on loopback, an attacker on one IP (connection flood, idle
//! unregistered sockets, `connect-request` flood against one gateway, candidate flood), and a
//! genuine client on another IP connecting to that gateway every half second. Reports the
//! genuine client's time to `connected`, and the server's peak RSS and CPU.
//!
//! `cargo bench --bench signal_load` (optionally `-- SECONDS`, default 20). Loopback has all
//! of 127.0.0.0/8: gateways bind 127.1.x.y, clients 127.2.x.y, the attacker 127.66.0.1, the
//! genuine client 127.3.0.1, so the per-IP limits (`--limit-loopback true`) tell them apart.

use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

const BIN: &str = env!("CARGO_BIN_EXE_ma-webrtc-gateway");
const GATEWAYS: usize = 200;
const CLIENTS: usize = 2_000;
const CLIENTS_PER_IP: usize = 20;

type Ws = WebSocket<TcpStream>;

fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

fn tcp_from(ip: Ipv4Addr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::from((ip, 0)).into())?;
    sock.connect(&server.into())?;
    let tcp: TcpStream = sock.into();
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(tcp)
}

fn ws_from(ip: Ipv4Addr, server: SocketAddr) -> Option<Ws> {
    let tcp = tcp_from(ip, server).ok()?;
    tungstenite::client::client(format!("ws://{server}/ws"), tcp)
        .ok()
        .map(|(ws, _)| ws)
}

fn send(ws: &mut Ws, v: Value) -> bool {
    ws.send(Message::text(v.to_string())).is_ok()
}

/// The next JSON message other than the challenge, or `None` on error/timeout.
fn recv(ws: &mut Ws) -> Option<Value> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).ok()?;
                if v["type"] != "challenge" {
                    return Some(v);
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

fn gw_id(i: usize) -> String {
    format!("LOADGW{i:04}")
}

/// (utime + stime) in clock ticks, and VmHWM in KiB, of `pid`.
fn proc_stats(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (ticks, hwm)
}

fn main() {
    let secs: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    let fds = raise_fd_limit();
    eprintln!("file descriptor limit: {fds}");
    assert!(
        fds >= 8_192,
        "raise the hard limit of open files (ulimit -Hn) to 8192 or more"
    );

    let mut child = Command::new(BIN)
        .args([
            "signal",
            "--listen",
            "127.0.0.1:0",
            "--limit-loopback",
            "true",
            "--max-connections",
            "8192",
        ])
        .env("RUST_LOG", "warn,ma_webrtc_gateway::driver::signal=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the signaling server");
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let server: SocketAddr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("listening")
        .parse()
        .unwrap();

    // 200 gateways, each on its own address, answering on one thread.
    let mut gateways = Vec::new();
    for i in 0..GATEWAYS {
        let ip = Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8);
        let mut ws = ws_from(ip, server).expect("gateway connects");
        send(
            &mut ws,
            json!({"type": "register-server", "remoteId": gw_id(i), "iceServers": []}),
        );
        assert_eq!(recv(&mut ws).expect("registered")["type"], "registered");
        ws.get_ref().set_nonblocking(true).unwrap();
        gateways.push(ws);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let gw_thread = {
        let (stop, answered) = (stop.clone(), answered.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut busy = false;
                for ws in gateways.iter_mut() {
                    for _ in 0..64 {
                        let Ok(Message::Text(t)) = ws.read() else {
                            break;
                        };
                        busy = true;
                        let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                            continue;
                        };
                        let reply = match v["type"].as_str() {
                            Some("client-connected") => {
                                answered.fetch_add(1, Ordering::Relaxed);
                                json!({"type": "session-ready", "sessionId": v["sessionId"], "iceServers": []})
                            }
                            Some("ping") => json!({"type": "pong"}),
                            _ => continue,
                        };
                        let _ = ws.write(Message::text(reply.to_string()));
                    }
                    let _ = ws.flush();
                }
                if !busy {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };

    // 2 000 clients, 20 per address, each with a session, held open.
    let t = Instant::now();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let n = i / CLIENTS_PER_IP;
        let ip = Ipv4Addr::new(127, 2, (n / 250) as u8, (n % 250 + 1) as u8);
        let mut ws = ws_from(ip, server).expect("client connects");
        send(
            &mut ws,
            json!({"type": "connect-request", "remoteId": gw_id(i % GATEWAYS)}),
        );
        clients.push(ws);
    }
    let mut connected = 0;
    for ws in clients.iter_mut() {
        if recv(ws).is_some_and(|v| v["type"] == "connected") {
            connected += 1;
        }
    }
    eprintln!(
        "{GATEWAYS} gateways, {connected}/{CLIENTS} clients connected in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let (ticks0, _) = proc_stats(pid);
    let run_start = Instant::now();
    let deadline = run_start + Duration::from_secs(secs);

    // The attacker: one address, four kinds of abuse, as fast as it can.
    let attacker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let ip = Ipv4Addr::new(127, 66, 0, 1);
            let (mut idle, mut raw) = (Vec::new(), Vec::new());
            let (mut opened, mut refused, mut msgs) = (0u64, 0u64, 0u64);
            let victim = gw_id(0);
            let blob = "x".repeat(8 * 1024);
            while !stop.load(Ordering::Relaxed) {
                // Connection flood: raw TCP that never sends a request.
                if let Ok(tcp) = tcp_from(ip, server) {
                    raw.push(tcp);
                }
                if raw.len() > 200 {
                    raw.drain(..100);
                }
                // Idle unregistered WebSockets, and connect-request + candidate floods.
                match ws_from(ip, server) {
                    None => refused += 1,
                    Some(mut ws) => {
                        opened += 1;
                        if opened % 2 == 0 {
                            idle.push(ws);
                        } else {
                            send(
                                &mut ws,
                                json!({"type": "connect-request", "remoteId": victim}),
                            );
                            for _ in 0..50 {
                                let c =
                                    json!({"type": "ice-candidate", "data": {"candidate": blob}});
                                if !send(&mut ws, c) {
                                    break;
                                }
                                msgs += 1;
                            }
                            idle.push(ws);
                        }
                    }
                }
                if idle.len() > 100 {
                    idle.drain(..50);
                }
            }
            (opened, refused, msgs)
        })
    };

    // The genuine client: another address, the victim gateway, every half second.
    let mut latencies = Vec::new();
    let mut failures = 0;
    while Instant::now() < deadline {
        let t = Instant::now();
        let ok = ws_from(Ipv4Addr::new(127, 3, 0, 1), server).and_then(|mut ws| {
            send(
                &mut ws,
                json!({"type": "connect-request", "remoteId": gw_id(0)}),
            );
            recv(&mut ws).filter(|v| v["type"] == "connected")
        });
        match ok {
            Some(_) => latencies.push(t.elapsed()),
            None => failures += 1,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let wall = run_start.elapsed();
    let (ticks1, hwm_kib) = proc_stats(pid);
    stop.store(true, Ordering::Relaxed);
    let (opened, refused, msgs) = attacker.join().unwrap();
    let _ = gw_thread.join();
    let _ = child.kill();
    let _ = child.wait();

    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let tick = 100.0; // USER_HZ on Linux
    let cpu = (ticks1 - ticks0) as f64 / tick;
    let over_1s = latencies
        .iter()
        .filter(|d| **d > Duration::from_secs(1))
        .count();
    println!(
        "genuine client: {} connects, {failures} failed, {over_1s} over 1 s; time to `connected` p50 {:.1} ms, max {:.1} ms",
        latencies.len(),
        latencies.get(latencies.len() / 2).map_or(f64::NAN, |d| ms(*d)),
        latencies.last().map_or(f64::NAN, |d| ms(*d)),
    );
    println!(
        "attacker: {opened} WebSockets opened, {refused} refused, {msgs} candidates sent; gateways answered {} client-connected",
        answered.load(Ordering::Relaxed)
    );
    println!(
        "signal: peak RSS {:.1} MiB, CPU {cpu:.2} s over {:.1} s ({:.0} % of one core)",
        hwm_kib as f64 / 1024.0,
        wall.as_secs_f64(),
        100.0 * cpu / wall.as_secs_f64()
    );
    assert_eq!(failures, 0, "the genuine client failed to connect");
    assert_eq!(over_1s, 0, "the genuine client waited over a second");
}
