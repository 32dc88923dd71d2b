//! Where each session's ICE servers come from, on arbitrary answers from Home Assistant or
//! from an ICE servers URL (`ice_source`, `ice_source::ha`, `ice_source::url`;
//! docs/design.md#ice-server-source).
//!
//! Input: a provider (Home Assistant or a URL), then operations until the bytes run out: a
//! session asks for its servers, the connection opens, a message from Home Assistant
//! (arbitrary text, or one of its real message types with arbitrary fields and results), a
//! piece of the URL's response (arbitrary bytes, or a real response head with a list as its
//! body), the connection ends (failed or closed by the server), the clock moves.
//!
//! Properties:
//! - nothing panics, whatever the server sends;
//! - every session gets at most one list, and exactly one once its deadline has passed (the
//!   `session-ready` window depends on it);
//! - every list handed out is a valid ICE server list of at most [`MAX_SERVERS`] entries, and
//!   a session given the static list is told the static mode;
//! - the machine asks for a connection only when none is open (one fetch at a time).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{chunk_bytes, Input};
use crate::config::{check_ice_servers, WsUrl};
use crate::ice_source::{
    IceMode, IceSource, Output, Provider, Secret, FETCH_DEADLINE, FETCH_TIMEOUT, MAX_SERVERS,
};
use crate::machine::{Machine, Next};

/// Unix time at the start (2026-11-29).
const UNIX: u64 = 1_796_000_000;
/// Sessions one input may ask for (far below the source's own bound).
const MAX_SESSIONS: usize = 64;

fn static_list() -> Value {
    json!([{"urls": "stun:stun.example:3478"}])
}

/// One ICE server entry from the input: a URL of each kind or arbitrary, credentials or not.
fn entry(input: &mut Input) -> Value {
    let url = match input.u8() % 5 {
        0 => "stun:turn.example:3478".to_string(),
        1 => "turn:turn.example:3478?transport=udp".to_string(),
        2 => "turns:turn.example:5349?transport=tcp".to_string(),
        3 => format!("turn:{}", input.text(40)),
        _ => input.text(60),
    };
    let mut e = json!({ "urls": if input.bool() { json!([url]) } else { json!(url) } });
    if input.bool() {
        // TURN REST usernames carry their expiry: around now, or anything.
        let user = match input.bool() {
            true => format!("{}:ma", UNIX + u64::from(input.u16()) * 60),
            false => input.text(40),
        };
        e["username"] = json!(user);
        e["credential"] = json!(input.text(20));
    }
    e
}

/// A list from the input: 0 … 12 entries (the source takes at most [`MAX_SERVERS`]), or some
/// other JSON value.
fn list(input: &mut Input) -> Value {
    match input.u8() % 4 {
        0 => json!(input.text(200)),
        1 => Value::Null,
        _ => {
            let n = input.u8() % 13;
            Value::Array((0..n).map(|_| entry(input)).collect())
        }
    }
}

/// A message as Home Assistant's WebSocket API sends them, fields from the input.
fn ha_message(input: &mut Input) -> String {
    let id = u64::from(input.u8() % 4);
    match input.u8() % 7 {
        0 => input.text(400),
        1 => json!({"type": "auth_required", "ha_version": "2026.11.0"}).to_string(),
        2 => json!({"type": "auth_ok"}).to_string(),
        3 => json!({"type": "auth_invalid", "message": input.text(80)}).to_string(),
        4 => json!({"id": id, "type": "result", "success": input.bool(),
                    "result": {"logged_in": input.bool(), "active_subscription": input.bool()}})
        .to_string(),
        5 => json!({"id": id, "type": "result", "success": input.bool(), "result": list(input),
                    "error": {"code": input.text(20), "message": input.text(80)}})
        .to_string(),
        _ => json!({"id": id, "type": "event", "event": input.text(40)}).to_string(),
    }
}

