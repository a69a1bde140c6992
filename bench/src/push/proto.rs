//! What a load process (`medlink-bench push-load`) and its coordinator (`medlink-bench
//! push`) say to each other: one JSON object per line on the child's stdout, and plain
//! command words on its stdin. Lines keep the two sides independent processes (each with its
//! own file limit) while the coordinator holds every figure in one place.

use serde::{Deserialize, Serialize};

/// One arrival: recipient index, the sender's sequence number from the payload (−1 when the
/// payload carries another run's nonce or none), arrival time in CLOCK_REALTIME µs,
/// and the envelope id (empty for plain MQTT).
pub type Arrival = (u32, i64, u64, String);

/// A line from a load process.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Report {
    /// Every recipient of this process is connected and subscribed (MQTT: SUBACK; SSE:
    /// the stream's response head; long-poll: the answer to a first poll that does not wait;
    /// the long-poll itself follows at once).
    Ready {
        /// Recipients ready.
        connected: usize,
        /// Seconds from the process's start to the last one ready.
        connect_s: f64,
    },
    /// Deliveries since the previous line.
    Arrivals {
        /// The arrivals.
        a: Vec<Arrival>,
    },
    /// Recipients that were admitted again after losing their connection: the reconnect
    /// storm's figures.
    Up {
        /// Index, then CLOCK_REALTIME µs at which the successful attempt started (its TCP
        /// connect), at which the TCP connection was established, and at which the
        /// re-subscription was confirmed.
        a: Vec<(u32, u64, u64, u64)>,
    },
    /// Connections lost since the previous line (the recipient reconnects by itself).
    Down {
        /// How many.
        n: u64,
        /// The last error seen, for the log.
        why: String,
    },
    /// The process cannot go on (a recipient could not connect after its retries).
    Fatal {
        /// What went wrong.
        error: String,
    },
    /// The answer to `stop`: what the load process itself cost.
    Done {
        /// User + system CPU seconds of this process.
        cpu_s: f64,
        /// Its resident memory, kB.
        rss_kb: u64,
    },
}

/// The coordinator's word to stop: the child closes everything, answers [`Report::Done`] and
/// exits.
pub const STOP: &str = "stop";

/// Now, as CLOCK_REALTIME microseconds: the one clock every process of a run stamps with.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `VmRSS` of a process in kB (`/proc/<pid>/status`), or `None` when it cannot be read.
pub fn rss_kb(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU seconds of this process (`/proc/self/stat`, clock ticks of 1/100 s).
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (children inherit it), and
/// returns the new soft limit: each load process holds thousands of sockets, and the
/// default soft limit may be far below what the hard limit allows.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let r = Report::Arrivals {
            a: vec![(3, 3, 17, "p1-3".into())],
        };
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.starts_with(r#"{"t":"arrivals""#), "{line}");
        assert!(matches!(
            serde_json::from_str::<Report>(&line).unwrap(),
            Report::Arrivals { a } if a[0].0 == 3
        ));
    }

    #[test]
    fn this_process_has_a_size_and_a_cpu_time() {
        assert!(rss_kb("self").unwrap() > 0);
        assert!(cpu_seconds() >= 0.0);
    }
}
