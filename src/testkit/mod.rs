//! An in-memory network for our state machines: two ends, the wire between them and one
//! clock, in the spirit of quinn-proto's test `Pair`. No sockets, no threads.
//!
//! Compiled for this crate's unit tests and with the `testkit` feature (integration tests and
//! benchmarks get it through the crate's dev-dependency on itself); never in the binary.
//!
//! - An [`End`] is one side of the wire. It takes datagrams, signaling texts and time, and
//!   gives [`Wire`] items (datagrams to send, signaling texts for the other side) through the
//!   same `poll_output` → [`Next`] face every machine has (docs/design.md#the-machine-convention).
//!   What an end learns (channel data, events) it keeps for the test to look at.
//! - A [`Pair`] owns two ends `a` and `b`, the items in flight and the [`Clock`]. One
//!   [`Pair::step`] polls both ends and delivers everything in flight both ways, then fires
//!   the timeouts that are due. A [`Clock::Simulated`] stands still while anything moves and
//!   jumps to the earliest deadline when nothing did; [`Clock::Real`] is read at every step,
//!   for benchmarks. [`Pair::run_until`] steps until a condition holds and panics, saying what
//!   it waited for and what both ends hold, when it does not within a duration of the pair's
//!   time; [`Pair::run_for`] lets time pass; [`Pair::settle`] delivers until nothing moves,
//!   without time passing.
//! - Datagrams from or to an address in [`Pair::dead`] vanish (a phone that left its
//!   network); [`Pair::loss`] drops the datagrams it picks. [`Pair::counters`] counts what
//!   crossed and what was lost.
//!
//! The ends provided: [`ClientsEnd`] (web-app clients, [`crate::remote_client::RemoteClient`]),
//! [`GatewayEnd`] (the gateway core with in-memory local WebSockets, able to play MA),
//! [`BareEchoEnd`] (a bare str0m peer that echoes, the benchmarks' baseline), [`SessionEnd`]
//! (one [`crate::webrtc::PeerSession`] behind a [`crate::webrtc::Router`]) and [`RtcEnd`] (a
//! raw str0m `Rtc`, the offerer of the WebRTC loopback tests). By convention `a` is the client
//! side and `b` the server side. Signaling texts are the protocol's JSON
//! (docs/protocol.md#signaling): a client end sends what a client sends to the signaling
//! server, a server end answers with what the server would pass on; the pair plays the
//! server in between, tagging each text with its session id.
//!
//! Example, in prose: a gateway test builds `GatewayEnd::new(now, GatewayEnd::config(4),
//! &identity, gateway_addr)` and `ClientsEnd::new(&identity.remote_id)` and puts them in
//! `Pair::new(Clock::simulated(), clients, gateway)`. `pair.a.add(now, client_addr, "s-1")`
//! adds a client, which asks for a session at the next step, and
//! `pair.run_until("the channel", Duration::from_secs(10), |p| p.a.clients[0].rc.is_open())`
//! lets signaling, ICE, DTLS and SCTP play out in a few milliseconds of real time. The test
//! then plays MA: `pair.b.open_ws(now, bridge)` accepts the socket the gateway asked for,
//! `pair.b.ma_send(bridge, msg)` sends on it, `pair.b.ws[&bridge].sent` holds what the
//! gateway sent; what reached the client is in `pair.a.clients[0].events`. A benchmark builds
//! the same pair with [`Clock::Real`] and `pair.b.ma = Ma::echo(greeting)`.

mod clients;
mod gateway;
pub mod path;
pub mod props;
pub mod stranger;
pub mod turn;
mod webrtc;

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::machine::{earliest, Next};

pub use self::clients::{Client, ClientsEnd};
pub use self::gateway::{GatewayEnd, LocalWs, Ma};
pub use self::webrtc::{BareEchoEnd, RtcEnd, SessionEnd};

