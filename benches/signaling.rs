//! Signaling messages: the gateway's client (`src/signaling/client.rs`) parsing what the server
//! relays and building its replies, and the self-hosted server (`src/signaling/server/mod.rs`)
//! parsing and relaying. Real SDP (a str0m offer with one data channel, the gateway's answer to it).
//!
//! Run: `cargo bench --bench signaling`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ma_webrtc_gateway::backoff::{Backoff, Jitter};
use ma_webrtc_gateway::identity::Identity;
use ma_webrtc_gateway::machine::{Machine, Next};
use ma_webrtc_gateway::signaling::client::{ClientConfig, Output, SignalingClient};
use ma_webrtc_gateway::signaling::server::{Output as ServerOutput, ServerConfig, SignalServer};
use ma_webrtc_gateway::webrtc::session::{PeerSession, SessionConfig};
use serde_json::{json, Value};
use str0m::{Candidate, Rtc};

const SESSION: &str = "AbCdEfGhIjKlMnOp";

/// A data-channel offer as a web client makes it, the gateway's answer, and one candidate.
fn sdp() -> (String, String, Value, String) {
    let now = Instant::now();
    let client_addr: SocketAddr = "192.168.1.20:53012".parse().unwrap();
    let mut rtc = Rtc::builder().build(now);
    let cand = rtc
        .add_local_candidate(Candidate::host(client_addr, "udp").unwrap())
        .unwrap()
        .to_sdp_string();
    let mut api = rtc.sdp_api();
    api.add_channel("ma-api".into());
    let (offer, _pending) = api.apply().unwrap();
    let offer = offer.to_sdp_string();
    let id = Identity::generate().unwrap();
    let mut peer = PeerSession::new(now, id.dtls_cert(), &SessionConfig::default(), "b").unwrap();
    let answer = peer.handle_offer(now, &offer).unwrap();
    let gw_cand = peer
        .handle_host_candidate(now, "192.168.1.10:40000".parse().unwrap())
        .unwrap()
        .unwrap();
    (offer, answer, gw_cand, cand)
}

fn ice_servers() -> Value {
    serde_json::from_str(ma_webrtc_gateway::config::DEFAULT_ICE_SERVERS).unwrap()
}

/// A gateway signaling client, open and registered.
fn registered_client(now: Instant) -> SignalingClient {
    let mut c = SignalingClient::new(
        now,
        ClientConfig {
            remote_id: "QCPJJTJMI3IDBNURU6XJJENRYU".into(),
            ping_interval: Duration::from_secs(35),
            connect_timeout: Duration::from_secs(20),
        },
        ice_servers(),
        Backoff::new(
            Duration::from_secs(10),
            Duration::from_secs(300),
            Jitter::from_os(),
        ),
    );
    c.handle_timeout(now);
    c.handle_open(now);
    c.handle_text(
        now,
        r#"{"type":"registered","remoteId":"QCPJJTJMI3IDBNURU6XJJENRYU"}"#,
    );
    while let Next::Output(_) = c.poll_output() {}
    assert!(c.is_registered());
    c
}

fn drain(c: &mut SignalingClient) -> usize {
    let mut n = 0;
    while let Next::Output(o) = c.poll_output() {
        n += match o {
            Output::Send(t) => t.len(),
            _ => 1,
        };
    }
    n
}

