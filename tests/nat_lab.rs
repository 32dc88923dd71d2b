//! The NAT lab (tests/common/netlab.rs): the gateway at home behind a NAT, the client on a
//! mobile network behind another, the signaling server and a real coturn on the "internet"
//! between them, all in network namespaces this test makes. Each case asserts which of the
//! gateway's candidates the connection ended up on (the client reports the gateway's end of
//! the selected pair) and prints how long connecting took.
//!
//! Needs root, `ip`, `nft`, `iptables` and coturn's `turnserver`; without them each case says
//! SKIPPED on stderr, and fails instead when CI is set.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::browser::{Browser, BrowserProc, PageServer};
use common::ma_standin::{self, MaStandin};
use common::netlab::{
    self, Coturn, Lab, Nat, CLIENT_IP6, GATEWAY_IP, GATEWAY_IP6, SERVER_IP, SERVER_IP6,
};
use common::{temp_dir, Proc};
use ma_webrtc_gateway::config::WsUrl;
use ma_webrtc_gateway::driver::connect::Connection;
use ma_webrtc_gateway::remote_client::ClientOptions;
use ma_webrtc_gateway::testkit::path::{LossyPath, PathConfig};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);
/// The gateway's UDP port (fixed, so the lossy case can forward it at the home router).
const GATEWAY_PORT: u16 = 40000;

/// Everything a case runs: the lab, coturn, the signaling server, MA's stand-in and the
/// gateway (the last two at home).
struct World {
    gateway: Proc,
    _signal: Proc,
    _ma: MaStandin,
    turn: Coturn,
    signaling: WsUrl,
    remote_id: String,
    lab: Lab,
    /// The lab has IPv6 and the mobile network has only IPv6 ([`World::start_v6_only_mobile`]).
    v6_only_mobile: bool,
}

/// What the client saw.
#[derive(Debug)]
struct Outcome {
    /// The gateway's end of the selected pair and its candidate type.
    path: Option<(SocketAddr, String)>,
    /// From `connect-request` to MA's first message (`server_info`).
    to_server_info: Duration,
    /// From the answer to ICE and DTLS up.
    ice_dtls: Duration,
}

fn lab_or_skip(test: &str) -> bool {
    match netlab::unavailable() {
        None => true,
        Some(why) => {
            netlab::skip_or_fail(test, &why);
            false
        }
    }
}

impl World {
    /// Build the lab and start everything; `ice_servers` is the gateway's MA_ICE_SERVERS;
    /// `before_gateway` may change the lab (block UDP, …) before the gateway starts.
    fn start(
        home: Nat,
        mobile: Nat,
        ice_servers: Value,
        before_gateway: impl FnOnce(&Lab),
    ) -> World {
        World::start_with(home, mobile, ice_servers, before_gateway, false)
    }

    /// The home network dual-stack and the mobile network IPv6-only
    /// ([`Lab::add_ipv6`]): the signaling server listens on both IPv4 and IPv6 (the
    /// client comes over IPv6, the gateway over IPv4) and the gateway binds the wildcard, so
    /// it offers its global IPv6 address as well as its IPv4 one.
    fn start_v6_only_mobile(home: Nat, ice_servers: Value) -> World {
        World::start_with(home, Nat::Easy, ice_servers, |_| {}, true)
    }