/// What an end puts on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// A UDP datagram.
    Datagram {
        from: SocketAddr,
        to: SocketAddr,
        bytes: Vec<u8>,
    },
    /// A signaling text (JSON) of one session, relayed in memory.
    Signal { session: String, text: String },
}

/// One end of the simulated wire. Every input carries `now`; `poll_output` gives what the end
/// sends, then its next deadline (the [`crate::machine`] convention).
pub trait End: fmt::Debug {
    /// A datagram from `from` arrived for `to`.
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, bytes: &[u8]);
    /// A signaling text of `session` from the other side (ends without signaling ignore it).
    fn handle_signal(&mut self, now: Instant, session: &str, text: &str);
    /// The deadline the last poll gave has come.
    fn handle_timeout(&mut self, now: Instant);
    /// The next item to send, or the next deadline.
    fn poll_output(&mut self, now: Instant) -> Next<Wire>;
}

/// The pair's time.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// Simulated: stands still while anything moves, then jumps to the next deadline (at
    /// least 1 ms, so nothing stalls).
    Simulated(Instant),
    /// `Instant::now()`: for benchmarks, which measure time.
    Real,
}

impl Clock {
    /// A simulated clock starting now.
    pub fn simulated() -> Clock {
        Clock::Simulated(Instant::now())
    }

    pub fn now(&self) -> Instant {
        match self {
            Clock::Simulated(t) => *t,
            Clock::Real => Instant::now(),
        }
    }
}

/// What crossed the wire in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flow {
    /// Datagrams delivered.
    pub datagrams: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Signaling texts delivered.
    pub signals: u64,
    /// Datagrams lost: from or to a dead address, or picked by the loss filter.
    pub lost: u64,
}

/// What crossed the wire so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub a_to_b: Flow,
    pub b_to_a: Flow,
    /// Steps that looked for due timeouts: every step on a real clock, each clock jump on a
    /// simulated one.
    pub advances: u64,
}

/// Picks datagrams to lose: `(from, to, bytes)`, true to drop it.
pub type Loss = Box<dyn FnMut(SocketAddr, SocketAddr, &[u8]) -> bool>;

/// Most steps [`Pair::run_until`] takes on a simulated clock before it calls it a livelock.
const MAX_STEPS: u64 = 2_000_000;

/// Two ends, the wire between them and a clock. See the module docs.
pub struct Pair<A: End, B: End> {
    pub a: A,
    pub b: B,
    /// Addresses that no longer exist: datagrams from or to them vanish.
    pub dead: HashSet<SocketAddr>,
    /// Loses the datagrams it picks (none when `None`).
    pub loss: Option<Loss>,
    /// One-way delay of everything on the wire (zero: delivered in the same step).
    pub latency: Duration,
    pub counters: Counters,
    clock: Clock,
    /// In flight, each with the time it arrives.
    to_a: VecDeque<(Instant, Wire)>,
    to_b: VecDeque<(Instant, Wire)>,
    /// Each end's deadline, as its last poll said.
    deadline_a: Option<Instant>,
    deadline_b: Option<Instant>,
}

impl<A: End, B: End> Pair<A, B> {
    pub fn new(clock: Clock, a: A, b: B) -> Pair<A, B> {
        Pair {
            a,
            b,
            dead: HashSet::new(),
            loss: None,
            latency: Duration::ZERO,
            counters: Counters::default(),
            clock,
            to_a: VecDeque::new(),
            to_b: VecDeque::new(),
            deadline_a: None,
            deadline_b: None,
        }
    }

    /// The pair's current time.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Poll both ends dry and deliver everything in flight that has arrived, both ways; the
    /// clock stands still. Whether anything moved.
    pub fn exchange(&mut self) -> bool {
        let now = self.now();
        self.poll(now);
        let mut moved = false;
        while let Some(w) = pop_arrived(&mut self.to_b, now) {
            moved = true;
            let flow = &mut self.counters.a_to_b;
            deliver(&mut self.b, now, w, flow, &self.dead, &mut self.loss);
        }
        while let Some(w) = pop_arrived(&mut self.to_a, now) {
            moved = true;
            let flow = &mut self.counters.b_to_a;
            deliver(&mut self.a, now, w, flow, &self.dead, &mut self.loss);
        }
        moved
    }

