//! The signaling server's event loop in-process with short timeouts: dead-socket detection,
//! slow request heads, the connection limit and a peer that stops reading. Loopback only.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ma_webrtc_gateway::driver::signal::{Driver, DriverConfig, StopHandle};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The next message; a signal interrupting the blocking read (EINTR) is not an error.
fn read<S: Read + Write>(ws: &mut WebSocket<S>) -> Message {
    loop {
        match ws.read() {
            Ok(m) => return m,
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("no message: {e}"),
        }
    }
}

/// A driver on its own thread, stopped and joined on drop.
struct Running {
    addr: SocketAddr,
    stop: StopHandle,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start(config: DriverConfig) -> Running {
    let driver = Driver::new(DriverConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..config
    })
    .unwrap();
    let addr = driver.local_addr();
    let stop = driver.stop_handle();
    let thread = std::thread::spawn(move || driver.run(false));
    Running {
        addr,
        stop,
        thread: Some(thread),
    }
}

fn ws(addr: SocketAddr) -> WebSocket<TcpStream> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    tcp.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    tungstenite::client::client(format!("ws://{addr}/ws"), tcp)
        .unwrap()
        .0
}

fn send(ws: &mut WebSocket<TcpStream>, v: Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

/// The next JSON message, skipping control frames and the challenge every socket gets first.
fn recv(ws: &mut WebSocket<TcpStream>) -> Value {
    loop {
        match read(ws) {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] != "challenge" {
                    return v;
                }
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn register(addr: SocketAddr, id: &str) -> WebSocket<TcpStream> {
    let mut gw = ws(addr);
    send(
        &mut gw,
        json!({"type": "register-server", "remoteId": id, "iceServers": []}),
    );
    assert_eq!(recv(&mut gw)["type"], "registered");
    gw
}

fn online(addr: SocketAddr, id: &str) -> bool {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(tcp, "GET /api/check/{id} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str::<Value>(body).unwrap()["online"]
        .as_bool()
        .unwrap()
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

#[test]
fn silent_websocket_is_dropped_and_a_live_one_kept() {
    let r = start(DriverConfig {
        ping_interval: Duration::from_millis(100),
        dead_after: Duration::from_millis(500),
        ..DriverConfig::default()
    });
    // Registers, then never reads again: it answers no ping.
    let _deaf = register(r.addr, "DEAF");
    let mut live = register(r.addr, "LIVE");
    // Five JSON pings (every 100 ms) are well past the deaf one's 500 ms: wait for them,
    // however long a loaded machine takes, reading (which answers WebSocket pings) meanwhile.
    let mut json_pings = 0;
    while json_pings < 5 {
        if recv(&mut live) == json!({"type": "ping"}) {
            json_pings += 1;
        }
    }
    assert!(
        wait_until(Duration::from_secs(30), || !online(r.addr, "DEAF")),
        "a socket that answers no ping is dropped"
    );
    assert!(online(r.addr, "LIVE"));
}

#[test]
fn slow_request_heads_time_out() {
    let r = start(DriverConfig {
        head_timeout: Duration::from_millis(300),
        ..DriverConfig::default()
    });
    let t0 = Instant::now();
    let mut silent = TcpStream::connect(r.addr).unwrap();
    let mut partial = TcpStream::connect(r.addr).unwrap();
    partial.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
    for s in [&mut silent, &mut partial] {
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(
            s.read(&mut buf).unwrap_or(0),
            0,
            "closed without a response"
        );
    }
    eprintln!("slow heads closed after {:?}", t0.elapsed());
}

#[test]
fn connection_limit_refuses_extra_connections() {
    let r = start(DriverConfig {
        max_connections: 2,
        ..DriverConfig::default()
    });
    let a = TcpStream::connect(r.addr).unwrap();
    let _b = TcpStream::connect(r.addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut c = TcpStream::connect(r.addr).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut text = String::new();
    let _ = c.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 503"), "{text:?}");
    drop(a);
    // The freed slot is usable again.
    assert!(wait_until(Duration::from_secs(3), || {
        let mut t = TcpStream::connect(r.addr).unwrap();
        t.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let _ = t.write_all(b"GET /health HTTP/1.1\r\n\r\n");
        let mut text = String::new();
        let _ = t.read_to_string(&mut text);
        text.starts_with("HTTP/1.1 200")
    }));
}

/// Read until the close frame; its code.
fn close_code(ws: &mut WebSocket<TcpStream>) -> u16 {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => return u16::from(frame.code),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

#[test]
fn a_client_flooding_a_stuck_gateway_is_closed_and_the_gateway_kept() {
    let r = start(DriverConfig::default());
    // The gateway never reads again: what is relayed to it piles up.
    let _stuck = register(r.addr, "STUCK");
    let mut client = ws(r.addr);
    send(
        &mut client,
        json!({"type": "connect-request", "remoteId": "STUCK"}),
    );
    let sdp = "a".repeat(60 * 1024);
    let mut sent = 0;
    let closed = loop {
        let offer = json!({"type": "offer", "data": {"type": "offer", "sdp": sdp}});
        if client.send(Message::text(offer.to_string())).is_err() {
            break true;
        }
        sent += 1;
        if sent % 20 == 0 && !online(r.addr, "STUCK") {
            break false;
        }
        assert!(sent < 4000, "nothing happened to the flooding client");
    };
    assert!(closed, "the gateway was dropped instead of the client");
    assert!(
        online(r.addr, "STUCK"),
        "the stuck gateway is still registered"
    );
    let code = close_code(&mut client);
    assert_eq!(code, 1008);
    eprintln!("the client was closed after {sent} offers of 60 KiB");
}

#[test]
fn a_peer_that_stops_reading_is_dropped_not_buffered() {
    let r = start(DriverConfig::default());
    let mut gw = register(r.addr, "GW");
    // The client never reads: what the gateway sends it piles up.
    let mut stuck = ws(r.addr);
    send(
        &mut stuck,
        json!({"type": "connect-request", "remoteId": "GW"}),
    );
    let m = recv(&mut gw);
    let sid = m["sessionId"].clone();
    let sdp = "a".repeat(60 * 1024);
    let mut sent = 0;
    loop {
        send(
            &mut gw,
            json!({"type": "answer", "sessionId": sid, "data": {"type": "answer", "sdp": sdp}}),
        );
        sent += 1;
        if sent % 20 == 0 {
            send(&mut gw, json!({"type": "ping"}));
            let m = loop {
                let m = recv(&mut gw);
                if m["type"] != "error" {
                    break m;
                }
            };
            if m["type"] == "client-disconnected" {
                break;
            }
            assert_eq!(m["type"], "pong");
        }
        assert!(sent < 4000, "the stuck client was never dropped");
    }
    assert!(online(r.addr, "GW"));
    eprintln!("dropped after {sent} answers of 60 KiB");
}

#[test]
fn a_socket_that_takes_no_role_is_closed_after_the_idle_timeout() {
    let mut config = DriverConfig::default();
    config.server.idle_timeout = Duration::from_millis(300);
    let r = start(config);
    let mut idle = ws(r.addr);
    let _gw = register(r.addr, "GW");
    let t0 = Instant::now();
    assert_eq!(close_code(&mut idle), 1008);
    eprintln!("closed after {:?}", t0.elapsed());
    // The gateway is kept.
    std::thread::sleep(Duration::from_millis(600));
    assert!(online(r.addr, "GW"));
}
