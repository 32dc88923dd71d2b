//! Side channels over loopback with real processes: Sendspin audio, live announcements, and the
//! HTTP image proxy in both of its forms.

mod common;

use common::ma_standin::{MaStandin, Seen};
use common::stack::{connect, expect_server_info, stack, WAIT};

#[test]
fn sendspin_frames_echo_intact_and_the_player_is_reported() {
    let sendspin = MaStandin::start_echo();
    let mut s = stack(&[(
        "MA_SENDSPIN_URL",
        format!("ws://127.0.0.1:{}/sendspin", sendspin.port),
    )]);
    let mut c = connect(&s);
    expect_server_info(&mut c);
    let sid = c.session_id().unwrap().to_string();
    c.open_channel("sendspin", WAIT).unwrap();

    // The first text message is the auth: forwarded unchanged, and reported as the player.
    let auth = r#"{"type":"auth","token":"t","client_id":"web-player-42"}"#;
    c.send_on("sendspin", false, auth.as_bytes(), WAIT).unwrap();
    assert_eq!(
        c.recv_on("sendspin", WAIT).unwrap(),
        (false, auth.as_bytes().to_vec())
    );
    let event = s.gateway.wait_for("stdout: {\"client_id\"", WAIT);
    let event: serde_json::Value =
        serde_json::from_str(event.trim_start_matches("stdout: ")).unwrap();
    assert_eq!(
        event,
        serde_json::json!({"event": "sendspin_player", "session_id": sid, "client_id": "web-player-42"})
    );

    // Binary audio frames of 1 B to 64 KiB, and text, keep their type and bytes.
    for size in [1usize, 2, 1000, 4096, 16 * 1024, 65_535, 64 * 1024] {
        let frame: Vec<u8> = (0..size).map(|i| (i * 31 % 256) as u8).collect();
        c.send_on("sendspin", true, &frame, WAIT).unwrap();
        assert_eq!(
            c.recv_on("sendspin", WAIT).unwrap(),
            (true, frame),
            "frame of {size} bytes"
        );
    }
    c.send_on("sendspin", false, br#"{"type":"client/state"}"#, WAIT)
        .unwrap();
    assert_eq!(
        c.recv_on("sendspin", WAIT).unwrap(),
        (false, br#"{"type":"client/state"}"#.to_vec())
    );
    sendspin.wait_until("the sendspin connection", |seen| {
        seen.contains(&Seen::Connected("/sendspin".into()))
    });

    // The API channel is unaffected.
    c.send_text(r#"{"message_id":"1"}"#, WAIT).unwrap();
    assert_eq!(c.recv_text(WAIT).unwrap(), r#"{"message_id":"1"}"#);
}

#[test]
fn sendspin_server_gone_closes_only_that_channel() {
    let sendspin = MaStandin::start_echo();
    let s = stack(&[(
        "MA_SENDSPIN_URL",
        format!("ws://127.0.0.1:{}/sendspin", sendspin.port),
    )]);
    let mut c = connect(&s);
    expect_server_info(&mut c);
    c.open_channel("sendspin", WAIT).unwrap();
    c.send_on("sendspin", false, br#"{"command":"standin/close"}"#, WAIT)
        .unwrap();
    let err = c
        .recv_on("sendspin", WAIT)
        .expect_err("the sendspin channel closes");
    assert!(err.contains("closed"), "{err}");
    c.send_text(r#"{"message_id":"2"}"#, WAIT).unwrap();
    assert_eq!(c.recv_text(WAIT).unwrap(), r#"{"message_id":"2"}"#);
}

#[test]
fn live_announcement_reaches_ma_on_its_own_path() {
    let s = stack(&[]);
    let mut c = connect(&s);
    expect_server_info(&mut c);
    c.open_channel("live_announcement", WAIT).unwrap();
    // The stand-in greets every connection with server_info; skip it.
    let (binary, _) = c.recv_on("live_announcement", WAIT).unwrap();
    assert!(!binary);
    let pcm: Vec<u8> = (0..9600u32)
        .flat_map(|i| ((i as i16).wrapping_mul(3)).to_le_bytes())
        .collect();
    c.send_on("live_announcement", true, &pcm, WAIT).unwrap();
    assert_eq!(c.recv_on("live_announcement", WAIT).unwrap(), (true, pcm));
    s.ma.wait_until("the live_announcement connection", |seen| {
        seen.contains(&Seen::Connected("/live_announcement".into()))
    });
}

#[test]
fn duplicate_and_late_unknown_labels_are_refused_without_touching_the_api() {
    let s = stack(&[]);
    let mut c = connect(&s);
    expect_server_info(&mut c);
    c.open_channel("something-else", WAIT).unwrap();
    let err = c.recv_on("something-else", WAIT).expect_err("refused");
    assert!(err.contains("closed"), "{err}");
    c.send_text(r#"{"message_id":"3"}"#, WAIT).unwrap();
    assert_eq!(c.recv_text(WAIT).unwrap(), r#"{"message_id":"3"}"#);
}