    /// When the next item in flight arrives.
    fn next_arrival(&self) -> Option<Instant> {
        let first = |q: &VecDeque<(Instant, Wire)>| q.front().map(|(at, _)| *at);
        earliest(first(&self.to_a), first(&self.to_b))
    }

    /// Poll both ends to their deadlines: what they send goes in flight, what they learn they
    /// keep (so a test looking at an end after a step sees all of it).
    fn poll(&mut self, now: Instant) {
        loop {
            match self.a.poll_output(now) {
                Next::Output(w) => self.to_b.push_back((now + self.latency, w)),
                Next::Timeout(t) => {
                    self.deadline_a = t;
                    break;
                }
            }
        }
        loop {
            match self.b.poll_output(now) {
                Next::Output(w) => self.to_a.push_back((now + self.latency, w)),
                Next::Timeout(t) => {
                    self.deadline_b = t;
                    break;
                }
            }
        }
    }

    /// [`Pair::exchange`] until nothing moves; the clock stands still.
    pub fn settle(&mut self) {
        let mut rounds = 0u64;
        while self.exchange() {
            rounds += 1;
            assert!(rounds < MAX_STEPS, "the pair never settles: {self:?}");
        }
    }

    /// One step: deliver everything in flight both ways; then fire the timeouts that are
    /// due, after moving a simulated clock to the earliest deadline when nothing moved (a
    /// simulated clock stands still while anything moves; a real one is checked every step,
    /// as a driver's loop does). Whether anything moved.
    pub fn step(&mut self) -> bool {
        self.step_until(None)
    }

    /// Step until `done` holds. Panics, naming `what` and showing both ends, when `max` of the
    /// pair's time passes first (or, on a simulated clock, after a livelock's worth of steps).
    pub fn run_until(
        &mut self,
        what: &str,
        max: Duration,
        mut done: impl FnMut(&mut Pair<A, B>) -> bool,
    ) {
        let start = self.now();
        let deadline = start + max;
        let mut steps = 0u64;
        while !done(self) {
            let now = self.now();
            let livelock = matches!(self.clock, Clock::Simulated(_)) && steps >= MAX_STEPS;
            if now >= deadline || livelock {
                panic!(
                    "timed out waiting for {what}: {:?} of {max:?} passed in {steps} steps\n{self:#?}",
                    now - start
                );
            }
            self.step_until(Some(deadline));
            steps += 1;
        }
    }

    /// Step for `duration` of the pair's time (a simulated clock stops exactly there).
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now() + duration;
        while self.now() < end {
            self.step_until(Some(end));
        }
    }

    /// [`Pair::step`], a simulated clock moving no further than `cap`.
    fn step_until(&mut self, cap: Option<Instant>) -> bool {
        let moved = self.exchange();
        let arrival = self.next_arrival();
        match &mut self.clock {
            Clock::Simulated(_) if moved => return true,
            Clock::Simulated(t) => {
                // Nothing arrived: both deadlines are fresh. The clock jumps to the next
                // deadline or arrival.
                let min = *t + Duration::from_millis(1);
                let due = earliest(self.deadline_a, self.deadline_b);
                let mut next = earliest(due, arrival).map_or(min, |d| d.max(min));
                if let Some(cap) = cap {
                    next = next.min(cap.max(min));
                }
                *t = next;
            }
            Clock::Real => {}
        }
        self.counters.advances += 1;
        let now = self.now();
        let due_a = self.deadline_a.is_some_and(|d| d <= now);
        let due_b = self.deadline_b.is_some_and(|d| d <= now);
        if due_a {
            self.a.handle_timeout(now);
        }
        if due_b {
            self.b.handle_timeout(now);
        }
        if due_a || due_b {
            // What the timeouts brought is seen before the next look at the ends.
            self.poll(now);
        }
        moved
    }
}

