//! Reconnect backoff, for the SDK's connection and a child node's uplink: capped exponential
//! growth with random jitter, so callers cut off together (a node restart) do not all come
//! back in the same instant.

use std::time::Duration;

use rand::Rng;

/// Capped exponential backoff with jitter. Attempt `n` waits `base(n)` plus a random part of
/// up to `spread` percent of it, where `base(n) = first · 2ⁿ`, at most `cap`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    spread: u32,
    attempt: u32,
}

impl Backoff {
    /// Starts at `first`, doubles up to `cap`, adds up to `spread` percent at random.
    pub const fn new(first: Duration, cap: Duration, spread: u32) -> Backoff {
        Backoff {
            first,
            cap,
            spread,
            attempt: 0,
        }
    }

    /// The wait before attempt `attempt` (0 is the first), jittered.
    pub fn delay_for(&self, attempt: u32) -> Duration {
        let base = self
            .first
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.cap);
        let most = base.as_millis() as u64 * u64::from(self.spread) / 100;
        base + Duration::from_millis(rand::thread_rng().gen_range(0..=most))
    }

    /// The wait before the next attempt; each call counts one attempt.
    pub fn delay(&mut self) -> Duration {
        let d = self.delay_for(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Starts over at `first` (after a connection that held).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_is_capped_and_jitters_within_the_spread() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), Duration::from_secs(5), 50);
        let first = b.delay();
        assert!(first >= ms(100) && first <= ms(150), "{first:?}");
        let second = b.delay();
        assert!(second >= ms(200) && second <= ms(300), "{second:?}");
        for n in 6..40 {
            let d = b.delay_for(n);
            assert!(d >= ms(5000) && d <= ms(7500), "{d:?}");
        }
        b.reset();
        assert!(b.delay() <= ms(150));
        // Full jitter above half the cap: never beyond the cap.
        let cap = Duration::from_secs(3);
        let half = Backoff::new(ms(50), cap / 2, 100);
        for n in 0..40 {
            let d = half.delay_for(n);
            assert!(d <= cap && d >= ms(50), "{d:?}");
        }
        assert!(half.delay_for(30) >= cap / 2);
    }
}
