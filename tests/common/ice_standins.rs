//! Where a user's TURN credentials come from, played by the test on loopback:
//! [`HaStandin`] is Home Assistant's WebSocket API (`/api/websocket`: auth, `cloud/status`,
//! `cloud/webrtc/ice_servers`), [`IceUrlStandin`] an HTTP server answering an ICE server list.
//! Each connection is served on its own thread; every connection is counted.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::Message;

/// How the Home Assistant stand-in behaves.
#[derive(Debug, Clone)]
pub enum Ha {
    /// Answers as a logged-in HA with an active subscription: `servers` for `token`, and
    /// `auth_invalid` for any other token.
    Serve { token: String, servers: Value },
    /// Accepts the WebSocket and never says anything.
    Stall,
}

pub struct HaStandin {
    pub port: u16,
    /// WebSocket connections accepted so far.
    pub connections: Arc<AtomicUsize>,
}

impl HaStandin {
    pub fn start(behaviour: Ha) -> HaStandin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                counted.fetch_add(1, Ordering::SeqCst);
                let behaviour = behaviour.clone();
                std::thread::spawn(move || serve_ha(stream, behaviour));
            }
        });
        HaStandin { port, connections }
    }

    /// `MA_HA_URL` for it.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Only Home Assistant's WebSocket path is served.
#[allow(clippy::result_large_err)] // tungstenite's callback signature
fn check_path(req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
    assert_eq!(req.uri().path(), "/api/websocket");
    Ok(resp)
}

fn serve_ha(stream: TcpStream, behaviour: Ha) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let Ok(mut ws) = tungstenite::accept_hdr(stream, check_path) else {
        return;
    };
    let (token, servers) = match behaviour {
        Ha::Stall => {
            // Hold the socket open, silent, until the gateway gives up on it.
            while ws.read().is_ok() {}
            return;
        }
        Ha::Serve { token, servers } => (token, servers),
    };
    let send = |ws: &mut tungstenite::WebSocket<TcpStream>, v: Value| {
        ws.send(Message::text(v.to_string())).is_ok()
    };
    if !send(
        &mut ws,
        json!({"type": "auth_required", "ha_version": "2026.11.0"}),
    ) {
        return;
    }
    while let Ok(msg) = ws.read() {
        let Message::Text(text) = msg else { continue };
        let msg: Value = serde_json::from_str(text.as_str()).unwrap();
        let reply = match msg["type"].as_str().unwrap_or_default() {
            "auth" if msg["access_token"] == token.as_str() => {
                json!({"type": "auth_ok", "ha_version": "2026.11.0"})
            }
            "auth" => {
                json!({"type": "auth_invalid", "message": "Invalid access token or password"})
            }
            "cloud/status" => json!({"id": msg["id"], "type": "result", "success": true,
                "result": {"logged_in": true, "active_subscription": true, "cloud": "connected"}}),
            "cloud/webrtc/ice_servers" => {
                json!({"id": msg["id"], "type": "result", "success": true, "result": servers})
            }
            other => json!({"id": msg["id"], "type": "result", "success": false,
                "error": {"code": "unknown_command", "message": format!("Unknown command {other}.")}}),
        };
        if !send(&mut ws, reply) {
            return;
        }
    }
}

/// An HTTP server answering every request with `body` (`application/json`), then closing;
/// or, stalled, one that accepts and never answers; or the same over TLS.
pub struct IceUrlStandin {
    pub port: u16,
    pub requests: Arc<AtomicUsize>,
    scheme: &'static str,
}

impl IceUrlStandin {
    pub fn start(body: Value) -> IceUrlStandin {
        IceUrlStandin::start_with(Some(body), None)
    }

    /// Accepts connections and reads, never answers.
    pub fn stalled() -> IceUrlStandin {
        IceUrlStandin::start_with(None, None)
    }

    /// HTTPS with this certificate and key (PEM), for `localhost`.
    pub fn start_tls(body: Value, cert_pem: &str, key_pem: &str) -> IceUrlStandin {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        IceUrlStandin::start_with(Some(body), Some(Arc::new(config)))
    }

    fn start_with(body: Option<Value>, tls: Option<Arc<rustls::ServerConfig>>) -> IceUrlStandin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let Some(body) = body.as_ref().map(Value::to_string) else {
                    // Stalled: hold the connection, read whatever comes, answer nothing.
                    std::thread::spawn(move || {
                        let mut stream = stream;
                        let mut sink = [0u8; 1024];
                        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
                    });
                    continue;
                };
                let counted = counted.clone();
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    None => serve_list(stream, &body, &counted),
                    Some(config) => {
                        let conn = rustls::ServerConnection::new(config).unwrap();
                        serve_list(rustls::StreamOwned::new(conn, stream), &body, &counted)
                    }
                });
            }
        });
        IceUrlStandin {
            port,
            requests,
            scheme,
        }
    }

    /// `MA_ICE_SERVERS_URL` for it (`localhost` for TLS, the certificate's name).
    pub fn url(&self) -> String {
        let host = if self.scheme == "https" {
            "localhost"
        } else {
            "127.0.0.1"
        };
        format!("{}://{host}:{}/ice-servers", self.scheme, self.port)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Read one request head, answer `body` as JSON.
fn serve_list(mut stream: impl Read + Write, body: &str, counted: &AtomicUsize) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    assert!(head.starts_with(b"GET /ice-servers HTTP/1.1\r\n"));
    counted.fetch_add(1, Ordering::SeqCst);
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}
