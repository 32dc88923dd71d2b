//! The real gateway binary against a WebSocket signaling server run by the test: registration,
//! session-ready, surviving a server restart, clean shutdown, configuration errors.

mod common;

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::fake_signaling::{self, read_json, send_json};
use common::{temp_dir, Proc};
use serde_json::json;
use tungstenite::{Message, WebSocket};

const WAIT: Duration = Duration::from_secs(15);

/// Accept one WebSocket connection from the gateway.
/// Answer the gateway's `register-server`, then close as the public server does when another
/// gateway takes the Remote ID (4000).
fn register_then_replace(ws: &mut WebSocket<TcpStream>, reg: &serde_json::Value) {
    send_json(
        ws,
        json!({"type": "registered", "remoteId": reg["remoteId"]}),
    );
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: 4000.into(),
        reason: "Replaced by new connection".into(),
    }))
    .unwrap();
}

fn accept(listener: &TcpListener) -> WebSocket<TcpStream> {
    fake_signaling::accept(listener, 2 * WAIT)
}

fn gateway_env(port: u16, data: &std::path::Path) -> Vec<(&'static str, String)> {
    gateway_env_with_max(port, data, "500ms")
}

/// [`gateway_env`] with another longest reconnect delay (the wait after a replacement).
fn gateway_env_with_max(
    port: u16,
    data: &std::path::Path,
    reconnect_max: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("MA_SIGNALING_URL", format!("ws://127.0.0.1:{port}/ws")),
        ("MA_DATA_DIR", data.display().to_string()),
        ("MA_RECONNECT_MIN", "100ms".into()),
        ("MA_RECONNECT_MAX", reconnect_max.into()),
        (
            "MA_ICE_SERVERS",
            r#"[{"urls":"stun:127.0.0.1:3478"}]"#.into(),
        ),
    ]
}

#[test]
fn registers_answers_session_ready_and_survives_a_server_restart() {
    let data = temp_dir("register");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut gw = Proc::start(&[], &gateway_env(port, &data));

    let mut ws = accept(&listener);
    let reg = read_json(&mut ws);
    assert_eq!(reg["type"], "register-server");
    let remote_id = reg["remoteId"].as_str().unwrap().to_string();
    assert_eq!(remote_id.len(), 26, "derived Remote ID: {remote_id}");
    assert_eq!(reg["iceServers"], json!([{"urls": "stun:127.0.0.1:3478"}]));
    send_json(
        &mut ws,
        json!({"type": "registered", "remoteId": remote_id}),
    );
    assert_eq!(
        gw.wait_for_event("registered", WAIT)["remote_id"],
        remote_id
    );

    // A client arrives: session-ready comes back with the ICE servers.
    send_json(
        &mut ws,
        json!({"type": "client-connected", "sessionId": "abcdefgh12345678"}),
    );
    let ready = read_json(&mut ws);
    assert_eq!(ready["type"], "session-ready");
    assert_eq!(ready["sessionId"], "abcdefgh12345678");
    assert_eq!(
        ready["iceServers"],
        json!([{"urls": "stun:127.0.0.1:3478"}])
    );

    // Garbage and JSON pings are handled without dropping the connection.
    ws.send(Message::text("this is not json")).unwrap();
    send_json(&mut ws, json!({"type": "ping"}));
    assert_eq!(read_json(&mut ws), json!({"type": "pong"}));

    // Kill the server: the socket and the listener go away, and a supervisor is told.
    drop(ws);
    drop(listener);
    gw.wait_for_event("disconnected", WAIT);
    gw.wait_for("reconnecting in", WAIT);

    // Restart on the same port: the gateway comes back and registers the same ID again.
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut ws = accept(&listener);
    let reg = read_json(&mut ws);
    assert_eq!(reg["type"], "register-server");
    assert_eq!(reg["remoteId"], remote_id.as_str());
    send_json(
        &mut ws,
        json!({"type": "registered", "remoteId": remote_id}),
    );
    assert_eq!(
        gw.wait_for_event("registered", WAIT)["remote_id"],
        remote_id
    );

    // SIGTERM: a clean exit (code 0) with a close frame to the server.
    let (code, took) = gw.terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0), "exit after SIGTERM ({took:?})");
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(1001));
                break;
            }
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    }
}

#[test]
fn replaced_gateway_backs_off_instead_of_storming() {
    let data = temp_dir("replaced");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // An ordinary loss retries after 100 ms; a replacement waits the longest delay, 10 s here
    // (±20 % jitter): the gap between the two is far wider than any scheduling delay.
    let env = gateway_env_with_max(port, &data, "10s");
    let mut gw = Proc::start(&[], &env);
    let mut ws = accept(&listener);
    let reg = read_json(&mut ws);
    register_then_replace(&mut ws, &reg);
    let line = gw.wait_for("replaced this one (close 4000)", WAIT);
    assert!(line.contains("WARN"), "{line}");
    listener.set_nonblocking(true).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        listener.accept().is_err(),
        "reconnected within 2 s of a 4000, not after its 8-12 s"
    );
    // It does come back (never gives up).
    let _ = accept(&listener);
}

