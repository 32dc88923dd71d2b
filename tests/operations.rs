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
    assert_eq!(health_command(addr), 0);
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
    assert_eq!(health_command(addr), 1);
}

/// `ma-webrtc-gateway health` against the status port at `addr`: its exit code.
fn health_command(addr: SocketAddr) -> i32 {
    let out = std::process::Command::new(common::BIN)
        .arg("health")
        .env("MA_STATUS_LISTEN", addr.to_string())
        .output()
        .unwrap();
    out.status.code().unwrap()
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

// ---- `id --qr` ---------------------------------------------------------------------------

/// The QR code `id --qr` prints is the link, drawn as `terminal_qr` draws it (whose own test
/// decodes it back with a QR decoder).
#[test]
fn id_qr_prints_the_link_as_a_qr_code() {
    let data = common::temp_dir("idqr");
    let out = std::process::Command::new(common::BIN)
        .args(["id", "--qr"])
        .env("MA_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let link = text
        .lines()
        .find_map(|l| l.strip_prefix("Link:"))
        .unwrap()
        .trim()
        .to_string();
    let code = ma_webrtc_gateway::qr::terminal_qr(&link).unwrap();
    assert!(text.ends_with(&code), "{text}");
    assert!(code.lines().count() > 10);
}

// ---- doctor --------------------------------------------------------------------------------

/// A STUN server on loopback answering every Binding request with the source address.
fn stun_standin() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            if n >= 20 && buf[0..2] == [0, 1] {
                let mut txid = [0u8; 12];
                txid.copy_from_slice(&buf[8..20]);
                let reply = ma_webrtc_gateway::testkit::props::udp::binding_success(txid, from);
                let _ = socket.send_to(&reply, from);
            }
        }
    });
    addr
}

