//! Each session's ICE servers from where the user's TURN lives, with the real gateway binary:
//! a signaling server, Home Assistant's WebSocket API and an HTTP ICE server URL, all played by
//! the test on loopback. `session-ready` carries the fetched list; a stalled or refusing
//! provider costs the session a few seconds at most and it gets `MA_ICE_SERVERS` instead.

mod common;
#[path = "common/ice_standins.rs"]
mod ice_standins;

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::fake_signaling::{self, read_json, send_json};
use common::{temp_dir, Proc};
use ice_standins::{Ha, HaStandin, IceUrlStandin};
use serde_json::{json, Value};
use tungstenite::WebSocket;

const WAIT: Duration = Duration::from_secs(15);
/// The signaling server's window for `session-ready` (docs/protocol.md#gateway-messages).
const SESSION_READY_WINDOW: Duration = Duration::from_secs(10);
const STATIC: &str = r#"[{"urls":"stun:127.0.0.1:3478"}]"#;

fn ha_list() -> Value {
    json!([
        {"urls": ["stun:turn.example.net:3478"]},
        {"urls": ["turn:turn.example.net:3478?transport=udp", "turns:turn.example.net:5349?transport=tcp"],
         "username": "4102444800:ma-gateway", "credential": "c2VjcmV0"}
    ])
}

fn accept(listener: &TcpListener) -> WebSocket<TcpStream> {
    fake_signaling::accept(listener, 2 * WAIT)
}

/// A gateway registered with a signaling server run here.
struct Registered {
    gw: Proc,
    ws: WebSocket<TcpStream>,
    _listener: TcpListener,
}