#[test]
fn bad_configuration_is_one_line_and_exit_code_2() {
    for (var, value) in [
        ("MA_SIGNALING_URL", "http://example.com/ws"),
        ("MA_ICE_SERVERS", "stun:stun.example.com"),
        ("MA_LOCAL_WS_URL", "ftp://127.0.0.1/"),
        ("MA_UDP_BIND", "not-an-address"),
    ] {
        let out = std::process::Command::new(common::BIN)
            .env(var, value)
            .env("MA_DATA_DIR", temp_dir("badcfg"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(var), "{err}");
    }
}

#[test]
fn help_lists_every_variable() {
    let out = std::process::Command::new(common::BIN)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "MA_SIGNALING_URL",
        "MA_LOCAL_WS_URL",
        "MA_SENDSPIN_URL",
        "MA_DATA_DIR",
        "MA_REMOTE_ID",
        "MA_ICE_SERVERS",
        "MA_UDP_BIND",
        "MA_PUBLIC_IP",
        "MA_MAX_SESSIONS",
    ] {
        assert!(help.contains(var), "--help does not mention {var}");
    }
}

#[test]
fn id_command_prints_a_stable_remote_id() {
    let data = temp_dir("id");
    let run = || {
        let out = std::process::Command::new(common::BIN)
            .arg("id")
            .env("MA_DATA_DIR", &data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    assert_eq!(first, run(), "the identity survives restarts");
    let id = first
        .lines()
        .find_map(|l| l.strip_prefix("Remote ID:"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(id.len(), 26);
    assert!(first.contains(&format!("https://app.music-assistant.io/?remote_id={id}")));
    assert!(first.contains("sha-256 "));
    assert!(data.join("webrtc_certificate.pem").exists());
    assert!(data.join("webrtc_private_key.pem").exists());
}

#[test]
fn a_second_gateway_on_the_same_data_folder_stops_with_one_line() {
    let data = temp_dir("locked");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _first = Proc::start(&[], &gateway_env(port, &data));
    let _ws = accept(&listener);
    let mut second = std::process::Command::new(common::BIN);
    for (k, v) in gateway_env(port, &data) {
        second.env(k, v);
    }
    let out = second.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("another ma-webrtc-gateway"), "{err}");
    assert!(err.contains("ma-webrtc-gateway.lock"), "{err}");
}

#[test]
fn an_unreadable_identity_stops_start_up_instead_of_replacing_it() {
    let data = temp_dir("unreadable");
    let id = std::process::Command::new(common::BIN)
        .arg("id")
        .env("MA_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(id.status.success());
    let key = data.join("webrtc_private_key.pem");
    let before = std::fs::read(&key).unwrap();
    // An I/O error on read (root ignores permission bits, so a folder stands in for EACCES).
    let cert = data.join("webrtc_certificate.pem");
    std::fs::remove_file(&cert).unwrap();
    std::fs::create_dir(&cert).unwrap();
    for args in [&[][..], &["id"][..]] {
        let out = std::process::Command::new(common::BIN)
            .args(args)
            .env("MA_DATA_DIR", &data)
            .env("MA_SIGNALING_URL", "ws://127.0.0.1:9/ws")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("webrtc_certificate.pem"), "{err}");
    }
    assert_eq!(
        std::fs::read(&key).unwrap(),
        before,
        "the key was not replaced"
    );
}

#[test]
fn replaced_again_and_again_it_never_gives_up_and_never_storms() {
    let data = temp_dir("replaced-often");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // An ordinary loss would retry after 100 ms; a replacement waits the longest delay, 1 s
    // here, doubling per consecutive replacement (±20 % jitter): 1, 2, 4 s.
    let env = gateway_env_with_max(port, &data, "1s");
    let _gw = Proc::start(&[], &env);
    let mut ws = accept(&listener);
    for round in 0..3u32 {
        let reg = read_json(&mut ws);
        assert_eq!(reg["type"], "register-server", "round {round}");
        register_then_replace(&mut ws, &reg);
        let closed_at = std::time::Instant::now();
        ws = accept(&listener);
        let gap = closed_at.elapsed();
        // The schedule says at least 0.8 s × 2^round; half of that leaves room for any slack.
        let floor = Duration::from_millis(400) * 2u32.pow(round);
        assert!(
            gap >= floor,
            "round {round}: back after {gap:?}, faster than its schedule"
        );
    }
}
