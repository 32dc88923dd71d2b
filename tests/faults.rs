//! The fault matrix (README "Reliability"): the real binaries over loopback, with the world
//! misbehaving. Every row asserts behaviour and waits for events with generous deadlines; none
//! times anything tighter than a loaded 2-core machine can hold.
//!
//! The lossy rows put the test kit's UDP relay ([`LossyPath`]) between the client and the
//! gateway: the client reaches the gateway only through it.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::ma_standin::{self, Seen};
use common::stack::{connect, expect_server_info, stack, Stack, WAIT};
use ma_webrtc_gateway::driver::connect::Connection;
use ma_webrtc_gateway::remote_client::ClientOptions;
use ma_webrtc_gateway::testkit::path::{LossyPath, PathConfig};
use serde_json::json;

/// A free loopback UDP port for the gateway (so the relay knows where it is).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The stack with the gateway's UDP socket on a known address.
fn stack_at_known_port() -> (Stack, SocketAddr) {
    stack_at_known_port_with(&[])
}

fn stack_at_known_port_with(extra: &[(&str, String)]) -> (Stack, SocketAddr) {
    let port = free_udp_port();
    let mut env = vec![("MA_UDP_BIND", format!("127.0.0.1:{port}"))];
    env.extend(extra.iter().cloned());
    (stack(&env), SocketAddr::from(([127, 0, 0, 1], port)))
}

fn connect_via(s: &Stack, path: &LossyPath) -> Connection {
    let options = ClientOptions {
        gateway_via: Some(path.addr()),
        ..ClientOptions::default()
    };
    let mut c = Connection::open_with(
        &s.signaling,
        None,
        &s.remote_id,
        "127.0.0.1:0".parse().unwrap(),
        2 * WAIT,
        options,
    )
    .expect("connects through the lossy path");
    let first = c.recv_text(2 * WAIT).expect("server_info arrives");
    assert!(first.contains("server_id"), "{first}");
    c
}

/// `rounds` small messages named `label`, each echoed before the next is sent.
fn echo_rounds(c: &mut Connection, label: &str, rounds: usize) {
    for round in 0..rounds {
        let text = format!(r#"{{"{label}":{round}}}"#);
        c.send_text(&text, WAIT).unwrap();
        assert_eq!(c.recv_text(WAIT).unwrap(), text);
    }
}

/// Send `count` messages of assorted sizes (up to the gateway's 256 KiB limit, so many
/// datagrams each) and check every echo arrives once, in order, intact.
fn echo_everything(c: &mut Connection, count: usize) {
    let sizes = [10usize, 1_000, 20_000, 70_000, 200_000];
    for i in 0..count {
        let size = sizes[i % sizes.len()];
        let text = ma_standin::sized_json(size, &json!(format!("m{i}")));
        c.send_text(&text, 2 * WAIT).expect("sent");
        let back = c.recv_text(2 * WAIT).expect("echoed");
        assert!(back == text, "message {i} ({size} B) came back changed");
    }
}

fn lossy_row(loss: f64, count: usize) {
    let (s, gateway) = stack_at_known_port();
    let path = LossyPath::start(
        gateway,
        PathConfig {
            delay: Duration::from_millis(2),
            jitter: Duration::from_millis(4),
            loss,
            duplicate: 0.02,
        },
        0x5eed,
    )
    .unwrap();
    let mut c = connect_via(&s, &path);
    echo_everything(&mut c, count);
    let stats = path.stats();
    let dropped = stats.dropped.load(std::sync::atomic::Ordering::Relaxed);
    let duplicated = stats.duplicated.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "{:.0} % loss: {count} echoes intact; the path dropped {dropped} and duplicated {duplicated}",
        loss * 100.0
    );
    assert!(dropped > 0 && duplicated > 0, "the path did misbehave");
}

#[test]
fn five_percent_loss_with_reordering_and_duplicates_loses_nothing() {
    lossy_row(0.05, 40);
}

#[test]
fn twenty_percent_loss_with_reordering_and_duplicates_loses_nothing() {
    lossy_row(0.20, 15);
}