    fn start_with(
        home: Nat,
        mobile: Nat,
        ice_servers: Value,
        before_gateway: impl FnOnce(&Lab),
        v6_only_mobile: bool,
    ) -> World {
        let lab = Lab::new(home, mobile);
        if v6_only_mobile {
            lab.add_ipv6(true);
        }
        let dir = temp_dir("natlab");
        let (ca, cert, key) = netlab::lab_certificates(&dir, SERVER_IP);
        let turn = Coturn::start(&lab, &dir, &cert, &key);
        // `[::]` takes IPv4 too (bindv6only is off in a new namespace).
        let listen = if v6_only_mobile {
            "[::]:0".to_string()
        } else {
            format!("{SERVER_IP}:0")
        };
        let mut signal = Lab::run_in(&lab.inet, move || {
            Proc::start(&["signal", "--listen", &listen], &[])
        });
        let line = signal.wait_for("listening on ", WAIT);
        let port = line
            .split("listening on ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .expect("signal's address")
            .port();
        before_gateway(&lab);
        let ma = Lab::run_in(&lab.gw, MaStandin::start);
        let env = [
            ("MA_SIGNALING_URL", format!("ws://{SERVER_IP}:{port}/ws")),
            ("MA_LOCAL_WS_URL", ma.url()),
            ("MA_DATA_DIR", dir.join("gw").display().to_string()),
            (
                "MA_UDP_BIND",
                if v6_only_mobile {
                    format!("0.0.0.0:{GATEWAY_PORT}")
                } else {
                    format!("{GATEWAY_IP}:{GATEWAY_PORT}")
                },
            ),
            ("MA_ICE_SERVERS", ice_servers.to_string()),
            ("MA_SIGNALING_CA_FILE", ca.display().to_string()),
            (
                "RUST_LOG",
                std::env::var("NAT_LAB_LOG").unwrap_or_else(|_| "debug".into()),
            ),
        ];
        let mut gateway = Lab::run_in(&lab.gw, move || Proc::start(&[], &env));
        let registered = gateway.wait_for_event("registered", WAIT);
        let remote_id = registered["remote_id"].as_str().unwrap().to_string();
        World {
            gateway,
            _signal: signal,
            _ma: ma,
            turn,
            signaling: WsUrl::parse(&format!("ws://{SERVER_IP}:{port}/ws")).unwrap(),
            remote_id,
            lab,
            v6_only_mobile,
        }
    }

    /// [`World::connect`], or fail showing the gateway's and coturn's logs.
    fn connect_or_explain(&mut self) -> Outcome {
        match self.connect(WAIT) {
            Ok(o) => o,
            Err(e) => panic!(
                "no connection: {e}\ngateway log:\n{}\ncoturn:\n{}",
                self.gateway.log().join("\n"),
                self.turn.log_tail()
            ),
        }
    }

    /// Connect from the mobile network like the web app (asking the lab's STUN server for a
    /// server-reflexive candidate) and wait for `server_info`.
    /// In an IPv6-only mobile network, the client reaches the signaling server at its IPv6
    /// address and asks no STUN server (the lab's has only IPv4).
    fn connect(&self, timeout: Duration) -> Result<Outcome, String> {
        let remote_id = self.remote_id.clone();
        let (signaling, stun_server, bind) = if self.v6_only_mobile {
            let url = format!("ws://[{SERVER_IP6}]:{}/ws", self.signaling.port);
            let bind = format!("[{CLIENT_IP6}]:0");
            (WsUrl::parse(&url).unwrap(), None, bind)
        } else {
            let bind = format!("{}:0", netlab::CLIENT_IP);
            (self.signaling.clone(), Some(netlab::stun_addr()), bind)
        };
        Lab::run_in(&self.lab.cl, move || {
            let options = ClientOptions {
                stun_server,
                ..ClientOptions::default()
            };
            let bind = bind.parse().unwrap();
            let started = Instant::now();
            let mut c =
                Connection::open_with(&signaling, None, &remote_id, bind, timeout, options)?;
            let first: Value =
                serde_json::from_str(&c.recv_text(timeout)?).map_err(|e| e.to_string())?;
            assert_eq!(first, ma_standin::server_info());
            let t = c.timings().clone();
            let outcome = Outcome {
                path: c.gateway_path(),
                to_server_info: started.elapsed(),
                ice_dtls: t
                    .connected
                    .zip(t.answered)
                    .map(|(c, a)| c - a)
                    .unwrap_or_default(),
            };
            c.close();
            Ok(outcome)
        })
    }
}

fn report(case: &str, o: &Outcome) {
    let (addr, kind) = o
        .path
        .clone()
        .unwrap_or((SocketAddr::from(([0, 0, 0, 0], 0)), "-".into()));
    eprintln!(
        "NAT lab {case}: connected via the gateway's {kind} candidate {addr}; server_info after {:.0} ms (answer -> ICE/DTLS up {:.0} ms)",
        o.to_server_info.as_secs_f64() * 1000.0,
        o.ice_dtls.as_secs_f64() * 1000.0
    );
}

fn path_kind(o: &Outcome) -> &str {
    o.path.as_ref().map(|(_, k)| k.as_str()).unwrap_or("-")
}

fn stun_only() -> Value {
    json!([{"urls": format!("stun:{SERVER_IP}:3478")}])
}

fn with_turn(turn_urls: &[&str]) -> Value {
    let mut list = vec![json!({"urls": format!("stun:{SERVER_IP}:3478")})];
    list.extend(turn_urls.iter().map(|u| netlab::turn_entry(u)));
    Value::Array(list)
}

#[test]
fn easy_nats_connect_directly_through_server_reflexive_candidates() {
    if !lab_or_skip("easy_nats") {
        return;
    }
    // STUN only: with a relay offered as well, str0m (the client here) may nominate whichever
    // pair answers first, and the relay's often does (README, "Reaching the gateway").
    let mut w = World::start(Nat::Easy, Nat::Easy, stun_only(), |_| {});
    let o = w.connect_or_explain();
    report("(a) both NATs endpoint-independent", &o);
    assert_eq!(path_kind(&o), "srflx", "{o:?}");
}

#[test]
fn symmetric_nats_connect_only_through_the_gateway_relay() {
    if !lab_or_skip("symmetric_nats_relay") {
        return;
    }
    let turn = format!("turn:{SERVER_IP}:3478?transport=udp");
    let mut w = World::start(Nat::Symmetric, Nat::Symmetric, with_turn(&[&turn]), |_| {});
    let o = w.connect_or_explain();
    report("(b) both NATs symmetric, TURN over UDP", &o);
    assert_eq!(path_kind(&o), "relay", "{o:?}");
}

#[test]
fn symmetric_nats_without_turn_fail_with_a_clear_log() {
    if !lab_or_skip("symmetric_nats_no_turn") {
        return;
    }
    let mut w = World::start(Nat::Symmetric, Nat::Symmetric, stun_only(), |_| {});
    let started = Instant::now();
    let result = w.connect(Duration::from_secs(25));
    assert!(result.is_err(), "connected without a relay: {result:?}");
    let line = w.gateway.wait_for("no network path to the client", WAIT);
    assert!(line.contains("TURN"), "{line}");
    eprintln!(
        "NAT lab (b) both NATs symmetric, no TURN: fails after {:.1} s; the gateway says: {line}",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn an_ipv6_only_client_network_reaches_a_dual_stack_home_over_ipv6() {
    if !lab_or_skip("ipv6_only_mobile") {
        return;
    }
    // The home NAT only touches IPv4; IPv6 is routed end to end, with a stateful firewall at
    // the mobile router. The gateway also offers its IPv4 host and server-reflexive
    // candidates, which the client, with no IPv4 at all, cannot pair with.
    let mut w = World::start_v6_only_mobile(Nat::Easy, stun_only());
    let client_v4 = std::process::Command::new("ip")
        .args(["-n", &w.lab.cl, "-4", "addr", "show", "scope", "global"])
        .output()
        .expect("run ip");
    assert!(
        client_v4.status.success() && client_v4.stdout.is_empty(),
        "the client still has IPv4: {}",
        String::from_utf8_lossy(&client_v4.stdout)
    );
    let o = w.connect_or_explain();
    report("(f) IPv6-only mobile network, dual-stack home", &o);
    let (addr, kind) = o.path.clone().expect("a selected pair");
    assert_eq!(kind, "host", "{o:?}");
    assert_eq!(
        addr.ip(),
        GATEWAY_IP6.parse::<std::net::IpAddr>().unwrap(),
        "{o:?}"
    );
    // The gateway offered both families: IPv6 was chosen, not the only thing on offer.
    let log = w.gateway.log();
    for host in [format!("[{GATEWAY_IP6}]:"), format!("{GATEWAY_IP}:")] {
        let offered = format!("WebRTC host candidate {host}");
        assert!(
            log.iter().any(|l| l.contains(&offered)),
            "{offered}: {log:#?}"
        );
    }
}

/// The home router drops every UDP packet from the home network.
fn block_udp_at_home(lab: &Lab) {
    lab.nft(
        &lab.home,
        "table ip block {\n chain blockudp { type filter hook forward priority 0; iifname \"lan0\" meta l4proto udp drop; }\n}\n",
    );
}

#[test]
fn udp_blocked_at_home_turn_over_tcp_carries_the_session() {
    if !lab_or_skip("udp_blocked_tcp") {
        return;
    }
    let udp = format!("turn:{SERVER_IP}:3478?transport=udp");
    let tcp = format!("turn:{SERVER_IP}:3478?transport=tcp");
    let mut w = World::start(
        Nat::Easy,
        Nat::Easy,
        with_turn(&[&udp, &tcp]),
        block_udp_at_home,
    );
    let o = w.connect_or_explain();
    report("(c) UDP blocked at home, TURN over TCP", &o);
    assert_eq!(path_kind(&o), "relay", "{o:?}");
    let line = w.gateway.wait_for("allocated", WAIT);
    assert!(
        line.contains("transport=tcp") && line.starts_with_turn(),
        "{line}"
    );
}

#[test]
fn udp_blocked_at_home_turn_over_tls_carries_the_session() {
    if !lab_or_skip("udp_blocked_tls") {
        return;
    }
    let tls = format!("turns:{SERVER_IP}:5349?transport=tcp");
    let mut w = World::start(Nat::Easy, Nat::Easy, with_turn(&[&tls]), block_udp_at_home);
    let o = w.connect_or_explain();
    report("(c) UDP blocked at home, TURN over TLS", &o);
    assert_eq!(path_kind(&o), "relay", "{o:?}");
    let line = w.gateway.wait_for("allocated", WAIT);
    assert!(line.contains("turns:"), "{line}");
}

#[test]
fn chromium_behind_a_symmetric_nat_connects_through_the_relay() {
    if !lab_or_skip("chromium_symmetric") {
        return;
    }
    let Some(exe) = Browser::Chromium.find() else {
        netlab::skip_or_fail("chromium_symmetric", "chromium is not installed");
        return;
    };
    let turn = format!("turn:{SERVER_IP}:3478?transport=udp");
    let mut w = World::start(Nat::Symmetric, Nat::Symmetric, with_turn(&[&turn]), |_| {});
    let cfg = json!({
        "browser": "chromium",
        "phases": ["connect"],
        "signal_url": w.signaling.to_url(),
        "remote_id": w.remote_id,
        "fake_media": false,
        "timeout_ms": 20_000,
        // Without its own TURN server, Chromium can only come through the gateway's relay
        // (with it, it prefers its own relay: see the README).
        "no_turn": true,
    });
    let dir = temp_dir("natlab-chromium");
    // The page server and the browser live in the mobile network.
    let (page, browser) = Lab::run_in(&w.lab.cl, move || {
        let page = PageServer::start(cfg.to_string());
        let browser = BrowserProc::launch(Browser::Chromium, &exe, &page.url(), &dir);
        (page, browser)
    });
    let report = loop {
        match page.reports.recv_timeout(Duration::from_secs(90)) {
            Ok(r) if r["phase"] == "connect" || r["phase"] == "fatal" => break r,
            Ok(_) => continue,
            Err(e) => panic!(
                "no report from Chromium ({e}); page log:\n{}\nbrowser:\n{}",
                page.logs.lock().unwrap().join("\n"),
                browser.log_tail(30)
            ),
        }
    };
    assert!(
        report["ok"] == true,
        "Chromium did not connect: {report}\npage log:\n{}\ngateway log:\n{}",
        page.logs.lock().unwrap().join("\n"),
        w.gateway.log().join("\n")
    );
    let first: Value = serde_json::from_str(report["server_info"].as_str().unwrap_or_default())
        .expect("server_info is JSON");
    assert_eq!(first, ma_standin::server_info());
    let pair = &report["describe"]["pair"];
    let local = pair["local"].as_str().unwrap_or_default();
    let remote = pair["remote"].as_str().unwrap_or_default();
    eprintln!(
        "NAT lab (d) Chromium, both NATs symmetric, the gateway's TURN over UDP: selected pair local {local} / remote {remote}; server_info after {} ms",
        report["server_info_ms"]
    );
    assert!(remote.starts_with("relay "), "{report}");
}

#[test]
fn a_slow_lossy_path_still_brings_server_info_and_a_1_mb_reply() {
    if !lab_or_skip("slow_lossy_path") {
        return;
    }
    // 80 ms round trip (40 ms each way in a relay in the mobile network: the kernel here has
    // no netem) and 2 % of the UDP packets crossing the mobile router dropped each way. The
    // home router forwards the gateway's UDP port, so the relay can reach it.
    let w = World::start(Nat::Easy, Nat::Easy, stun_only(), |lab| {
        lab.nft(
            &lab.home,
            &format!(
                "table ip forward_port {{\n chain pre {{ type nat hook prerouting priority -100; iifname \"wan0\" udp dport {GATEWAY_PORT} dnat to {GATEWAY_IP}:{GATEWAY_PORT}; }}\n}}\n"
            ),
        );
        // In from the internet, and out to it.
        for dir in ["-i", "-o"] {
            netlab::sh(&[
                "ip",
                "netns",
                "exec",
                &lab.mobile,
                "iptables",
                "-A",
                "FORWARD",
                dir,
                "wan0",
                "-p",
                "udp",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                "0.02",
                "-j",
                "DROP",
            ]);
        }
    });
    let (signaling, remote_id) = (w.signaling.clone(), w.remote_id.clone());
    let gateway: SocketAddr = format!("203.0.113.2:{GATEWAY_PORT}").parse().unwrap();
    let (to_info, to_reply, dropped) = Lab::run_in(&w.lab.cl, move || {
        let delay = PathConfig {
            delay: Duration::from_millis(40),
            ..PathConfig::clean()
        };
        let front = SocketAddr::from(([127, 0, 0, 1], 0));
        let back = format!("{}:0", netlab::CLIENT_IP).parse().unwrap();
        let path = LossyPath::start_between(front, back, gateway, delay, 7).expect("path");
        let options = ClientOptions {
            gateway_via: Some(path.addr()),
            ..ClientOptions::default()
        };
        let started = Instant::now();
        let bind = "127.0.0.1:0".parse().unwrap();
        let mut c = Connection::open_with(&signaling, None, &remote_id, bind, WAIT * 2, options)
            .expect("connects over the slow, lossy path");
        let first: Value = serde_json::from_str(&c.recv_text(WAIT).unwrap()).unwrap();
        assert_eq!(first, ma_standin::server_info());
        let to_info = started.elapsed();
        let size = 1024 * 1024;
        let ask = json!({"command": "standin/send", "size": size, "message_id": "big"}).to_string();
        let t0 = Instant::now();
        c.send_text(&ask, WAIT).unwrap();
        let reply = loop {
            let text = c.recv_text(WAIT * 2).expect("the 1 MB reply");
            if text.len() == size {
                break text;
            }
        };
        assert_eq!(reply, ma_standin::sized_json(size, &json!("big")));
        let to_reply = t0.elapsed();
        c.close();
        let dropped = path
            .stats()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed);
        (to_info, to_reply, dropped)
    });
    let lost = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &w.lab.mobile,
            "iptables",
            "-L",
            "FORWARD",
            "-v",
            "-x",
            "-n",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let lost: u64 = lost
        .lines()
        .filter(|l| l.contains("DROP"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(dropped, 0, "the relay only delays");
    eprintln!(
        "NAT lab (e) 80 ms RTT, 2 % loss: server_info after {:.0} ms, a 1 MB reply in {:.0} ms ({lost} UDP packets dropped by the router)",
        to_info.as_secs_f64() * 1000.0,
        to_reply.as_secs_f64() * 1000.0
    );
}

trait TurnLine {
    fn starts_with_turn(&self) -> bool;
}

impl TurnLine for String {
    /// A log line about a `turn:` (not `turns:`) server.
    fn starts_with_turn(&self) -> bool {
        self.contains("TURN server turn:")
    }
}
