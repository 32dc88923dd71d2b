//! The gateway core against our own web-app client, both sans-IO, wired in memory by the
//! test kit with a simulated clock: no sockets, no threads.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tungstenite::{Bytes, Message};

use super::bridge::{BridgeId, COMPACT_BELOW};
use super::{CoreConfig, Output};
use crate::identity::Identity;
use crate::machine::Machine;
use crate::remote_client::ClientEvent;
use crate::signaling::client::Event;
use crate::signaling::protocol::SessionId;
use crate::testkit::{ClientsEnd, Clock, GatewayEnd, Pair};

const SID: &str = "AbCdEfGh12345678";

type Sim = Pair<ClientsEnd, GatewayEnd>;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn sim(max_sessions: usize) -> Sim {
    sim_with(max_sessions, |_| {})
}

/// [`sim`] with a gateway configuration that `tune` changed first.
fn sim_with(max_sessions: usize, tune: impl FnOnce(&mut CoreConfig)) -> Sim {
    let identity = Identity::generate().unwrap();
    let clock = Clock::simulated();
    let now = clock.now();
    let mut cfg = GatewayEnd::config(max_sessions);
    tune(&mut cfg);
    let gw = GatewayEnd::new(now, cfg, &identity, addr("127.0.0.1:40000"));
    Pair::new(clock, ClientsEnd::new(&identity.remote_id), gw)
}

/// One client (session [`SID`]) connects: its API bridge is asked for and its channel opens.
fn connect(sim: &mut Sim) -> BridgeId {
    let now = sim.now();
    sim.a.add(now, addr("127.0.0.1:50000"), SID);
    sim.run_until(
        "the client's channel and the API bridge",
        Duration::from_secs(10),
        |s| s.a.clients[0].rc.is_open() && s.b.first_bridge().is_some(),
    );
    // Every trickled candidate says where it belongs, as browsers need.
    assert!(!sim.b.candidates.is_empty());
    for (_, candidate) in &sim.b.candidates {
        assert!(candidate["sdpMLineIndex"].is_u64() && candidate["sdpMid"].is_string());
    }
    sim.b.first_bridge().unwrap()
}

