//! The doctor's checks: plain blocking I/O with a timeout per step, one [`Line`] per finding.
//! Nothing here runs inside the gateway; the command runs alone (docs/design.md#doctor).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use super::{classify_nat, Line, Nat};
use crate::config::{GatewayConfig, WsUrl};
use crate::identity::{self, Identity};
use crate::net::udp::SOCKET_BUFFER;
use crate::signaling::protocol::{FromServer, ToServer};
use crate::webrtc::stun_gather::{
    binding_request, parse_binding_response, stun_servers_from_ice_servers, BindingResponse,
    TransactionId,
};

/// A connected byte stream, plain or TLS.
pub trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// The stored identity: Remote ID and the certificate's validity.
pub fn identity(config: &GatewayConfig) -> Vec<Line> {
    let dir = config.data_dir.display();
    match Identity::load_existing(&config.data_dir) {
        Ok(id) => {
            let days = id.days_left();
            let mut lines = vec![Line::ok(
                "identity",
                format!(
                    "Remote ID {} in {dir}, certificate valid {days} more days",
                    identity::display_remote_id(&id.remote_id)
                ),
            )];
            if let Some(over) = config.remote_id.as_ref().filter(|o| **o != id.remote_id) {
                lines.push(Line::warn(
                    "Remote ID override",
                    format!("MA_REMOTE_ID={over} is not the certificate's ID"),
                    "apps that pin the certificate (the current web and mobile apps) refuse it",
                ));
            }
            lines
        }
        Err(e) => vec![Line::fail(
            "identity",
            e,
            "run the gateway once (or `id`) to create it, or point MA_DATA_DIR at MA's data \
             folder to keep its Remote ID",
        )],
    }
}

/// Open a TCP (and TLS for `wss`) connection to `url`, reporting each step when `steps`.
fn open_stream(
    url: &WsUrl,
    config: &GatewayConfig,
    timeout: Duration,
    what: &str,
    lines: &mut Vec<Line>,
    steps: bool,
) -> Result<Box<dyn Stream>, ()> {
    let hint_dns = "check the host name and this machine's DNS";
    let addrs: Vec<SocketAddr> = match (url.host.as_str(), url.port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            lines.push(Line::fail(
                format!("{what} DNS"),
                format!("{}: {e}", url.host),
                hint_dns,
            ));
            return Err(());
        }
    };
    let Some(first) = addrs.first() else {
        lines.push(Line::fail(
            format!("{what} DNS"),
            format!("{}: no address", url.host),
            hint_dns,
        ));
        return Err(());
    };
    if steps && url.host.parse::<IpAddr>().is_err() {
        lines.push(Line::ok(
            format!("{what} DNS"),
            format!("{} is {}", url.host, first.ip()),
        ));
    }
    let t0 = Instant::now();
    let mut last_error = String::new();
    let mut tcp = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => {
                tcp = Some((s, *addr));
                break;
            }
            Err(e) => last_error = format!("{addr}: {e}"),
        }
    }
    let Some((tcp, addr)) = tcp else {
        lines.push(Line::fail(
            format!("{what} TCP"),
            last_error,
            format!("is it running and reachable at {}?", url.host_port()),
        ));
        return Err(());
    };
    let _ = tcp.set_read_timeout(Some(timeout));
    let _ = tcp.set_write_timeout(Some(timeout));
    let _ = tcp.set_nodelay(true);
    if steps {
        let ms = t0.elapsed().as_millis();
        lines.push(Line::ok(
            format!("{what} TCP"),
            format!("connected to {addr} in {ms} ms"),
        ));
    }
    if !url.tls {
        return Ok(Box::new(tcp));
    }
    match tls(url, config, tcp) {
        Ok(s) => {
            if steps {
                lines.push(Line::ok(format!("{what} TLS"), "certificate verified"));
            }
            Ok(s)
        }
        Err(e) => {
            lines.push(Line::fail(
                format!("{what} TLS"),
                e,
                "a private CA? name its certificate in MA_SIGNALING_CA_FILE",
            ));
            Err(())
        }
    }
}

fn tls(url: &WsUrl, config: &GatewayConfig, tcp: TcpStream) -> Result<Box<dyn Stream>, String> {
    let client: Arc<rustls::ClientConfig> =
        config.tls_client_config()?.ok_or("no TLS configuration")?;
    let name = rustls::pki_types::ServerName::try_from(url.host.clone())
        .map_err(|e| format!("{}: {e}", url.host))?;
    let conn = rustls::ClientConnection::new(client, name).map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(Box::new(stream))
}

