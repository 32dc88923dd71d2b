//! The one face every protocol state machine shows its driver (docs/design.md#the-machine-convention).
//!
//! A machine owns no socket, no thread and no clock:
//! - every **input** is a `&mut self` method named `handle_…` whose first argument is
//!   `now: Instant` (a datagram, a parsed message, a connection that opened, time passing);
//! - constructors take `now` too, so a simulated clock drives a machine exactly like the real
//!   one;
//! - the driver then calls [`Machine::poll_output`] until it answers [`Next::Timeout`], carries
//!   out each output, and calls [`Machine::handle_timeout`] when that deadline comes.
//!
//! This is the shape of str0m's `Rtc` (`handle_input` / `poll_output`) with the inputs spelled
//! as methods, which keeps borrowed inputs (`&[u8]`) free of an enum's lifetime.

use std::time::Instant;

/// What a machine wants next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next<O> {
    /// Carry this out, then poll again.
    Output(O),
    /// Nothing more to do until this instant, when [`Machine::handle_timeout`] is due; `None`:
    /// no timer is armed, only a new input can bring work.
    Timeout(Option<Instant>),
}

impl<O> Next<O> {
    /// An output if there is one (the front of a machine's queue), else its deadline.
    pub fn or_timeout(output: Option<O>, deadline: impl FnOnce() -> Option<Instant>) -> Next<O> {
        match output {
            Some(o) => Next::Output(o),
            None => Next::Timeout(deadline()),
        }
    }

    /// The output, if this is one.
    pub fn output(self) -> Option<O> {
        match self {
            Next::Output(o) => Some(o),
            Next::Timeout(_) => None,
        }
    }
}

/// A sans-IO state machine (see the module docs for the convention).
pub trait Machine {
    type Output;

    /// Time has passed: act on every deadline at or before `now`.
    fn handle_timeout(&mut self, now: Instant);

    /// The next output, or the next deadline when there is no output.
    fn poll_output(&mut self) -> Next<Self::Output>;
}

/// The earlier of two optional deadlines.
pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}