#[test]
fn session_ready_answer_trickle_and_the_api_bridge() {
    let mut sim = sim(4);
    let bridge = connect(&mut sim);
    assert_eq!(sim.b.ready, [SID]);
    assert_eq!(
        sim.b.ws[&bridge].url,
        format!("ws://127.0.0.1:8095/ws?webrtc_session_id={SID}")
    );

    // The client talks before MA's socket is open: nothing is lost or reordered.
    for i in 0..3 {
        let now = sim.now();
        assert!(sim.a.clients[0]
            .rc
            .handle_send_text(now, &format!("early {i}"))
            .unwrap());
    }
    sim.run_for(Duration::from_secs(1));
    assert!(
        sim.b.ws[&bridge].sent.is_empty(),
        "held until the socket opens"
    );
    let now = sim.now();
    sim.b.open_ws(now, bridge);
    sim.settle();
    assert_eq!(
        sim.b.ws[&bridge].sent_texts(),
        ["early 0", "early 1", "early 2"]
    );

    // MA -> client: small whole, 1 MiB chunked and reassembled.
    let now = sim.now();
    sim.b
        .gw
        .handle_ws_message(now, bridge, Message::text("{\"server_info\":1}"));
    let big: String = (0..1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    sim.b
        .gw
        .handle_ws_message(now, bridge, Message::text(big.clone()));
    // The driver reads the next message only when the core allows it (backpressure).
    sim.run_until("reading MA again", Duration::from_secs(10), |s| {
        s.b.gw.ws_read_allowed(bridge)
    });
    let now = sim.now();
    sim.b
        .gw
        .handle_ws_message(now, bridge, Message::text("after"));
    sim.run_until("three messages", Duration::from_secs(10), |s| {
        s.a.clients[0].text_count() >= 3
    });
    sim.run_for(Duration::from_secs(1));
    assert_eq!(
        sim.a.clients[0].texts(),
        vec!["{\"server_info\":1}".to_string(), big, "after".into()]
    );
}

#[test]
fn backpressure_pauses_the_local_socket_and_resumes_it() {
    let mut sim = sim(4);
    let bridge = connect(&mut sim);
    let now = sim.now();
    sim.b.open_ws(now, bridge);
    // Flood from MA without letting the client read: the bridge must pause reading.
    let chunk = "x".repeat(200_000);
    let mut n = 0;
    while sim.b.gw.ws_read_allowed(bridge) {
        sim.b
            .gw
            .handle_ws_message(now, bridge, Message::text(chunk.clone()));
        n += 1;
        assert!(n < 1000, "never paused");
    }
    // Let the client drain: the gateway resumes the socket, and nothing was lost.
    sim.run_until(
        "every message at the client",
        Duration::from_secs(60),
        |s| s.a.clients[0].text_count() >= n,
    );
    assert!(sim.b.ws[&bridge].resumed > 0, "resumed after draining");
    assert!(sim.b.gw.ws_read_allowed(bridge));
    assert_eq!(sim.a.clients[0].texts().len(), n);
}

/// Sessions One and Two connected with a `budget`, MA's sockets open, then MA floods both
/// bridges with 50 KB texts at one instant (the clients get no turn to read) for as long as
/// the gateway reads them: the simulation, the bridges and how many messages it read.
fn two_sessions_flooded(budget: usize) -> (Sim, Vec<BridgeId>, usize) {
    let mut sim = sim_with(4, |cfg| cfg.memory_budget = budget);
    let now = sim.now();
    sim.a.add(now, addr("127.0.0.1:50000"), "sessionOne");
    sim.a.add(now, addr("127.0.0.1:50001"), "sessionTwo");
    sim.run_until("both connected", Duration::from_secs(10), |s| {
        s.a.clients.iter().all(|c| c.rc.is_open()) && s.b.ws.len() == 2
    });
    let bridges: Vec<BridgeId> = sim.b.ws.keys().copied().collect();
    let now = sim.now();
    for b in &bridges {
        sim.b.open_ws(now, *b);
    }
    let chunk = "y".repeat(50_000);
    let mut sent = 0;
    for _ in 0..200 {
        for b in &bridges {
            if sim.b.gw.ws_read_allowed(*b) {
                sim.b
                    .gw
                    .handle_ws_message(now, *b, Message::text(chunk.clone()));
                sent += 1;
            }
        }
    }
    (sim, bridges, sent)
}

#[test]
fn a_gateway_wide_budget_pauses_every_socket_that_adds_to_it_until_it_drains() {
    // Two sessions, a budget (300 KB) below one bridge's own high-water mark (512 KiB): only
    // the budget can pause them.
    let (mut sim, bridges, sent) = two_sessions_flooded(300_000);
    assert!(
        bridges.iter().all(|b| !sim.b.gw.ws_read_allowed(*b)),
        "both paused"
    );
    let queued = sim.b.gw.queued_bytes();
    assert!(
        queued < 300_000 + 2 * 60_000,
        "the budget held: {queued} bytes queued"
    );
    // The clients read: everything arrives and both sockets resume.
    sim.run_until(
        "every message at the clients",
        Duration::from_secs(120),
        |s| s.a.clients.iter().map(|c| c.text_count()).sum::<usize>() >= sent,
    );
    assert!(bridges.iter().all(|b| sim.b.gw.ws_read_allowed(*b)));
    assert!(bridges.iter().all(|b| sim.b.ws[b].resumed > 0));
}

#[test]
fn the_session_goes_with_its_ma_socket() {
    let mut sim = sim(4);
    let bridge = connect(&mut sim);
    let now = sim.now();
    sim.b.open_ws(now, bridge);
    sim.b.gw.handle_ws_closed(now, bridge, "MA went away");
    sim.run_until("the client fails", Duration::from_secs(10), |s| {
        s.a.clients[0].failure().is_some()
    });
    assert_eq!(sim.b.gw.session_count(), 0);
    let events = &sim.a.clients[0].events;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ClientEvent::Failed(w) if w.contains("closed the"))),
        "{events:?}"
    );
}

#[test]
fn client_disconnected_frees_everything() {
    let mut sim = sim(4);
    let bridge = connect(&mut sim);
    let now = sim.now();
    sim.b.gw.handle_client_disconnected(now, SID);
    sim.run_until(
        "nothing left after the channel resets",
        Duration::from_secs(10),
        |s| s.b.gw.sessions.is_empty() && s.b.ws[&bridge].closed,
    );
    assert_eq!(sim.b.gw.session_count(), 0);
    assert!(sim.b.ws[&bridge].closed);
    // Datagrams from the old client are dropped, not routed anywhere.
    let (now, client) = (sim.now(), sim.a.clients[0].addr);
    sim.b.gw.handle_datagram(now, client, b"\x17\xfe\xfd junk");
    assert!(sim.b.gw.poll_output().output().is_none());
}

/// What the gateway answered `client-connected` with, in order.
fn ready(gw: &mut super::Gateway) -> Vec<String> {
    std::iter::from_fn(|| gw.poll_output().output())
        .filter_map(|o| match o {
            Output::SessionReady { session_id } => Some(session_id),
            _ => None,
        })
        .collect()
}

#[test]
fn a_newcomer_evicts_the_oldest_unconnected_session_and_offers_are_due_in_10_s() {
    let mut sim = sim(1);
    let now = sim.now();
    let gw = &mut sim.b.gw;
    gw.handle_client_connected(now, "one");
    gw.handle_client_connected(now, "two");
    assert_eq!(
        ready(gw),
        ["one", "two"],
        "nobody is refused for a squatter"
    );
    assert_eq!(gw.session_count(), 1, "\"one\" made room for \"two\"");
    // No offer within 10 s: the session is closed.
    gw.handle_timeout(now + Duration::from_secs(9));
    assert_eq!(gw.session_count(), 1);
    let later = now + Duration::from_secs(11);
    gw.handle_timeout(later);
    assert_eq!(gw.session_count(), 0);
    // Unknown sessions are ignored.
    gw.handle_offer(later, "nobody", "v=0");
    gw.handle_remote_candidate(later, "nobody", &json!({"candidate": ""}));
    gw.handle_client_disconnected(later, "nobody");
}

