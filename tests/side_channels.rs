//! Side channels over loopback with real processes: Sendspin audio, live announcements, and the
//! HTTP image proxy in both of its forms.

mod common;

use common::ma_standin::{MaStandin, Seen};
use common::stack::{connect, expect_server_info, stack, WAIT};

/// Log in on `ma-api` as the web app does; MA's (the stand-in's) reply is returned.
fn login(c: &mut Connection, token: &str, message_id: &str) -> Value {
    let auth = json!({"command": "auth", "args": {"token": token, "device_name": "test"},
                      "message_id": message_id});
    c.send_text(&auth.to_string(), WAIT).unwrap();
    let reply: Value = serde_json::from_str(&c.recv_text(WAIT).unwrap()).unwrap();
    assert_eq!(reply["message_id"], message_id);
    reply
}

/// A stack whose Sendspin server is an echoing stand-in (returned too: it must outlive the test).
fn sendspin_stack() -> (MaStandin, common::stack::Stack) {
    let sendspin = MaStandin::start_echo();
    let url = format!("ws://127.0.0.1:{}/sendspin", sendspin.port);
    (sendspin, stack(&[("MA_SENDSPIN_URL", url)]))
}

#[test]
fn sendspin_frames_echo_intact_and_the_player_is_reported() {
    let (sendspin, mut s) = sendspin_stack();
    let mut c = connect(&s);
    expect_server_info(&mut c);
    let sid = c.session_id().unwrap().to_string();
    let reply = login(&mut c, "good-admin", "login-1");
    assert_eq!(reply["result"]["user"]["role"], "admin");
    c.open_channel("sendspin", WAIT).unwrap();

    // The first text message is the auth: forwarded unchanged, and reported as the player.
    let auth = r#"{"type":"auth","token":"t","client_id":"web-player-42"}"#;
    c.send_on("sendspin", false, auth.as_bytes(), WAIT).unwrap();
    assert_eq!(
        c.recv_on("sendspin", WAIT).unwrap(),
        (false, auth.as_bytes().to_vec())
    );
    let event = s.gateway.wait_for_event("sendspin_player", WAIT);
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
    let (_sendspin, s) = sendspin_stack();
    let mut c = connect(&s);
    expect_server_info(&mut c);
    login(&mut c, "good-user", "login-1");
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
fn sendspin_is_for_logged_in_users_and_a_guest_is_only_a_player() {
    let (sendspin, s) = sendspin_stack();
    let mut c = connect(&s);
    expect_server_info(&mut c);

    // Not logged in (a wrong token does not count): held, then closed; nothing reaches
    // Sendspin.
    let reply = login(&mut c, "wrong", "login-1");
    assert_eq!(reply["error_code"], 20);
    c.open_channel("sendspin", WAIT).unwrap();
    let t0 = std::time::Instant::now();
    c.send_on(
        "sendspin",
        false,
        br#"{"type":"auth","client_id":"x"}"#,
        WAIT,
    )
    .unwrap();
    let err = c.recv_on("sendspin", WAIT).expect_err("closed");
    assert!(err.contains("closed"), "{err}");
    assert!(
        t0.elapsed() >= std::time::Duration::from_secs(4),
        "held for the grace first: {:?}",
        t0.elapsed()
    );
    assert!(sendspin.seen().is_empty(), "{:?}", sendspin.seen());

    // Opened before the login, which comes within the grace: connected then, nothing lost.
    c.open_channel("sendspin", WAIT).unwrap();
    c.send_on("sendspin", false, b"early", WAIT).unwrap();
    let reply = login(&mut c, "good-guest", "login-2");
    assert_eq!(reply["result"]["user"]["role"], "guest");
    assert_eq!(
        c.recv_on("sendspin", WAIT).unwrap(),
        (false, b"early".to_vec())
    );
    // A guest's hello asks for the player role only; the rest is kept, other messages are
    // byte-identical.
    let hello = json!({"type": "client/hello", "payload": {"client_id": "g", "name": "Guest",
        "version": 1, "supported_roles": ["controller@v1", "player@v1", "metadata@v1"]}});
    c.send_on("sendspin", false, hello.to_string().as_bytes(), WAIT)
        .unwrap();
    let (binary, echoed) = c.recv_on("sendspin", WAIT).unwrap();
    assert!(!binary);
    let mut want = hello.clone();
    want["payload"]["supported_roles"] = json!(["player@v1"]);
    assert_eq!(serde_json::from_slice::<Value>(&echoed).unwrap(), want);
    let state = br#"{"type":"client/state", "payload":{"supported_roles":["controller@v1"]}}"#;
    c.send_on("sendspin", false, state, WAIT).unwrap();
    assert_eq!(
        c.recv_on("sendspin", WAIT).unwrap(),
        (false, state.to_vec())
    );
    c.send_on("sendspin", true, &[7; 100], WAIT).unwrap();
    assert_eq!(c.recv_on("sendspin", WAIT).unwrap(), (true, vec![7; 100]));

    // Logging out closes Sendspin at once; the session stays.
    c.send_text(r#"{"command":"auth/logout","message_id":"bye"}"#, WAIT)
        .unwrap();
    let err = c.recv_on("sendspin", WAIT).expect_err("closed");
    assert!(err.contains("closed"), "{err}");
    assert_eq!(
        c.recv_text(WAIT).unwrap(),
        r#"{"command":"auth/logout","message_id":"bye"}"#,
        "MA's echo"
    );
    sendspin.wait_until("the Sendspin socket closed", |seen| {
        seen.iter().any(|x| matches!(x, Seen::Closed(_)))
    });
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

// ---- HTTP proxy ---------------------------------------------------------------------------

use common::ma_standin::image;
use ma_webrtc_gateway::driver::connect::Connection;
use serde_json::{json, Value};

/// A whole proxy reply: a 5 MiB image is 10 MiB of hex JSON, which a debug build on a loaded
/// 2-core machine needs about 20 s to fetch, encode, chunk, send and reassemble.
const REPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

fn proxy_request(id: &str, method: &str, path: &str) -> String {
    json!({"type": "http-proxy-request", "id": id, "method": method, "path": path,
           "headers": {"Accept": "image/*", "Cookie": "session=1", "X-Forwarded-For": "1.2.3.4"}})
    .to_string()
}

/// A proxy response on `ma-api`: the compact JSON form with a hex body.
fn api_proxy(c: &mut Connection, id: &str, method: &str, path: &str) -> (Value, Vec<u8>) {
    c.send_text(&proxy_request(id, method, path), WAIT).unwrap();
    let text = c.recv_text(REPLY_WAIT).unwrap();
    let prefix = format!(r#"{{"type":"http-proxy-response","id":"{id}","status":"#);
    assert!(
        text.starts_with(&prefix),
        "keys in the documented order: {:.200}",
        text
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    let body = data_encoding::HEXLOWER
        .decode(v["body"].as_str().unwrap().as_bytes())
        .unwrap();
    (v, body)
}

/// A proxy response on `http_proxy`: a text header with `size`, then binary frames.
fn binary_proxy(c: &mut Connection, id: &str, path: &str) -> (Value, Vec<u8>) {
    c.send_on(
        "http_proxy",
        false,
        proxy_request(id, "GET", path).as_bytes(),
        WAIT,
    )
    .unwrap();
    let (binary, header) = c.recv_on("http_proxy", WAIT).unwrap();
    assert!(!binary);
    let header: Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(header["type"], "http-proxy-response");
    assert_eq!(header["id"], id);
    let size = header["size"].as_u64().unwrap() as usize;
    let mut body = Vec::with_capacity(size);
    while body.len() < size {
        let (binary, frame) = c.recv_on("http_proxy", WAIT).unwrap();
        assert!(binary);
        assert!(frame.len() <= 256 * 1024, "frame within the peer's limit");
        body.extend_from_slice(&frame);
    }
    assert_eq!(body.len(), size);
    (header, body)
}

#[test]
fn images_of_every_size_over_both_proxy_forms() {
    let s = stack(&[]);
    let mut c = connect(&s);
    expect_server_info(&mut c);
    c.open_channel("http_proxy", WAIT).unwrap();
    for (i, size) in [0usize, 1024, 500 * 1024, 5 * 1024 * 1024]
        .into_iter()
        .enumerate()
    {
        let path = format!("/imageproxy?size={size}&path=album.jpg");
        let t0 = std::time::Instant::now();
        let (v, body) = api_proxy(&mut c, &format!("req_a{i}"), "GET", &path);
        let api_time = t0.elapsed();
        assert_eq!(v["status"], 200);
        assert_eq!(v["headers"]["Content-Type"], "image/jpeg");
        assert!(
            v["headers"].get("Set-Cookie").is_none(),
            "cookies are not passed back"
        );
        assert!(body == image(size), "ma-api body of {size} bytes");

        let t0 = std::time::Instant::now();
        let (h, body) = binary_proxy(&mut c, &format!("req_b{i}"), &path);
        let binary_time = t0.elapsed();
        assert_eq!(h["status"], 200);
        assert!(body == image(size), "http_proxy body of {size} bytes");
        // Information for the closing note, not an assertion.
        eprintln!("image of {size} B: ma-api (hex JSON) {api_time:?}, http_proxy (binary) {binary_time:?}");
    }
    // Chunked transfer encoding and HEAD.
    let (_, body) = binary_proxy(&mut c, "req_c", "/chunked?size=100000");
    assert!(body == image(100_000));
    let (v, body) = api_proxy(&mut c, "req_h", "HEAD", "/imageproxy?size=777");
    assert_eq!(v["status"], 200);
    assert!(body.is_empty());
    // No request reached MA with a foreign Host or a header outside the allowlist.
    for seen in s.ma.seen() {
        if let Seen::Http { head, .. } = seen {
            let head = head.to_ascii_lowercase();
            assert!(
                head.contains(&format!("host: 127.0.0.1:{}\r\n", s.ma.port)),
                "{head}"
            );
            assert!(head.contains("accept: image/*"), "{head}");
            assert!(
                !head.contains("cookie") && !head.contains("x-forwarded-for"),
                "{head}"
            );
        }
    }
}

#[test]
fn malicious_paths_and_methods_are_refused_and_nothing_is_fetched() {
    let s = stack(&[]);
    let mut c = connect(&s);
    expect_server_info(&mut c);
    let bad = [
        ("GET", "//evil.example/x"),
        ("GET", "http://evil.example/"),
        ("GET", "https:/evil.example"),
        ("GET", "/\r\nHost: evil.example"),
        ("GET", "/@evil.example"),
        ("GET", "\\\\evil.example\\x"),
        ("GET", "/a b"),
        ("GET", "/a\u{0}b"),
        ("GET", "imageproxy"),
        ("POST", "/imageproxy?size=1"),
        ("CONNECT", "/imageproxy?size=1"),
        ("DELETE", "/imageproxy?size=1"),
        ("get", "/imageproxy?size=1"),
    ];
    for (i, (method, path)) in bad.iter().enumerate() {
        let (v, _) = api_proxy(&mut c, &format!("bad{i}"), method, path);
        assert_eq!(v["status"], 400, "{method} {path:?}");
    }
    // A redirect is passed back, not followed.
    let (v, _) = api_proxy(&mut c, "redir", "GET", "/redirect");
    assert_eq!(v["status"], 302);
    let http: Vec<Seen> =
        s.ma.seen()
            .into_iter()
            .filter(|x| matches!(x, Seen::Http { .. }))
            .collect();
    assert_eq!(
        http.len(),
        1,
        "only the redirect itself was fetched: {http:?}"
    );
    // The API channel is intact.
    c.send_text(r#"{"message_id":"ok"}"#, WAIT).unwrap();
    assert_eq!(c.recv_text(WAIT).unwrap(), r#"{"message_id":"ok"}"#);
}

#[test]
fn a_slow_image_does_not_delay_api_messages() {
    let s = stack(&[]);
    let mut c = connect(&s);
    expect_server_info(&mut c);
    c.open_channel("http_proxy", WAIT).unwrap();
    c.send_on(
        "http_proxy",
        false,
        proxy_request("slow", "GET", "/slow?ms=8000&size=1000").as_bytes(),
        WAIT,
    )
    .unwrap();
    // While the fetch is pending, API echoes keep flowing: ten of them, each answered, and
    // the image is still not there (the stand-in holds it 8 s), whatever the machine's speed.
    for echo in 0..10 {
        c.send_text(&format!(r#"{{"message_id":"e{echo}"}}"#), WAIT)
            .unwrap();
        assert_eq!(
            c.recv_text(WAIT).unwrap(),
            format!(r#"{{"message_id":"e{echo}"}}"#)
        );
    }
    let (binary, header) = c.recv_on("http_proxy", WAIT).unwrap();
    assert!(!binary);
    let header: Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(header["id"], "slow");
    assert_eq!(header["size"], 1000);
}
