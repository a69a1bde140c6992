//! Slowing down password guessing.
//!
//! Every failed login counts against the source address and against the identity it named.
//! After a few free failures, the next attempt on either key must wait, doubling per failure up
//! to a cap. Waiting (rather than locking out) keeps a legitimate user able to log in while
//! someone hammers their name: they wait at most the cap. Each attempt also reserves its slot,
//! so parallel guesses queue behind each other instead of all waiting the same short time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Settings of the throttle.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleSettings {
    /// Failures allowed before attempts are delayed.
    pub free_failures: u32,
    /// Delay after the first failure beyond the free ones; doubles per further failure.
    pub base_delay: Duration,
    /// Longest delay.
    pub max_delay: Duration,
    /// A key's record is forgotten this long after its last failure.
    pub forget_after: Duration,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            free_failures: 3,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
            forget_after: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Addr(IpAddr),
    Name(String),
}

#[derive(Debug)]
struct Record {
    failures: u32,
    /// The earliest time the next attempt on this key may be checked.
    next_at: Instant,
    last_failure: Instant,
}

/// Most keys remembered; beyond it the oldest records are dropped (bounded memory under a
/// spray of made-up names).
const MAX_KEYS: usize = 100_000;

/// Failed-login bookkeeping per source address and per identity.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    settings: ThrottleSettings,
    records: HashMap<Key, Record>,
}

impl LoginThrottle {
    /// A throttle with `settings`.
    pub fn new(settings: ThrottleSettings) -> Self {
        LoginThrottle {
            settings,
            records: HashMap::new(),
        }
    }

    fn delay(&self, failures: u32) -> Duration {
        if failures < self.settings.free_failures {
            return Duration::ZERO;
        }
        let doublings = (failures - self.settings.free_failures).min(16);
        (self.settings.base_delay * 2u32.pow(doublings)).min(self.settings.max_delay)
    }

    /// How long an attempt from `addr` naming `name` must wait before its password is checked.
    /// Reserves the attempt's slot so concurrent attempts queue up.
    pub fn admit(&mut self, addr: IpAddr, name: &str, now: Instant) -> Duration {
        let mut wait = Duration::ZERO;
        for key in [Key::Addr(addr), Key::Name(name.to_string())] {
            let delay = match self.records.get(&key) {
                Some(r) => self.delay(r.failures),
                None => continue,
            };
            let cap = now + self.settings.max_delay;
            let r = self.records.get_mut(&key).expect("looked up just above");
            if delay.is_zero() {
                continue;
            }
            let slot = r.next_at.max(now).min(cap);
            wait = wait.max(slot - now);
            r.next_at = (slot + delay).min(cap);
        }
        wait
    }

    /// Records a failed attempt; returns the failure count of the worse key.
    pub fn failed(&mut self, addr: IpAddr, name: &str, now: Instant) -> u32 {
        if self.records.len() >= MAX_KEYS {
            self.forget_old(now);
        }
        let mut worst = 0;
        for key in [Key::Addr(addr), Key::Name(name.to_string())] {
            let r = self.records.entry(key).or_insert(Record {
                failures: 0,
                next_at: now,
                last_failure: now,
            });
            r.failures = r.failures.saturating_add(1);
            r.last_failure = now;
            worst = worst.max(r.failures);
        }
        worst
    }

    /// Records a successful login: both keys start afresh.
    pub fn succeeded(&mut self, addr: IpAddr, name: &str) {
        self.records.remove(&Key::Addr(addr));
        self.records.remove(&Key::Name(name.to_string()));
    }

    fn forget_old(&mut self, now: Instant) {
        let horizon = self.settings.forget_after;
        self.records
            .retain(|_, r| now.duration_since(r.last_failure) < horizon);
        if self.records.len() >= MAX_KEYS {
            // Still full of fresh records: a spray. Dropping them all only forgets guesses.
            self.records.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_after_free_failures_and_reset_on_success() {
        let mut t = LoginThrottle::new(ThrottleSettings::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(t.admit(ip, "a", now), Duration::ZERO);
            t.failed(ip, "a", now);
        }
        // Fourth attempt: still free to check, but reserves the next slot 250 ms on.
        assert_eq!(t.admit(ip, "a", now), Duration::ZERO);
        t.failed(ip, "a", now);
        // Two attempts at once queue behind each other.
        let w1 = t.admit(ip, "a", now);
        let w2 = t.admit(ip, "a", now);
        assert!(w1 >= Duration::from_millis(250), "{w1:?}");
        assert!(w2 > w1, "{w1:?} {w2:?}");
        // The same name from elsewhere waits too; another name from elsewhere does not.
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(t.admit(other, "a", now) > Duration::ZERO);
        assert_eq!(t.admit(other, "b", now), Duration::ZERO);
        // Never longer than the cap.
        for _ in 0..40 {
            t.failed(ip, "a", now);
            assert!(t.admit(ip, "a", now) <= Duration::from_secs(4));
        }
        t.succeeded(ip, "a");
        assert_eq!(t.admit(ip, "a", now), Duration::ZERO);
    }
}
