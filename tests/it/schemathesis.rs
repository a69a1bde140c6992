//! The OpenAPI document against a real node, by schemathesis: it reads the document the node
//! serves (`/v1/openapi.json`), sends every operation generated requests, valid and invalid,
//! and checks every answer against the document: no server error, only documented statuses,
//! content types and headers, bodies that match their schemas, and invalid requests refused.
//! So the document states what the node enforces, and generated clients and validators agree
//! with the node.
//!
//! schemathesis comes from PyPI into a virtualenv under `target/tmp/`, made once per pinned
//! set of packages (`REQUIREMENTS`) and Python version. Without PyPI (or `python3 -m venv`)
//! the test fails and says why; it never passes without running.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use common::http::*;
use common::venv::{spawn_logged, venv, wait_bounded};
use common::*;
use serde_json::{json, Value};

/// schemathesis and everything it imports, pinned, so that a release of any of them cannot
/// change what this test checks (`pip freeze` of a fresh virtualenv with schemathesis).
const REQUIREMENTS: &str = "\
schemathesis==4.32.5
anyio==4.16.0
certifi==2026.10.19.post1
charset-normalizer==3.5.3
click==8.5.1
graphql-core==3.3.2
harfile==0.6.0
hypothesis==6.170.17
hypothesis-graphql==0.13.5
idna==3.20
iniconfig==2.3.1
jsonschema_rs==0.60.3
markdown-it-py==4.3.0
MarkupSafe==3.0.4
mdurl==0.1.2
packaging==26.4
pluggy==1.7.0
Pygments==2.21.0
pyrate-limiter==4.5.1
pytest==9.2.0
PyYAML==6.0.4
requests==2.34.2
rich==15.0.0
sortedcontainers==2.4.0
typing_extensions==4.16.0
urllib3==2.8.0
Werkzeug==3.1.9
";

/// What every response is checked for. Left out: `positive_data_acceptance` (a valid-looking
/// submission may still be refused: `from` must be the caller itself, `to` must be routable,
/// and the node counts `cmd` and client names in bytes where JSON Schema counts characters;
/// none of that is expressible in a schema), `ignored_auth` (its probes log in with made-up
/// credentials again and again; the node answers such a run of failures with a growing delay
/// and then 429 `throttled`, as documented, where the check insists on 401 or 403; the 401 of
/// every operation is checked by tests/http.rs), `use_after_free` and
/// `ensure_resource_availability` (they need operations that create and then read a resource
/// by id; this API has none), `object_level_authorization` (one identity per run), and
/// `max_response_time`.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,negative_data_rejection,\
missing_required_header,unsupported_method,allow_header_conformance";

/// schemathesis settings that its command line cannot give.
const CONFIG: &str = r#"
# The node refuses a body or submission over its size limit with 413: as much a refusal of
# invalid data as a 400.
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]

# GET /v1/stream never ends (server-sent events; a comment every 15 s keeps it open): each
# request reads one event, or stops after 1 s without one, and the events read are checked.
[[operations]]
include-path = "/v1/stream"
request-timeout = 1
max-stream-events = 1
generation = { max-examples = 15 }
"#;

/// Generated requests per operation (the coverage phase adds its boundary cases to these).
const MAX_EXAMPLES: &str = "40";

/// Longest a run of schemathesis may take before the test fails (it normally takes well under
/// a minute); also bounds creating the virtualenv.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// The seed of the generated requests: the same requests every run, unless
/// `MEDLINK_SCHEMATHESIS_SEED` asks for others.
const DEFAULT_SEED: &str = "20261129";

