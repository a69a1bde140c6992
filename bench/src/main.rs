//! `medlink-bench`: the load tools, apart from the `medlink` binary an operator installs.
//!
//! - `medlink-bench mqtt ...` loads any MQTT broker (medlink or not) and reports throughput
//!   and latency (formerly `medlink bench`).
//! - `medlink-bench http ...` holds many long-polls open or times POST → long-poll delivery
//!   (formerly `medlink bench-http`).
//! - `medlink-bench rtt ...` times request → reply round trips (SDK, or any MQTT brokers)
//!   (formerly `medlink bench-rtt`).
//!
//! Each run prints one JSON line on stdout (what `bench/chain.sh` collects) and a summary
//! starting with `#`. Exit codes: 0 clean, 1 the run failed, 2 bad flags, 3 messages were lost
//! or duplicated.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use medlink_bench::{floor, http, mqtt, push, rtt};

#[derive(Parser)]
#[command(
    name = "medlink-bench",
    version,
    about = "Load tools for medlink trees and any MQTT broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load an MQTT broker or a medlink tree and report throughput and latency.
    Mqtt(mqtt::MqttArgs),
    /// Load a node's HTTP API: many long-polls held open, or POST-to-long-poll latency.
    #[command(subcommand)]
    Http(http::HttpArgs),
    /// Time request -> reply round trips across a medlink tree (SDK) or MQTT brokers.
    Rtt(rtt::RttArgs),
    /// Push one command to each of N connected recipients and time the last delivery.
    Push(push::PushArgs),
    /// The floor of a custody hop: a chain of the leanest relays, committing or not.
    Floor(floor::FloorArgs),
    /// One relay of `floor` (spawned by it).
    #[command(hide = true)]
    FloorRelay(floor::RelayArgs),
    /// One load process of `push` (spawned by it).
    #[command(hide = true)]
    PushLoad(push::load::LoadArgs),
    /// Write the push bench's credentials file (cheap argon2id hashes: bench only).
    #[command(hide = true)]
    PushCreds(push::creds::CredsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = match cli.command {
        // A load process is one thread: several run beside the node on two cores.
        Command::PushLoad(_) | Command::FloorRelay(_) => {
            tokio::runtime::Builder::new_current_thread()
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("medlink-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Mqtt(args) => run_mqtt(&args).await,
            Command::Http(http::HttpArgs::Polls(args)) => run_polls(&args).await,
            Command::Http(http::HttpArgs::Latency(args)) => run_latency(&args).await,
            Command::Rtt(args) => run_rtt(&args).await,
            Command::Push(args) => run_push(&args).await,
            Command::PushLoad(args) => match push::load::run(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failed("push-load", e),
            },
            Command::Floor(args) => match floor::run(&args) {
                Ok(r) => {
                    println!("{}", serde_json::to_string(&r).expect("reports serialise"));
                    println!("{}", r.summary());
                    verdict(r.clean())
                }
                Err(e) => failed("floor", e),
            },
            Command::FloorRelay(args) => match floor::relay(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failed("floor-relay", e),
            },
            Command::PushCreds(args) => match push::creds::write(&args) {
                Ok(n) => {
                    eprintln!("# {n} identities written to {}", args.out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => failed("push-creds", e),
            },
        }
    })
}

fn failed(what: &str, e: String) -> ExitCode {
    eprintln!("medlink-bench {what}: {e}");
    ExitCode::FAILURE
}

/// 3 when anything was lost or duplicated, so a script notices without reading the figures.
fn verdict(clean: bool) -> ExitCode {
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

async fn run_mqtt(args: &mqtt::MqttArgs) -> ExitCode {
    match mqtt::run(args).await {
        Ok(r) => {
            println!("{}", serde_json::to_string(&r).expect("reports serialise"));
            println!("{}", r.summary());
            verdict(r.clean())
        }
        Err(e) => failed("mqtt", e),
    }
}

async fn run_rtt(args: &rtt::RttArgs) -> ExitCode {
    match rtt::run(args).await {
        Ok(r) => {
            println!("{}", serde_json::to_string(&r).expect("reports serialise"));
            println!("{}", r.summary());
            verdict(r.clean())
        }
        Err(e) => failed("rtt", e),
    }
}

async fn run_push(args: &push::PushArgs) -> ExitCode {
    // Flag combinations clap cannot check are bad flags too (exit 2), not a failed run.
    if let Err(e) = args.validate() {
        eprintln!("medlink-bench push: {e}");
        return ExitCode::from(2);
    }
    match push::run(args).await {
        Ok(r) => {
            println!("{}", serde_json::to_string(&r).expect("reports serialise"));
            println!("{}", r.summary());
            verdict(r.clean())
        }
        Err(e) => failed("push", e),
    }
}

async fn run_polls(args: &http::PollsArgs) -> ExitCode {
    let polls = match http::open_polls(args).await {
        Ok(p) => p,
        Err(e) => return failed("http polls", e),
    };
    // Printed while the polls are open: bench/http.sh measures the node in the meantime.
    println!(
        "{{\"mode\":\"polls\",\"open\":{},\"open_seconds\":{:.3}}}",
        polls.report.open, polls.report.open_seconds
    );
    polls.hold().await;
    eprintln!("# {} long-polls held for {} s", args.count, args.hold);
    ExitCode::SUCCESS
}

async fn run_latency(args: &http::LatencyArgs) -> ExitCode {
    match http::latency(args).await {
        Ok(r) => {
            println!(
                "{{\"mode\":\"latency\",\"count\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
                r.count, r.p50_ms, r.p99_ms, r.max_ms
            );
            eprintln!(
                "# POST -> waiting long-poll, {} round trips: p50 {:.3} ms, p99 {:.3} ms",
                r.count, r.p50_ms, r.p99_ms
            );
            ExitCode::SUCCESS
        }
        Err(e) => failed("http latency", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn counts_of_zero_are_refused_naming_the_flag() {
        let cases: [&[&str]; 4] = [
            &["mqtt", "--pub-url", "mqtt://x", "--messages", "0"],
            &["mqtt", "--pub-url", "mqtt://x", "-p", "0"],
            &[
                "rtt",
                "--req-url",
                "mqtt://x",
                "--rep-url",
                "mqtt://y",
                "-c",
                "0",
            ],
            &[
                "http", "polls", "--addr", "x:1", "--login", "a:b", "--count", "0",
            ],
        ];
        for args in cases {
            let flag = args[args.len() - 2];
            let e =
                Cli::try_parse_from(std::iter::once("medlink-bench").chain(args.iter().copied()))
                    .err()
                    .unwrap_or_else(|| panic!("{args:?} is refused"));
            let long = match flag {
                "-p" => "--publishers",
                "-c" => "--concurrency",
                f => f,
            };
            assert!(e.to_string().contains(long), "{args:?}: {e}");
        }
    }

    fn push(args: &[&str]) -> Result<push::PushArgs, clap::Error> {
        let all = ["medlink-bench", "push"]
            .into_iter()
            .chain(args.iter().copied());
        match Cli::try_parse_from(all)?.command {
            Command::Push(p) => Ok(p),
            _ => panic!("push parses as push"),
        }
    }

    #[test]
    fn bad_push_flags_are_refused_naming_the_flag() {
        let base = [
            "--node",
            "pb",
            "--http",
            "127.0.0.1:1",
            "--mqtt",
            "127.0.0.1:2",
        ];
        let cases: [(&[&str], &str); 6] = [
            (&["-n", "0"], "--recipients"),
            (&["--procs", "0"], "--procs"),
            (&["--batch", "1001"], "--batch"),
            (&["--transport", "pigeon"], "--transport"),
            (&["--broker", "nats"], "--broker"),
            (&["--storm"], "--restart-cmd"),
        ];
        for (extra, flag) in cases {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            let e = push(&args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} is refused"));
            assert!(e.to_string().contains(flag), "{args:?}: {e}");
        }
        // Rules across flags are checked before anything connects, naming the flags.
        let cross: [(&[&str], &str); 5] = [
            (
                &[
                    "--broker",
                    "mosquitto",
                    "--transport",
                    "sse",
                    "--mqtt",
                    "h:1",
                ],
                "--transport",
            ),
            (&["--node", "pb", "--http", "h:1"], "--mqtt"),
            (&["--http", "h:1", "--mqtt", "h:2"], "--node"),
            (
                &[
                    "--node",
                    "pb",
                    "--http",
                    "h:1",
                    "--transport",
                    "sse",
                    "--storm",
                    "--restart-cmd",
                    "true",
                ],
                "--storm",
            ),
            (
                &[
                    "--node", "pb", "--http", "h:1", "--mqtt", "h:2", "-n", "2", "--procs", "3",
                ],
                "--procs",
            ),
        ];
        for (args, flag) in cross {
            let e = push(args)
                .expect("parses")
                .validate()
                .expect_err("is refused");
            assert!(e.contains(flag), "{args:?}: {e}");
        }
        assert!(push(&base).expect("parses").validate().is_ok());
    }

    #[test]
    fn a_load_process_gets_the_coordinators_target() {
        let p = push(&[
            "--transport",
            "sse",
            "--node",
            "pb",
            "--http",
            "127.0.0.1:1",
            "--one-source",
            "--keepalive",
            "30",
            "--password",
            "pw",
        ])
        .expect("parses");
        let all = ["medlink-bench", "push-load"]
            .into_iter()
            .map(String::from)
            .chain(p.target.to_args())
            .chain(["--from", "0", "--to", "5", "--run", "r"].map(String::from));
        let Command::PushLoad(l) = Cli::try_parse_from(all).expect("parses").command else {
            panic!("push-load parses as push-load");
        };
        // The coordinator's default login mode is passed on explicitly.
        let mut expected = p.target.clone();
        expected.auth.auth = Some(p.target.auth_mode());
        assert_eq!(format!("{:?}", l.target), format!("{expected:?}"));
    }

    #[test]
    fn rtt_defaults_match_the_command_line() {
        let Command::Rtt(parsed) =
            Cli::parse_from(["medlink-bench", "rtt", "--req-url", "a", "--rep-url", "b"]).command
        else {
            panic!("rtt parses as rtt");
        };
        let default = rtt::RttArgs {
            req_url: "a".into(),
            rep_url: "b".into(),
            ..Default::default()
        };
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
    }
}
