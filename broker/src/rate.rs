//! Per-identity publish rate: one token bucket per identity, shared by all of its connections
//! (opening more connections does not buy a client more rate).
//!
//! Only commands from clients are metered; a child node's link frames carry its whole subtree
//! and are paced by the link window instead.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Rate-limit settings; `per_second == 0` turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSettings {
    /// Sustained commands per second per identity.
    pub per_second: f64,
    /// Commands an idle identity may send at once.
    pub burst: f64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// When this identity was last told (by receipt) that it is over the limit.
    last_notice: Option<Instant>,
}

/// What the limiter says about one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    /// Within the rate.
    Allowed,
    /// Over the rate; `notify` is true at most once a second per identity, so refusal
    /// receipts cannot themselves become a flood.
    Refused {
        /// Whether to send the publisher a receipt about this refusal.
        notify: bool,
    },
}

/// Token buckets by identity.
#[derive(Debug)]
pub struct RateLimiter {
    settings: RateSettings,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// A limiter with `settings`.
    pub fn new(settings: RateSettings) -> Self {
        RateLimiter {
            settings,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> RateSettings {
        self.settings
    }

    /// Takes one token from `identity`'s bucket.
    pub fn check(&self, identity: &str, now: Instant) -> RateVerdict {
        let s = self.settings;
        if s.per_second <= 0.0 {
            return RateVerdict::Allowed;
        }
        let mut buckets = self
            .buckets
            .lock()
            .expect("rate-limit lock is never held across a panic");
        let b = buckets
            .entry(identity.to_string())
            .or_insert_with(|| Bucket {
                tokens: s.burst,
                at: now,
                last_notice: None,
            });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * s.per_second).min(s.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return RateVerdict::Allowed;
        }
        let notify = b
            .last_notice
            .is_none_or(|t| now.saturating_duration_since(t).as_secs() >= 1);
        if notify {
            b.last_notice = Some(now);
        }
        RateVerdict::Refused { notify }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_sustains_the_rate() {
        let r = RateLimiter::new(RateSettings {
            per_second: 10.0,
            burst: 5.0,
        });
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(r.check("a", t0), RateVerdict::Allowed);
        }
        assert_eq!(r.check("a", t0), RateVerdict::Refused { notify: true });
        assert_eq!(r.check("a", t0), RateVerdict::Refused { notify: false });
        // Other identities have their own bucket.
        assert_eq!(r.check("b", t0), RateVerdict::Allowed);
        // 100 ms later one token has come back.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(r.check("a", t1), RateVerdict::Allowed);
        assert!(matches!(r.check("a", t1), RateVerdict::Refused { .. }));
        let off = RateLimiter::new(RateSettings {
            per_second: 0.0,
            burst: 0.0,
        });
        assert_eq!(off.check("a", t0), RateVerdict::Allowed);
    }
}