#[test]
fn the_node_does_what_its_openapi_document_says() {
    let st = schemathesis();
    let seed = std::env::var("MEDLINK_SCHEMATHESIS_SEED").unwrap_or_else(|_| DEFAULT_SEED.into());
    // The client's operations as c1; the link operations as the child node js.t1, and the
    // operators' as the admin ops: the only kinds of identity they serve. All runs at once, each against a node of its own, so that
    // a crash found by one cannot hide what the other finds. (schemathesis itself runs one
    // worker: its threads trip a CPython 3.11 bug in `ast.parse`.)
    let runs = [
        Run {
            name: "client",
            identity: "c1",
            filter: &[
                "--exclude-path-regex",
                "^/v1/(link/|deadletters|operator/|files)",
            ],
            // Every operation but the two links, the four operators' ones, the file store's
            // (tus is driven by headers and an octet-stream body schemathesis cannot make;
            // tuspy and tests/it/files.rs drive it) and GET /v1/openapi.json, which
            // schemathesis leaves out as the document it reads.
            operations: 8,
        },
        Run {
            name: "operator",
            identity: "ops",
            filter: &["--include-path-regex", "^/v1/(deadletters|operator/)"],
            operations: 4,
        },
        Run {
            name: "link",
            identity: "js.t1",
            filter: &["--include-path-regex", "^/v1/link/"],
            operations: 2,
        },
    ];
    let mut started = Vec::new();
    for run in &runs {
        let mut t = node();
        let dir = t.dir.path().to_path_buf();
        let config = dir.join("schemathesis.toml");
        std::fs::write(&config, CONFIG).expect("write schemathesis.toml");
        let base = format!("http://127.0.0.1:{}", t.node("js").http_port);
        let report = dir.join("schemathesis.json");
        let log = dir.join("schemathesis.log");
        let mut cmd = Command::new(&st);
        cmd.current_dir(&dir)
            .env("NO_COLOR", "1")
            .arg("--config-file")
            .arg(&config)
            .args(["run", &format!("{base}/v1/openapi.json"), "--url", &base])
            .args(["--auth", &format!("{}:{PASSWORD}", run.identity)])
            .args(run.filter)
            .args(["--checks", CHECKS])
            .args(["--max-examples", MAX_EXAMPLES, "--seed", &seed])
            .args(["--workers", "1", "--request-timeout", "10"])
            .args(["--generation-database", "none", "--no-color"])
            .args(["--report", "json", "--report-json-path"])
            .arg(&report);
        eprintln!("schemathesis ({}): {cmd:?}", run.name);
        let child = spawn_logged(&mut cmd, &log);
        started.push((run, t, child, report, log, Instant::now()));
    }
    let mut problems = Vec::new();
    for (run, mut t, child, report, log, start) in started {
        let status = wait_bounded(child, RUN_LIMIT);
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        eprintln!(
            "schemathesis ({}) took {:.1} s:\n{}",
            run.name,
            start.elapsed().as_secs_f64(),
            summary(&output)
        );
        let mut problem = judge(run, status, &report)
            .err()
            .map(|why| format!("{why}\n{}", findings(&output)));
        if !t.node("js").is_running() {
            t.dump_logs();
            problem = Some(format!(
                "the node died during the run\n{}",
                problem.unwrap_or_default()
            ));
        }
        if let Some(p) = problem {
            problems.push(format!(
                "schemathesis ({}) as {}: {p}",
                run.name, run.identity
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the node and its OpenAPI document disagree (seed {seed}):\n\n{}",
        problems.join("\n\n")
    );
}

/// A node with a client c1 and a child node js.t1 (never started; its identity tests the
/// link operations), and something to read, so that response schemas are checked against
/// real envelopes: commands to c1 itself in every priority class (with their receipts), and
/// one queued for the child. Long-polls wait at most 1 s, so generated `wait`s cannot slow the
/// run.
fn node() -> Tree {
    let mut t = Tree::new(&[spec("js", None, &["c1"]), spec("js.t1", Some("js"), &[])]);
    let cfg = t.node("js").config.clone();
    let text = std::fs::read_to_string(&cfg).expect("read config");
    assert!(
        text.contains("\n[http]\n"),
        "the harness writes an [http] section"
    );
    std::fs::write(
        &cfg,
        text.replace("\n[http]\n", "\n[http]\nmax_wait_s = 1\n"),
    )
    .expect("write config");
    t.node("js").start();
    let port = t.node("js").http_port;
    const C1: Login = Some(("c1", PASSWORD));
    for (n, priority) in ["urgent", "normal", "bulk"].iter().enumerate() {
        let cmd = json!({
            "to": {"node": "js", "client": "c1"}, "cmd": "seed", "params": {"n": n},
            "priority": priority, "ttl_ms": 600_000,
            "receipts": ["accepted", "delivered", "replied"],
        });
        let (status, body) = post_json(port, "/v1/messages", C1, &cmd);
        assert_eq!(status, 202, "{body}");
    }
    let down = json!({"to": {"node": "js.t1.x", "client": "c9"}, "cmd": "seed.down"});
    let (status, body) = post_json(port, "/v1/messages", C1, &down);
    assert_eq!(status, 202, "{body}");
    t
}

/// One schemathesis run: who it logs in as and which operations it tests.
struct Run {
    name: &'static str,
    identity: &'static str,
    filter: &'static [&'static str],
    /// How many operations it must test; fewer means some were skipped.
    operations: u64,
}

/// Reads the run's JSON report: it passed only if it completed, tested every operation it
/// selected, found no failure and hit no error.
fn judge(run: &Run, status: Option<ExitStatus>, report: &Path) -> Result<(), String> {
    let status = status.ok_or(format!("did not finish within {RUN_LIMIT:?} (killed)"))?;
    let text = std::fs::read_to_string(report)
        .map_err(|e| format!("exited with {status} and wrote no report ({e})"))?;
    let r: Value = serde_json::from_str(&text).map_err(|e| format!("unreadable report: {e}"))?;
    let ops = &r["operations"];
    let failures = r["failures"].as_array().map_or(0, Vec::len);
    let errors = r["errors"].as_array().map_or(0, Vec::len);
    if !status.success() || r["exit_code"] != 0 || failures > 0 || errors > 0 {
        return Err(format!(
            "exited with {status}: {failures} kinds of failure ({} test cases), {errors} errors: {}",
            r["test_cases"]["with_failures"], r["failures"]
        ));
    }
    if r["complete"] != true || r["stop_reason"] != "completed" {
        return Err(format!("stopped early: {}", r["stop_reason"]));
    }
    if ops["selected"] != run.operations
        || ops["tested"] != run.operations
        || ops["skipped"] != 0
        || ops["errored"] != 0
    {
        return Err(format!(
            "expected to test {} operations: {ops}",
            run.operations
        ));
    }
    for phase in ["coverage", "fuzzing"] {
        if r["phases"][phase]["status"] != "success" {
            return Err(format!("phase {phase}: {}", r["phases"][phase]));
        }
    }
    Ok(())
}

/// The closing summary of schemathesis's output.
fn summary(output: &str) -> String {
    let from = output
        .find("SUMMARY")
        .map_or(0, |i| output[..i].rfind('\n').unwrap_or(0));
    clipped(&output[from..])
}

/// The failures and errors schemathesis reported, with the requests that reproduce them.
fn findings(output: &str) -> String {
    let start = ["ERRORS", "FAILURES"]
        .iter()
        .filter_map(|h| output.find(&format!(" {h} ")))
        .min();
    let end = output.find(" SUMMARY ").unwrap_or(output.len());
    match start {
        Some(s) if s < end => clipped(&output[output[..s].rfind('\n').unwrap_or(0)..end]),
        _ => clipped(output),
    }
}

/// Long lines (a generated batch can be 100 kB of JSON) cut short.
fn clipped(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match l.char_indices().nth(400) {
            Some((i, _)) => format!("{} …", &l[..i]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `st` command of a virtualenv with the pinned schemathesis, made on first use.
fn schemathesis() -> PathBuf {
    let st = venv("schemathesis", REQUIREMENTS, RUN_LIMIT)
        .join("bin")
        .join("st");
    assert!(
        st.exists(),
        "pip installed schemathesis but there is no {st:?}"
    );
    st
}
