//! End-to-end tests of `ma-webrtc-gateway signal`: the real binary on 127.0.0.1 (port 0), a fake
//! gateway and fake clients speaking the protocol over blocking tungstenite sockets, and plain
//! HTTP for /health and /api/check. Offline, loopback only; the child is killed on drop.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

const BIN: &str = env!("CARGO_BIN_EXE_ma-webrtc-gateway");
const GW_ID: &str = "QCPJJTJMI3IDBNURU6XJJENRYU";
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const NOT_FOUND: &str =
    "Server not found. Make sure your Music Assistant server is running and has Remote Access enabled.";
const BLOCKED: &str = "Too many failed attempts. You have been temporarily blocked.";

/// One read, retried when a signal interrupts it; 0 on EOF or error.
fn read_some(r: &mut impl Read, buf: &mut [u8]) -> usize {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            other => return other.unwrap_or(0),
        }
    }
}

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

/// The signaling server as a child process.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("signal").args(args).env("RUST_LOG", "info");
    for (key, _) in std::env::vars() {
        if key.starts_with("MA_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Start the server on a free loopback port; `args` are extra flags.
fn start(args: &[&str]) -> Server {
    let mut cmd = command(&["--listen", "127.0.0.1:0"]);
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start the signaling server");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let _ = tx.send(addr);
            }
            // Keep draining so the child never blocks on a full pipe.
        }
    });
    // From here on the child is killed on drop, even if the test fails.
    let mut server = Server {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        child,
    };
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the server logs its listening address");
    server.addr = addr.parse().expect("a socket address in the log line");
    server
}

struct Peer {
    ws: WebSocket<TcpStream>,
    /// The challenge the server sent first (docs/protocol.md#ownership-proof).
    nonce: String,
}

impl Peer {
    fn connect(addr: SocketAddr) -> Peer {
        Peer::connect_with(addr, &[])
    }

