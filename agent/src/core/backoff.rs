//! Reconnection back-off: exponential with jitter, so a fleet of boards that lost the
//! manager at the same moment does not come back in lockstep.

use std::time::Duration;

/// Exponential back-off between `initial` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubles up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, next: initial }
    }

    /// The next delay. `jitter` in `[0, 1)` spreads it over ±20 %.
    pub fn next(&mut self, jitter: f64) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
    }

    /// Back to the initial delay, after a session that worked.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let delays: Vec<_> = (0..8).map(|_| b.next(0.5).as_millis()).collect();
        assert_eq!(delays, vec![200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(0.5), Duration::from_millis(200));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        assert_eq!(b.next(0.0), Duration::from_millis(800));
        assert_eq!(b.next(0.999_999).as_millis(), 1199);
    }
}
