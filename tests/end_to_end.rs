//! End to end over loopback with real processes: the `signal` binary, the gateway binary, a
//! stand-in for MA's WebSocket API, and our str0m client playing the web app.

mod common;

use std::time::Duration;

use common::ma_standin::{self, MaStandin, Seen};
use common::stack::{connect, expect_server_info, stack, start_gateway, start_signal, WAIT};
use common::temp_dir;
use ma_webrtc_gateway::config::WsUrl;
use ma_webrtc_gateway::driver::connect::Connection;
use ma_webrtc_gateway::remote_client::ClientEvent;
use ma_webrtc_gateway::testkit::stranger::squat;
use serde_json::{json, Value};

#[test]
fn api_bridge_delivers_everything_byte_exact_both_ways() {
    let s = stack(&[]);
    let mut c = connect(&s);
    expect_server_info(&mut c);
    let sid = c.session_id().unwrap().to_string();
    assert_eq!(sid.len(), 16);
    s.ma.wait_until("the session id in the URL", |seen| {
        seen.contains(&Seen::Connected(format!("/ws?webrtc_session_id={sid}")))
    });

    // Client -> MA -> client echo, 1 byte up to the gateway's 256 KiB max-message-size.
    for size in [1usize, 100, 16 * 1024, 65_536, 65_537, 200_000, 256 * 1024] {
        let text = ma_standin::sized_json(size, &json!(format!("up-{size}")));
        let text = if size < text.len() {
            "x".repeat(size)
        } else {
            text
        };
        assert_eq!(text.len(), size);
        c.send_text(&text, WAIT).unwrap();
        assert_eq!(c.recv_text(WAIT).unwrap(), text, "echo of {size} bytes");
    }

    // MA -> client: whole below the peer's limit, __chunk__ above it, up to 1 MiB.
    for size in [64 * 1024, 64 * 1024 + 1, 300_000, 1024 * 1024] {
        let id = json!(format!("down-{size}"));
        c.send_text(
            &json!({"command": "standin/send", "size": size, "message_id": id}).to_string(),
            WAIT,
        )
        .unwrap();
        // The echo of the command is not sent by the stand-in for standin/send.
        let got = c.recv_text(WAIT).unwrap();
        assert_eq!(got.len(), size);
        assert_eq!(got, ma_standin::sized_json(size, &id));
    }

    // Binary both ways.
    let blob: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    c.send(true, &blob, WAIT).unwrap();
    assert_eq!(c.recv(WAIT).unwrap(), ClientEvent::Binary(blob));
    c.close();
}

#[test]
fn ordering_holds_under_load() {
    let s = stack(&[]);
    let mut c = connect(&s);
    expect_server_info(&mut c);
    let n = 2000;
    let mut received = Vec::new();
    for i in 0..n {
        c.send_text(
            &format!("{{\"seq\":{i},\"pad\":\"{}\"}}", "p".repeat(i % 3000)),
            WAIT,
        )
        .unwrap();
    }
    while received.len() < n {
        let t: Value = serde_json::from_str(&c.recv_text(WAIT).unwrap()).unwrap();
        received.push(t["seq"].as_u64().unwrap() as usize);
    }
    assert_eq!(received, (0..n).collect::<Vec<_>>());
}