fn registered(name: &str, extra: &[(&'static str, String)]) -> Registered {
    let data = temp_dir(name);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut env = vec![
        ("MA_SIGNALING_URL", format!("ws://127.0.0.1:{port}/ws")),
        ("MA_DATA_DIR", data.display().to_string()),
        ("MA_UDP_BIND", "127.0.0.1:0".into()),
        ("MA_ICE_SERVERS", STATIC.into()),
    ];
    env.extend_from_slice(extra);
    let mut gw = Proc::start(&[], &env);
    let mut ws = accept(&listener);
    let reg = read_json(&mut ws);
    assert_eq!(reg["type"], "register-server");
    assert_eq!(
        reg["iceServers"],
        serde_json::from_str::<Value>(STATIC).unwrap(),
        "the registration keeps the static list (fetched credentials expire)"
    );
    let remote_id = reg["remoteId"].clone();
    send_json(
        &mut ws,
        json!({"type": "registered", "remoteId": remote_id}),
    );
    gw.wait_for_event("registered", WAIT);
    Registered {
        gw,
        ws,
        _listener: listener,
    }
}

impl Registered {
    /// A client arrives: the `session-ready` that answers it, and how long it took.
    fn session(&mut self, session_id: &str) -> (Value, Duration) {
        let start = Instant::now();
        send_json(
            &mut self.ws,
            json!({"type": "client-connected", "sessionId": session_id}),
        );
        let ready = read_json(&mut self.ws);
        let took = start.elapsed();
        assert_eq!(ready["type"], "session-ready");
        assert_eq!(ready["sessionId"], session_id);
        (ready, took)
    }
}

#[test]
fn session_ready_carries_home_assistant_clouds_servers() {
    let ha = HaStandin::start(Ha::Serve {
        token: "long-lived-token".into(),
        servers: ha_list(),
    });
    let mut r = registered(
        "ha-ok",
        &[
            ("MA_HA_URL", ha.url()),
            ("MA_HA_TOKEN", "long-lived-token".into()),
        ],
    );
    r.gw.wait_for("ICE servers: optimized (Home Assistant Cloud TURN)", WAIT);
    let (ready, _) = r.session("sessionAAAA000001");
    assert_eq!(ready["iceServers"], ha_list());
    // The credentials expire in 2100: the next session reuses them without asking again.
    let asked = ha.connections();
    let (ready, _) = r.session("sessionAAAA000002");
    assert_eq!(ready["iceServers"], ha_list());
    assert_eq!(ha.connections(), asked, "served from the cache");
    // The token never reaches the log.
    let log = r.gw.log().join("\n");
    assert!(!log.contains("long-lived-token"), "the token was logged");
}

#[test]
fn a_stalled_home_assistant_falls_back_to_the_static_list_in_time() {
    let ha = HaStandin::start(Ha::Stall);
    let mut r = registered(
        "ha-stall",
        &[("MA_HA_URL", ha.url()), ("MA_HA_TOKEN", "t".into())],
    );
    let (ready, took) = r.session("sessionBBBB000001");
    assert_eq!(
        ready["iceServers"],
        serde_json::from_str::<Value>(STATIC).unwrap()
    );
    r.gw.wait_for("did not answer within", WAIT);
    assert!(
        took < SESSION_READY_WINDOW,
        "session-ready must beat the server's window, took {took:?}"
    );
}

#[test]
fn a_refused_token_is_logged_once_and_sessions_go_on_in_basic_mode() {
    let ha = HaStandin::start(Ha::Serve {
        token: "the-right-one".into(),
        servers: ha_list(),
    });
    let mut r = registered(
        "ha-refused",
        &[
            ("MA_HA_URL", ha.url()),
            ("MA_HA_TOKEN", "a-wrong-one".into()),
        ],
    );
    r.gw.wait_for("access token was refused", WAIT);
    r.gw.wait_for("ICE servers: basic (STUN only)", WAIT);
    for id in [
        "sessionCCCC000001",
        "sessionCCCC000002",
        "sessionCCCC000003",
    ] {
        let (ready, _) = r.session(id);
        assert_eq!(
            ready["iceServers"],
            serde_json::from_str::<Value>(STATIC).unwrap()
        );
    }
    let refused =
        r.gw.log()
            .iter()
            .filter(|l| l.contains("access token was refused"))
            .count();
    assert_eq!(refused, 1, "logged once, not per session");
}

#[test]
fn session_ready_carries_the_servers_of_an_ice_servers_url() {
    let list = ha_list();
    let http = IceUrlStandin::start(list.clone());
    let mut r = registered("ice-url", &[("MA_ICE_SERVERS_URL", http.url())]);
    r.gw.wait_for(
        "ICE servers: optimized (TURN from MA_ICE_SERVERS_URL)",
        WAIT,
    );
    let (ready, _) = r.session("sessionDDDD000001");
    assert_eq!(ready["iceServers"], list);
    assert!(http.requests() >= 1);
}

#[test]
fn the_id_command_says_which_mode_sessions_get() {
    let run = |env: &[(&str, String)]| {
        let data = temp_dir("id-mode");
        let mut cmd = std::process::Command::new(common::BIN);
        cmd.arg("id")
            .env("MA_DATA_DIR", &data)
            .env("RUST_LOG", "debug");
        for (k, _) in std::env::vars() {
            if k.starts_with("MA_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        String::from_utf8(out.stdout).unwrap() + &stderr
    };
    assert!(run(&[]).contains("ICE servers: basic (STUN only)"));
    let ha = HaStandin::start(Ha::Serve {
        token: "tok".into(),
        servers: ha_list(),
    });
    let out = run(&[("MA_HA_URL", ha.url()), ("MA_HA_TOKEN", "tok".into())]);
    assert!(
        out.contains("ICE servers: optimized (Home Assistant Cloud TURN)"),
        "{out}"
    );
    let out = run(&[("MA_HA_URL", ha.url()), ("MA_HA_TOKEN", "bad".into())]);
    assert!(out.contains("ICE servers: basic (STUN only)"), "{out}");
}

#[test]
fn help_lists_the_provider_variables_and_never_shows_the_token() {
    let out = std::process::Command::new(common::BIN)
        .arg("--help")
        .env("MA_HA_TOKEN", "super-secret-token-value")
        .env("MA_HA_URL", "http://ha.example:8123")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in ["MA_HA_URL", "MA_HA_TOKEN", "MA_ICE_SERVERS_URL"] {
        assert!(help.contains(var), "--help does not mention {var}");
    }
    assert!(
        !help.contains("super-secret-token-value"),
        "--help shows the token"
    );
}

#[test]
fn a_stalled_ice_servers_url_falls_back_to_the_static_list_in_time() {
    let http = IceUrlStandin::stalled();
    let mut r = registered("ice-url-stall", &[("MA_ICE_SERVERS_URL", http.url())]);
    let (ready, took) = r.session("sessionEEEE000001");
    assert_eq!(
        ready["iceServers"],
        serde_json::from_str::<Value>(STATIC).unwrap()
    );
    r.gw.wait_for("did not answer within", WAIT);
    assert!(
        took < SESSION_READY_WINDOW,
        "session-ready must beat the server's window, took {took:?}"
    );
}

#[test]
fn an_https_ice_servers_url_is_verified_with_the_extra_ca() {
    let dir = temp_dir("ice-https");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = ck.cert.pem();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &cert_pem).unwrap();
    let list = ha_list();
    let https = IceUrlStandin::start_tls(list.clone(), &cert_pem, &ck.signing_key.serialize_pem());
    let mut r = registered(
        "ice-https",
        &[
            ("MA_ICE_SERVERS_URL", https.url()),
            ("MA_SIGNALING_CA_FILE", ca.display().to_string()),
        ],
    );
    r.gw.wait_for(
        "ICE servers: optimized (TURN from MA_ICE_SERVERS_URL)",
        WAIT,
    );
    let (ready, _) = r.session("sessionFFFF000001");
    assert_eq!(ready["iceServers"], list);
}