#[test]
fn unconnected_sessions_have_their_own_cap_and_connected_ones_keep_their_slots() {
    let mut sim = sim(32);
    connect(&mut sim);
    let now = sim.now();
    let gw = &mut sim.b.gw;
    // A flood of sessions that never connect: never more than the pre-connect cap of 8.
    for i in 0..100 {
        gw.handle_client_connected(now, &format!("squatter{i}"));
    }
    assert_eq!(ready(gw).len(), 100, "each newcomer got its session");
    assert_eq!(
        gw.session_count(),
        1 + 8,
        "the connected one and the 8 newest"
    );
    // The real client kept its session all along.
    let now = sim.now();
    assert!(sim.a.clients[0]
        .rc
        .handle_send_text(now, "still here")
        .unwrap());
    sim.settle();
    let bridge = sim.b.first_bridge().unwrap();
    sim.b.open_ws(now, bridge);
    sim.settle();
    assert!(sim.b.ws[&bridge]
        .sent_texts()
        .contains(&"still here".to_string()));

    // Every slot held by a connected session: a newcomer is refused, nobody is evicted.
    let mut full = self::sim(1);
    connect(&mut full);
    let now = full.now();
    full.b.gw.handle_client_connected(now, "late");
    assert!(ready(&mut full.b.gw).is_empty());
    assert_eq!(full.b.gw.session_count(), 1);
}

#[test]
fn a_connected_session_without_ma_api_is_closed_after_10_s() {
    use crate::testkit::RtcEnd;
    use str0m::change::SdpAnswer;
    use str0m::{Candidate, Rtc};

    let identity = Identity::generate().unwrap();
    let clock = Clock::simulated();
    let now = clock.now();
    let gw_addr = addr("127.0.0.1:40000");
    let mut gw = GatewayEnd::new(now, GatewayEnd::config(4), &identity, gw_addr);
    // A client that connects but opens only a side channel, never ma-api.
    let client_addr = addr("127.0.0.1:50000");
    let mut rtc = Rtc::builder().build(now);
    rtc.add_local_candidate(Candidate::host(client_addr, "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_channel("sendspin".into());
    let (offer, pending) = api.apply().unwrap();
    let mut pending = Some(pending);
    gw.gw.handle_client_connected(now, "lazy");
    gw.gw.handle_offer(now, "lazy", &offer.to_sdp_string());
    for o in std::iter::from_fn(|| gw.gw.poll_output().output()) {
        match o {
            Output::Answer { sdp, .. } => {
                let answer = SdpAnswer::from_sdp_string(&sdp).unwrap();
                let pending = pending.take().unwrap();
                rtc.sdp_api().accept_answer(pending, answer).unwrap();
            }
            Output::Candidate { candidate, .. } => {
                let line = candidate["candidate"].as_str().unwrap();
                rtc.add_remote_candidate(Candidate::from_sdp_string(line).unwrap());
            }
            _ => {}
        }
    }
    let mut pair = Pair::new(clock, RtcEnd::new(rtc, client_addr), gw);
    pair.run_until("ICE and DTLS", Duration::from_secs(5), |p| {
        p.a.rtc.is_connected()
    });
    let connected = pair.now();
    pair.run_until("the session closes", Duration::from_secs(30), |p| {
        p.b.gw.session_count() == 0
    });
    let waited = pair.now() - connected;
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(12),
        "closed {waited:?} after connecting"
    );
}

#[test]
fn shutdown_closes_every_session_at_once() {
    let mut sim = sim(4);
    connect(&mut sim);
    let now = sim.now();
    sim.b.gw.handle_shutdown(now, "test shutdown");
    sim.settle();
    assert_eq!(sim.b.gw.session_count(), 0);
    let events = &sim.a.clients[0].events;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ClientEvent::Failed(w) if w.contains("closed the connection"))),
        "{events:?}"
    );
}

// ---- Sendspin only after login ------------------------------------------------------------

const SENDSPIN_URL: &str = "ws://127.0.0.1:8927/sendspin";

/// A connected client whose API socket MA accepted: the API bridge.
fn logged_out(sim: &mut Sim) -> BridgeId {
    let api = connect(sim);
    let now = sim.now();
    sim.b.open_ws(now, api);
    sim.settle();
    api
}

/// The client sends `auth` on `ma-api`; MA answers with `reply` (a role, or `None`: refused).
fn login(sim: &mut Sim, api: BridgeId, message_id: serde_json::Value, reply: Option<&str>) {
    let now = sim.now();
    let auth = json!({"command": "auth", "args": {"token": "t"}, "message_id": message_id});
    assert!(sim.a.clients[0]
        .rc
        .handle_send_text(now, &auth.to_string())
        .unwrap());
    sim.settle();
    let answer = match reply {
        Some(role) => json!({"message_id": message_id, "result": {"authenticated": true,
                             "user": {"user_id": "u", "username": "n", "role": role}}}),
        None => json!({"message_id": message_id, "error_code": 20, "details": "bad token"}),
    };
    sim.b.ma_send(api, Message::text(answer.to_string()));
    sim.settle();
}