#[test]
fn a_client_that_vanishes_is_closed_and_its_ma_socket_with_it() {
    let (s, gateway) = stack_at_known_port();
    let path = LossyPath::start(gateway, PathConfig::clean(), 7).unwrap();
    let mut c = connect_via(&s, &path);
    echo_everything(&mut c, 2);
    // Total loss: the client is gone without a word (not even signaling notices: the
    // client's signaling socket stays open).
    path.set(PathConfig {
        loss: 1.0,
        ..PathConfig::clean()
    });
    // The gateway closes the session (ICE disconnected, then its 20 s grace) and MA's socket
    // with it.
    let t0 = Instant::now();
    while !s.ma.seen().iter().any(|e| matches!(e, Seen::Closed(_))) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "MA's socket is still open"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "the gateway closed the vanished session after {:?}",
        t0.elapsed()
    );
    // The client's own wait ends in an error, not a hang.
    let err = c
        .recv(Duration::from_secs(5))
        .expect_err("nothing can arrive over a dead path");
    eprintln!("the client gave up: {err}");
    // A new session works as before.
    let mut fresh = connect(&s);
    expect_server_info(&mut fresh);
}

#[test]
fn a_junk_flood_at_the_udp_port_leaves_sessions_and_signaling_alone() {
    // Signaling pings every second: a loop kept from its timers for two seconds would
    // declare the signaling socket dead.
    let (mut s, gateway) = stack_at_known_port_with(&[("MA_SIGNALING_PING", "1s".into())]);
    let mut calm = connect(&s);
    expect_server_info(&mut calm);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Strangers' junk from many ports: STUN-looking, DTLS-looking and random.
            let sockets: Vec<UdpSocket> = (0..8)
                .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
                .collect();
            let mut sent = 0u64;
            let shapes: [&[u8]; 3] = [
                &[
                    0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                ],
                &[22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4],
                &[0xff; 200],
            ];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, sock) in sockets.iter().enumerate() {
                    let _ = sock.send_to(shapes[(sent as usize + i) % 3], gateway);
                    sent += 1;
                }
                if sent.is_multiple_of(512) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            sent
        })
    };
    // Sessions keep echoing, and a new one connects (signaling and ICE go on) meanwhile.
    let t0 = Instant::now();
    echo_rounds(&mut calm, "round", 20);
    let mut late = connect(&s);
    expect_server_info(&mut late);
    // Keep flooding for a few ping intervals more.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.join().unwrap();
    eprintln!("{sent} junk datagrams during {:?}", t0.elapsed());
    assert!(sent > 1000, "the flood ran ({sent})");
    let dead: Vec<String> = s
        .gateway
        .log()
        .into_iter()
        .filter(|l| l.contains("connection is dead") || l.contains("connection lost"))
        .collect();
    assert!(dead.is_empty(), "signaling suffered: {dead:?}");
}

#[test]
fn sigterm_with_live_sessions_closes_them_and_exits_0() {
    let mut s = stack(&[]);
    let mut a = connect(&s);
    expect_server_info(&mut a);
    let mut b = connect(&s);
    expect_server_info(&mut b);
    let (code, took) = s.gateway.terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0), "exit code after SIGTERM ({took:?})");
    for c in [&mut a, &mut b] {
        let end = c.recv(WAIT).expect_err("the session ends");
        assert!(
            !end.starts_with("timed out"),
            "the client saw the close: {end}"
        );
    }
}

/// Send a signal to a process; it must be there.
fn kill(pid: u32, signal: i32) {
    common::send_signal(pid as i32, signal).unwrap_or_else(|e| panic!("kill {signal} {pid}: {e}"));
}

