//! Slowing down password guessing.
//!
//! Every failed login counts against the source address and against the identity it named.
//! Against the identity, so does every attempt still being checked (so that forty guesses at
//! one password sent at once do not all pass as "the first"). Against the address it does not:
//! thousands of phones behind one carrier NAT, or a whole ward's tablets behind a hospital's,
//! reconnect at once after a restart, and their logins in progress are not failures. After a few free failures, attempts on a key are checked only in
//! slots spaced by a delay that doubles per failure up to a cap (4 s by default, so about one
//! guess per 4 s per identity however many connections try in parallel). An attempt whose slot
//! would lie further ahead than the cap is refused at once, unchecked, rather than queued
//! without bound: the rightful user, retrying, gets a slot within the cap once the guesser's
//! reservations run out. Waiting and refusing (rather than locking out) keeps a legitimate user
//! able to log in while someone hammers their name.

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
    /// Longest delay, and the furthest ahead a slot is reserved.
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
    /// Whether attempts in progress count as failures (an identity, not an address).
    per_name: bool,
    failures: u32,
    /// Attempts admitted and not yet decided; they count as failures until they are.
    in_flight: u32,
    /// The earliest time the next attempt on this key may be checked.
    next_at: Instant,
    last_seen: Instant,
}

impl Record {
    /// What the delay is computed from.
    fn counted(&self) -> u32 {
        if self.per_name {
            self.failures.saturating_add(self.in_flight)
        } else {
            self.failures
        }
    }
}