#[test]
fn session_ends_when_ma_closes_the_socket() {
    let mut s = stack(&[]);
    let mut c = connect(&s);
    expect_server_info(&mut c);
    c.send_text(r#"{"command":"standin/close"}"#, WAIT).unwrap();
    let err = c
        .recv(WAIT)
        .expect_err("the channel closes with MA's socket");
    assert!(
        err.contains("closed") || err.contains("disconnected"),
        "{err}"
    );
    s.gateway
        .wait_for("session closed: the MA API socket closed", WAIT);
}

#[test]
fn session_ends_when_the_client_leaves() {
    let mut s = stack(&[]);
    let mut c = connect(&s);
    expect_server_info(&mut c);
    c.close();
    s.gateway.wait_for("session closed", WAIT);
    s.ma.wait_until("the MA socket closed", |seen| {
        seen.iter().any(|x| matches!(x, Seen::Closed(_)))
    });
}

#[test]
fn wrong_fingerprint_is_refused_by_the_client() {
    // The gateway registers under a well-formed Remote ID that belongs to another certificate.
    let (_signal, port) = start_signal();
    let ma = MaStandin::start();
    let fake = "QCPJJTJMI3IDBNURU6XJJENRYU";
    let (_gw, id) = start_gateway(
        port,
        &ma,
        &temp_dir("pin"),
        &[("MA_REMOTE_ID", fake.into())],
    );
    assert_eq!(id, fake);
    let url = WsUrl::parse(&format!("ws://127.0.0.1:{port}/ws")).unwrap();
    let err = Connection::open(&url, None, fake, "127.0.0.1:0".parse().unwrap(), WAIT)
        .err()
        .expect("a pinning client refuses the gateway");
    assert!(err.contains("does not match Remote ID"), "{err}");
    assert!(ma.seen().is_empty(), "nothing reached MA");
}

#[test]
fn several_concurrent_sessions_are_independent() {
    let s = stack(&[]);
    let mut clients: Vec<Connection> = (0..4).map(|_| connect(&s)).collect();
    for c in clients.iter_mut() {
        expect_server_info(c);
    }
    let ids: std::collections::HashSet<String> = clients
        .iter()
        .map(|c| c.session_id().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 4);
    for round in 0..20 {
        for (i, c) in clients.iter_mut().enumerate() {
            c.send_text(&format!("{{\"client\":{i},\"round\":{round}}}"), WAIT)
                .unwrap();
        }
        for (i, c) in clients.iter_mut().enumerate() {
            assert_eq!(
                c.recv_text(WAIT).unwrap(),
                format!("{{\"client\":{i},\"round\":{round}}}")
            );
        }
    }
}

#[test]
fn a_flooding_client_is_bounded_and_closed_without_hurting_others() {
    let mut s = stack(&[]);
    let mut calm = connect(&s);
    expect_server_info(&mut calm);
    let mut flood = connect(&s);
    expect_server_info(&mut flood);
    // MA stops reading this client's socket; the client keeps sending. The gateway may queue
    // only a bounded amount towards MA, then must close this session.
    flood
        .send_text(r#"{"command":"standin/stall","seconds":30}"#, WAIT)
        .unwrap();
    let big = "f".repeat(200_000);
    let mut sent = 0usize;
    while flood.send_text(&big, Duration::from_secs(10)).is_ok() {
        sent += big.len();
        assert!(
            sent < 200 * 1024 * 1024,
            "the gateway accepted {sent} bytes without closing"
        );
    }
    s.gateway.wait_for("does not keep up with the client", WAIT);
    // The calm client never noticed.
    calm.send_text(r#"{"still":"alive"}"#, WAIT).unwrap();
    assert_eq!(calm.recv_text(WAIT).unwrap(), r#"{"still":"alive"}"#);
}

#[test]
fn a_hung_ma_closes_the_session_instead_of_holding_it() {
    // MA's port accepts TCP connections and then never answers the WebSocket handshake.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/ws", hung.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((stream, _)) = hung.accept() {
            held.push(stream);
        }
    });
    let (_signal, port) = start_signal();
    let mut env = vec![
        ("MA_SIGNALING_URL", format!("ws://127.0.0.1:{port}/ws")),
        ("MA_LOCAL_WS_URL", url),
        ("MA_DATA_DIR", temp_dir("hung").display().to_string()),
        ("MA_UDP_BIND", "127.0.0.1:0".into()),
        ("MA_ICE_SERVERS", "[]".into()),
    ];
    env.push(("RUST_LOG", "info".into()));
    let mut gateway = common::Proc::start(&[], &env);
    let registered = gateway.wait_for_event("registered", WAIT);
    let signaling = WsUrl::parse(&format!("ws://127.0.0.1:{port}/ws")).unwrap();
    let mut c = Connection::open(
        &signaling,
        None,
        registered["remote_id"].as_str().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        WAIT,
    )
    .expect("the client connects; only MA is missing");
    // The gateway gives MA 10 s, then closes the session: the client sees it end.
    let end = c.recv(Duration::from_secs(60));
    let why = end.expect_err("nothing can come from a hung MA");
    assert!(
        !why.starts_with("timed out"),
        "the session ended, not our patience: {why}"
    );
    gateway.wait_for("not open within 10 s", WAIT);
}

#[test]
fn a_stranger_flooding_connect_requests_cannot_keep_the_real_user_out() {
    let mut s = stack(&[]);
    let port = s.signaling.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (stop, remote_id) = (stop.clone(), s.remote_id.clone());
        std::thread::spawn(move || {
            // Sessions that never connect, half of them with an offer, at a steady 20 per
            // second; the newest 64 sockets stay open so their sessions stay pending.
            let mut open = std::collections::VecDeque::new();
            let mut sent = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(ws) = squat(port, &remote_id, sent.is_multiple_of(2), WAIT) {
                    open.push_back(ws);
                }
                if open.len() > 64 {
                    open.pop_front();
                }
                sent += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            sent
        })
    };
    // Let the flood fill the pending sessions first.
    std::thread::sleep(Duration::from_secs(2));
    for attempt in 0..5 {
        let mut c = connect(&s);
        expect_server_info(&mut c);
        c.send_text(&format!(r#"{{"attempt":{attempt}}}"#), WAIT)
            .unwrap();
        assert_eq!(
            c.recv_text(WAIT).unwrap(),
            format!(r#"{{"attempt":{attempt}}}"#)
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.join().unwrap();
    assert!(sent >= 20, "the flood ran ({sent} sessions asked for)");
    s.gateway.wait_for("too many not connected", WAIT);
}

#[test]
fn a_panic_while_handling_one_session_costs_only_that_session() {
    use ma_webrtc_gateway::gateway::isolation::PANIC_FOR_TESTS;
    use ma_webrtc_gateway::signaling::protocol::{Relay, ToServer};
    let mut s = stack(&[]);
    let mut calm = connect(&s);
    expect_server_info(&mut calm);
    // A session whose next input hits a bug (injected: test builds only).
    let (mut ws, sid) = squat(s.signaling.port, &s.remote_id, false, WAIT).unwrap();
    let poison =
        ToServer::IceCandidate(Relay::candidate(sid, json!({"candidate": PANIC_FOR_TESTS})));
    ws.send(tungstenite::Message::text(poison.to_text()))
        .unwrap();
    s.gateway
        .wait_for("internal error: the session is closed", WAIT);
    // Everyone else is served as before, and newcomers too.
    calm.send_text(r#"{"after":"panic"}"#, WAIT).unwrap();
    assert_eq!(calm.recv_text(WAIT).unwrap(), r#"{"after":"panic"}"#);
    let mut late = connect(&s);
    expect_server_info(&mut late);
}

/// The default setup: a `wss://` signaling server and MA on plain `ws://`. The TLS
/// configuration that exists for the first must not be used for the second.
#[test]
fn a_wss_signaling_server_beside_a_plain_ws_ma() {
    let dir = temp_dir("wss-beside-ws");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let args = [
        "signal",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert_s,
        "--tls-key",
        &key_s,
    ];
    let mut signal = common::Proc::start(&args, &[]);
    let line = signal.wait_for("listening on ", WAIT);
    let addr = line.split("listening on ").nth(1).unwrap();
    let port = addr
        .split_whitespace()
        .next()
        .unwrap()
        .parse::<std::net::SocketAddr>()
        .unwrap()
        .port();
    let ma = MaStandin::start();
    let url = format!("wss://localhost:{port}/ws");
    let extra = [
        ("MA_SIGNALING_URL", url.clone()),
        ("MA_SIGNALING_CA_FILE", cert_s.clone()),
    ];
    let (_gateway, remote_id) = start_gateway(port, &ma, &temp_dir("wss-gw"), &extra);
    let tls = ma_webrtc_gateway::net::tls::client_config(Some(&cert)).unwrap();
    let url = WsUrl::parse(&url).unwrap();
    let bind = "127.0.0.1:0".parse().unwrap();
    let mut c = Connection::open(&url, Some(tls), &remote_id, bind, WAIT).expect("connects");
    expect_server_info(&mut c);
}