#[test]
fn signal_killed_and_restarted_sessions_go_on_and_the_gateway_registers_again() {
    let mut s = stack(&[]);
    let port = s.signaling.port;
    let mut c = connect(&s);
    expect_server_info(&mut c);
    kill(s.signal.child.id(), libc::SIGKILL);
    let _ = s.signal.child.wait();
    // The open session does not need the signaling server.
    echo_rounds(&mut c, "during", 5);
    // Back on the same port: the gateway registers again (its backoff is 100-500 ms here).
    s.signal = common::Proc::start(&["signal", "--listen", &format!("127.0.0.1:{port}")], &[]);
    s.signal.wait_for("listening on ", WAIT);
    s.gateway.wait_for_event("registered", 3 * WAIT);
    let mut fresh = connect(&s);
    expect_server_info(&mut fresh);
    c.send_text(r#"{"after":"restart"}"#, WAIT).unwrap();
    assert_eq!(c.recv_text(WAIT).unwrap(), r#"{"after":"restart"}"#);
}

#[test]
fn a_frozen_signal_server_is_declared_dead_and_rejoined_after_it_thaws() {
    // Pings every second: the socket counts as dead after two silent intervals.
    let mut s = stack(&[("MA_SIGNALING_PING", "1s".into())]);
    let pid = s.signal.child.id();
    kill(pid, libc::SIGSTOP);
    s.gateway
        .wait_for("the connection is dead; reconnecting", 3 * WAIT);
    kill(pid, libc::SIGCONT);
    s.gateway.wait_for_event("registered", 3 * WAIT);
    let mut c = connect(&s);
    expect_server_info(&mut c);
}

#[test]
fn when_ma_restarts_sessions_close_and_new_ones_work_once_it_is_back() {
    let s = stack(&[]);
    let mut c = connect(&s);
    expect_server_info(&mut c);
    // MA closes this session's socket (as a restart does): the client sees its channel close.
    c.send_text(r#"{"command":"standin/close"}"#, WAIT).unwrap();
    let end = c.recv(WAIT).expect_err("the session ends with MA's socket");
    assert!(!end.starts_with("timed out"), "{end}");
    // A new session gets MA's first message again.
    let mut fresh = connect(&s);
    expect_server_info(&mut fresh);
}

/// A TCP forwarder in front of MA that can go down (every forwarded connection cut, new ones
/// refused) and come back, as MA does when it restarts.
struct Outage {
    port: u16,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    live: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Outage {
    fn start(target: u16) -> Outage {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let live = std::sync::Arc::new(std::sync::Mutex::new(Vec::<TcpStream>::new()));
        let (d, l) = (down.clone(), live.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                if d.load(std::sync::atomic::Ordering::Relaxed) {
                    continue; // dropped: the connection is refused at once
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut held = l.lock().unwrap();
                for s in [&client, &server] {
                    held.push(s.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Outage { port, down, live }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::Relaxed);
        if down {
            for s in self.live.lock().unwrap().drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

#[test]
fn an_ma_outage_closes_every_session_and_refuses_none_once_it_is_over() {
    let (_signal, port) = common::stack::start_signal();
    let ma = common::ma_standin::MaStandin::start();
    let outage = Outage::start(ma.port);
    let (mut gateway, remote_id) = common::stack::start_gateway(
        port,
        &ma,
        &common::temp_dir("outage"),
        &[("MA_LOCAL_WS_URL", outage.url())],
    );
    let signaling =
        ma_webrtc_gateway::config::WsUrl::parse(&format!("ws://127.0.0.1:{port}/ws")).unwrap();
    let connect = || {
        Connection::open(
            &signaling,
            None,
            &remote_id,
            "127.0.0.1:0".parse().unwrap(),
            WAIT,
        )
        .expect("the client connects")
    };
    let mut a = connect();
    expect_server_info(&mut a);
    let mut b = connect();
    expect_server_info(&mut b);
    outage.set_down(true);
    for c in [&mut a, &mut b] {
        let t0 = Instant::now();
        let end = c.recv(WAIT).expect_err("MA went away: the session ends");
        assert!(!end.starts_with("timed out"), "{end}");
        eprintln!(
            "a client saw its session end {:?} after MA went down",
            t0.elapsed()
        );
    }
    // A session opened during the outage is closed, not held: while it is being set up, or
    // just after (which comes first depends on how fast MA's refusal arrives).
    let during = Connection::open(
        &signaling,
        None,
        &remote_id,
        "127.0.0.1:0".parse().unwrap(),
        WAIT,
    );
    let end = match during {
        Err(e) => e,
        Ok(mut c) => c.recv(WAIT).expect_err("no MA: the session ends"),
    };
    assert!(!end.starts_with("timed out"), "{end}");
    outage.set_down(false);
    let mut after = connect();
    expect_server_info(&mut after);
    assert_eq!(gateway.terminate(WAIT).0, Some(0));
}

#[test]
fn an_image_ma_never_delivers_is_answered_504_while_others_go_on() {
    let s = stack(&[]);
    let mut viewer = connect(&s);
    expect_server_info(&mut viewer);
    let mut other = connect(&s);
    expect_server_info(&mut other);
    viewer.open_channel("http_proxy", WAIT).unwrap();
    // MA takes the request and then says nothing for a minute.
    let request = json!({"type": "http-proxy-request", "id": "hung", "method": "GET",
        "path": "/slow?ms=60000&size=10", "headers": {}});
    viewer
        .send_on("http_proxy", false, request.to_string().as_bytes(), WAIT)
        .unwrap();
    // Meanwhile everyone's API traffic goes on.
    echo_rounds(&mut viewer, "viewer", 10);
    echo_rounds(&mut other, "other", 10);
    // The fetch deadline (15 s) answers 504.
    let (binary, head) = viewer.recv_on("http_proxy", 3 * WAIT).unwrap();
    assert!(!binary);
    let head: serde_json::Value = serde_json::from_slice(&head).unwrap();
    assert_eq!(
        (head["id"].as_str(), head["status"].as_u64()),
        (Some("hung"), Some(504))
    );
}