fn websocket(url: &WsUrl, stream: Box<dyn Stream>) -> Result<WebSocket<Box<dyn Stream>>, String> {
    tungstenite::client::client(url.to_url(), stream)
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e.to_string(),
            tungstenite::HandshakeError::Interrupted(_) => "timed out".into(),
        })
}

/// The signaling server, step by step: DNS, TCP, TLS, WebSocket, registration with a
/// throw-away Remote ID (a fresh identity held in memory only), and a round trip.
pub fn signaling(config: &GatewayConfig, timeout: Duration) -> Vec<Line> {
    let url = &config.signaling_url;
    let mut lines = Vec::new();
    let Ok(stream) = open_stream(url, config, timeout, "signaling", &mut lines, true) else {
        return lines;
    };
    let mut ws = match websocket(url, stream) {
        Ok(ws) => ws,
        Err(e) => {
            let hint = format!(
                "is {} the signaling server's WebSocket URL?",
                crate::status::public_url(url)
            );
            lines.push(Line::fail("signaling WebSocket", e, hint));
            return lines;
        }
    };
    lines.push(Line::ok("signaling WebSocket", "upgraded"));
    lines.push(register(&mut ws, timeout));
    if lines.last().is_some_and(|l| l.mark == super::Mark::Ok) {
        lines.push(round_trip(&mut ws, timeout));
    }
    let _ = ws.close(None);
    let _ = ws.flush();
    lines
}

fn register(ws: &mut WebSocket<Box<dyn Stream>>, timeout: Duration) -> Line {
    let what = "signaling registration";
    let throwaway = match Identity::generate().and_then(|i| i.prover()) {
        Ok(p) => p,
        Err(e) => return Line::fail(what, e.to_string(), "a crypto library problem"),
    };
    let id = throwaway.remote_id().to_string();
    let message = |proof| {
        let m = ToServer::RegisterServer {
            remote_id: Some(id.clone()),
            ice_servers: Some(json!([])),
            proof,
        };
        Message::text(m.to_text())
    };
    if let Err(e) = ws.send(message(None)) {
        return Line::fail(what, e.to_string(), "the server closed the connection");
    }
    let t0 = Instant::now();
    let hint = "the server does not speak the MA signaling protocol, or refuses this gateway";
    loop {
        if t0.elapsed() > timeout {
            return Line::fail(what, "no reply", hint);
        }
        let text = match ws.read() {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(frame)) => {
                let why = frame
                    .map(|f| format!("{} {}", f.code, f.reason))
                    .unwrap_or_default();
                return Line::fail(what, format!("closed: {why}"), hint);
            }
            Ok(_) => continue,
            Err(e) => return Line::fail(what, e.to_string(), hint),
        };
        match FromServer::parse(&text) {
            Ok(FromServer::Registered { .. }) => {
                let ms = t0.elapsed().as_millis();
                return Line::ok(what, format!("a throw-away ID registered in {ms} ms"));
            }
            Ok(FromServer::Challenge { nonce: Some(nonce) }) => {
                let proof = throwaway.prove(&nonce, &id).ok();
                if let Err(e) = ws.send(message(proof)) {
                    return Line::fail(what, e.to_string(), hint);
                }
            }
            Ok(FromServer::Error { .. }) => {
                return Line::fail(what, format!("refused: {text}"), hint);
            }
            _ => {}
        }
    }
}

fn round_trip(ws: &mut WebSocket<Box<dyn Stream>>, timeout: Duration) -> Line {
    let what = "signaling round trip";
    let t0 = Instant::now();
    if let Err(e) = ws.send(Message::Ping(b"doctor".to_vec().into())) {
        return Line::fail(what, e.to_string(), "the connection dropped");
    }
    while t0.elapsed() < timeout {
        match ws.read() {
            Ok(Message::Pong(_)) => {
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                return Line::ok(what, format!("{ms:.1} ms"));
            }
            Ok(_) => {}
            Err(e) => return Line::fail(what, e.to_string(), "the connection dropped"),
        }
    }
    Line::fail(
        what,
        "no pong",
        "the server or a proxy in between does not answer pings",
    )
}

