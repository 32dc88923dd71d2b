//! Reconnect schedule: exponential backoff with jitter, plus the long back-off used when the
//! signaling server says another gateway took our Remote ID (close code 4000).

use std::time::Duration;

/// Longest wait after repeated replacements (close 4000).
pub const REPLACED_MAX: Duration = Duration::from_secs(3600);

/// A small deterministic PRNG (xorshift64*), seeded from the OS for real runs and fixed in
/// tests so schedules can be asserted.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn seeded(seed: u64) -> Jitter {
        Jitter(seed.max(1))
    }

    pub fn from_os() -> Jitter {
        let mut b = [0u8; 8];
        let _ = aws_lc_rs::rand::fill(&mut b);
        Jitter::seeded(u64::from_le_bytes(b))
    }

    /// A factor in [0.8, 1.2).
    pub fn factor(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        0.8 + 0.4 * (x as f64 / (1u64 << 53) as f64)
    }
}

/// Exponential backoff: `min`, doubling per failure up to `max`, each delay jittered ±20 %
/// (never above `max`).
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
    replaced: u32,
    jitter: Jitter,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration, jitter: Jitter) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            failures: 0,
            replaced: 0,
            jitter,
        }
    }

    /// The delay before the next attempt after a failed or lost connection.
    pub fn next_delay(&mut self) -> Duration {
        let base = self
            .min
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        self.jittered(base, self.max)
    }

    /// The delay after being replaced by another gateway with the same Remote ID: starts at
    /// `max` and doubles per consecutive replacement up to [`REPLACED_MAX`] (or `max` if larger),
    /// so two gateways sharing an ID evict each other less and less often, yet neither stops
    /// for good.
    pub fn replaced_delay(&mut self) -> Duration {
        let cap = REPLACED_MAX.max(self.max);
        let base = self
            .max
            .saturating_mul(1u32 << self.replaced.min(20))
            .min(cap);
        self.replaced = self.replaced.saturating_add(1);
        self.failures = self.failures.saturating_add(1);
        self.jittered(base, cap)
    }

    fn jittered(&mut self, base: Duration, cap: Duration) -> Duration {
        base.mul_f64(self.jitter.factor()).min(cap)
    }

    /// Registered again: the normal schedule starts over.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// A registered connection ended for a reason other than replacement: the replacement
    /// schedule starts over too.
    pub fn reset_replaced(&mut self) {
        self.replaced = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn doubles_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(
            Duration::from_secs(10),
            Duration::from_secs(300),
            Jitter::seeded(42),
        );
        let bases = [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0];
        for base in bases {
            let d = secs(b.next_delay());
            assert!(
                d >= base * 0.8 - 1e-9 && d <= (base * 1.2).min(300.0),
                "{d} vs {base}"
            );
        }
        b.reset();
        let d = secs(b.next_delay());
        assert!((8.0..=12.0).contains(&d));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut a = Backoff::new(
            Duration::from_secs(10),
            Duration::from_secs(300),
            Jitter::seeded(1),
        );
        let mut b = Backoff::new(
            Duration::from_secs(10),
            Duration::from_secs(300),
            Jitter::seeded(2),
        );
        assert_ne!(a.next_delay(), b.next_delay());
    }

    #[test]
    fn replacement_backs_off_long_but_not_forever() {
        let mut b = Backoff::new(
            Duration::from_secs(10),
            Duration::from_secs(300),
            Jitter::seeded(7),
        );
        let first = secs(b.replaced_delay());
        assert!((240.0..=360.0).contains(&first));
        let mut last = 0.0;
        for _ in 0..10 {
            last = secs(b.replaced_delay());
        }
        assert!((2880.0..=3600.0).contains(&last), "{last}");
        b.reset_replaced();
        assert!(secs(b.replaced_delay()) <= 360.0);
    }
}