fn open_sendspin(sim: &mut Sim) {
    let now = sim.now();
    sim.a.clients[0]
        .rc
        .handle_open_channel(now, "sendspin")
        .unwrap();
    sim.run_until("the sendspin channel", Duration::from_secs(5), |s| {
        s.a.clients[0].rc.side_open("sendspin")
    });
}

fn send_sendspin(sim: &mut Sim, binary: bool, data: &[u8]) {
    let now = sim.now();
    assert!(sim.a.clients[0]
        .rc
        .handle_send_on(now, "sendspin", binary, data)
        .unwrap());
    sim.settle();
}

/// The Sendspin socket the gateway opened, if any.
fn sendspin_ws(sim: &Sim) -> Option<BridgeId> {
    let mut found = sim.b.ws.iter().filter(|(_, ws)| ws.url == SENDSPIN_URL);
    let first = found.next().map(|(b, _)| *b);
    assert!(found.next().is_none(), "one Sendspin socket at most");
    first
}

fn sendspin_closed(sim: &Sim) -> bool {
    sim.a.clients[0]
        .events
        .iter()
        .any(|e| matches!(e, ClientEvent::SideClosed { label } if label == "sendspin"))
}

#[test]
fn sendspin_before_login_is_held_then_closed_and_never_connected() {
    let mut sim = sim(4);
    logged_out(&mut sim);
    open_sendspin(&mut sim);
    let opened = sim.now();
    send_sendspin(
        &mut sim,
        false,
        br#"{"type":"auth","token":"x","client_id":"p"}"#,
    );
    send_sendspin(&mut sim, true, &[1, 2, 3]);
    sim.run_for(Duration::from_secs(4));
    assert_eq!(sendspin_ws(&sim), None, "nothing connected while held");
    assert!(!sendspin_closed(&sim), "held for the grace");
    sim.run_until("the channel closes", Duration::from_secs(5), |s| {
        sendspin_closed(s)
    });
    let held = sim.now() - opened;
    assert!(
        held >= Duration::from_secs(5) && held < Duration::from_secs(6),
        "closed after {held:?}"
    );
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sendspin_ws(&sim), None, "never connected");
    assert!(
        !sim.b
            .other
            .iter()
            .any(|o| matches!(o, Output::SendspinPlayer { .. })),
        "no player reported for a session that never logged in"
    );
    assert_eq!(sim.b.gw.session_count(), 1, "only the channel closed");
}

#[test]
fn sendspin_held_opens_once_ma_confirms_the_login() {
    let mut sim = sim(4);
    let api = logged_out(&mut sim);
    open_sendspin(&mut sim);
    send_sendspin(&mut sim, false, b"first");
    send_sendspin(&mut sim, true, &[9, 8, 7]);
    send_sendspin(&mut sim, false, b"third");
    // The auth is on its way: still held, until MA's reply.
    let now = sim.now();
    let auth = r#"{"command":"auth","args":{"token":"t"},"message_id":"m1"}"#;
    assert!(sim.a.clients[0].rc.handle_send_text(now, auth).unwrap());
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sendspin_ws(&sim), None);
    assert_eq!(sim.b.ws[&api].sent_texts(), [auth]);
    let reply = r#"{"message_id":"m1","result":{"authenticated":true,"user":{"role":"user"}}}"#;
    sim.b.ma_send(api, Message::text(reply));
    sim.settle();
    let ss = sendspin_ws(&sim).expect("connected after the login");
    assert!(sim.b.ws[&ss].sent.is_empty(), "held until the socket opens");
    let now = sim.now();
    sim.b.open_ws(now, ss);
    sim.settle();
    assert_eq!(
        sim.b.ws[&ss].sent,
        [
            Message::text("first"),
            Message::binary(vec![9, 8, 7]),
            Message::text("third")
        ],
        "every held message, in order"
    );
    // MA's reply reached the client too, and the channel stays open past the grace.
    sim.run_for(Duration::from_secs(10));
    assert!(!sendspin_closed(&sim));
    assert_eq!(sim.a.clients[0].texts(), [reply]);
}

