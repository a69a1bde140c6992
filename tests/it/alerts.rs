//! The operators' rules and dashboard (issue "Operators see and fix what is stuck", part 2):
//! `conf/alerts.yml` passes `promtool check rules` and its unit tests
//! (`tests/alerts/alerts_test.yml`: each alert fires on its fixture and stays quiet on a
//! contrasting one), and every metric the rules and `docs/grafana/medlink.json` use is one a
//! running node exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs promtool in `dir`; panics with its output unless it succeeds.
fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs (Debian package `prometheus`; scripts/test.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_are_valid_and_their_unit_tests_pass() {
    let checked = promtool(&repo(), &["check", "rules", "conf/alerts.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(
        &repo().join("tests/alerts"),
        &["test", "rules", "alerts_test.yml"],
    );
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Every `medlink_…` name in `text`, a histogram's series named by their family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("medlink_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(family.to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_rules_and_the_dashboard_use_only_metrics_a_node_exports() {
    let mut t = Tree::start(&[
        spec("js", None, &["doc"]),
        spec("js.a", Some("js"), &["nurse"]),
    ]);
    let exported = |t: &mut Tree| {
        let mut names = BTreeSet::new();
        for id in ["js", "js.a"] {
            let body = http_get(t.node(id).metrics_port, "/metrics");
            names.extend(
                body.lines()
                    .filter_map(|l| l.strip_prefix("# TYPE "))
                    .filter_map(|l| l.split(' ').next())
                    .map(str::to_string),
            );
        }
        names
    };
    // The heartbeat's round trip is reported once the first pong came back.
    assert!(within(10, || exported(&mut t).contains("medlink_link_rtt_seconds")));
    let exported = exported(&mut t);
    for file in ["conf/alerts.yml", "docs/grafana/medlink.json"] {
        let text = std::fs::read_to_string(repo().join(file)).expect(file);
        let used = metric_names(&text);
        assert!(used.len() >= 10, "{file} uses {used:?}");
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics no node exports: {unknown:?}"
        );
    }
}