fn gateway_client(crit: &mut Criterion) {
    let (offer, answer, gw_cand, client_cand) = sdp();
    let now = Instant::now();
    let offer_msg =
        json!({"type": "offer", "sessionId": SESSION, "remoteId": "QCPJJTJMI3IDBNURU6XJJENRYU",
                           "data": {"type": "offer", "sdp": offer}})
        .to_string();
    let cand_msg = json!({"type": "ice-candidate", "sessionId": SESSION,
                          "data": {"candidate": client_cand, "sdpMid": "0", "sdpMLineIndex": 0}})
    .to_string();
    let connected_msg = json!({"type": "client-connected", "sessionId": SESSION}).to_string();

    let mut g = crit.benchmark_group("signaling/gateway_client");
    g.throughput(Throughput::Bytes(offer_msg.len() as u64));
    g.bench_function("parse/offer", |b| {
        let mut c = registered_client(now);
        b.iter(|| {
            c.handle_text(now, black_box(&offer_msg));
            drain(&mut c)
        })
    });
    g.throughput(Throughput::Bytes(cand_msg.len() as u64));
    g.bench_function("parse/ice-candidate", |b| {
        let mut c = registered_client(now);
        b.iter(|| {
            c.handle_text(now, black_box(&cand_msg));
            drain(&mut c)
        })
    });
    // client-connected is parsed and answered (session-ready with the ICE servers) together:
    // the pending-ready table must not grow across iterations.
    g.throughput(Throughput::Elements(1));
    g.bench_function("client-connected+session-ready", |b| {
        let mut c = registered_client(now);
        b.iter(|| {
            c.handle_text(now, black_box(&connected_msg));
            c.handle_session_ready(now, SESSION).unwrap();
            drain(&mut c)
        })
    });
    g.throughput(Throughput::Bytes(answer.len() as u64));
    g.bench_function("build/answer", |b| {
        let mut c = registered_client(now);
        b.iter(|| {
            c.handle_answer(now, SESSION, black_box(&answer));
            drain(&mut c)
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("build/ice-candidate", |b| {
        let mut c = registered_client(now);
        b.iter(|| {
            c.handle_candidate(now, SESSION, black_box(gw_cand.clone()));
            drain(&mut c)
        })
    });
    g.finish();
}

const GW: u64 = 1;
const CLIENT: u64 = 2;

fn drain_server(s: &mut SignalServer) -> String {
    let mut last = String::new();
    while let Next::Output(o) = s.poll_output() {
        if let ServerOutput::Send { text, .. } = o {
            last = text;
        }
    }
    last
}

/// A server with one registered gateway and one client whose session is connected.
fn server_with_session(now: Instant) -> (SignalServer, String) {
    let mut s = SignalServer::new(now, ServerConfig::default());
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    s.handle_open(now, GW, ip);
    s.handle_open(now, CLIENT, ip);
    let remote_id = "QCPJJTJMI3IDBNURU6XJJENRYU";
    s.handle_text(
        now,
        GW,
        &json!({"type": "register-server", "remoteId": remote_id, "iceServers": ice_servers()})
            .to_string(),
    );
    drain_server(&mut s);
    s.handle_text(
        now,
        CLIENT,
        &json!({"type": "connect-request", "remoteId": remote_id}).to_string(),
    );
    let cc: Value = serde_json::from_str(&drain_server(&mut s)).unwrap();
    let session = cc["sessionId"].as_str().unwrap().to_string();
    s.handle_text(
        now,
        GW,
        &json!({"type": "session-ready", "sessionId": session, "iceServers": ice_servers()})
            .to_string(),
    );
    drain_server(&mut s);
    (s, session)
}

fn server(crit: &mut Criterion) {
    let (offer, answer, gw_cand, client_cand) = sdp();
    let now = Instant::now();
    let mut g = crit.benchmark_group("signaling/server");

    let offer_msg = json!({"type": "offer", "data": {"type": "offer", "sdp": offer}}).to_string();
    g.throughput(Throughput::Bytes(offer_msg.len() as u64));
    g.bench_function("relay/offer", |b| {
        let (mut s, _) = server_with_session(now);
        b.iter(|| {
            s.handle_text(now, CLIENT, black_box(&offer_msg));
            drain_server(&mut s).len()
        })
    });
    let cand_msg = json!({"type": "ice-candidate",
                          "data": {"candidate": client_cand, "sdpMid": "0", "sdpMLineIndex": 0}})
    .to_string();
    g.throughput(Throughput::Bytes(cand_msg.len() as u64));
    g.bench_function("relay/ice-candidate", |b| {
        let (mut s, _) = server_with_session(now);
        b.iter(|| {
            s.handle_text(now, CLIENT, black_box(&cand_msg));
            drain_server(&mut s).len()
        })
    });
    let answer_len = answer.len() as u64;
    g.throughput(Throughput::Bytes(answer_len));
    g.bench_function("relay/answer", |b| {
        let (mut s, session) = server_with_session(now);
        let msg = json!({"type": "answer", "sessionId": session,
                         "data": {"type": "answer", "sdp": answer}})
        .to_string();
        b.iter(|| {
            s.handle_text(now, GW, black_box(&msg));
            drain_server(&mut s).len()
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("relay/gateway-candidate", |b| {
        let (mut s, session) = server_with_session(now);
        let msg =
            json!({"type": "ice-candidate", "sessionId": session, "data": gw_cand}).to_string();
        b.iter(|| {
            s.handle_text(now, GW, black_box(&msg));
            drain_server(&mut s).len()
        })
    });
    // A whole session set-up and tear-down on the server: connect-request, session-ready,
    // client leaves.
    g.throughput(Throughput::Elements(1));
    g.bench_function("session/connect-ready-close", |b| {
        let (mut s, _) = server_with_session(now);
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let request = json!({"type": "connect-request", "remoteId": "QCPJJTJMI3IDBNURU6XJJENRYU"})
            .to_string();
        let mut conn = 100u64;
        b.iter(|| {
            conn += 1;
            s.handle_open(now, conn, ip);
            s.handle_text(now, conn, &request);
            let cc: Value = serde_json::from_str(&drain_server(&mut s)).unwrap();
            let session = cc["sessionId"].as_str().unwrap();
            s.handle_text(
                now,
                GW,
                &json!({"type": "session-ready", "sessionId": session}).to_string(),
            );
            drain_server(&mut s);
            s.handle_closed(now, conn);
            drain_server(&mut s).len()
        })
    });
    g.finish();
}

criterion_group!(benches, gateway_client, server);
criterion_main!(benches);