/// `doctor` with these settings; returns its exit code and output.
fn doctor(env: &[(&str, String)]) -> (i32, String) {
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.args(["doctor", "--timeout", "3s"]);
    for (k, _) in std::env::vars() {
        if k.starts_with("MA_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let out = cmd.output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    (out.status.code().unwrap(), text)
}

/// The loopback stack's settings for `doctor`: a signaling server, a MA stand-in (also as
/// Sendspin), an identity created by `id`, two STUN stand-ins.
fn doctor_env(signal_port: u16, ma: &str) -> Vec<(&'static str, String)> {
    let data = common::temp_dir("doctor");
    let made = std::process::Command::new(common::BIN)
        .arg("id")
        .env("MA_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(made.status.success());
    let (a, b) = (stun_standin(), stun_standin());
    vec![
        ("MA_DATA_DIR", data.display().to_string()),
        (
            "MA_SIGNALING_URL",
            format!("ws://127.0.0.1:{signal_port}/ws"),
        ),
        ("MA_LOCAL_WS_URL", ma.to_string()),
        ("MA_SENDSPIN_URL", ma.to_string()),
        ("MA_UDP_BIND", "127.0.0.1:0".into()),
        (
            "MA_ICE_SERVERS",
            format!(r#"[{{"urls":["stun:{a}","stun:{b}"]}}]"#),
        ),
    ]
}

fn line<'a>(report: &'a str, start: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line {start:?} in\n{report}"))
}

#[test]
fn doctor_passes_on_a_working_stack() {
    let (_signal, port) = stack::start_signal();
    let ma = common::ma_standin::MaStandin::start();
    let (code, report) = doctor(&doctor_env(port, &ma.url()));
    line(&report, "✓ identity: Remote ID ");
    line(&report, "✓ signaling TCP: ");
    line(&report, "✓ signaling WebSocket: ");
    line(
        &report,
        "✓ signaling registration: a throw-away ID registered",
    );
    line(&report, "✓ signaling round trip: ");
    line(&report, "✓ MA API: ");
    line(&report, "✓ Sendspin: ");
    line(&report, "✓ NAT IPv4: public address 127.0.0.1:");
    assert!(line(&report, "✓ NAT IPv4").contains("endpoint-independent"));
    line(&report, "✓ TURN: none configured");
    line(&report, "✓ verdict: remote clients can connect directly");
    assert_eq!(code, 0, "{report}");
}

#[test]
fn doctor_fails_when_signaling_is_down() {
    let ma = common::ma_standin::MaStandin::start();
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, report) = doctor(&doctor_env(port, &ma.url()));
    assert!(
        line(&report, "✗ signaling TCP: ").contains("refused"),
        "{report}"
    );
    assert!(!report.contains("signaling registration"));
    line(&report, "✓ MA API: ");
    line(
        &report,
        "✗ verdict: remote access will not work: fix \"signaling TCP\"",
    );
    assert_eq!(code, 1, "{report}");
}

#[test]
fn doctor_fails_when_ma_is_down_and_when_turn_does_not_answer() {
    let (_signal, port) = stack::start_signal();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut env = doctor_env(port, &format!("ws://127.0.0.1:{closed}/ws"));
    // A UDP port where nothing answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let turn_port = silent.local_addr().unwrap().port();
    let stun = env.pop().unwrap().1;
    let turn = format!(
        r#"{{"urls":"turn:127.0.0.1:{turn_port}","username":"u","credential":"do-not-print"}}"#
    );
    env.push((
        "MA_ICE_SERVERS",
        format!("{},{turn}]", stun.trim_end_matches(']')),
    ));
    let (code, report) = doctor(&env);
    line(&report, "✓ signaling registration: ");
    assert!(
        line(&report, "✗ MA API").contains("is Music Assistant running?"),
        "{report}"
    );
    assert!(
        line(&report, &format!("✗ TURN turn:127.0.0.1:{turn_port}")).contains("allocation failed"),
        "{report}"
    );
    assert!(!report.contains("do-not-print"));
    line(
        &report,
        "✗ verdict: remote access will not work: fix \"MA API",
    );
    assert_eq!(code, 1, "{report}");
}

/// A real coturn on loopback: `doctor` allocates a relay on it (over UDP and TCP) and gives
/// it back.
#[test]
fn doctor_allocates_on_a_real_turn_server() {
    let Some(exe) = ["/usr/bin/turnserver", "/usr/sbin/turnserver"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "turnserver (coturn) is missing and CI is set"
        );
        println!("SKIPPED doctor_allocates_on_a_real_turn_server: no turnserver (apt-get install coturn)");
        return;
    };
    let dir = common::temp_dir("doctor-coturn");
    let port = {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut turn = std::process::Command::new(exe)
        .args([
            "-n",
            "--listening-ip",
            "127.0.0.1",
            "--relay-ip",
            "127.0.0.1",
        ])
        .args(["--listening-port", &port.to_string(), "--lt-cred-mech"])
        .args(["--user=doc:tor-secret", "--realm", "doctor.example"])
        .args(["--no-cli", "--no-tls", "--no-dtls", "--simple-log"])
        .arg(format!("--log-file={}", dir.join("turn.log").display()))
        .arg(format!("--pidfile={}", dir.join("turn.pid").display()))
        .arg(format!("--userdb={}", dir.join("turndb").display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start turnserver");
    let (_signal, signal_port) = stack::start_signal();
    let ma = common::ma_standin::MaStandin::start();
    let mut env = doctor_env(signal_port, &ma.url());
    let stun = env.pop().unwrap().1;
    let turn_entry = format!(
        r#"{{"urls":["turn:127.0.0.1:{port}","turn:127.0.0.1:{port}?transport=tcp"],"username":"doc","credential":"tor-secret"}}"#
    );
    env.push((
        "MA_ICE_SERVERS",
        format!("{},{turn_entry}]", stun.trim_end_matches(']')),
    ));
    // coturn takes a moment to listen: the first doctor run may find it not yet there.
    let deadline = Instant::now() + WAIT;
    let report = loop {
        let (_, report) = doctor(&env);
        let ok = report
            .lines()
            .filter(|l| l.starts_with("✓ TURN turn:127.0.0.1"))
            .count();
        if ok == 2 || Instant::now() > deadline {
            break report;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let _ = turn.kill();
    let _ = turn.wait();
    for url in [
        format!("turn:127.0.0.1:{port}"),
        format!("turn:127.0.0.1:{port}?transport=tcp"),
    ] {
        assert!(
            line(&report, &format!("✓ TURN {url}"))
                .contains("allocation gave relay address 127.0.0.1:"),
            "{report}"
        );
    }
    assert!(!report.contains("tor-secret"));
}

// ---- logs ----------------------------------------------------------------------------------

#[test]
fn json_logs_carry_the_session_and_no_secret() {
    let turn = r#"[{"urls":"turn:127.0.0.1:9","username":"u","credential":"s3cr3t-credential"}]"#;
    let mut s = stack::stack(&[
        ("MA_LOG_FORMAT", "json".into()),
        ("MA_ICE_SERVERS", turn.into()),
    ]);
    let mut c = stack::connect(&s);
    stack::expect_server_info(&mut c);
    let session = c.session_id().unwrap().to_string();
    let line = s.gateway.wait_for("connected in", WAIT);
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["session"], session.as_str(), "{line}");
    assert!(v["message"].as_str().unwrap().starts_with("connected in "));
    assert_eq!(v["level"], "INFO");
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
    drop(c);
    s.gateway.wait_for("session closed", WAIT);
    for line in s.gateway.log() {
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for key in ["time", "level", "target", "message"] {
            assert!(v[key].is_string(), "{key} in {line}");
        }
        assert!(!line.contains("s3cr3t"), "a credential was logged: {line}");
        // A line that names the session carries it as a field too.
        if line.contains(&session) && v["message"].as_str().unwrap().contains("session") {
            assert_eq!(v["session"], session.as_str(), "{line}");
        }
    }
}

#[test]
fn a_bad_log_format_stops_start_up() {
    let out = std::process::Command::new(common::BIN)
        .args(["id"])
        .env("MA_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MA_LOG_FORMAT"));
}

#[test]
fn doctor_never_creates_an_identity() {
    let (_signal, port) = stack::start_signal();
    let ma = common::ma_standin::MaStandin::start();
    let mut env = doctor_env(port, &ma.url());
    let empty = common::temp_dir("doctor-empty");
    env[0] = ("MA_DATA_DIR", empty.display().to_string());
    let (code, report) = doctor(&env);
    assert!(
        line(&report, "✗ identity: ").contains("no identity"),
        "{report}"
    );
    line(
        &report,
        "✗ verdict: remote access will not work: fix \"identity\"",
    );
    assert_eq!(code, 1);
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "doctor wrote to the data folder"
    );
}

#[test]
fn health_without_a_status_port_is_a_configuration_error() {
    let out = std::process::Command::new(common::BIN)
        .arg("health")
        .env_remove("MA_STATUS_LISTEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MA_STATUS_LISTEN"));
}
