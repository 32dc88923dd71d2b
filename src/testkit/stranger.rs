//! A stranger who knows a Remote ID: asks the signaling server for sessions it never means to
//! use (the squatting of docs/design.md#gateway-core). The end-to-end tests and the load
//! generator's attack scenario both play it against real processes.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use tungstenite::{Message, WebSocket};

use crate::signaling::protocol::{FromServer, Relay, SessionId, ToServer};

/// The stranger's open signaling socket and the session it was given. The session stays
/// pending at the gateway while the socket is open.
pub type Squatter = (WebSocket<TcpStream>, SessionId);

/// One stranger's session through the signaling server on `127.0.0.1:port`: a
/// `connect-request` for `remote_id`, then (if `offer`) an offer whose only candidate is a
/// loopback port nobody answers, so ICE never completes. `None` when the server refused or
/// did not answer within `wait`.
pub fn squat(port: u16, remote_id: &str, offer: bool, wait: Duration) -> Option<Squatter> {
    let stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(wait)).ok()?;
    let (mut ws, _) = tungstenite::client(format!("ws://127.0.0.1:{port}/ws"), stream).ok()?;
    let request = ToServer::ConnectRequest {
        remote_id: Some(remote_id.to_string()),
    };
    ws.send(Message::text(request.to_text())).ok()?;
    let session_id = loop {
        let msg = ws.read().ok()?;
        let Ok(text) = msg.to_text() else { continue };
        match FromServer::parse(text) {
            Ok(FromServer::Connected {
                session_id: Some(sid),
                ..
            }) => break sid,
            Ok(FromServer::Error { .. }) => return None,
            _ => {}
        }
    };
    if offer {
        let mut rtc = str0m::Rtc::builder().build(Instant::now());
        let nobody = "127.0.0.1:9".parse().ok()?;
        rtc.add_local_candidate(str0m::Candidate::host(nobody, "udp").ok()?);
        let mut api = rtc.sdp_api();
        api.add_channel("ma-api".into());
        let (sdp, _pending) = api.apply()?;
        let msg = ToServer::Offer(Relay::offer(session_id.clone(), &sdp.to_sdp_string()));
        ws.send(Message::text(msg.to_text())).ok()?;
    }
    Some((ws, session_id))
}
