//! Latency samples and their percentiles, one definition for every bench (nearest rank: the
//! p99 of 100 samples is the 99th smallest, never an interpolation between two).

use std::time::Duration;

/// Samples collected by a bench run.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    nanos: Vec<u64>,
    sorted: bool,
}

impl Latencies {
    /// Room for `n` samples.
    pub fn with_capacity(n: usize) -> Latencies {
        Latencies {
            nanos: Vec::with_capacity(n),
            sorted: true,
        }
    }

    /// Adds one sample in nanoseconds.
    pub fn push_nanos(&mut self, nanos: u64) {
        self.nanos.push(nanos);
        self.sorted = false;
    }

    /// Adds one sample.
    pub fn push(&mut self, d: Duration) {
        self.push_nanos(d.as_nanos() as u64);
    }

    /// The `q` quantile (0 < q ≤ 1) in milliseconds; NaN without samples.
    pub fn ms(&mut self, q: f64) -> f64 {
        if self.nanos.is_empty() {
            return f64::NAN;
        }
        if !self.sorted {
            self.nanos.sort_unstable();
            self.sorted = true;
        }
        let n = self.nanos.len();
        let i = ((n as f64 * q).ceil() as usize).clamp(1, n) - 1;
        self.nanos[i] as f64 / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut l = Latencies::with_capacity(100);
        for ms in (1..=100).rev() {
            l.push(Duration::from_millis(ms));
        }
        assert_eq!(l.ms(0.5), 50.0);
        assert_eq!(l.ms(0.99), 99.0);
        assert_eq!(l.ms(1.0), 100.0);
        assert!(Latencies::default().ms(0.5).is_nan());
    }
}
