//! The operator's side (issue 16): the status port (`/status`, `/metrics`, `/healthz`) of a
//! running gateway, over loopback with the whole stack.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::stack::{self, WAIT};
use serde_json::Value;

/// The status port's address, from the gateway's start-up line.
fn status_addr(p: &mut common::Proc) -> SocketAddr {
    let line = p.wait_for("status: serving http://", WAIT);
    let rest = line.split("status: serving http://").nth(1).unwrap();
    rest.split('/').next().unwrap().parse().unwrap()
}

/// One request; returns the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").unwrap().1.to_string();
    (code, body)
}

fn status(addr: SocketAddr) -> Value {
    let (code, body) = get(addr, "/status");
    assert_eq!(code, 200);
    serde_json::from_str(&body).unwrap()
}

/// Ask until `pred` holds for `/status` (the gateway's view changes a moment after ours).
fn status_until(addr: SocketAddr, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = status(addr);
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "no status with {what}: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn status_metrics_and_health_follow_the_gateway() {
    let turn = r#"[{"urls":"turn:127.0.0.1:9?transport=udp","username":"u","credential":"hunter2-secret"}]"#;
    let mut s = stack::stack(&[
        ("MA_STATUS_LISTEN", "127.0.0.1:0".into()),
        ("MA_ICE_SERVERS", turn.into()),
    ]);
    let addr = status_addr(&mut s.gateway);
    assert_eq!(get(addr, "/healthz").0, 200);
    let v = status(addr);
    assert_eq!(v["connected"], true);
    assert_eq!(v["enabled"], true);
    assert_eq!(v["running"], true);
    assert_eq!(v["remote_id"], s.remote_id);
    assert_eq!(v["mode"], "optimized");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["last_registered"].as_u64().unwrap() > 0);
    assert_eq!(v["sessions"], serde_json::json!([]));

    let mut c = stack::connect(&s);
    stack::expect_server_info(&mut c);
    c.send_text(r#"{"message_id":"1","command":"ping"}"#, WAIT)
        .unwrap();
    let v = status_until(addr, "a connected session", |v| {
        v["sessions"][0]["state"] == "connected" && v["sessions"][0]["bytes_from_client"] != 0
    });
    let session = &v["sessions"][0];
    assert_eq!(session["id"], c.session_id().unwrap());
    assert_eq!(session["channels"], serde_json::json!(["ma-api"]));
    assert!(session["bytes_to_client"].as_u64().unwrap() > 0);
    assert_eq!(session["candidate_type"], "host");

    let (code, metrics) = get(addr, "/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("magw_sessions{state=\"connected\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("magw_signaling_registered 1\n"));
    assert!(metrics.contains("magw_session_setup_seconds_count 1\n"));
    assert!(
        metrics.contains("magw_channel_messages_total{direction=\"to_client\",kind=\"ma-api\"}")
    );
    // Nothing secret on any page.
    for page in [metrics, v.to_string()] {
        assert!(!page.contains("hunter2"), "a credential leaked: {page}");
    }
    assert!(
        !s.gateway.log().join("\n").contains("hunter2"),
        "a credential was logged"
    );

    // The signaling server goes away: not healthy any more.
    drop(c);
    s.signal.terminate(WAIT);
    s.gateway.wait_for_event("disconnected", WAIT);
    let (code, body) = get(addr, "/healthz");
    assert_eq!(
        (code, body.as_str()),
        (503, "not registered with the signaling server\n")
    );
    assert_eq!(status(addr)["connected"], false);
}

#[test]
fn the_status_port_is_bounded() {
    let mut s = stack::stack(&[("MA_STATUS_LISTEN", "127.0.0.1:0".into())]);
    let addr = status_addr(&mut s.gateway);
    // Four silent connections take every slot; a fifth is closed at once, unanswered.
    let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut fifth = TcpStream::connect(addr).unwrap();
    fifth.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = Vec::new();
    let _ = fifth.read_to_end(&mut buf);
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    // The silent ones are closed by their deadline, and the port serves again.
    for mut c in idle {
        c.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = Vec::new();
        let n = c.read_to_end(&mut buf).unwrap_or(0);
        assert_eq!(n, 0);
    }
    assert_eq!(get(addr, "/healthz").0, 200);
    // Oversized and wrong requests get their error, not a page.
    let mut big = TcpStream::connect(addr).unwrap();
    big.set_read_timeout(Some(WAIT)).unwrap();
    let _ = big
        .write_all(format!("GET /status HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(4096)).as_bytes());
    let mut resp = Vec::new();
    let _ = big.read_to_end(&mut resp);
    assert!(
        resp.starts_with(b"HTTP/1.1 431 "),
        "{}",
        String::from_utf8_lossy(&resp)
    );
    assert_eq!(get(addr, "/nope").0, 404);
    // The gateway carries on.
    assert_eq!(status(addr)["connected"], true);
}