/// MA's WebSocket API (must answer with its server info), Sendspin and MA's HTTP server (for
/// the image proxy).
pub fn local_services(config: &GatewayConfig, timeout: Duration) -> Vec<Line> {
    let mut lines = Vec::new();
    let api = &config.local_ws_url;
    let hint = format!(
        "is Music Assistant running? MA_LOCAL_WS_URL is {}",
        api.to_url()
    );
    let mut quiet = Vec::new();
    let opened = open_stream(api, config, timeout, "MA API", &mut quiet, false);
    let opened = opened.map_err(|()| quiet.pop().map(|l| l.detail).unwrap_or_default());
    match opened.and_then(|s| websocket(api, s)) {
        Ok(mut ws) => {
            let line = match ws.read() {
                Ok(Message::Text(t)) => {
                    let info: Value = serde_json::from_str(&t).unwrap_or_default();
                    let version = info["server_version"].as_str().unwrap_or("unknown version");
                    Line::ok(
                        "MA API",
                        format!("{} answers (server {version})", api.to_url()),
                    )
                }
                Ok(other) => Line::fail(
                    "MA API",
                    format!("unexpected first message {other:?}"),
                    hint,
                ),
                Err(e) => Line::fail("MA API", format!("no server info: {e}"), hint),
            };
            lines.push(line);
            let _ = ws.close(None);
        }
        Err(e) => lines.push(Line::fail("MA API", e, hint)),
    }
    let sendspin = &config.sendspin_url;
    let mut quiet = Vec::new();
    let line = match open_stream(sendspin, config, timeout, "Sendspin", &mut quiet, false) {
        Ok(s) => match websocket(sendspin, s) {
            Ok(mut ws) => {
                let _ = ws.close(None);
                Line::ok(
                    "Sendspin",
                    format!("{} accepts WebSockets", sendspin.to_url()),
                )
            }
            Err(e) => Line::warn(
                "Sendspin",
                e,
                "remote players get no audio (MA_SENDSPIN_URL)",
            ),
        },
        Err(()) => {
            let detail = quiet.pop().map(|l| l.detail).unwrap_or_default();
            Line::warn(
                "Sendspin",
                detail,
                "remote players get no audio (MA_SENDSPIN_URL)",
            )
        }
    };
    lines.push(line);
    lines.push(http(config, timeout));
    lines
}

fn http(config: &GatewayConfig, timeout: Duration) -> Line {
    let url = &config.local_ws_url;
    let hint = "the image proxy (artwork for remote clients) will fail";
    let mut quiet = Vec::new();
    let Ok(mut s) = open_stream(url, config, timeout, "MA HTTP", &mut quiet, false) else {
        let detail = quiet.pop().map(|l| l.detail).unwrap_or_default();
        return Line::warn("MA HTTP", detail, hint);
    };
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        url.host_port()
    );
    let mut head = [0u8; 64];
    let got = s
        .write_all(request.as_bytes())
        .and_then(|_| s.read(&mut head));
    match got {
        Ok(n) if head[..n].starts_with(b"HTTP/1.") && n >= 12 => {
            let code = String::from_utf8_lossy(&head[9..12]).to_string();
            Line::ok(
                "MA HTTP",
                format!("http://{} answers (status {code})", url.host_port()),
            )
        }
        Ok(_) => Line::warn("MA HTTP", "not an HTTP answer", hint),
        Err(e) => Line::warn("MA HTTP", e.to_string(), hint),
    }
}

/// The UDP socket buffers the kernel grants (docs/design.md#udp-socket-buffers).
pub fn udp_buffers(config: &GatewayConfig) -> Line {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(config.udp_bind.ip(), 0);
    let got =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).and_then(|s| {
            let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
            let _ = s.set_send_buffer_size(SOCKET_BUFFER);
            Ok((s.recv_buffer_size()?, s.send_buffer_size()?))
        });
    match got {
        Ok((rx, tx)) if rx >= SOCKET_BUFFER && tx >= SOCKET_BUFFER => Line::ok(
            "UDP buffers",
            format!("receive {} KiB, send {} KiB", rx / 1024, tx / 1024),
        ),
        Ok((rx, tx)) => Line::warn(
            "UDP buffers",
            format!(
                "receive {} KiB, send {} KiB (asked for {} KiB)",
                rx / 1024,
                tx / 1024,
                SOCKET_BUFFER / 1024
            ),
            format!("large transfers stall on loss; sysctl -w net.core.rmem_max={SOCKET_BUFFER} net.core.wmem_max={SOCKET_BUFFER}"),
        ),
        Err(e) => Line::fail("UDP buffers", format!("cannot open a UDP socket: {e}"), "is UDP allowed for this user?"),
    }
}