/// The first item of `queue` if it has arrived by `now` (one latency for all: in order).
fn pop_arrived(queue: &mut VecDeque<(Instant, Wire)>, now: Instant) -> Option<Wire> {
    match queue.front() {
        Some((at, _)) if *at <= now => queue.pop_front().map(|(_, w)| w),
        _ => None,
    }
}

fn deliver<E: End>(
    end: &mut E,
    now: Instant,
    wire: Wire,
    flow: &mut Flow,
    dead: &HashSet<SocketAddr>,
    loss: &mut Option<Loss>,
) {
    match wire {
        Wire::Datagram { from, to, bytes } => {
            let lost = dead.contains(&from)
                || dead.contains(&to)
                || loss.as_mut().is_some_and(|l| l(from, to, &bytes));
            if lost {
                flow.lost += 1;
                return;
            }
            flow.datagrams += 1;
            flow.bytes += bytes.len() as u64;
            end.handle_datagram(now, from, to, &bytes);
        }
        Wire::Signal { session, text } => {
            flow.signals += 1;
            end.handle_signal(now, &session, &text);
        }
    }
}

impl<A: End, B: End> fmt::Debug for Pair<A, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pair")
            .field("clock", &self.clock)
            .field("counters", &self.counters)
            .field("dead", &self.dead)
            .field("in_flight", &(self.to_a.len() + self.to_b.len()))
            .field("a", &self.a)
            .field("b", &self.b)
            .finish_non_exhaustive()
    }
}

