//! medlink's load tools, kept out of the `medlink` binary an operator installs: they are
//! built and run only by people measuring a tree (`bench/chain.sh`, `bench/http.sh`) and by
//! tests that call them in process.
//!
//! - [`mqtt`]: one-way load on a medlink tree or any MQTT broker (`medlink-bench mqtt`).
//! - [`http`]: many long-polls held open, or POST → waiting long-poll latency
//!   (`medlink-bench http`).
//! - [`rtt`]: request → reply round trips through the SDK or over any MQTT brokers
//!   (`medlink-bench rtt`).
//! - [`push`]: one command to each of N connected recipients, from several load processes
//!   (`medlink-bench push`, issue "Scale").
//! - [`floor`]: the latency floor of a custody hop, the leanest relays committing or not
//!   (`medlink-bench floor`).
//! - [`latency`]: the percentile definition every tool reports with.
//! - [`mqtt_client`]: the raw MQTT client the MQTT tools drive brokers with.
//!
//! Each tool takes its options (the same struct its subcommand parses) and returns a report;
//! printing is the binary's job, so a test can check the figures directly.

#![warn(missing_docs)]

pub mod floor;
pub mod http;
pub mod latency;
pub mod mqtt;
pub mod mqtt_client;
pub mod push;
pub mod rtt;

/// A clap value parser for counts that must be at least 1, so `-n 0` is refused with the
/// flag's name before anything connects.
pub(crate) fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}
