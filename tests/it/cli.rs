//! The command line as a new user meets it (issue "Holes and defects found from outside"):
//! `passwd`, `send`, `request`, `listen` and `audit` do what they say, and say it.

use crate::common;

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `medlink <verb> --url .. --node js --identity <who> <args>` with the password in the
/// environment.
fn client(verb: &str, url: &str, who: &str, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg(verb)
        .args(["--url", url, "--node", "js", "--identity", who])
        .args(args)
        .env("MEDLINK_PASSWORD", PASSWORD)
        .stdin(Stdio::null());
    c
}

fn run(mut c: Command) -> Output {
    c.output().expect("medlink runs")
}

fn listen(url: &str, who: &str, args: &[&str]) -> Child {
    client("listen", url, who, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("medlink listen")
}

/// Stops a listener and returns the JSON lines it printed.
fn heard(mut listener: Child) -> Vec<Value> {
    let _ = listener.kill();
    let _ = listener.wait();
    let mut out = String::new();
    listener
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out.lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect()
}

#[test]
fn passwd_refuses_a_missing_file_and_names_that_pass_for_others() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("missing.toml");
    let f = file.to_str().unwrap();
    for action in [
        &["list"][..],
        &["remove", "bob"],
        &["rotate", "bob", "--generate"],
    ] {
        let mut args = vec!["passwd", "--file", f];
        args.extend_from_slice(action);
        let (code, _, err) = medlink(&args);
        assert_ne!(code, 0, "{action:?} on a missing file: {err}");
        assert!(err.contains("no such credentials file"), "{err}");
    }
    assert!(!file.exists(), "nothing may be created by a failed command");
    let add = |name: &str| {
        medlink(&[
            "passwd",
            "--file",
            f,
            "add",
            "--role",
            "client",
            "--generate",
            name,
        ])
    };
    for name in ["$medlink", "bob ", "b\u{43e}b", "two words"] {
        let (code, _, err) = add(name);
        assert_ne!(code, 0, "{name:?} was accepted");
        assert!(err.contains("identity name"), "{err}");
    }
    let (code, _, err) = add("bob");
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = medlink(&["passwd", "--file", f, "list"]);
    assert_eq!((code, out.starts_with("bob\tclient")), (0, true), "{out}");
}

#[test]
fn only_request_offers_a_timeout() {
    let (_, send_help, _) = medlink(&["send", "--help"]);
    let (_, request_help, _) = medlink(&["request", "--help"]);
    assert!(!send_help.contains("--timeout"), "{send_help}");
    assert!(request_help.contains("--timeout"), "{request_help}");
}

/// A request to a node that does not exist: the `failed` receipt comes at once, and the
/// request ends with its reason instead of waiting out its timeout.
#[test]
fn a_request_ends_at_once_with_the_reason_of_its_failed_receipt() {
    let mut tree = Tree::start(&[spec("js", None, &["a"])]);
    let url = tree.node("js").url();
    let started = Instant::now();
    let out = run(client(
        "request",
        &url,
        "a",
        &["--to", "js.nowhere/x", "--cmd", "ask", "--timeout", "60"],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("failed") && err.contains("js.nowhere"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "waited {:?} for a request that failed at once",
        started.elapsed()
    );
}

/// A short-lived `medlink send` is not one of the identity's receiving devices: the receipts
/// of what it sent (and any command waiting) stay for the identity's listener, once each.
#[test]
fn a_short_lived_send_leaves_commands_and_receipts_to_the_listener() {
    let mut tree = Tree::start(&[spec("js", None, &["a", "b"])]);
    let url = tree.node("js").url();
    // A command for `a` waiting while `a` sends.
    let out = run(client(
        "send",
        &url,
        "b",
        &["--to", "js/a", "--cmd", "waiting"],
    ));
    assert!(out.status.success());
    let sent: Vec<String> = (0..3)
        .map(|i| {
            let id = format!("s-{i}");
            let out = run(client(
                "send",
                &url,
                "a",
                &[
                    "--to",
                    "js/b",
                    "--cmd",
                    "note",
                    "--receipts",
                    "accepted",
                    "--id",
                    &id,
                ],
            ));
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            id
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let listener = listen(&url, "a", &[]);
    std::thread::sleep(Duration::from_secs(3));
    let got = heard(listener);
    let receipts: Vec<&str> = got
        .iter()
        .filter(|m| m["kind"] == "receipt")
        .map(|m| m["params"]["ref"].as_str().unwrap())
        .collect();
    assert_eq!(
        receipts, sent,
        "each `accepted` receipt once, in order: {got:?}"
    );
    let cmds: Vec<&Value> = got.iter().filter(|m| m["kind"] == "cmd").collect();
    assert_eq!(cmds.len(), 1, "{got:?}");
    assert_eq!(cmds[0]["cmd"], "waiting");
}

/// Two listeners that answer everything used to answer each other's answers forever.
#[test]
fn reply_with_never_answers_a_reply() {
    let mut tree = Tree::start(&[spec("js", None, &["a", "b"])]);
    let url = tree.node("js").url();
    let a = listen(&url, "a", &["--reply-with", r#"{"ok":"a"}"#]);
    let b = listen(&url, "b", &["--reply-with", r#"{"ok":"b"}"#]);
    std::thread::sleep(Duration::from_millis(1500));
    // `a`'s listener is a device of `a` too; this command goes from `a` to `b`.
    let mut c = Command::new(BIN);
    c.args(["send", "--url", &url, "--node", "js", "--identity", "a"])
        .args(["--to", "js/b", "--cmd", "ping"])
        .env("MEDLINK_PASSWORD", PASSWORD);
    assert!(run(c).status.success());
    std::thread::sleep(Duration::from_secs(3));
    let (at_a, at_b) = (heard(a), heard(b));
    let cmds = |got: &[Value]| -> Vec<String> {
        got.iter()
            .filter(|m| m["kind"] == "cmd")
            .map(|m| m["cmd"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(cmds(&at_b), ["ping"], "b: {at_b:?}");
    assert_eq!(cmds(&at_a), ["ping.reply"], "a: {at_a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_shows_the_newest_first_and_says_when_it_cut() {
    let mut tree = Tree::start(&[spec("js", None, &["a", "b"])]);
    let a = App::connect("js", "a", tree.node("js").port).await;
    let mut b = App::connect("js", "b", tree.node("js").port).await;
    for n in 0..5 {
        a.send("js", "b", &format!("c{n}"), serde_json::json!({}))
            .await;
        b.expect_cmd(10).await;
    }
    let dir = tree.node("js").data_dir.display().to_string();
    let (code, out, err) = medlink(&["audit", "--data-dir", &dir, "--cmd", "c4"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(" c4 ") && !err.contains("cut"), "{out}{err}");
    let (code, out, err) = medlink(&["audit", "--data-dir", &dir, "--limit", "2"]);
    assert_eq!(code, 0, "{err}");
    let cmds: Vec<&str> = out
        .lines()
        .map(|l| l.split_whitespace().nth(6).unwrap())
        .collect();
    assert_eq!(cmds, ["c4", "c3"], "newest first:\n{out}");
    assert!(err.contains("cut at --limit 2"), "{err}");
    let (_, out, _) = medlink(&[
        "audit",
        "--data-dir",
        &dir,
        "--limit",
        "2",
        "--oldest-first",
    ]);
    let cmds: Vec<&str> = out
        .lines()
        .map(|l| l.split_whitespace().nth(6).unwrap())
        .collect();
    assert_eq!(cmds, ["c0", "c1"], "{out}");
}