/// Bytes of a URL's response: arbitrary, or a real head (a status from the input) and a list.
fn url_response(input: &mut Input) -> Vec<u8> {
    if input.bool() {
        return input.chunk(600).to_vec();
    }
    let status = [200u16, 200, 404, 500][usize::from(input.u8() % 4)];
    let body = list(input).to_string();
    let mut r = format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n").into_bytes();
    match input.bool() {
        true => r.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes()),
        false => r.extend_from_slice(b"Connection: close\r\n\r\n"),
    }
    r.extend_from_slice(body.as_bytes());
    r
}

struct Run {
    source: IceSource,
    static_mode: IceMode,
    /// Lists handed out per session.
    got: HashMap<String, usize>,
    /// The mode each session was told.
    modes: HashMap<String, IceMode>,
    open: bool,
}

impl Run {
    fn drain(&mut self) {
        while let Next::Output(o) = self.source.poll_output() {
            match o {
                Output::Connect(_) => {
                    assert!(!self.open, "a second connection while one is open");
                    self.open = true;
                }
                Output::Close => self.open = false,
                Output::SendText(_) | Output::Write(_) => {}
                Output::Servers {
                    session_id,
                    servers,
                    mode,
                } => {
                    let n = self.got.get_mut(&session_id).expect("a session that asked");
                    *n += 1;
                    assert_eq!(*n, 1, "[{session_id}] a second list");
                    check_ice_servers(&servers).expect("a valid ICE server list");
                    let len = servers.as_array().map_or(0, Vec::len);
                    assert!(len <= MAX_SERVERS, "{len} servers handed out");
                    if servers == static_list() {
                        assert_eq!(mode, self.static_mode, "the static list's mode");
                    }
                    self.modes.insert(session_id, mode);
                }
            }
        }
    }
}

pub fn check(data: &[u8]) {
    play(data);
}

/// Run an input and check the properties; what each session was told.
fn play(data: &[u8]) -> HashMap<String, IceMode> {
    let mut input = Input::new(data);
    let provider = match input.bool() {
        true => Provider::HomeAssistant {
            url: WsUrl::parse("ws://127.0.0.1:8123/api/websocket").expect("a valid URL"),
            token: Secret::new("TOKEN".into()),
        },
        false => Provider::Url {
            url: WsUrl::parse_http("http://127.0.0.1:9/ice").expect("a valid URL"),
            shown: "http://127.0.0.1:9/ice".into(),
        },
    };
    let mut now = Instant::now();
    let mut run = Run {
        source: IceSource::new(now, UNIX, Some(provider), static_list()),
        // The static list has no TURN server.
        static_mode: IceMode::Basic,
        got: HashMap::new(),
        modes: HashMap::new(),
        open: false,
    };
    run.drain();
    while !input.is_empty() {
        match input.u8() % 7 {
            0 if run.got.len() < MAX_SESSIONS => {
                let id = format!("s{}", run.got.len());
                run.got.insert(id.clone(), 0);
                run.source.handle_session(now, id);
            }
            0 => {}
            1 => run.source.handle_opened(now),
            2 => {
                let text = ha_message(&mut input);
                run.source.handle_text(now, &text);
            }
            3 => {
                let bytes = url_response(&mut input);
                // In pieces, as a socket delivers them.
                let cut = usize::from(input.u16()) % (bytes.len() + 1);
                run.source.handle_bytes(now, &bytes[..cut]);
                run.drain();
                run.source.handle_bytes(now, &bytes[cut..]);
            }
            4 => {
                let failure = input.bool().then(|| input.text(40));
                run.source.handle_closed(now, failure.as_deref());
                run.open = false;
            }
            _ => {
                now += Duration::from_millis(u64::from(input.u16()));
                run.source.handle_timeout(now);
            }
        }
        run.drain();
    }
    // Past every deadline: each session has its list.
    now += FETCH_DEADLINE + FETCH_TIMEOUT;
    run.source.handle_timeout(now);
    run.drain();
    for (id, n) in &run.got {
        assert_eq!(*n, 1, "[{id}] got {n} lists");
    }
    run.modes
}

