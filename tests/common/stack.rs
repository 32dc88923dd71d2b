//! The whole stack over loopback: the `signal` binary, the gateway binary, a MA stand-in, and a
//! connected client.

use std::net::SocketAddr;
use std::time::Duration;

use ma_webrtc_gateway::config::WsUrl;
use ma_webrtc_gateway::driver::connect::Connection;
use serde_json::Value;

use super::ma_standin::{self, MaStandin};
use super::{temp_dir, Proc};

pub const WAIT: Duration = Duration::from_secs(20);

pub struct Stack {
    pub signal: Proc,
    pub gateway: Proc,
    pub ma: MaStandin,
    pub signaling: WsUrl,
    pub remote_id: String,
}

pub fn start_signal() -> (Proc, u16) {
    let mut signal = Proc::start(&["signal", "--listen", "127.0.0.1:0"], &[]);
    let line = signal.wait_for("listening on ", WAIT);
    let addr = line
        .split("listening on ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let port = addr.parse::<SocketAddr>().unwrap().port();
    (signal, port)
}

pub fn start_gateway(
    port: u16,
    ma: &MaStandin,
    data: &std::path::Path,
    extra: &[(&str, String)],
) -> (Proc, String) {
    let mut env = vec![
        ("MA_SIGNALING_URL", format!("ws://127.0.0.1:{port}/ws")),
        ("MA_LOCAL_WS_URL", ma.url()),
        ("MA_DATA_DIR", data.display().to_string()),
        ("MA_UDP_BIND", "127.0.0.1:0".into()),
        ("MA_ICE_SERVERS", "[]".into()),
        ("MA_RECONNECT_MIN", "100ms".into()),
        ("MA_RECONNECT_MAX", "500ms".into()),
    ];
    env.extend(extra.iter().cloned());
    let mut gateway = Proc::start(&[], &env);
    let registered = gateway.wait_for_event("registered", WAIT);
    let remote_id = registered["remote_id"].as_str().unwrap().to_string();
    (gateway, remote_id)
}

pub fn stack(extra: &[(&str, String)]) -> Stack {
    let (signal, port) = start_signal();
    let ma = MaStandin::start();
    let (gateway, remote_id) = start_gateway(port, &ma, &temp_dir("e2e"), extra);
    Stack {
        signal,
        gateway,
        ma,
        signaling: WsUrl::parse(&format!("ws://127.0.0.1:{port}/ws")).unwrap(),
        remote_id,
    }
}

pub fn connect(s: &Stack) -> Connection {
    Connection::open(
        &s.signaling,
        None,
        &s.remote_id,
        "127.0.0.1:0".parse().unwrap(),
        WAIT,
    )
    .expect("the client connects")
}

/// The first message is MA's server_info.
pub fn expect_server_info(c: &mut Connection) {
    let first: Value = serde_json::from_str(&c.recv_text(WAIT).unwrap()).unwrap();
    assert_eq!(first, ma_standin::server_info());
}
