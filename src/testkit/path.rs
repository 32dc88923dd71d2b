//! A lossy network path for tests and benchmarks: a UDP relay in front of the gateway that
//! delays, drops, duplicates and reorders datagrams (the kernel here has no `netem`). The
//! client reaches the gateway only through it ([`crate::remote_client::ClientOptions`]'s
//! `gateway_via` = [`LossyPath::addr`]); the gateway sees the relay's back socket as the
//! client's address.
//!
//! One thread, two sockets: `front` (the client talks to it) and `back` (it talks to the
//! gateway). Each datagram, each way, is dropped with probability `loss`, sent twice with
//! probability `duplicate`, and sent after `delay` plus a random share of `jitter` (datagrams
//! overtake each other when the jitter exceeds their spacing).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the path treats each datagram (the same both ways).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathConfig {
    /// One-way delay.
    pub delay: Duration,
    /// Up to this much more, at random per datagram (reordering).
    pub jitter: Duration,
    /// Probability of dropping a datagram, 0.0 to 1.0.
    pub loss: f64,
    /// Probability of delivering a datagram twice.
    pub duplicate: f64,
}

impl PathConfig {
    /// A perfect path.
    pub fn clean() -> PathConfig {
        PathConfig {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
        }
    }
}

/// What the path did so far.
#[derive(Debug, Default)]
pub struct PathStats {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
}

/// The running relay; stopped when dropped.
pub struct LossyPath {
    front: SocketAddr,
    config: Arc<Mutex<PathConfig>>,
    stats: Arc<PathStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A datagram waiting for its time, towards the client (`to_client`) or the gateway.
type Pending = Reverse<(Instant, u64, bool, Vec<u8>)>;

impl LossyPath {
    /// Relay to the gateway's UDP address `gateway`, on loopback.
    pub fn start(gateway: SocketAddr, config: PathConfig, seed: u64) -> io::Result<LossyPath> {
        let lo = SocketAddr::from(([127, 0, 0, 1], 0));
        LossyPath::start_between(lo, lo, gateway, config, seed)
    }

    /// Relay to `gateway` with the client's side bound at `front` and the gateway's side at
    /// `back` (a gateway beyond loopback, as in the NAT lab).
    pub fn start_between(
        front: SocketAddr,
        back: SocketAddr,
        gateway: SocketAddr,
        config: PathConfig,
        seed: u64,
    ) -> io::Result<LossyPath> {
        let front = UdpSocket::bind(front)?;
        let back = UdpSocket::bind(back)?;
        front.set_nonblocking(true)?;
        back.set_nonblocking(true)?;
        let addr = front.local_addr()?;
        let config = Arc::new(Mutex::new(config));
        let stats = Arc::new(PathStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let relay = Relay {
            front,
            back,
            gateway,
            client: None,
            config: config.clone(),
            stats: stats.clone(),
            stop: stop.clone(),
            rng: seed | 1,
            queue: BinaryHeap::new(),
            seq: 0,
        };
        let thread = std::thread::Builder::new()
            .name("lossy-path".into())
            .spawn(move || relay.run())?;
        Ok(LossyPath {
            front: addr,
            config,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    /// Where the client sends (its `gateway_via`).
    pub fn addr(&self) -> SocketAddr {
        self.front
    }

    /// Change the path from now on (datagrams already on their way keep their fate).
    pub fn set(&self, config: PathConfig) {
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    pub fn stats(&self) -> &PathStats {
        &self.stats
    }
}

impl Drop for LossyPath {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Relay {
    front: UdpSocket,
    back: UdpSocket,
    gateway: SocketAddr,
    /// The client's address, learned from its first datagram.
    client: Option<SocketAddr>,
    config: Arc<Mutex<PathConfig>>,
    stats: Arc<PathStats>,
    stop: Arc<AtomicBool>,
    rng: u64,
    queue: BinaryHeap<Pending>,
    seq: u64,
}

impl Relay {
    fn run(mut self) {
        let mut buf = vec![0u8; 65_536];
        while !self.stop.load(Ordering::Relaxed) {
            let mut busy = false;
            while let Ok((n, from)) = self.front.recv_from(&mut buf) {
                self.client = Some(from);
                self.admit(false, &buf[..n]);
                busy = true;
            }
            while let Ok((n, from)) = self.back.recv_from(&mut buf) {
                if from == self.gateway {
                    self.admit(true, &buf[..n]);
                    busy = true;
                }
            }
            let now = Instant::now();
            while self.queue.peek().is_some_and(|Reverse(p)| p.0 <= now) {
                let Some(Reverse((_, _, to_client, data))) = self.queue.pop() else {
                    break;
                };
                let sent = match (to_client, self.client) {
                    (true, Some(client)) => self.front.send_to(&data, client),
                    (true, None) => continue,
                    (false, _) => self.back.send_to(&data, self.gateway),
                };
                if sent.is_ok() {
                    self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                }
                busy = true;
            }
            if !busy {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    /// Decide a datagram's fate and queue its copies.
    fn admit(&mut self, to_client: bool, data: &[u8]) {
        let cfg = *self.config.lock().unwrap_or_else(|e| e.into_inner());
        if self.chance(cfg.loss) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let copies = if self.chance(cfg.duplicate) {
            self.stats.duplicated.fetch_add(1, Ordering::Relaxed);
            2
        } else {
            1
        };
        for _ in 0..copies {
            let extra = cfg.jitter.mul_f64(self.uniform());
            let due = Instant::now() + cfg.delay + extra;
            self.seq += 1;
            // Bounded like a real queue: a path holds at most this many datagrams.
            if self.queue.len() < 100_000 {
                self.queue
                    .push(Reverse((due, self.seq, to_client, data.to_vec())));
            }
        }
    }

    /// xorshift64*: a uniform number in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.uniform() < p
    }
}
