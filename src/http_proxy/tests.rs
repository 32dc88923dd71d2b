//! Tests of the [`ProxyPool`] scheduler (no sockets).

use std::collections::HashMap;

use super::request::Method;
use super::*;

type Key = &'static str;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 3\r\n\r\nabc";

fn req(id: &str) -> ProxyRequest {
    ProxyRequest {
        id: id.to_string(),
        method: Method::Get,
        path: format!("/imageproxy?id={id}"),
        headers: vec![],
    }
}

/// The pool plus what it asked for, as a driver would see it.
struct Harness {
    pool: ProxyPool<Key>,
    now: Instant,
    /// Open connections and the request line last written on each.
    open: HashMap<ConnId, String>,
    /// Connections in the order their request was written.
    writes: Vec<ConnId>,
    connects: usize,
    closed: Vec<ConnId>,
    responses: Vec<(Key, ProxyResponse)>,
    stalled: Vec<Key>,
}

impl Harness {
    fn new(cfg: PoolConfig) -> Harness {
        Harness {
            pool: ProxyPool::new(cfg),
            now: Instant::now(),
            open: HashMap::new(),
            writes: Vec::new(),
            connects: 0,
            closed: Vec::new(),
            responses: Vec::new(),
            stalled: Vec::new(),
        }
    }

    fn default() -> Harness {
        Harness::new(PoolConfig::new("127.0.0.1:8095".into()))
    }

    /// The pool's next deadline (its outputs must be drained first).
    fn deadline(&mut self) -> Option<Instant> {
        match self.pool.poll_output() {
            Next::Timeout(t) => t,
            Next::Output(o) => panic!("undrained output {o:?}"),
        }
    }

    fn drain(&mut self) {
        // The pool-wide count is the sum of what each requester holds.
        let held: usize = self
            .pool
            .requesters
            .values()
            .map(Requester::held_bytes)
            .sum();
        assert_eq!(self.pool.held_bytes(), held);
        while let Next::Output(o) = self.pool.poll_output() {
            match o {
                PoolOutput::Connect { conn } => {
                    self.connects += 1;
                    assert!(self.open.insert(conn, String::new()).is_none());
                }
                PoolOutput::Write { conn, bytes } => {
                    let text = String::from_utf8(bytes).unwrap();
                    let line = text.lines().next().unwrap().to_string();
                    *self
                        .open
                        .get_mut(&conn)
                        .expect("write on an open connection") = line;
                    self.writes.push(conn);
                }
                PoolOutput::Close { conn } => {
                    assert!(
                        self.open.remove(&conn).is_some(),
                        "close of an unknown connection"
                    );
                    self.closed.push(conn);
                }
                PoolOutput::Response {
                    requester,
                    response,
                } => {
                    // That fetch is over: its connection (if kept) is idle now.
                    let target = format!("GET /imageproxy?id={} HTTP/1.1", response.id);
                    for line in self.open.values_mut().filter(|l| **l == target) {
                        line.clear();
                    }
                    self.responses.push((requester, response));
                }
                PoolOutput::Stalled { requester } => self.stalled.push(requester),
            }
        }
    }

    fn submit(&mut self, who: Key, id: &str) {
        self.pool.handle_request(self.now, who, req(id));
        self.drain();
    }

    /// The connection whose request line asks for `id`.
    fn conn_of(&self, id: &str) -> ConnId {
        let target = format!("GET /imageproxy?id={id} HTTP/1.1");
        *self
            .open
            .iter()
            .find(|(_, line)| **line == target)
            .unwrap_or_else(|| panic!("no connection fetching {id}"))
            .0
    }