/// Real conversations: Home Assistant Cloud answering with TURN, one not logged in; a URL
/// answering with a length, one closing after the body.
pub fn seeds() -> Vec<Vec<u8>> {
    // Home Assistant: a session, the connection opens, auth_required, auth_ok, the status
    // (success, logged in, subscribed), the servers (success, a list of two: STUN as a
    // string; TURN in a list with an expiry an hour away and a credential; no error text),
    // ten seconds later another session (from the cache).
    let mut ha = vec![
        1u8, 0, 1, 2, 0, 1, 2, 0, 2, 2, 1, 4, 1, 1, 1, 2, 2, 5, 1, 2, 2,
    ];
    ha.extend_from_slice(&[0, 0, 0]);
    ha.extend_from_slice(&[1, 1, 1, 1, 0x00, 0x3c]);
    chunk_bytes(&mut ha, b"pw");
    chunk_bytes(&mut ha, b"");
    chunk_bytes(&mut ha, b"");
    ha.extend_from_slice(&[6, 0x27, 0x10, 0]);
    // Not logged in; a minute later a session gets the static list at once.
    let not_logged_in = vec![
        1u8, 0, 1, 2, 0, 1, 2, 0, 2, 2, 1, 4, 1, 0, 0, 6, 0xea, 0x60, 0,
    ];
    // A URL: a session, opened, a 200 with a length and a list of one STUN entry, cut at 32.
    let url = vec![0u8, 0, 1, 3, 0, 0, 2, 1, 0, 0, 0, 1, 0x00, 0x20];
    // The same without a length, cut at 16, then the server closes; another session.
    let closed = vec![0u8, 0, 1, 3, 0, 0, 2, 1, 0, 0, 0, 0, 0x00, 0x10, 4, 0, 0];
    let mut seeds = vec![ha, not_logged_in, url, closed];
    // Near misses, each given to both providers as a message and as response bytes: a
    // session, opened, the piece as text, the piece as bytes cut at 8, the server closes,
    // three seconds pass.
    for (k, piece) in NEAR_MISSES.iter().enumerate() {
        let mut seed = vec![(k % 2) as u8, 0, 1, 2, 0, 0];
        chunk_bytes(&mut seed, piece.as_bytes());
        seed.extend_from_slice(&[3, 1]);
        chunk_bytes(&mut seed, piece.as_bytes());
        seed.extend_from_slice(&[0x00, 0x08, 4, 0, 6, 0x0b, 0xb8]);
        seeds.push(seed);
    }
    seeds
}

/// Messages and responses that are almost right: the wrong type for a field, an id out of
/// range, an empty or odd list, a broken body.
const NEAR_MISSES: &[&str] = &[
    r#"{"type":"result","id":2,"success":true,"result":[{"urls":"turn:x","username":7}]}"#,
    r#"{"type":"result","id":2,"success":true,"result":[{"urls":[]}]}"#,
    r#"{"type":"result","id":"1","success":"yes"}"#,
    r#"{"type":"result","id":1,"success":true,"result":null}"#,
    r#"{"type":"result","id":18446744073709551616}"#,
    r#"{"type":["auth_ok"]}"#,
    "[]",
    "null",
    "\u{0}\u{ffff}",
    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n[{}]x",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "HTTP/1.1 999999999999 Nope\r\n\r\n",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_reach_a_fetched_list() {
        let seeds = seeds();
        let told = |i: usize| {
            let mut modes: Vec<(String, IceMode)> = play(&seeds[i]).into_iter().collect();
            modes.sort_by(|a, b| a.0.cmp(&b.0));
            modes.into_iter().map(|(_, m)| m).collect::<Vec<_>>()
        };
        let cloud = IceMode::HomeAssistantCloud;
        assert_eq!(told(0), [cloud, cloud], "fetched, then from the cache");
        assert_eq!(told(1), [IceMode::Basic, IceMode::Basic], "not logged in");
        assert_eq!(told(2), [IceMode::Url]);
        assert_eq!(told(3), [IceMode::Url, IceMode::Url]);
    }
}
