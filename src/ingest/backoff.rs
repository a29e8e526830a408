//! Reconnection delays: exponential with jitter, capped.
use rand::Rng;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay: base × 2^attempt, capped, with ±25 % jitter so that many
    /// mailboxes failing together do not reconnect in lockstep.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(20));
        self.attempt = self.attempt.saturating_add(1);
        let capped = exp.min(self.max);
        let jitter = rand::rng().random_range(0.75..=1.25);
        capped.mul_f64(jitter).min(self.max)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(750) && first <= Duration::from_millis(1250));
        for _ in 0..10 {
            assert!(b.next_delay() <= Duration::from_secs(10));
        }
        let late = b.next_delay();
        assert!(late >= Duration::from_millis(7500), "{late:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1250));
    }
}