    /// Ids being fetched, in the order their requests were written.
    fn fetch_order(&self) -> Vec<String> {
        let mut last: Vec<ConnId> = Vec::new();
        for c in &self.writes {
            last.retain(|x| x != c);
            last.push(*c);
        }
        last.iter()
            .filter_map(|c| self.open.get(c))
            .filter(|line| !line.is_empty())
            .map(|line| {
                line.split("id=")
                    .nth(1)
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    fn answer(&mut self, id: &str, bytes: &[u8]) {
        let conn = self.conn_of(id);
        self.pool.handle_data(self.now, conn, bytes);
        self.drain();
    }

    /// The driver saw the server close the connection.
    fn eof(&mut self, conn: ConnId) {
        self.open.remove(&conn);
        self.pool.handle_eof(self.now, conn);
        self.drain();
    }

    /// The driver saw the connection fail.
    fn fail(&mut self, conn: ConnId, why: &str) {
        self.open.remove(&conn);
        self.pool.handle_failed(self.now, conn, why);
        self.drain();
    }

    fn done(&mut self, who: Key) {
        self.pool.handle_delivered(self.now, &who);
        self.drain();
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.pool.handle_timeout(self.now);
        self.drain();
    }
}

#[test]
fn at_most_six_in_flight() {
    let mut h = Harness::default();
    for i in 0..10 {
        h.submit("a", &format!("a{i}"));
    }
    assert_eq!(h.pool.in_flight(), 6);
    assert_eq!(h.pool.queued(), 4);
    assert_eq!(h.connects, 6);
    assert_eq!(h.open.len(), 6);
    // The request on the wire: Host set by us.
    let c = h.conn_of("a0");
    assert_eq!(h.open[&c], "GET /imageproxy?id=a0 HTTP/1.1");
    // Completing one (and draining it) starts the next.
    h.answer("a0", OK);
    assert_eq!(h.responses.len(), 1);
    let (who, resp) = &h.responses[0];
    assert_eq!(
        (*who, resp.id.as_str(), resp.status, resp.body.as_slice()),
        ("a", "a0", 200, &b"abc"[..])
    );
    assert_eq!(resp.headers[0], ("Content-Type", "image/png".to_string()));
    // "a" has 5 in flight + 1 in hand: at its ahead limit until the response is done.
    assert_eq!(h.pool.in_flight(), 5);
    h.done("a");
    assert_eq!(h.pool.in_flight(), 6);
    // The kept-alive connection was reused: still 6 connects.
    assert_eq!(h.connects, 6);
    assert_eq!(h.pool.queued(), 3);
}

#[test]
fn fair_across_requesters() {
    let mut h = Harness::default();
    for i in 0..20 {
        h.submit("a", &format!("a{i}"));
    }
    h.submit("b", "b0");
    h.submit("b", "b1");
    assert_eq!(h.pool.in_flight(), 6);
    // Complete the oldest fetch each time, with a client that reads at once.
    let mut started_b_at = Vec::new();
    for step in 0..24 {
        let Some(id) = h.fetch_order().into_iter().next() else {
            break;
        };
        h.answer(&id, OK);
        let who = h.responses.last().unwrap().0;
        h.done(who);
        for (i, id) in h.fetch_order().iter().enumerate() {
            if id.starts_with('b') && !started_b_at.iter().any(|(b, _)| b == id) {
                started_b_at.push((id.clone(), (step, i)));
            }
        }
    }
    // b's requests start at the first two free slots, not after a's 20.
    let steps: Vec<usize> = started_b_at.iter().map(|(_, (s, _))| *s).collect();
    assert_eq!(steps, vec![0, 1], "{started_b_at:?}");
    assert_eq!(h.responses.len(), 22);
    assert_eq!(h.pool.in_flight(), 0);
    assert_eq!(h.pool.queued(), 0);
}

#[test]
fn shares_slots_between_busy_requesters() {
    let mut h = Harness::default();
    for i in 0..10 {
        h.submit("a", &format!("a{i}"));
    }
    for i in 0..10 {
        h.submit("b", &format!("b{i}"));
    }
    // All six went to a (b came later); as a's complete, b catches up to an even share.
    for _ in 0..3 {
        let id = h
            .fetch_order()
            .into_iter()
            .find(|i| i.starts_with('a'))
            .unwrap();
        h.answer(&id, OK);
        h.done("a");
    }
    let fetching = h.fetch_order();
    let a = fetching.iter().filter(|i| i.starts_with('a')).count();
    let b = fetching.iter().filter(|i| i.starts_with('b')).count();
    assert_eq!((a, b), (3, 3), "{fetching:?}");
}

#[test]
fn one_response_at_a_time_per_requester() {
    let mut h = Harness::default();
    h.submit("a", "a0");
    h.submit("a", "a1");
    h.submit("b", "b0");
    h.answer("a0", OK);
    h.answer("a1", OK);
    h.answer("b0", OK);
    let ids: Vec<&str> = h.responses.iter().map(|(_, r)| r.id.as_str()).collect();
    assert_eq!(ids, vec!["a0", "b0"]);
    // The fetch slots are free although a1 waits for its turn.
    assert_eq!(h.pool.in_flight(), 0);
    h.done("a");
    assert_eq!(h.responses.last().unwrap().1.id, "a1");
    h.done("a");
    h.done("b");
    assert_eq!(h.responses.len(), 3);
    assert!(h.pool.requesters.is_empty());
}

#[test]
fn timeout_gives_504() {
    let mut h = Harness::default();
    h.submit("a", "a0");
    let conn = h.conn_of("a0");
    assert_eq!(h.deadline(), Some(h.now + Duration::from_secs(15)));
    h.advance(Duration::from_secs(14));
    assert!(h.responses.is_empty());
    h.answer(
        "a0",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial",
    );
    h.advance(Duration::from_secs(1));
    assert_eq!(h.closed, vec![conn]);
    let resp = &h.responses[0].1;
    assert_eq!((resp.id.as_str(), resp.status), ("a0", 504));
    assert_eq!(resp.headers[0], ("Content-Type", "text/plain".to_string()));
    assert_eq!(h.pool.in_flight(), 0);
    // Late bytes for the closed connection are ignored.
    h.pool.handle_data(h.now, conn, b"more");
    h.drain();
    assert_eq!(h.responses.len(), 1);
}

#[test]
fn cancel_frees_slots() {
    let mut h = Harness::default();
    for i in 0..8 {
        h.submit("a", &format!("a{i}"));
    }
    h.submit("b", "b0");
    assert_eq!(h.pool.in_flight(), 6);
    h.pool.handle_cancel(h.now, &"a");
    h.drain();
    assert_eq!(h.closed.len(), 6);
    assert_eq!(h.pool.in_flight(), 1);
    assert_eq!(h.fetch_order(), vec!["b0".to_string()]);
    assert_eq!(h.pool.queued(), 0);
    h.answer("b0", OK);
    assert_eq!(h.responses.len(), 1);
    assert!(h.responses.iter().all(|(who, _)| *who == "b"));
}

#[test]
fn keep_alive_reuse_and_stale_retry() {
    let mut h = Harness::default();
    h.submit("a", "a0");
    let first = h.conn_of("a0");
    h.answer("a0", OK);
    h.done("a");
    assert_eq!(h.pool.idle_connections(), 1);
    // Reused: no new connect, same connection.
    h.submit("a", "a1");
    assert_eq!(h.connects, 1);
    assert_eq!(h.conn_of("a1"), first);
    h.answer("a1", OK);
    h.done("a");
    // The server closed the idle connection just as we reused it: retried on a new one.
    h.submit("a", "a2");
    assert_eq!(h.conn_of("a2"), first);
    h.eof(first);
    assert_eq!(h.connects, 2);
    let second = h.conn_of("a2");
    assert_ne!(second, first);
    // Only once: the new connection failing is an error.
    h.fail(second, "connection refused");
    let resp = &h.responses.last().unwrap().1;
    assert_eq!((resp.id.as_str(), resp.status), ("a2", 500));
    assert!(String::from_utf8_lossy(&resp.body).contains("connection refused"));
    assert!(
        h.closed.is_empty(),
        "the pool sends no Close after eof/failed"
    );
}

#[test]
fn connection_not_reused_after_close_or_error() {
    let mut h = Harness::default();
    h.submit("a", "a0");
    let c = h.conn_of("a0");
    h.answer(
        "a0",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(h.closed, vec![c]);
    h.done("a");
    h.submit("a", "a1");
    let c = h.conn_of("a1");
    h.answer("a1", b"garbage\r\n\r\n");
    assert_eq!(h.closed.last(), Some(&c));
    assert_eq!(h.responses.last().unwrap().1.status, 500);
    assert_eq!(h.pool.idle_connections(), 0);
}

#[test]
fn close_delimited_and_failures() {
    let mut h = Harness::default();
    h.submit("a", "a0");
    h.answer("a0", b"HTTP/1.1 200 OK\r\n\r\nbody until close");
    assert!(h.responses.is_empty());
    let c = h.conn_of("a0");
    h.eof(c);
    assert_eq!(h.responses[0].1.body, b"body until close");
    h.done("a");
    // A fresh connection failing before any response: no retry.
    h.submit("a", "a1");
    let c = h.conn_of("a1");
    h.fail(c, "refused");
    assert_eq!(h.connects, 2);
    assert_eq!(h.responses[1].1.status, 500);
}

#[test]
fn idle_connections_expire_and_close() {
    let mut cfg = PoolConfig::new("h".into());
    cfg.max_idle = 1;
    let mut h = Harness::new(cfg);
    h.submit("a", "a0");
    h.submit("a", "a1");
    h.answer("a0", OK);
    h.done("a");
    h.answer("a1", OK);
    h.done("a");
    // One kept, the other closed (max_idle = 1).
    assert_eq!(h.pool.idle_connections(), 1);
    assert_eq!(h.closed.len(), 1);
    assert_eq!(h.deadline(), Some(h.now + Duration::from_secs(15)));
    h.advance(Duration::from_secs(15));
    assert_eq!(h.pool.idle_connections(), 0);
    assert_eq!(h.closed.len(), 2);
    assert!(h.open.is_empty());
    assert_eq!(h.deadline(), None);
    // Data or EOF on an idle connection.
    h.submit("a", "a2");
    let c = h.conn_of("a2");
    h.answer("a2", OK);
    h.done("a");
    h.pool.handle_data(h.now, c, b"HTTP/1.1 200 OK\r\n");
    h.drain();
    assert_eq!(h.closed.last(), Some(&c));
    h.submit("a", "a3");
    let c = h.conn_of("a3");
    h.answer("a3", OK);
    h.done("a");
    h.eof(c);
    assert_eq!(h.pool.idle_connections(), 0);
    assert_ne!(h.closed.last(), Some(&c));
}

#[test]
fn no_keep_alive_when_disabled() {
    let mut cfg = PoolConfig::new("h".into());
    cfg.max_idle = 0;
    let mut h = Harness::new(cfg);
    h.submit("a", "a0");
    h.answer("a0", OK);
    assert_eq!(h.closed.len(), 1);
    h.done("a");
    h.submit("a", "a1");
    assert_eq!(h.connects, 2);
}

#[test]
fn queue_overflow_gives_503() {
    let mut h = Harness::default();
    for i in 0..(6 + 32 + 2) {
        h.submit("a", &format!("a{i}"));
    }
    assert_eq!(h.pool.in_flight(), 6);
    assert_eq!(h.pool.queued(), 32);
    // The first 503 is delivered; the second waits its turn.
    assert_eq!(h.responses.len(), 1);
    assert_eq!(
        (h.responses[0].1.id.as_str(), h.responses[0].1.status),
        ("a38", 503)
    );
    h.done("a");
    assert_eq!(
        (h.responses[1].1.id.as_str(), h.responses[1].1.status),
        ("a39", 503)
    );
}

#[test]
fn reject_answers_400_or_drops() {
    let mut h = Harness::default();
    let err = request::parse(r#"{"type":"http-proxy-request","id":"r1","path":"//evil.com/"}"#)
        .unwrap_err();
    h.pool.handle_refused(h.now, "a", err);
    h.drain();
    let resp = &h.responses[0].1;
    assert_eq!((resp.id.as_str(), resp.status), ("r1", 400));
    assert!(String::from_utf8_lossy(&resp.body).contains("invalid path"));
    let err = request::parse(r#"{"type":"http-proxy-request","path":"/x"}"#).unwrap_err();
    h.pool.handle_refused(h.now, "b", err);
    h.drain();
    assert_eq!(h.responses.len(), 1);
    assert!(!h.pool.requesters.contains_key("b"));
    assert_eq!(h.connects, 0);
}

#[test]
fn stalled_requester_is_dropped() {
    let mut h = Harness::default();
    for i in 0..4 {
        h.submit("a", &format!("a{i}"));
    }
    h.submit("b", "b0");
    h.answer("a0", OK);
    h.answer("a1", OK);
    assert_eq!(h.responses.len(), 1);
    assert_eq!(h.deadline(), Some(h.now + Duration::from_secs(15)));
    // Progress moves the drain deadline.
    h.advance(Duration::from_secs(10));
    h.pool.handle_progress(h.now, &"a");
    h.advance(Duration::from_secs(25));
    assert!(h.stalled.is_empty());
    // Fetches a2, a3 and b0 timed out at 15 s (they were never answered).
    assert_eq!(
        h.responses.iter().filter(|(_, r)| r.status == 504).count(),
        1
    );
    h.advance(Duration::from_secs(5));
    assert_eq!(h.stalled, vec!["a"]);
    assert!(!h.pool.requesters.contains_key("a"));
    // b is unaffected.
    h.done("b");
    assert_eq!(h.pool.in_flight(), 0);
    assert!(h.pool.requesters.is_empty());
}

#[test]
fn stalled_requester_holds_no_slots() {
    let mut h = Harness::default();
    for i in 0..12 {
        h.submit("a", &format!("a{i}"));
    }
    for id in h.fetch_order() {
        h.answer(&id, OK);
    }
    // a never reads: 1 in hand, 5 waiting, and no new fetch for it.
    assert_eq!(h.responses.len(), 1);
    assert_eq!(h.pool.in_flight(), 0);
    // Another requester still gets served at once.
    h.submit("b", "b0");
    assert_eq!(h.pool.in_flight(), 1);
    h.answer("b0", OK);
    assert_eq!(h.responses.last().unwrap().0, "b");
}

#[test]
fn slow_reader_gets_no_fetch_while_two_wait() {
    let mut h = Harness::default();
    h.submit("a", "a0");
    h.answer("a0", OK);
    // a holds a0 (it is being delivered) and asks for more: one fetch, not five.
    for i in 1..6 {
        h.submit("a", &format!("a{i}"));
    }
    assert_eq!(h.fetch_order(), vec!["a1".to_string()]);
    h.answer("a1", OK);
    // Two held: nothing more is fetched for a; its requests wait in its queue.
    assert_eq!(h.responses.len(), 1);
    assert_eq!(h.pool.in_flight(), 0);
    assert_eq!(h.pool.queued(), 4);
    assert_eq!(h.pool.held_bytes(), 6);
    // Time passing changes nothing (short of the drain timeout) and others are served.
    h.advance(Duration::from_secs(20));
    assert_eq!(h.pool.in_flight(), 0);
    h.submit("b", "b0");
    assert_eq!(h.fetch_order(), vec!["b0".to_string()]);
    // a's queue fills up: the next request is answered 503 (after what a already holds).
    for i in 6..(6 + 28) {
        h.submit("a", &format!("a{i}"));
    }
    assert_eq!(h.pool.queued(), 32);
    h.submit("a", "a34");
    assert_eq!(h.pool.in_flight(), 1);
    // a reads a0: a1 goes out; the 503 waits, so a still holds two and fetches nothing.
    h.done("a");
    assert_eq!(h.responses.last().unwrap().1.id, "a1");
    assert_eq!(h.pool.in_flight(), 1);
    // a reads a1: the 503 goes out and one more fetch starts for a.
    h.done("a");
    let (who, resp) = h.responses.last().unwrap();
    assert_eq!((*who, resp.id.as_str(), resp.status), ("a", "a34", 503));
    assert_eq!(h.fetch_order(), vec!["b0".to_string(), "a2".to_string()]);
    assert_eq!(h.pool.held_bytes(), 0);
    // Once a holds nothing, it fetches in parallel again.
    h.done("a");
    assert_eq!(h.pool.in_flight(), 6);
}

#[test]
fn stalled_reader_releases_its_bytes() {
    let mut h = Harness::default();
    h.submit("a", "a0");
    h.submit("a", "a1");
    h.answer("a0", OK);
    h.answer("a1", OK);
    assert_eq!(h.pool.held_bytes(), 6);
    h.advance(Duration::from_secs(30));
    assert_eq!(h.stalled, vec!["a"]);
    assert_eq!(h.pool.held_bytes(), 0);
    // Cancelling a requester also releases what it holds.
    h.submit("b", "b0");
    h.answer("b0", OK);
    assert_eq!(h.pool.held_bytes(), 3);
    h.pool.handle_cancel(h.now, &"b");
    h.drain();
    assert_eq!(h.pool.held_bytes(), 0);
}

#[test]
fn held_bytes_cap_gives_503() {
    let mut cfg = PoolConfig::new("h".into());
    cfg.max_held_bytes = 5;
    let mut h = Harness::new(cfg);
    h.submit("a", "a0");
    h.submit("b", "b0");
    h.submit("c", "c0");
    h.answer("a0", OK);
    assert_eq!(h.pool.held_bytes(), 3);
    // b's body would bring the total to 6 > 5: not kept, answered 503.
    h.answer("b0", OK);
    let (who, resp) = h.responses.last().unwrap();
    assert_eq!((*who, resp.id.as_str(), resp.status), ("b", "b0", 503));
    assert!(String::from_utf8_lossy(&resp.body).contains("the gateway is busy"));
    assert_eq!(h.pool.held_bytes(), 3);
    // The 503's own body counts for nothing; an empty body always fits.
    h.done("b");
    h.submit("b", "b1");
    h.answer("b1", b"HTTP/1.1 204 No Content\r\n\r\n");
    assert_eq!(h.responses.last().unwrap().1.status, 204);
    h.done("b");
    // a's response is done: its bytes are released and c's fits.
    h.done("a");
    assert_eq!(h.pool.held_bytes(), 0);
    h.answer("c0", OK);
    let (who, resp) = h.responses.last().unwrap();
    assert_eq!(
        (*who, resp.status, resp.body.as_slice()),
        ("c", 200, &b"abc"[..])
    );
    assert_eq!(h.pool.held_bytes(), 3);
    h.done("c");
    assert_eq!(h.pool.held_bytes(), 0);
    assert!(h.pool.requesters.is_empty());
}

#[test]
fn bodies_still_streaming_count_and_are_cut_at_the_cap() {
    let mut cfg = PoolConfig::new("h".into());
    cfg.max_held_bytes = 10;
    let mut h = Harness::new(cfg);
    h.submit("a", "a0");
    h.submit("b", "b0");
    // a's body is announced large and arrives in parts: each part counts at once.
    h.answer(
        "a0",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n123456",
    );
    assert_eq!((h.pool.held_bytes(), h.pool.buffered_bytes()), (0, 6));
    assert!(h.responses.is_empty());
    // b streams too; the part that takes the total beyond 10 ends b's fetch with a 503.
    let b = h.conn_of("b0");
    h.answer("b0", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n12345");
    let (who, resp) = h.responses.last().unwrap();
    assert_eq!((*who, resp.id.as_str(), resp.status), ("b", "b0", 503));
    assert!(
        h.closed.contains(&b),
        "the aborted fetch's connection is closed"
    );
    assert_eq!(h.pool.buffered_bytes(), 6);
    // a goes on; cancelling it releases its streaming bytes.
    h.answer("a0", b"78");
    assert_eq!(h.pool.buffered_bytes(), 8);
    h.pool.handle_cancel(h.now, &"a");
    h.drain();
    assert_eq!(h.pool.buffered_bytes(), 0);
}
