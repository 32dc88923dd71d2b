//! DNS lookups that never block the event loop.
//!
//! The system resolver (`getaddrinfo`) only blocks, so each lookup runs on a short-lived thread
//! and posts its answer back through a channel plus a mio `Waker`. IP literals are answered
//! without a thread. At most [`MAX_THREADS`] lookups run at once; the rest wait in a queue.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::sync::Arc;

use mio::Waker;

/// Lookups running at once.
pub const MAX_THREADS: usize = 8;

/// Identifies one lookup in [`Resolver::poll`] answers.
pub type LookupId = u64;

type Answer = (LookupId, io::Result<Vec<SocketAddr>>);

pub struct Resolver {
    waker: Arc<Waker>,
    tx: mpsc::Sender<Answer>,
    rx: mpsc::Receiver<Answer>,
    next_id: LookupId,
    running: usize,
    queued: VecDeque<(LookupId, String, u16)>,
    /// Answers that needed no thread (IP literals), handed out by the next `poll`.
    ready: VecDeque<Answer>,
}

impl Resolver {
    pub fn new(waker: Arc<Waker>) -> Resolver {
        let (tx, rx) = mpsc::channel();
        Resolver {
            waker,
            tx,
            rx,
            next_id: 1,
            running: 0,
            queued: VecDeque::new(),
            ready: VecDeque::new(),
        }
    }

    /// Start resolving `host:port`; the answer comes from [`Resolver::poll`] after a wake-up.
    pub fn lookup(&mut self, host: &str, port: u16) -> LookupId {
        let id = self.next_id;
        self.next_id += 1;
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            self.ready
                .push_back((id, Ok(vec![SocketAddr::new(ip, port)])));
            let _ = self.waker.wake();
        } else if self.running < MAX_THREADS {
            self.spawn(id, host.to_string(), port);
        } else {
            self.queued.push_back((id, host.to_string(), port));
        }
        id
    }

    fn spawn(&mut self, id: LookupId, host: String, port: u16) {
        let tx = self.tx.clone();
        let waker = self.waker.clone();
        let spawned = std::thread::Builder::new()
            .name("dns".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let answer = (host.as_str(), port)
                    .to_socket_addrs()
                    .map(|it| it.collect::<Vec<_>>())
                    .and_then(|v| {
                        if v.is_empty() {
                            Err(io::Error::new(
                                io::ErrorKind::NotFound,
                                format!("{host}: no address"),
                            ))
                        } else {
                            Ok(v)
                        }
                    });
                let _ = tx.send((id, answer));
                let _ = waker.wake();
            });
        match spawned {
            Ok(_) => self.running += 1,
            Err(e) => self.ready.push_back((id, Err(e))),
        }
    }

    /// Answers that have arrived since the last call.
    pub fn poll(&mut self) -> Vec<Answer> {
        let mut out: Vec<Answer> = self.ready.drain(..).collect();
        while let Ok(answer) = self.rx.try_recv() {
            self.running = self.running.saturating_sub(1);
            out.push(answer);
        }
        while self.running < MAX_THREADS {
            let Some((id, host, port)) = self.queued.pop_front() else {
                break;
            };
            self.spawn(id, host, port);
        }
        out
    }
}