/// The NAT in front of us, per address family: the mapping two (or more) STUN servers see for
/// one local socket, compared. Returns the IPv4 result (or IPv6's when IPv4 told nothing).
pub fn nat(config: &GatewayConfig, timeout: Duration) -> (Nat, Vec<Line>) {
    let servers: Vec<_> = stun_servers_from_ice_servers(&config.ice_servers)
        .into_iter()
        .filter(|s| !s.secure)
        .collect();
    let mut lines = Vec::new();
    let mut best = Nat::Unknown;
    // The address the gateway binds (MA_UDP_BIND), on another port: the gateway may be
    // running on its own.
    let ip = config.udp_bind.ip();
    let v4: IpAddr = if ip.is_ipv4() {
        ip
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let v6: IpAddr = if ip.is_ipv6() {
        ip
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    for (family, bind) in [
        ("IPv4", SocketAddr::new(v4, 0)),
        ("IPv6", SocketAddr::new(v6, 0)),
    ] {
        let what = format!("NAT {family}");
        let targets: Vec<(String, SocketAddr)> = servers
            .iter()
            .filter_map(|s| {
                let addr = s
                    .host_port()
                    .to_socket_addrs()
                    .ok()?
                    .find(|a| a.is_ipv4() == bind.is_ipv4())?;
                Some((s.to_string(), addr))
            })
            .collect();
        if targets.is_empty() {
            let line = match family {
                "IPv4" => Line::fail(
                    &what,
                    "no STUN server with an IPv4 address",
                    "list STUN servers in MA_ICE_SERVERS",
                ),
                _ => Line::ok(&what, "not checked: no STUN server with an IPv6 address"),
            };
            lines.push(line);
            continue;
        }
        let socket = match UdpSocket::bind(bind) {
            Ok(s) => s,
            Err(e) => {
                lines.push(Line::ok(
                    &what,
                    format!("not checked: no {family} socket ({e})"),
                ));
                continue;
            }
        };
        let answers = ask_stun(&socket, &targets, timeout);
        let mapped: Vec<SocketAddr> = answers.iter().map(|(_, m)| *m).collect();
        let nat = classify_nat(&mapped);
        let seen = |answers: &[(String, SocketAddr)]| {
            answers
                .iter()
                .map(|(s, m)| format!("{m} from {s}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let line = match &nat {
            Nat::EndpointIndependent(public) => Line::ok(
                &what,
                format!("public address {public} the same for {} STUN servers: endpoint-independent mapping", answers.len()),
            ),
            Nat::OneAnswer(_) => Line::warn(
                &what,
                format!("only one STUN server answered ({}): the mapping cannot be compared", seen(&answers)),
                "list a second STUN server on another host in MA_ICE_SERVERS",
            ),
            Nat::EndpointDependent(_) => Line::fail(
                &what,
                format!("endpoint-dependent mapping ({}): a strict (symmetric) NAT", seen(&answers)),
                "clients behind strict NATs cannot reach this gateway without a TURN relay",
            ),
            Nat::Unknown if family == "IPv6" => Line::ok(&what, "not available (no IPv6 STUN answer)"),
            Nat::Unknown => Line::fail(
                &what,
                format!("no answer from {} STUN server(s)", targets.len()),
                "outgoing UDP may be blocked",
            ),
        };
        lines.push(line);
        let better =
            matches!(best, Nat::Unknown | Nat::OneAnswer(_)) && !matches!(nat, Nat::Unknown);
        if better {
            best = nat;
        }
    }
    (best, lines)
}

/// Binding requests to every target from one socket, retransmitted every 500 ms until each
/// answered or `timeout`; the mapped address each answer carried, in the targets' order.
fn ask_stun(
    socket: &UdpSocket,
    targets: &[(String, SocketAddr)],
    timeout: Duration,
) -> Vec<(String, SocketAddr)> {
    // Without randomness (it does not fail on Linux) a zero id still asks the question.
    let txids: Vec<TransactionId> = targets
        .iter()
        .map(|_| crate::turn::stun::random_txid().unwrap_or_default())
        .collect();
    let mut mapped: Vec<Option<SocketAddr>> = vec![None; targets.len()];
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline && mapped.iter().any(Option::is_none) {
        for (i, (_, addr)) in targets.iter().enumerate() {
            if mapped[i].is_none() {
                let _ = socket.send_to(&binding_request(&txids[i]), addr);
            }
        }
        let resend = (Instant::now() + Duration::from_millis(500)).min(deadline);
        while let Some(left) = resend
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            let _ = socket.set_read_timeout(Some(left));
            let Ok((n, _)) = socket.recv_from(&mut buf) else {
                break;
            };
            if let Some((txid, BindingResponse::Success(Some(m)))) =
                parse_binding_response(&buf[..n])
            {
                if let Some(i) = txids.iter().position(|t| *t == txid) {
                    mapped[i] = Some(m);
                }
            }
            if mapped.iter().all(Option::is_some) {
                break;
            }
        }
    }
    targets
        .iter()
        .zip(mapped)
        .filter_map(|((name, _), m)| Some((name.clone(), m?)))
        .collect()
}