/// An attempt refused unchecked: its key's slots are reserved further ahead than the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled;

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

    fn delay(settings: &ThrottleSettings, failures: u32) -> Duration {
        if failures < settings.free_failures {
            return Duration::ZERO;
        }
        let doublings = (failures - settings.free_failures).min(16);
        (settings.base_delay * 2u32.pow(doublings)).min(settings.max_delay)
    }

    /// How long an attempt from `addr` naming `name` must wait before its password is checked,
    /// or [`Throttled`] if it must not be checked at all. An admitted attempt reserves its slot
    /// and counts as a failure until [`LoginThrottle::failed`] or
    /// [`LoginThrottle::succeeded`] decides it.
    pub fn admit(&mut self, addr: IpAddr, name: &str, now: Instant) -> Result<Duration, Throttled> {
        if self.records.len() >= MAX_KEYS {
            self.forget_old(now);
        }
        let keys = [Key::Addr(addr), Key::Name(name.to_string())];
        let settings = self.settings;
        // Decide first, so that a refused attempt reserves nothing.
        let mut slot = now;
        for key in &keys {
            if let Some(r) = self.records.get(key) {
                if !Self::delay(&settings, r.counted()).is_zero() {
                    slot = slot.max(r.next_at);
                }
            }
        }
        if slot - now > settings.max_delay {
            return Err(Throttled);
        }
        for key in keys {
            let per_name = matches!(key, Key::Name(_));
            let r = self.records.entry(key).or_insert(Record {
                per_name,
                failures: 0,
                in_flight: 0,
                next_at: now,
                last_seen: now,
            });
            let delay = Self::delay(&settings, r.counted());
            r.in_flight = r.in_flight.saturating_add(1);
            r.last_seen = now;
            if !delay.is_zero() {
                r.next_at = slot + delay;
            }
        }
        Ok(slot - now)
    }

    /// Records a failed attempt; returns the failure count of the worse key.
    pub fn failed(&mut self, addr: IpAddr, name: &str, now: Instant) -> u32 {
        let mut worst = 0;
        for key in [Key::Addr(addr), Key::Name(name.to_string())] {
            let per_name = matches!(key, Key::Name(_));
            let r = self.records.entry(key).or_insert(Record {
                per_name,
                failures: 0,
                in_flight: 1,
                next_at: now,
                last_seen: now,
            });
            r.in_flight = r.in_flight.saturating_sub(1);
            r.failures = r.failures.saturating_add(1);
            r.last_seen = now;
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
            .retain(|_, r| r.in_flight > 0 || now.duration_since(r.last_seen) < horizon);
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
            assert_eq!(t.admit(ip, "a", now), Ok(Duration::ZERO));
            t.failed(ip, "a", now);
        }
        // Fourth attempt: still free to check, but reserves the next slot 250 ms on.
        assert_eq!(t.admit(ip, "a", now), Ok(Duration::ZERO));
        t.failed(ip, "a", now);
        // Two attempts at once queue behind each other.
        let w1 = t.admit(ip, "a", now).unwrap();
        let w2 = t.admit(ip, "a", now).unwrap();
        assert!(w1 >= Duration::from_millis(250), "{w1:?}");
        assert!(w2 > w1, "{w1:?} {w2:?}");
        t.failed(ip, "a", now);
        t.failed(ip, "a", now);
        // The same name from elsewhere waits too; another name from elsewhere does not.
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(t.admit(other, "a", now).unwrap() > Duration::ZERO);
        t.failed(other, "a", now);
        assert_eq!(t.admit(other, "b", now), Ok(Duration::ZERO));
        t.succeeded(other, "b");
        // Never longer than the cap: beyond it, refused unchecked.
        for _ in 0..40 {
            if let Ok(wait) = t.admit(ip, "a", now) {
                assert!(wait <= Duration::from_secs(4));
                t.failed(ip, "a", now);
            }
        }
        t.succeeded(ip, "a");
        assert_eq!(t.admit(ip, "a", now), Ok(Duration::ZERO));
    }

    /// A reconnect storm behind one NAT: logins in progress from one address are not failures.
    #[test]
    fn many_logins_at_once_from_one_address_are_not_delayed() {
        let mut t = LoginThrottle::new(ThrottleSettings::default());
        let nat: IpAddr = "100.64.0.1".parse().unwrap();
        let now = Instant::now();
        for i in 0..5000 {
            assert_eq!(t.admit(nat, &format!("pt-{i}"), now), Ok(Duration::ZERO));
        }
        // ... but failures from it still are: the next attempt reserves a slot further on,
        // and the one after waits for it.
        for i in 0..5 {
            t.failed(nat, &format!("pt-{i}"), now);
        }
        assert_eq!(t.admit(nat, "pt-x", now), Ok(Duration::ZERO));
        assert!(t.admit(nat, "pt-y", now).unwrap() > Duration::ZERO);
    }

    /// The outside probe's attack: many attempts on one identity at the same instant, none
    /// decided yet. Only the free ones and those whose slots fit under the cap are checked.
    #[test]
    fn parallel_attempts_count_before_they_are_decided() {
        let mut t = LoginThrottle::new(ThrottleSettings::default());
        let now = Instant::now();
        let admitted: Vec<Duration> = (0..40u8)
            .filter_map(|i| t.admit(IpAddr::from([10, 0, 1, i]), "victim", now).ok())
            .collect();
        assert_eq!(
            admitted.iter().filter(|w| w.is_zero()).count(),
            4,
            "{admitted:?}"
        );
        assert!(
            admitted.len() < 10,
            "{} of 40 parallel guesses admitted: {admitted:?}",
            admitted.len()
        );
        assert!(admitted.iter().all(|w| *w <= Duration::from_secs(4)));
        // Steady state: one check per 4 s on the identity, however many try.
        let mut clock = now;
        let mut checked = 0;
        for i in 0..24 * 60u32 {
            clock = now + Duration::from_millis(u64::from(i) * 1000 / 24);
            if let Ok(wait) = t.admit(IpAddr::from([10, 0, 2, (i % 200) as u8]), "victim", clock) {
                checked += 1;
                t.failed(
                    IpAddr::from([10, 0, 2, (i % 200) as u8]),
                    "victim",
                    clock + wait,
                );
            }
        }
        let per_second = f64::from(checked) / clock.duration_since(now).as_secs_f64();
        assert!(
            per_second <= 0.3,
            "{per_second:.2} guesses/s on one identity"
        );
    }
}