    /// A WebSocket with extra request headers, before anything is read.
    fn open(addr: SocketAddr, headers: &[(&'static str, &str)]) -> Peer {
        use tungstenite::client::IntoClientRequest;
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        tcp.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().append(*name, value.parse().unwrap());
        }
        let (ws, _) = tungstenite::client::client(request, tcp).expect("WebSocket handshake");
        Peer {
            ws,
            nonce: String::new(),
        }
    }

    /// Connect with extra request headers; the first message must be the challenge.
    fn connect_with(addr: SocketAddr, headers: &[(&'static str, &str)]) -> Peer {
        let mut peer = Peer::open(addr, headers);
        let challenge = peer.recv();
        assert_eq!(challenge["type"], "challenge", "{challenge}");
        assert_eq!(challenge.as_object().unwrap().len(), 2, "{challenge}");
        peer.nonce = challenge["nonce"].as_str().unwrap().to_string();
        peer
    }

    fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).unwrap();
    }

    fn send_raw(&mut self, m: Message) {
        self.ws.send(m).unwrap();
    }

    /// The next JSON message (WebSocket control frames are skipped).
    fn recv(&mut self) -> Value {
        loop {
            match read(&mut self.ws) {
                Message::Text(t) => {
                    return serde_json::from_str(t.as_str()).expect("JSON from the server")
                }
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn recv_type(&mut self, kind: &str) -> Value {
        let v = self.recv();
        assert_eq!(v["type"], kind, "{v}");
        v
    }

    fn recv_error(&mut self) -> String {
        let v = self.recv_type("error");
        v["error"].as_str().unwrap().to_string()
    }

    /// Read until the server's close frame; returns it.
    fn recv_close(&mut self) -> CloseFrame {
        loop {
            match self.ws.read() {
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::Interrupted => {}
                Ok(Message::Close(Some(frame))) => return frame,
                Ok(Message::Close(None)) => panic!("close without a code"),
                Ok(_) => {}
                Err(e) => panic!("no close frame: {e}"),
            }
        }
    }

    fn register(addr: SocketAddr, id: &str, ice: Value) -> Peer {
        let mut gw = Peer::connect(addr);
        gw.send(json!({"type": "register-server", "remoteId": id, "iceServers": ice}));
        assert_eq!(
            gw.recv(),
            json!({"type": "registered", "remoteId": id.to_ascii_uppercase()})
        );
        gw
    }
}

/// One HTTP/1.1 request over a fresh connection: (status line, body).
fn http(addr: SocketAddr, request: &str) -> (String, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    tcp.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw)
        .expect("the server closes after the response");
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

fn get(addr: SocketAddr, path: &str) -> (String, String) {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    )
}

fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = get(addr, path);
    assert_eq!(status, "HTTP/1.1 200 OK", "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn full_session_walk() {
    let s = start(&[]);
    let health = get_json(s.addr, "/health");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        (
            health["servers"].clone(),
            health["clients"].clone(),
            health["pendingClients"].clone()
        ),
        (json!(0), json!(0), json!(0))
    );
    assert_eq!(
        get_json(s.addr, &format!("/api/check/{GW_ID}")),
        json!({"online": false})
    );

    // The gateway registers with a lower-case ID; the server upper-cases it.
    let mut gw = Peer::register(
        s.addr,
        &GW_ID.to_lowercase(),
        json!([{"urls": "stun:cached.example:3478"}]),
    );
    assert_eq!(
        get_json(s.addr, &format!("/api/check/{}", GW_ID.to_lowercase())),
        json!({"online": true})
    );

    let mut client = Peer::connect(s.addr);
    client.send(json!({"type": "connect-request", "remoteId": GW_ID}));
    let cc = gw.recv_type("client-connected");
    let sid = cc["sessionId"].as_str().unwrap().to_string();
    assert_eq!(sid.len(), 16);
    assert!(sid.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(get_json(s.addr, "/health")["pendingClients"], 1);

    let fresh = json!([{"urls": "turn:turn.example:3478", "username": "u", "credential": "fresh"}]);
    gw.send(json!({"type": "session-ready", "sessionId": sid, "iceServers": fresh}));
    assert_eq!(
        client.recv(),
        json!({"type": "connected", "remoteId": GW_ID, "sessionId": sid, "iceServers": fresh})
    );
    let health = get_json(s.addr, "/health");
    assert_eq!(
        (
            health["servers"].clone(),
            health["clients"].clone(),
            health["pendingClients"].clone()
        ),
        (json!(1), json!(1), json!(0))
    );

    // Client → gateway: the server sets sessionId (ignoring the client's) and adds remoteId to offers.
    let offer = json!({"type": "offer", "sdp": "v=0\r\noffer"});
    client.send(json!({"type": "offer", "sessionId": "someone-else", "data": offer}));
    assert_eq!(
        gw.recv(),
        json!({"type": "offer", "sessionId": sid, "remoteId": GW_ID, "data": offer})
    );
    let cand =
        json!({"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host", "sdpMid": "0"});
    client.send(json!({"type": "ice-candidate", "data": cand}));
    assert_eq!(
        gw.recv(),
        json!({"type": "ice-candidate", "sessionId": sid, "data": cand})
    );

    // Gateway → client.
    let answer = json!({"type": "answer", "sdp": "v=0\r\nanswer"});
    gw.send(json!({"type": "answer", "sessionId": sid, "data": answer}));
    assert_eq!(
        client.recv(),
        json!({"type": "answer", "sessionId": sid, "data": answer})
    );
    let cand = json!({"candidate": "candidate:2 1 udp 2122260223 127.0.0.1 6000 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    gw.send(json!({"type": "ice-candidate", "sessionId": sid, "data": cand}));
    assert_eq!(
        client.recv(),
        json!({"type": "ice-candidate", "sessionId": sid, "data": cand})
    );

    // JSON ping and WebSocket ping.
    client.send(json!({"type": "ping"}));
    assert_eq!(client.recv(), json!({"type": "pong"}));
    client.send_raw(Message::Ping(b"hi".to_vec().into()));
    loop {
        match read(&mut client.ws) {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"hi");
                break;
            }
            Message::Ping(_) => {}
            other => panic!("expected a pong, got {other:?}"),
        }
    }

    // The client leaves: the gateway is told.
    client.ws.close(None).unwrap();
    let _ = client.ws.flush();
    assert_eq!(
        gw.recv(),
        json!({"type": "client-disconnected", "sessionId": sid})
    );
    assert_eq!(get_json(s.addr, "/health")["clients"], 0);

    // The gateway leaves: a connected client is told peer-disconnected.
    let mut client = Peer::connect(s.addr);
    client.send(json!({"type": "connect-request", "remoteId": GW_ID}));
    let sid = gw.recv_type("client-connected")["sessionId"].clone();
    gw.send(json!({"type": "session-ready", "sessionId": sid, "iceServers": []}));
    client.recv_type("connected");
    drop(gw);
    assert_eq!(client.recv(), json!({"type": "peer-disconnected"}));
    assert_eq!(
        get_json(s.addr, &format!("/api/check/{GW_ID}")),
        json!({"online": false})
    );
    client.send(json!({"type": "offer", "data": {}}));
    assert_eq!(client.recv_error(), "Server disconnected");
}

#[test]
fn pending_client_that_leaves_is_reported() {
    let s = start(&[]);
    let mut gw = Peer::register(s.addr, GW_ID, json!([]));
    let mut client = Peer::connect(s.addr);
    client.send(json!({"type": "connect-request", "remoteId": GW_ID}));
    let sid = gw.recv_type("client-connected")["sessionId"].clone();
    drop(client);
    assert_eq!(
        gw.recv(),
        json!({"type": "client-disconnected", "sessionId": sid})
    );
    assert_eq!(get_json(s.addr, "/health")["pendingClients"], 0);
}

#[test]
fn replacement_closes_the_old_gateway_with_4000() {
    let s = start(&[]);
    let mut old = Peer::register(s.addr, GW_ID, json!([]));
    let _new = Peer::register(s.addr, GW_ID, json!([]));
    let frame = old.recv_close();
    assert_eq!(frame.code, CloseCode::from(4000));
    assert_eq!(frame.reason.as_str(), "Replaced by new connection");
    assert_eq!(get_json(s.addr, "/health")["servers"], 1);
    assert_eq!(
        get_json(s.addr, &format!("/api/check/{GW_ID}")),
        json!({"online": true})
    );
}

#[test]
fn a_gateway_cannot_address_another_gateways_sessions() {
    let s = start(&[]);
    let mut gw = Peer::register(s.addr, GW_ID, json!([]));
    let mut intruder = Peer::register(s.addr, "INTRUDER", json!([]));
    let mut client = Peer::connect(s.addr);
    client.send(json!({"type": "connect-request", "remoteId": GW_ID}));
    let sid = gw.recv_type("client-connected")["sessionId"].clone();
    intruder.send(json!({"type": "answer", "sessionId": sid, "data": {"sdp": "evil"}}));
    assert_eq!(intruder.recv_error(), "Client not found");
    // Ignored, as the public server ignores session-ready for a session not pending.
    intruder.send(json!({"type": "session-ready", "sessionId": sid, "iceServers": []}));
    intruder.send(json!({"type": "ping"}));
    assert_eq!(intruder.recv(), json!({"type": "pong"}));
    gw.send(json!({"type": "session-ready", "sessionId": sid, "iceServers": []}));
    // The first thing the client sees is the real gateway's connected.
    assert_eq!(client.recv_type("connected")["sessionId"], sid);
}

#[test]
fn bad_input_gets_errors_or_a_close_and_never_disturbs_others() {
    let s = start(&[]);
    let mut bystander = Peer::register(s.addr, GW_ID, json!([]));

    // Half-open and slow sockets: connected but silent, and an unfinished request head.
    let _silent = TcpStream::connect(s.addr).unwrap();
    let mut slow = TcpStream::connect(s.addr).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();

    let mut p = Peer::connect(s.addr);
    p.send_raw(Message::text("this is not JSON"));
    assert_eq!(p.recv_error(), "Invalid message format");
    p.send_raw(Message::text("[1,2,3]"));
    assert_eq!(p.recv_error(), "Invalid message format");
    p.send(json!({"type": "launch-missiles"}));
    assert_eq!(p.recv_error(), "Unknown message type: launch-missiles");
    p.send(json!({"remoteId": GW_ID}));
    assert_eq!(p.recv_error(), "Unknown message type: undefined");
    p.send(json!({"type": "connect-request"}));
    assert_eq!(p.recv_error(), "Remote ID required");
    p.send(json!({"type": "register-server", "remoteId": ""}));
    assert_eq!(p.recv_error(), "Remote ID required");
    p.send(json!({"type": "connect-request", "remoteId": "NOSUCHID"}));
    assert_eq!(
        p.recv_error(),
        "Server not found. Make sure your Music Assistant server is running and has Remote Access enabled."
    );
    p.send(json!({"type": "offer", "data": {}}));
    assert_eq!(p.recv_error(), "Not registered");
    p.send(json!({"type": "session-ready", "sessionId": "x"}));
    assert_eq!(p.recv_error(), "Not a registered server");
    p.send_raw(Message::binary(vec![1u8, 2, 3]));
    assert_eq!(p.recv_error(), "Binary messages are not supported");
    bystander.send(json!({"type": "session-ready"}));
    assert_eq!(bystander.recv_error(), "Session ID required");
    bystander.send(json!({"type": "answer", "sessionId": "unknown", "data": {}}));
    assert_eq!(bystander.recv_error(), "Client not found");

    // An oversized message closes that connection with 1009.
    let mut big = Peer::connect(s.addr);
    big.send_raw(Message::text("x".repeat(100 * 1024)));
    assert_eq!(big.recv_close().code, CloseCode::Size);

    // Garbage instead of HTTP, unknown paths, a plain GET on /ws.
    let (status, _) = http(s.addr, "\x16\x03\x01\x02\x00garbage\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    assert_eq!(get(s.addr, "/").0, "HTTP/1.1 404 Not Found");
    assert_eq!(get(s.addr, "/api/check/").0, "HTTP/1.1 404 Not Found");
    assert_eq!(get(s.addr, "/ws").0, "HTTP/1.1 426 Upgrade Required");
    let huge = format!(
        "GET /health HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let mut tcp = TcpStream::connect(s.addr).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = tcp.write_all(huge.as_bytes());
    let mut resp = [0u8; 64];
    let n = read_some(&mut tcp, &mut resp);
    assert!(
        String::from_utf8_lossy(&resp[..n]).starts_with("HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&resp[..n])
    );

    // Everyone else is still served.
    bystander.send(json!({"type": "ping"}));
    assert_eq!(bystander.recv(), json!({"type": "pong"}));
    p.send(json!({"type": "ping"}));
    assert_eq!(p.recv(), json!({"type": "pong"}));
    assert_eq!(get_json(s.addr, "/health")["servers"], 1);
    // The slow request can still complete.
    slow.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    slow.write_all(b"\r\n").unwrap();
    let mut body = String::new();
    slow.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
}

#[test]
fn message_rate_limit_closes_with_4029() {
    let s = start(&["--rate-limit", "5", "--limit-loopback", "true"]);
    let mut p = Peer::connect(s.addr);
    for _ in 0..5 {
        p.send(json!({"type": "ping"}));
        assert_eq!(p.recv(), json!({"type": "pong"}));
    }
    p.send(json!({"type": "ping"}));
    let error = p.recv_error();
    assert!(
        error.starts_with("Rate limited. Try again in ") && error.ends_with(" seconds."),
        "{error}"
    );
    assert_eq!(p.recv_close().code, CloseCode::from(4029));
}

#[test]
fn loopback_is_exempt_by_default() {
    let s = start(&["--rate-limit", "5", "--lookup-limit", "1"]);
    let mut p = Peer::connect(s.addr);
    for _ in 0..30 {
        p.send(json!({"type": "connect-request", "remoteId": "GUESS"}));
        assert!(p.recv_error().starts_with("Server not found."));
    }
}

#[test]
fn brute_forcing_remote_ids_closes_with_4008() {
    let s = start(&["--lookup-limit", "3", "--limit-loopback", "true"]);
    let _gw = Peer::register(s.addr, GW_ID, json!([]));
    let mut p = Peer::connect(s.addr);
    for i in 0..3 {
        p.send(json!({"type": "connect-request", "remoteId": format!("GUESS{i}")}));
        assert!(p.recv_error().starts_with("Server not found."));
    }
    p.send(json!({"type": "connect-request", "remoteId": "GUESS3"}));
    assert!(p.recv_error().starts_with("Server not found."));
    assert_eq!(p.recv_error(), BLOCKED);
    assert_eq!(p.recv_close().code, CloseCode::from(4008));
    // Blocked now, even for an existing ID, and over HTTP too.
    let mut again = Peer::connect(s.addr);
    again.send(json!({"type": "connect-request", "remoteId": GW_ID}));
    assert_eq!(again.recv(), json!({"type": "error", "error": BLOCKED}));
    assert_eq!(again.recv_close().code, CloseCode::from(4008));
    assert_eq!(
        get(s.addr, &format!("/api/check/{GW_ID}")).0,
        "HTTP/1.1 429 Too Many Requests"
    );
}

#[test]
fn bad_configuration_exits_2_naming_the_variable() {
    for (args, var) in [
        (
            vec!["--listen", "nowhere"],
            "invalid MA_SIGNAL_LISTEN (--listen)",
        ),
        (
            vec!["--max-connections", "0"],
            "invalid MA_SIGNAL_MAX_CONNECTIONS (--max-connections)",
        ),
        (
            vec!["--tls-cert", "/nonexistent.pem"],
            "invalid MA_SIGNAL_TLS_KEY (--tls-key)",
        ),
        (
            vec![
                "--tls-cert",
                "/nonexistent.pem",
                "--tls-key",
                "/nonexistent.key",
            ],
            "invalid MA_SIGNAL_TLS_CERT (--tls-cert)",
        ),
    ] {
        let out = command(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(var), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");
    }
    let out = command(&[])
        .env("MA_SIGNAL_RATE_LIMIT", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("invalid MA_SIGNAL_RATE_LIMIT (--rate-limit)"));
}

#[test]
fn sigterm_stops_promptly() {
    let mut s = start(&[]);
    let _gw = Peer::register(s.addr, GW_ID, json!([]));
    let t0 = Instant::now();
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    let sent = unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    assert_eq!(sent, 0, "SIGTERM: {}", std::io::Error::last_os_error());
    loop {
        if let Some(code) = s.child.try_wait().unwrap() {
            assert_eq!(code.code(), Some(0));
            eprintln!("signal exited {:?} after SIGTERM", t0.elapsed());
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "still running 30 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("signal-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn tls_serves_https_and_wss() {
    let dir = TempDir::new("tls");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.0.join("cert.pem");
    let key = dir.0.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let s = start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let tls = |addr: SocketAddr| {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let conn =
            rustls::ClientConnection::new(config.clone(), "localhost".try_into().unwrap()).unwrap();
        rustls::StreamOwned::new(conn, tcp)
    };

    let mut https = tls(s.addr);
    https
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    // The server closes without close_notify: take what arrived.
    let _ = https.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains(r#""status":"ok""#), "{text}");

    let (mut wss, _) =
        tungstenite::client::client("wss://localhost/ws", tls(s.addr)).expect("wss handshake");
    wss.send(Message::text(
        json!({"type": "register-server", "remoteId": GW_ID}).to_string(),
    ))
    .unwrap();
    match read(&mut wss) {
        Message::Text(t) => assert!(t.as_str().starts_with(r#"{"type":"challenge""#), "{t}"),
        other => panic!("{other:?}"),
    }
    match read(&mut wss) {
        Message::Text(t) => {
            assert_eq!(
                serde_json::from_str::<Value>(t.as_str()).unwrap(),
                json!({"type": "registered", "remoteId": GW_ID})
            )
        }
        other => panic!("{other:?}"),
    }

    // Plain HTTP on the TLS port is refused without harm.
    let mut plain = TcpStream::connect(s.addr).unwrap();
    plain.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    plain.write_all(b"GET /health HTTP/1.1\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("\"status\""));
}

/// Every message and error text of docs/protocol.md#compatibility, compared as whole JSON with
/// what the public server sends, driven by plain WebSocket clients.
#[test]
fn drop_in_compatible_with_the_public_server() {
    let s = start(&[]);
    let err = |text: &str| json!({"type": "error", "error": text});
    let ice = json!([{"urls": "stun:stun.example:3478"}]);
    let mut gw = Peer::connect(s.addr);
    gw.send(
        json!({"type": "register-server", "remoteId": GW_ID.to_lowercase(), "iceServers": ice}),
    );
    assert_eq!(gw.recv(), json!({"type": "registered", "remoteId": GW_ID}));

    let mut p = Peer::connect(s.addr);
    p.send_raw(Message::text("{not json"));
    assert_eq!(p.recv(), err("Invalid message format"));
    p.send(json!({"type": "fly"}));
    assert_eq!(p.recv(), err("Unknown message type: fly"));
    p.send(json!({"type": "register-server"}));
    assert_eq!(p.recv(), err("Remote ID required"));
    p.send(json!({"type": "connect-request"}));
    assert_eq!(p.recv(), err("Remote ID required"));
    p.send(json!({"type": "connect-request", "remoteId": "OFFLINE"}));
    assert_eq!(p.recv(), err(NOT_FOUND));
    p.send(json!({"type": "session-ready"}));
    assert_eq!(p.recv(), err("Session ID required"));
    p.send(json!({"type": "session-ready", "sessionId": "abc"}));
    assert_eq!(p.recv(), err("Not a registered server"));
    for kind in ["offer", "answer", "ice-candidate"] {
        p.send(json!({"type": kind, "data": {}}));
        assert_eq!(p.recv(), err("Not registered"));
    }
    // From a gateway: without sessionId, and for a session that does not exist.
    gw.send(json!({"type": "answer", "data": {}}));
    assert_eq!(gw.recv(), err("Session ID required"));
    gw.send(json!({"type": "ice-candidate", "sessionId": "nosuchsession", "data": {}}));
    assert_eq!(gw.recv(), err("Client not found"));
    // session-ready for a session that is not pending: ignored.
    gw.send(json!({"type": "session-ready", "sessionId": "nosuchsession", "iceServers": []}));
    gw.send(json!({"type": "ping"}));
    assert_eq!(gw.recv(), json!({"type": "pong"}));

    // A session: client-connected, connected with the fresh list, relays in both directions.
    let mut client = Peer::connect(s.addr);
    client.send(json!({"type": "connect-request", "remoteId": GW_ID}));
    let cc = gw.recv();
    let sid = cc["sessionId"].as_str().unwrap().to_string();
    assert_eq!(cc, json!({"type": "client-connected", "sessionId": sid}));
    let fresh = json!([{"urls": "turn:t.example", "username": "u", "credential": "c"}]);
    gw.send(json!({"type": "session-ready", "sessionId": sid, "iceServers": fresh}));
    assert_eq!(
        client.recv(),
        json!({"type": "connected", "remoteId": GW_ID, "sessionId": sid, "iceServers": fresh})
    );
    client.send(json!({"type": "offer", "data": {"type": "offer", "sdp": "v=0"}}));
    assert_eq!(
        gw.recv(),
        json!({"type": "offer", "sessionId": sid, "remoteId": GW_ID, "data": {"type": "offer", "sdp": "v=0"}})
    );
    gw.send(json!({"type": "answer", "sessionId": sid, "data": {"type": "answer", "sdp": "v=1"}}));
    assert_eq!(
        client.recv(),
        json!({"type": "answer", "sessionId": sid, "data": {"type": "answer", "sdp": "v=1"}})
    );
    // A pending client next to the connected one.
    let mut pending = Peer::connect(s.addr);
    pending.send(json!({"type": "connect-request", "remoteId": GW_ID}));
    assert_eq!(gw.recv()["type"], "client-connected");

    // The gateway is replaced from a new socket (close 4000): the connected client gets
    // peer-disconnected, the pending one the error.
    let mut new_gw = Peer::register(s.addr, GW_ID, json!([]));
    assert_eq!(gw.recv_close().code, CloseCode::from(4000));
    assert_eq!(client.recv(), json!({"type": "peer-disconnected"}));
    assert_eq!(pending.recv(), err("Server disconnected"));
    // A client whose gateway is gone.
    client.send(json!({"type": "ice-candidate", "data": {}}));
    assert_eq!(client.recv(), err("Server disconnected"));

    // The same when the gateway's socket just closes.
    let mut client = Peer::connect(s.addr);
    client.send(json!({"type": "connect-request", "remoteId": GW_ID}));
    let sid = new_gw.recv_type("client-connected")["sessionId"].clone();
    new_gw.send(json!({"type": "session-ready", "sessionId": sid}));
    client.recv_type("connected");
    let mut pending = Peer::connect(s.addr);
    pending.send(json!({"type": "connect-request", "remoteId": GW_ID}));
    new_gw.recv_type("client-connected");
    // A client leaving is reported to its gateway first.
    let mut leaving = Peer::connect(s.addr);
    leaving.send(json!({"type": "connect-request", "remoteId": GW_ID}));
    let left = new_gw.recv_type("client-connected")["sessionId"].clone();
    drop(leaving);
    assert_eq!(
        new_gw.recv(),
        json!({"type": "client-disconnected", "sessionId": left})
    );
    drop(new_gw);
    assert_eq!(client.recv(), json!({"type": "peer-disconnected"}));
    assert_eq!(pending.recv(), err("Server disconnected"));
    let health = get_json(s.addr, "/health");
    assert_eq!(
        health.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["clients", "pendingClients", "servers", "status", "version"]
    );
    assert_eq!(
        get_json(s.addr, &format!("/api/check/{GW_ID}")),
        json!({"online": false})
    );
}

fn proof(prover: &ma_webrtc_gateway::identity::Prover, peer: &Peer, id: &str) -> Value {
    serde_json::to_value(prover.prove(&peer.nonce, id).unwrap()).unwrap()
}

#[test]
fn a_proven_remote_id_cannot_be_taken_over() {
    let s = start(&[]);
    let identity = ma_webrtc_gateway::identity::Identity::generate().unwrap();
    let prover = identity.prover().unwrap();
    let id = identity.remote_id.clone();
    let mut owner = Peer::connect(s.addr);
    let p = proof(&prover, &owner, &id);
    owner.send(json!({"type": "register-server", "remoteId": id, "iceServers": [], "proof": p}));
    assert_eq!(owner.recv(), json!({"type": "registered", "remoteId": id}));
    // A squatter without proof, and one replaying the owner's proof on its own socket.
    for replay in [None, Some(p)] {
        let mut squatter = Peer::connect(s.addr);
        let mut msg = json!({"type": "register-server", "remoteId": id, "iceServers": []});
        if let Some(p) = replay {
            msg["proof"] = p;
        }
        squatter.send(msg);
        assert_eq!(
            squatter.recv(),
            json!({"type": "error", "error": "Remote ID is owned by another server"})
        );
        assert_eq!(squatter.recv_close().code, CloseCode::from(4003));
    }
    // The owner is undisturbed and still gets its clients.
    let mut client = Peer::connect(s.addr);
    client.send(json!({"type": "connect-request", "remoteId": id}));
    assert_eq!(
        owner.recv_type("client-connected")["type"],
        "client-connected"
    );
    // The owner, restarted with a new socket, proves itself again and takes over.
    let mut restarted = Peer::connect(s.addr);
    let p = proof(&prover, &restarted, &id);
    restarted.send(json!({"type": "register-server", "remoteId": id, "proof": p}));
    assert_eq!(restarted.recv_type("registered")["remoteId"], id.as_str());
    assert_eq!(owner.recv_close().code, CloseCode::from(4000));
}

#[test]
fn sockets_per_ip_are_capped() {
    let s = start(&["--max-sockets-per-ip", "2", "--limit-loopback", "true"]);
    let first = Peer::connect(s.addr);
    let _second = Peer::connect(s.addr);
    // Refused at accept: a 429 if the client reads it before the reset, never a 200.
    let refused = || {
        let mut tcp = TcpStream::connect(s.addr).unwrap();
        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let _ = tcp.write_all(b"GET /health HTTP/1.1\r\n\r\n");
        let mut raw = [0u8; 64];
        let n = read_some(&mut tcp, &mut raw);
        String::from_utf8_lossy(&raw[..n]).into_owned()
    };
    let status = refused();
    assert!(
        status.is_empty() || status.starts_with("HTTP/1.1 429"),
        "{status}"
    );
    drop(first);
    let mut ok = false;
    for _ in 0..100 {
        if refused().starts_with("HTTP/1.1 200 OK") {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ok, "a closed socket frees its place");
}

#[test]
fn behind_a_trusted_proxy_each_forwarded_client_is_limited_alone() {
    let s = start(&[
        "--trusted-proxy",
        "127.0.0.1",
        "--max-sockets-per-ip",
        "1",
        "--limit-loopback",
        "true",
    ]);
    let xff = "X-Forwarded-For";
    let _a = Peer::connect_with(s.addr, &[(xff, "203.0.113.1")]);
    let _b = Peer::connect_with(s.addr, &[(xff, "203.0.113.2")]);
    let _c = Peer::connect_with(s.addr, &[("Forwarded", "for=\"[2001:db8:1:2::1]:443\"")]);
    // The same client again (a spoofed leftmost hop changes nothing): closed at once.
    let mut again = Peer::open(s.addr, &[(xff, "198.51.100.7, 203.0.113.1")]);
    assert_eq!(again.recv_close().code, CloseCode::Policy);
    // The same /64 is one client.
    let mut same64 = Peer::open(s.addr, &[(xff, "2001:db8:1:2:ffff::9")]);
    assert_eq!(same64.recv_close().code, CloseCode::Policy);

    // Without --trusted-proxy the headers are not believed: the TCP peer is the client.
    let direct = start(&["--max-sockets-per-ip", "1", "--limit-loopback", "true"]);
    let _one = Peer::connect_with(direct.addr, &[(xff, "203.0.113.1")]);
    let tcp = TcpStream::connect(direct.addr).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let refused = tungstenite::client::client(format!("ws://{}/ws", direct.addr), tcp);
    assert!(
        refused.is_err(),
        "a second socket from 127.0.0.1 is refused"
    );
}
