//! The load processes of one run ([`Loads`]: spawned, read, stopped) and what their reports
//! add up to ([`Tally`]). The run (`run.rs`) and the storm (`storm.rs`) both use them.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use super::proto::{self, Report};
use super::PushArgs;

/// The load processes and their reports (index of the process, line; `None` at its EOF).
pub(super) struct Loads {
    stdins: Vec<ChildStdin>,
    children: Vec<Child>,
    reports: mpsc::UnboundedReceiver<(usize, Option<Report>)>,
    open: usize,
}

pub(super) fn spawn_loads(args: &PushArgs, run: &str) -> Result<Loads, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let (tx, reports) = mpsc::unbounded_channel();
    let (mut stdins, mut children) = (Vec::new(), Vec::new());
    let n = args.recipients;
    for p in 0..args.procs {
        let (from, to) = (n * p / args.procs, n * (p + 1) / args.procs);
        let mut child = Command::new(&exe)
            .arg("push-load")
            .args(args.target.to_args())
            .args(["--from", &from.to_string(), "--to", &to.to_string()])
            .args(["--run", run])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawning load process {p}: {e}"))?;
        stdins.push(child.stdin.take().expect("stdin is piped"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let tx = tx.clone();
        // Read continuously, whatever the coordinator is doing: a full pipe would stall the
        // load process and distort every figure it takes.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                match serde_json::from_str::<Report>(&l) {
                    Ok(r) => {
                        let _ = tx.send((p, Some(r)));
                    }
                    Err(e) => eprintln!("medlink-bench push: load process {p}: {e}: {l}"),
                }
            }
            let _ = tx.send((p, None));
        });
        children.push(child);
    }
    Ok(Loads {
        stdins,
        children,
        reports,
        open: args.procs,
    })
}

/// What the arrivals so far add up to.
pub(super) struct Tally {
    pub(super) run: String,
    pub(super) medlink: bool,
    pub(super) first: Vec<u64>,
    pub(super) delivered: usize,
    pub(super) duplicated: usize,
    pub(super) misrouted: usize,
    pub(super) stale: usize,
    pub(super) disconnects: u64,
    pub(super) up: Vec<u64>,
    /// When each re-admission's successful attempt started, and when its TCP connection was
    /// established.
    pub(super) up_tried: Vec<(u64, u64)>,
    pub(super) readmitted: usize,
    pub(super) storm_from: Option<u64>,
    pub(super) done: (f64, u64, usize),
}

impl Tally {
    /// Nothing counted yet, for `n` recipients of run `run`.
    pub(super) fn new(n: usize, run: String, medlink: bool) -> Tally {
        Tally {
            run,
            medlink,
            first: vec![0; n],
            delivered: 0,
            duplicated: 0,
            misrouted: 0,
            stale: 0,
            disconnects: 0,
            up: vec![0; n],
            up_tried: vec![(0, 0); n],
            readmitted: 0,
            storm_from: None,
            done: (0.0, 0, 0),
        }
    }

    /// Takes one report in; `Err` for a load process that cannot go on.
    pub(super) fn take(&mut self, report: Report) -> Result<(), String> {
        match report {
            Report::Arrivals { a } => {
                for (idx, seq, at, id) in a {
                    let i = idx as usize;
                    let expected_id = format!("p{}-{}", self.run, i);
                    if seq < 0 {
                        self.stale += 1;
                    } else if seq != i as i64 || (self.medlink && id != expected_id) {
                        self.misrouted += 1;
                    } else if self.first[i] == 0 {
                        self.first[i] = at;
                        self.delivered += 1;
                    } else {
                        self.duplicated += 1;
                    }
                }
            }
            Report::Up { a } => {
                for (idx, tried, connected, at) in a {
                    let i = idx as usize;
                    if self.storm_from.is_some_and(|t0| at > t0) && self.up[i] == 0 {
                        self.up[i] = at;
                        self.up_tried[i] = (tried, connected);
                        self.readmitted += 1;
                    }
                }
            }
            Report::Down { n, why } => {
                if self.storm_from.is_none() {
                    eprintln!("medlink-bench push: {n} recipient connection(s) lost: {why}");
                    self.disconnects += n;
                }
            }
            Report::Fatal { error } => return Err(error),
            Report::Done { cpu_s, rss_kb } => {
                self.done.0 += cpu_s;
                self.done.1 += rss_kb;
                self.done.2 += 1;
            }
            Report::Ready { .. } => {}
        }
        Ok(())
    }
}

impl Loads {
    /// The next report, or `None` at `until`.
    pub(super) async fn next(&mut self, until: Instant) -> Option<(usize, Option<Report>)> {
        tokio::time::timeout_at(until.into(), self.reports.recv())
            .await
            .ok()
            .flatten()
    }

    pub(super) async fn stop(&mut self, tally: &mut Tally) {
        for s in &mut self.stdins {
            let _ = s.write_all(format!("{}\n", proto::STOP).as_bytes()).await;
            let _ = s.flush().await;
        }
        let until = Instant::now() + Duration::from_secs(20);
        while self.open > 0 {
            match self.next(until).await {
                Some((_, Some(r))) => {
                    let _ = tally.take(r);
                }
                Some((_, None)) => self.open -= 1,
                None => break,
            }
        }
        for c in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(5), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }
}