#[test]
fn a_guest_asks_sendspin_for_the_player_role_only() {
    let mut sim = sim(4);
    let api = logged_out(&mut sim);
    login(&mut sim, api, json!(42), Some("guest"));
    open_sendspin(&mut sim);
    let ss = sendspin_ws(&sim).expect("logged in: connected at once");
    let now = sim.now();
    sim.b.open_ws(now, ss);
    let hello = json!({"type": "client/hello", "payload": {"client_id": "c", "name": "n",
        "supported_roles": ["controller@v1", "player@v1"], "extra": {"k": [1, 2]}}});
    let malformed = r#"{"type":"client/hello","payload":{"supported_roles":["controller@v1"]"#;
    let state = r#"{"type":"client/state","payload":{"supported_roles":["controller@v1"]}}"#;
    send_sendspin(&mut sim, false, hello.to_string().as_bytes());
    send_sendspin(&mut sim, false, malformed.as_bytes());
    send_sendspin(&mut sim, false, state.as_bytes());
    send_sendspin(&mut sim, true, hello.to_string().as_bytes());
    send_sendspin(&mut sim, false, hello.to_string().as_bytes());
    let sent = &sim.b.ws[&ss].sent;
    assert_eq!(sent.len(), 5);
    let mut want = hello.clone();
    want["payload"]["supported_roles"] = json!(["player@v1"]);
    for i in [0, 4] {
        let got: serde_json::Value = serde_json::from_str(sent[i].to_text().unwrap()).unwrap();
        assert_eq!(got, want, "hello {i} rewritten, the rest kept");
    }
    assert_eq!(sent[1], Message::text(malformed));
    assert_eq!(sent[2], Message::text(state));
    assert_eq!(sent[3], Message::binary(hello.to_string().into_bytes()));

    // An admin's hello passes untouched.
    let mut sim = self::sim(4);
    let api = logged_out(&mut sim);
    login(&mut sim, api, json!("a"), Some("admin"));
    open_sendspin(&mut sim);
    let ss = sendspin_ws(&sim).unwrap();
    let now = sim.now();
    sim.b.open_ws(now, ss);
    send_sendspin(&mut sim, false, hello.to_string().as_bytes());
    assert_eq!(sim.b.ws[&ss].sent, [Message::text(hello.to_string())]);
}