/// At most the last `n` items, each cut to 200 characters of its `Debug` form: an end's
/// `Debug` stays readable when it holds megabytes of channel data.
pub(crate) fn tail<T: fmt::Debug>(
    items: impl ExactSizeIterator<Item = T>,
    n: usize,
) -> Vec<String> {
    let skip = items.len().saturating_sub(n);
    items
        .skip(skip)
        .map(|item| {
            let mut s = format!("{item:?}");
            if s.len() > 200 {
                let mut end = 200;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                s.truncate(end);
                s.push('…');
            }
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::remote_client::ClientEvent;

    /// Sends one datagram to `peer` every `period`, counts what it receives.
    #[derive(Debug)]
    struct Ticker {
        addr: SocketAddr,
        peer: SocketAddr,
        period: Duration,
        next: Instant,
        due: bool,
        received: Vec<(Instant, SocketAddr)>,
    }

    impl Ticker {
        fn new(now: Instant, addr: &str, peer: &str) -> Ticker {
            Ticker {
                addr: addr.parse().unwrap(),
                peer: peer.parse().unwrap(),
                period: Duration::from_millis(100),
                next: now + Duration::from_millis(100),
                due: false,
                received: Vec::new(),
            }
        }
    }

    impl End for Ticker {
        fn handle_datagram(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, _: &[u8]) {
            assert_eq!(to, self.addr);
            self.received.push((now, from));
        }
        fn handle_signal(&mut self, _: Instant, _: &str, _: &str) {}
        fn handle_timeout(&mut self, now: Instant) {
            if now >= self.next {
                self.due = true;
                self.next += self.period;
            }
        }
        fn poll_output(&mut self, _: Instant) -> Next<Wire> {
            if std::mem::take(&mut self.due) {
                return Next::Output(Wire::Datagram {
                    from: self.addr,
                    to: self.peer,
                    bytes: vec![1, 2, 3],
                });
            }
            Next::Timeout(Some(self.next))
        }
    }

    fn tickers() -> Pair<Ticker, Ticker> {
        let clock = Clock::simulated();
        let now = clock.now();
        let a = Ticker::new(now, "10.0.0.1:1", "10.0.0.2:2");
        let b = Ticker::new(now, "10.0.0.2:2", "10.0.0.1:1");
        Pair::new(clock, a, b)
    }

    #[test]
    fn the_simulated_clock_jumps_from_deadline_to_deadline() {
        let mut pair = tickers();
        let start = pair.now();
        pair.run_for(Duration::from_millis(1050));
        assert_eq!(pair.now(), start + Duration::from_millis(1050));
        assert_eq!(pair.a.received.len(), 10);
        assert_eq!(pair.b.received.len(), 10);
        // Delivered at the instant they were sent: 100 ms apart, no time lost in between.
        for (i, (at, from)) in pair.b.received.iter().enumerate() {
            assert_eq!(*at, start + Duration::from_millis(100 * (i as u64 + 1)));
            assert_eq!(from, &pair.a.addr);
        }
        let flow = Flow {
            datagrams: 10,
            bytes: 30,
            signals: 0,
            lost: 0,
        };
        assert_eq!(pair.counters.a_to_b, flow);
        assert_eq!(pair.counters.b_to_a, flow);
    }

    #[test]
    fn dead_addresses_and_the_loss_filter_lose_datagrams() {
        let mut pair = tickers();
        let b = pair.b.addr;
        pair.dead.insert(b);
        pair.run_for(Duration::from_millis(450));
        assert!(pair.a.received.is_empty() && pair.b.received.is_empty());
        assert_eq!(pair.counters.a_to_b.lost, 4);
        assert_eq!(pair.counters.b_to_a.lost, 4);

        pair.dead.clear();
        let mut n = 0u32;
        pair.loss = Some(Box::new(move |_, _, _| {
            n += 1;
            n.is_multiple_of(2)
        }));
        pair.run_for(Duration::from_millis(1000));
        let got = pair.a.received.len() + pair.b.received.len();
        assert_eq!(got, 10, "every other of 20 datagrams");
        assert_eq!(pair.counters.a_to_b.lost + pair.counters.b_to_a.lost, 18);
    }

    #[test]
    #[should_panic(expected = "timed out waiting for a miracle: 2s of 2s passed")]
    fn run_until_says_what_it_waited_for() {
        let mut pair = tickers();
        pair.run_until("a miracle", Duration::from_secs(2), |_| false);
    }

    /// The whole path with an echoing MA over a lossy link: SCTP repairs what UDP loses.
    #[test]
    fn echo_through_the_gateway_over_a_lossy_link() {
        let identity = Identity::generate().unwrap();
        let clock = Clock::simulated();
        let now = clock.now();
        let gw_addr = "127.0.0.1:40000".parse().unwrap();
        let mut gw = GatewayEnd::new(now, GatewayEnd::config(4), &identity, gw_addr);
        gw.ma = Ma::echo(r#"{"server_id":"kit"}"#);
        let mut pair = Pair::new(clock, ClientsEnd::new(&identity.remote_id), gw);
        let mut n = 0u32;
        pair.loss = Some(Box::new(move |_, _, _| {
            n += 1;
            n.is_multiple_of(7)
        }));
        let client = "127.0.0.1:50000".parse().unwrap();
        pair.a.add(now, client, "kit-session");
        pair.run_until("MA's greeting", Duration::from_secs(30), |p| {
            p.a.clients[0].text_count() == 1
        });
        assert_eq!(pair.a.clients[0].texts(), [r#"{"server_id":"kit"}"#]);
        let big = "y".repeat(200_000);
        let now = pair.now();
        assert_eq!(
            pair.a.clients[0].rc.handle_send_text(now, "small"),
            Ok(true)
        );
        assert_eq!(pair.a.clients[0].rc.handle_send_text(now, &big), Ok(true));
        pair.run_until("both echoes", Duration::from_secs(60), |p| {
            p.a.clients[0].text_count() == 2
        });
        assert_eq!(pair.a.clients[0].texts(), ["small".to_string(), big]);
        assert!(pair.counters.a_to_b.lost > 0 && pair.counters.b_to_a.lost > 0);
        assert_eq!(pair.b.ready, ["kit-session"]);
        assert!(!pair.a.clients[0]
            .events
            .iter()
            .any(|e| matches!(e, ClientEvent::Failed(_))));
    }
}
