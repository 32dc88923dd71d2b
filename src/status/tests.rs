use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::gateway::observe::Traffic;

fn snapshot<'a>(signaling: &'a SignalingState, counters: &'a Counters) -> Snapshot<'a> {
    Snapshot {
        version: "9.9.9",
        uptime: Duration::from_secs(42),
        remote_id: "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        signaling_url: "wss://sig.example/ws".into(),
        mode: "basic",
        signaling,
        sessions: vec![SessionInfo {
            id: "sess-1".into(),
            age: Duration::from_secs(7),
            state: SessionState::Connected,
            channels: vec!["ma-api"],
            from_client: Traffic {
                bytes: 10,
                messages: 1,
            },
            to_client: Traffic {
                bytes: 20,
                messages: 2,
            },
            candidate_type: Some("host"),
        }],
        max_sessions: 32,
        counters,
        udp_send_dropped: 3,
        udp_unrouted: 4,
        memory_used: 100,
        memory_budget: 1000,
        rss_bytes: Some(4096),
    }
}

#[test]
fn mode_is_optimized_when_sessions_get_a_turn_server() {
    use crate::ice_source::IceMode;
    assert_eq!(mode(IceMode::Basic), "basic");
    for m in [
        IceMode::HomeAssistantCloud,
        IceMode::Url,
        IceMode::StaticTurn,
    ] {
        assert_eq!(mode(m), "optimized");
    }
}

#[test]
fn the_signaling_url_loses_its_query() {
    let url = WsUrl::parse("wss://sig.example:8443/ws?token=secret").unwrap();
    assert_eq!(public_url(&url), "wss://sig.example:8443/ws");
    let url = WsUrl::parse("ws://127.0.0.1:1/ws").unwrap();
    assert_eq!(public_url(&url), "ws://127.0.0.1:1/ws");
}

#[test]
fn status_carries_remote_access_info_and_sessions() {
    let mut sig = SignalingState {
        registered: true,
        registrations: 2,
        losses: 1,
        ..Default::default()
    };
    sig.last_registered = Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let counters = Counters::default();
    let v: Value = serde_json::from_str(&status_json(&snapshot(&sig, &counters))).unwrap();
    for key in ["enabled", "running", "connected"] {
        assert_eq!(v[key], true, "{key}");
    }
    assert_eq!(v["remote_id"], "ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    assert_eq!(v["signaling_url"], "wss://sig.example/ws");
    assert_eq!(v["mode"], "basic");
    assert_eq!(v["last_registered"], 1_700_000_000u64);
    assert_eq!(v["reconnects"], 1);
    assert_eq!(v["version"], "9.9.9");
    assert_eq!(v["uptime_seconds"], 42);
    let s = &v["sessions"][0];
    assert_eq!(s["id"], "sess-1");
    assert_eq!(s["state"], "connected");
    assert_eq!(s["channels"], json!(["ma-api"]));
    assert_eq!(s["bytes_from_client"], 10);
    assert_eq!(s["bytes_to_client"], 20);
    assert_eq!(s["candidate_type"], "host");
}

#[test]
fn every_metric_family_has_help_and_type() {
    let sig = SignalingState::default();
    let mut counters = Counters::default();
    counters.refuse(Refused::Full);
    counters.proxy_response(404);
    counters.setup.observe(0.2);
    counters.to_client[0].add(5);
    let text = metrics_text(&snapshot(&sig, &counters));
    let mut families = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.push(rest.split(' ').next().unwrap().to_string());
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = families.last().expect("a sample before any # TYPE");
            assert!(
                name.starts_with(family.as_str()),
                "{name} outside its family {family}"
            );
        }
    }
    for f in [
        "magw_sessions",
        "magw_sessions_refused_total",
        "magw_session_setup_seconds",
        "magw_channel_bytes_total",
        "magw_channel_messages_total",
        "magw_proxy_responses_total",
        "magw_signaling_reconnects_total",
        "magw_udp_dropped_total",
        "magw_queued_bytes",
        "magw_queued_bytes_budget",
        "process_resident_memory_bytes",
    ] {
        assert!(families.iter().any(|x| x == f), "missing {f}");
        assert!(text.contains(&format!("# HELP {f} ")), "no help for {f}");
    }
    assert!(text.contains("magw_sessions{state=\"connected\"} 1\n"));
    assert!(text.contains("magw_sessions_refused_total{reason=\"full\"} 1\n"));
    assert!(text.contains("magw_proxy_responses_total{status=\"404\"} 1\n"));
    assert!(text.contains("magw_channel_bytes_total{direction=\"to_client\",kind=\"ma-api\"} 5\n"));
    assert!(text.contains("magw_session_setup_seconds_count 1\n"));
    assert!(text.contains("magw_udp_dropped_total{reason=\"send_queue_full\"} 3\n"));
}

#[test]
fn health_follows_registration() {
    let mut sig = SignalingState::default();
    assert_eq!(health(&sig).0, 503);
    sig.registered = true;
    assert_eq!(health(&sig).0, 200);
}

#[test]
fn rss_is_read_on_linux() {
    if cfg!(target_os = "linux") {
        assert!(read_rss().unwrap() > 0);
    }
}