#[test]
fn the_client_cannot_log_itself_in() {
    let mut sim = sim(4);
    let api = logged_out(&mut sim);
    let now = sim.now();
    // The client forges MA's reply to its own auth on every channel it has.
    let forged = r#"{"message_id":1,"result":{"authenticated":true,"user":{"role":"admin"}}}"#;
    let client = &mut sim.a.clients[0].rc;
    client
        .handle_send_text(
            now,
            r#"{"command":"auth","args":{"token":"x"},"message_id":1}"#,
        )
        .unwrap();
    client.handle_send_text(now, forged).unwrap();
    sim.settle();
    open_sendspin(&mut sim);
    send_sendspin(&mut sim, false, forged.as_bytes());
    // MA answers another id, then refuses the login: neither counts as one.
    let other = r#"{"message_id":2,"result":{"authenticated":true,"user":{"role":"admin"}}}"#;
    sim.b.ma_send(api, Message::text(other));
    sim.b.ma_send(
        api,
        Message::text(r#"{"message_id":1,"error_code":20,"details":"Invalid token"}"#),
    );
    sim.run_until("the channel closes", Duration::from_secs(10), |s| {
        sendspin_closed(s)
    });
    assert_eq!(sendspin_ws(&sim), None, "nothing ever reached Sendspin");
    // A late MA success to the refused id is no longer awaited.
    sim.b.ma_send(api, Message::text(forged));
    sim.settle();
    open_sendspin(&mut sim);
    sim.run_for(Duration::from_secs(6));
    assert_eq!(sendspin_ws(&sim), None);
}

#[test]
fn a_logout_or_failed_login_closes_sendspin_and_its_socket() {
    for logout in [
        r#"{"command":"auth/logout","message_id":"bye"}"#,
        r#"{"command":"auth","args":{"token":"bad"},"message_id":"again"}"#,
    ] {
        let mut sim = sim(4);
        let api = logged_out(&mut sim);
        login(&mut sim, api, json!("in"), Some("admin"));
        open_sendspin(&mut sim);
        let ss = sendspin_ws(&sim).unwrap();
        let now = sim.now();
        sim.b.open_ws(now, ss);
        sim.settle();
        assert!(sim.a.clients[0].rc.handle_send_text(now, logout).unwrap());
        sim.settle();
        if logout.contains("again") {
            // A new auth: still in until MA refuses it.
            assert!(!sim.b.ws[&ss].closed);
            let refused = r#"{"message_id":"again","error_code":20,"details":"no"}"#;
            sim.b.ma_send(api, Message::text(refused));
            sim.settle();
        }
        assert!(sim.b.ws[&ss].closed, "the Sendspin socket closed: {logout}");
        sim.run_until("the channel closes", Duration::from_secs(5), |s| {
            sendspin_closed(s)
        });
        assert_eq!(sim.b.gw.session_count(), 1, "the session stays");
    }
}

#[test]
fn live_announcement_needs_no_login_and_passes_untouched() {
    let mut sim = sim(4);
    logged_out(&mut sim);
    let now = sim.now();
    sim.a.clients[0]
        .rc
        .handle_open_channel(now, "live_announcement")
        .unwrap();
    sim.run_until("the socket", Duration::from_secs(5), |s| s.b.ws.len() == 2);
    let (&la, ws) = sim.b.ws.iter().last().unwrap();
    assert!(ws.url.ends_with("/live_announcement"), "{}", ws.url);
    let now = sim.now();
    sim.b.open_ws(now, la);
    let first = r#"{"type":"client/hello","payload":{"supported_roles":["controller@v1"]}}"#;
    let now = sim.now();
    let client = &mut sim.a.clients[0].rc;
    client
        .handle_send_on(now, "live_announcement", false, first.as_bytes())
        .unwrap();
    client
        .handle_send_on(now, "live_announcement", true, &[0, 1])
        .unwrap();
    sim.settle();
    assert_eq!(
        sim.b.ws[&la].sent,
        [Message::text(first), Message::binary(vec![0, 1])]
    );
}

/// Nothing reaches the gateway's socket directly (a symmetric NAT, a firewall): the session
/// runs through its TURN relay, and the relay is released once the session is gone.
#[test]
fn a_session_runs_through_the_relay_when_nothing_else_gets_through() {
    use crate::testkit::turn::TurnStandin;
    use crate::turn::{TurnServer, TurnTransport};

    let identity = Identity::generate().unwrap();
    let clock = Clock::simulated();
    let now = clock.now();
    let mut cfg = GatewayEnd::config(4);
    cfg.turn_servers = vec![TurnServer {
        host: "203.0.113.1".into(),
        port: 3478,
        transport: TurnTransport::Udp,
        username: "user".into(),
        credential: "pass".into(),
    }];
    let gateway = addr("192.0.2.10:40000");
    let mut gw = GatewayEnd::new(now, cfg, &identity, gateway);
    let relay = addr("203.0.113.1:50000");
    gw.turn = Some(TurnStandin::new(
        addr("203.0.113.1:3478"),
        relay,
        "user",
        "pass",
    ));
    let mut sim = Pair::new(clock, ClientsEnd::new(&identity.remote_id), gw);
    sim.dead.insert(gateway);
    sim.a.add(now, addr("198.51.100.10:50000"), SID);
    sim.run_until(
        "the client's channel through the relay",
        Duration::from_secs(15),
        |s| s.a.clients[0].rc.is_open() && s.b.first_bridge().is_some(),
    );
    let relayed = |c: &serde_json::Value| {
        c["candidate"]
            .as_str()
            .is_some_and(|c| c.contains("typ relay") && c.contains("203.0.113.1 50000"))
    };
    assert!(sim.b.candidates.iter().any(|(_, c)| relayed(c)));
    assert_eq!(
        sim.a.clients[0].rc.gateway_path(),
        Some((relay, "relay".to_string()))
    );
    let turn = sim.b.turn.as_ref().unwrap();
    assert!(turn.relayed.0 > 0 && turn.relayed.1 > 0, "{turn:?}");

    // The client leaves: the allocation lingers, then is given back.
    let now = sim.now();
    sim.b.gw.handle_client_disconnected(now, SID);
    sim.run_for(Duration::from_secs(20));
    assert_eq!(sim.b.turn.as_ref().unwrap().released, 0, "still lingering");
    sim.run_for(Duration::from_secs(20));
    assert_eq!(sim.b.turn.as_ref().unwrap().released, 1);
}

#[test]
fn a_sessions_own_ice_servers_stay_with_it() {
    let mut sim = sim(4);
    let now = sim.now();
    let gw = &mut sim.b.gw;
    gw.handle_client_connected(now, "one");
    assert_eq!(ready(gw), ["one"]);
    assert_eq!(gw.session_ice_servers("one"), None);
    let list = json!([{"urls": "turn:t.example:3478", "username": "1:u", "credential": "c"}]);
    gw.handle_session_ice_servers(now, "one", list.clone());
    assert_eq!(gw.session_ice_servers("one"), Some(&list));
    // Its TURN server becomes the gateway's own relay for it: the name is looked up first.
    let lookups: Vec<(String, u16)> = std::iter::from_fn(|| gw.poll_output().output())
        .filter_map(|o| match o {
            Output::Lookup { host, port, .. } => Some((host, port)),
            _ => None,
        })
        .collect();
    assert_eq!(lookups, [("t.example".to_string(), 3478)]);
    // For a session that is gone (or never was), nothing is kept.
    gw.handle_session_ice_servers(now, "unknown", list);
    assert_eq!(gw.session_ice_servers("unknown"), None);
}

#[test]
fn stun_is_asked_over_each_address_family_we_have_a_socket_for() {
    use crate::gateway::Gateway;
    use crate::testkit::GatewayEnd;
    use crate::webrtc::stun_gather::stun_servers_from_ice_servers;
    use std::time::Instant;

    let now = Instant::now();
    let mut cfg = GatewayEnd::config(4);
    cfg.stun_servers = stun_servers_from_ice_servers(&json!([{"urls": "stun:stun.example:3478"}]));
    let identity = Identity::generate().unwrap();
    let mut gw = Gateway::new(now, cfg, identity.dtls_cert());
    let (v4, v6) = (addr("192.0.2.10:40000"), addr("[2001:db8::10]:40001"));
    gw.handle_host_candidate(now, v4);
    gw.handle_host_candidate(now, v6);
    gw.handle_registered(now);
    let key = match gw.poll_output().output() {
        Some(Output::Lookup { key, host, port }) => {
            assert_eq!((host.as_str(), port), ("stun.example", 3478));
            key
        }
        other => panic!("expected a lookup, got {other:?}"),
    };
    let servers = vec![
        addr("[2001:db8::3478]:3478"),
        addr("198.51.100.1:3478"),
        addr("198.51.100.2:3478"),
    ];
    gw.handle_resolved(now, key, Ok(servers));
    let sent_requests: Vec<(SocketAddr, SocketAddr, Vec<u8>)> =
        std::iter::from_fn(|| gw.poll_output().output())
            .filter_map(|o| match o {
                Output::Transmit(t) => Some((t.source, t.destination, t.contents)),
                _ => None,
            })
            .collect();
    let mut sent: Vec<(SocketAddr, SocketAddr)> =
        sent_requests.iter().map(|(s, d, _)| (*s, *d)).collect();
    sent.sort();
    assert_eq!(
        sent,
        [
            (v4, addr("198.51.100.1:3478")),
            (v6, addr("[2001:db8::3478]:3478"))
        ],
        "one Binding request per family, each from the host of its family"
    );
    // The IPv6 server answers: an IPv6 server-reflexive address, based on the IPv6 host.
    let (_, _, v6_request) = sent_requests.iter().find(|(_, d, _)| d.is_ipv6()).unwrap();
    let mapped = addr("[2001:db8:ffff::7]:61000");
    let response = xor_mapped_v6_response(&v6_request[8..20], mapped);
    gw.handle_datagram(now, addr("[2001:db8::3478]:3478"), &response);
    assert_eq!(gw.reflexive, [(mapped, v6)]);

    // An IPv4-only gateway asks over IPv4 only, as before.
    let mut cfg = GatewayEnd::config(4);
    cfg.stun_servers = stun_servers_from_ice_servers(&json!([{"urls": "stun:stun.example:3478"}]));
    let mut gw = Gateway::new(now, cfg, identity.dtls_cert());
    gw.handle_host_candidate(now, v4);
    gw.handle_registered(now);
    let Some(Output::Lookup { key, .. }) = gw.poll_output().output() else {
        panic!("expected a lookup")
    };
    gw.handle_resolved(
        now,
        key,
        Ok(vec![
            addr("[2001:db8::3478]:3478"),
            addr("198.51.100.1:3478"),
        ]),
    );
    let sent: Vec<SocketAddr> = std::iter::from_fn(|| gw.poll_output().output())
        .filter_map(|o| match o {
            Output::Transmit(t) => Some(t.destination),
            _ => None,
        })
        .collect();
    assert_eq!(sent, [addr("198.51.100.1:3478")]);
}

/// A STUN Binding success response for transaction `txid` with an IPv6 XOR-MAPPED-ADDRESS
/// (RFC 8489 section 14.2).
fn xor_mapped_v6_response(txid: &[u8], mapped: SocketAddr) -> Vec<u8> {
    const COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    let SocketAddr::V6(m) = mapped else {
        panic!("IPv6 only")
    };
    let mut r = vec![0x01, 0x01, 0x00, 24];
    r.extend_from_slice(&COOKIE);
    r.extend_from_slice(txid);
    r.extend_from_slice(&[0x00, 0x20, 0x00, 20, 0x00, 0x02]);
    r.extend_from_slice(&(m.port() ^ 0x2112).to_be_bytes());
    let key: Vec<u8> = COOKIE.iter().chain(txid).copied().collect();
    r.extend(m.ip().octets().iter().zip(&key).map(|(a, k)| a ^ k));
    r
}

#[test]
fn the_sessions_share_the_allowance_for_data_in_flight() {
    // A quarter of the budget (1 MiB of 4 MiB) is for data in flight: one session may use it
    // all (up to its own maximum), four get a quarter each, and a closed one gives its share
    // back. Never below the base window.
    let mut sim = sim_with(8, |cfg| cfg.memory_budget = 4 * 1024 * 1024);
    let base = GatewayEnd::config(8).session.send_window;
    let caps = |sim: &Sim| -> Vec<usize> {
        sim.b
            .gw
            .sessions
            .values()
            .map(|s| s.peer.window_cap())
            .collect()
    };
    let now = sim.now();
    sim.a.add(now, addr("127.0.0.1:50000"), "sessionOne");
    sim.run_until("one session", Duration::from_secs(10), |s| {
        s.b.gw.sessions.len() == 1
    });
    assert_eq!(caps(&sim), vec![1024 * 1024]);
    for (i, id) in ["sessionTwo", "sessionThree", "sessionFour"]
        .iter()
        .enumerate()
    {
        let now = sim.now();
        sim.a
            .add(now, addr(&format!("127.0.0.1:{}", 50001 + i)), id);
    }
    sim.run_until("four sessions", Duration::from_secs(10), |s| {
        s.b.gw.sessions.len() == 4
    });
    assert_eq!(caps(&sim), vec![256 * 1024; 4]);
    let now = sim.now();
    sim.b.gw.handle_client_disconnected(now, "sessionFour");
    sim.run_until("three sessions", Duration::from_secs(10), |s| {
        s.b.gw.sessions.len() == 3
    });
    assert_eq!(caps(&sim), vec![1024 * 1024 / 3; 3]);
    // Many sessions: each keeps at least the base window.
    for s in sim.b.gw.sessions.values_mut() {
        s.peer.set_window_cap(1000);
        assert_eq!(s.peer.send_window(), base);
    }
}

#[test]
fn a_small_waiting_message_no_longer_holds_its_read_buffer() {
    let mut sim = sim(4);
    let bridge = connect(&mut sim);
    let now = sim.now();
    sim.b.open_ws(now, bridge);
    // The client does not read: MA's messages wait. They are slices of one larger read
    // buffer, as tungstenite hands them out.
    let buffer = Bytes::from(vec![b'x'; 4 * COMPACT_BELOW]);
    let newest = |sim: &mut Sim, data: Bytes| {
        sim.b
            .gw
            .handle_ws_message(now, bridge, Message::Binary(data));
        let s = sim.b.gw.sessions.values_mut().next().unwrap();
        let b = s.bridges.values_mut().next().unwrap();
        b.newest_waiting().map(|f| f.data.as_ptr())
    };
    // Fill the send window first.
    let mut filler = 0;
    while newest(&mut sim, buffer.slice(0..COMPACT_BELOW)).is_none() {
        filler += 1;
        assert!(filler < 100, "the window never filled");
    }
    let small = buffer.slice(0..1000);
    assert_ne!(
        newest(&mut sim, small.clone()),
        Some(small.as_ptr()),
        "copied"
    );
    let large = buffer.slice(COMPACT_BELOW..2 * COMPACT_BELOW);
    assert_eq!(
        newest(&mut sim, large.clone()),
        Some(large.as_ptr()),
        "left as it is"
    );
}

#[test]
fn messages_larger_than_the_window_do_not_wait_for_delayed_acknowledgements() {
    // 60 KB replies, each larger than the 48 KiB window, back to back: each may go once the
    // previous one is acknowledged but for its last packet, whose acknowledgement the client
    // delays (200 ms) when it is odd. Waiting for that made each reply take 200 ms half the
    // time; on a simulated clock with no delay on the path they now go at once.
    let mut sim = sim(4);
    let bridge = connect(&mut sim);
    let now = sim.now();
    sim.b.open_ws(now, bridge);
    sim.settle();
    let start = sim.now();
    // Below the bridge's high-water mark (512 KiB): the driver would read them all at once.
    let n = 8;
    for i in 0..n {
        let text = format!("{i:02}{}", "z".repeat(60_000));
        sim.b
            .gw
            .handle_ws_message(start, bridge, Message::text(text));
    }
    sim.run_until("every reply at the client", Duration::from_secs(60), |s| {
        s.a.clients[0].text_count() >= n
    });
    let took = sim.now().saturating_duration_since(start);
    // Simulated time: 0 ms now, 200 ms (one delayed acknowledgement) before.
    assert!(
        took < Duration::from_millis(100),
        "{n} replies took {took:?}"
    );
}

#[test]
fn a_session_dropped_after_a_panic_frees_its_part_of_the_budget() {
    // Two sessions paused by the budget (300 KB, below a bridge's own high-water mark); a
    // panic in one drops it, and what it held no longer keeps the other's socket paused.
    let (mut sim, bridges, _) = two_sessions_flooded(300_000);
    let now = sim.now();
    assert!(bridges.iter().all(|b| !sim.b.gw.ws_read_allowed(*b)));
    // The session holding the most panics and is dropped.
    let held = |sim: &mut Sim, id: &str| {
        let key = sim.b.gw.by_id[id];
        let s = &sim.b.gw.sessions[&key];
        s.bridges.values().map(|b| b.queued_bytes()).sum::<usize>()
    };
    let (culprit, other) = match held(&mut sim, "sessionOne") >= held(&mut sim, "sessionTwo") {
        true => ("sessionOne", "sessionTwo"),
        false => ("sessionTwo", "sessionOne"),
    };
    let other_key = sim.b.gw.by_id[other];
    let event = Event::RemoteCandidate {
        session_id: SessionId::parse(culprit).unwrap(),
        candidate: json!({"candidate": super::isolation::PANIC_FOR_TESTS}),
    };
    sim.b.gw.handle_session_event(now, event);
    assert!(!sim.b.gw.by_id.contains_key(culprit), "dropped");
    let other_bridge = sim.b.gw.sessions[&other_key]
        .bridges
        .values()
        .next()
        .unwrap();
    let other_bridge = other_bridge.local.unwrap();
    assert!(
        sim.b.gw.ws_read_allowed(other_bridge),
        "the other session's socket reads again"
    );
}
