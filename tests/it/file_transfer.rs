//! Files follow their commands through the tree (issue "Files", part 3): up from a township
//! clinic to a city hospital across three nodes, with the county↔city transfer cut, the county
//! killed with kill -9 and restarted, resumed from its offset; down from the city to the
//! clinic; and commands overtaking a large transfer on a capped link.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common;
use common::http::{get_json, post_json, Login};
use common::proxy::{Mode, Proxy};
use common::tus::{download, scan, upload};
use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const CITY: &str = "js.nj";
const COUNTY: &str = "js.nj.gulou";
const TOWNSHIP: &str = "js.nj.gulou.t3";
const MB: u64 = 1 << 20;

fn object(data_dir: &Path, sha: &str) -> PathBuf {
    data_dir.join("files/objects").join(&sha[..2]).join(sha)
}

/// The largest upload in progress in `data_dir`'s store, bytes.
fn largest_part(data_dir: &Path) -> u64 {
    std::fs::read_dir(data_dir.join("files/uploads"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Every `from_offset=N` the node logged for a transfer.
fn offsets(log: &str, what: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            let rest = l.split("from_offset=").nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Reads `client`'s commands at `port` after `cursor` until `n` arrived (or `secs` passed);
/// the cursor moves past them.
fn inbox(port: u16, who: Login, cursor: &mut String, n: usize, secs: u64) -> Vec<Value> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while got.len() < n && Instant::now() < deadline {
        let path = format!("/v1/inbox?wait=2&cursor={cursor}");
        let (status, page) = get_json(port, &path, who);
        assert_eq!(status, 200, "{page}");
        got.extend(page["messages"].as_array().cloned().unwrap_or_default());
        if let Some(c) = page["cursor"].as_str() {
            *cursor = c.to_string();
        }
    }
    got
}

/// Receipt statuses `client` has at `port` for command `id`, waiting until `last` arrives.
fn receipts_until(port: u16, who: Login, id: &str, last: &str) -> Vec<String> {
    let mut statuses = Vec::new();
    let mut cursor = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !statuses.iter().any(|s| s == last) && Instant::now() < deadline {
        let path = format!("/v1/receipts?wait=2&cursor={cursor}");
        let (_, page) = get_json(port, &path, who);
        for r in page["messages"].as_array().cloned().unwrap_or_default() {
            if r["params"]["ref"] == id {
                statuses.push(r["params"]["status"].as_str().unwrap_or("").to_string());
            }
        }
        if let Some(c) = page["cursor"].as_str() {
            cursor = c.to_string();
        }
    }
    statuses
}

/// `GET /v1/files/<sha>` with `Range: bytes=<range>`.
fn ranged(port: u16, who: Login, sha: &str, range: &str) -> Vec<u8> {
    let r = download(port, who, sha, Some(range));
    assert_eq!(r.status, 206, "{}", String::from_utf8_lossy(&r.body));
    r.body
}

fn submit(port: u16, who: Login, body: &Value) -> String {
    let (status, answer) = post_json(port, "/v1/messages", who, body);
    assert_eq!(status, 202, "{answer}");
    answer["id"].as_str().expect("the id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_climbs_three_tiers_through_a_cut_and_a_kill_and_its_command_arrives_once_after_it()
{
    let mut t = Tree::new(&[
        spec(CITY, None, &["hosp"]),
        spec(COUNTY, Some(CITY), &[]),
        spec(TOWNSHIP, Some(COUNTY), &["clinic"]),
    ]);
    // The county reaches the city's file store through a proxy that can cut it, and its
    // transfers are capped, so the cut falls in the middle of one.
    let proxy = Proxy::start(([127, 0, 0, 1], t.node(CITY).http_port).into()).await;
    t.set_parent_key(
        COUNTY,
        "files_url",
        &format!("\"http://127.0.0.1:{}\"", proxy.port),
    );
    t.set_parent_key(COUNTY, "files_max_rate", &(20 * MB).to_string());
    for id in [CITY, COUNTY, TOWNSHIP] {
        t.node(id).start();
    }
    let clinic: Login = Some(("clinic", PASSWORD));
    let hosp: Login = Some(("hosp", PASSWORD));
    let township = t.node(TOWNSHIP).http_port;
    let city = t.node(CITY).http_port;
    let city_dir = t.node(CITY).data_dir.clone();

    let scan = tokio::task::block_in_place(|| scan(100 * MB));
    let sha = hex::encode(Sha256::digest(&scan));
    let file = tokio::task::block_in_place(|| upload(township, clinic, "ct-series.bin", &scan));
    let id = submit(
        township,
        clinic,
        &json!({"to": {"node": CITY, "client": "hosp"}, "cmd": "consult.ct",
                "params": {"patient": "p-1"}, "files": [file], "receipts": ["delivered"]}),
    );

    // Cut the county↔city transfer past a quarter, then kill the county while it is cut.
    let quarter = tokio::task::block_in_place(|| within(60, || largest_part(&city_dir) > 25 * MB));
    assert!(quarter, "the county never started sending the file up");
    proxy.set(Mode::Cut);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reached = largest_part(&city_dir);
    t.node(COUNTY).kill9();
    assert!(
        !object(&city_dir, &sha).exists(),
        "the file was complete before the cut ({reached} bytes)"
    );
    // While the county is down, its journal says where the command waits and why.
    let county_dir = t.node(COUNTY).data_dir.display().to_string();
    let (code, trace, err) = medlink(&["trace", &id, "--data-dir", &county_dir]);
    assert_eq!(code, 0, "{err}");
    assert!(trace.contains("files_pending"), "{trace}");
    let mut at_city = String::new();
    assert!(
        tokio::task::block_in_place(|| inbox(city, hosp, &mut at_city, 1, 1)).is_empty(),
        "the command arrived before its file"
    );
    proxy.set(Mode::Pass);
    t.node(COUNTY).start();

    let got = tokio::task::block_in_place(|| inbox(city, hosp, &mut at_city, 1, 90));
    assert_eq!(got.len(), 1, "the command did not arrive");
    assert!(
        object(&city_dir, &sha).exists(),
        "the command arrived before its file was at the city"
    );
    assert_eq!(got[0]["id"], id.as_str());
    assert_eq!(got[0]["files"][0]["sha256"], sha.as_str());
    // Once: nothing more comes.
    let more = tokio::task::block_in_place(|| inbox(city, hosp, &mut at_city, 1, 3));
    assert!(more.is_empty(), "delivered twice: {more:?}");

    // The county resumed from where the city's store stood, not from 0.
    let log = t.node(COUNTY).log_text();
    let resumed = offsets(&log, "file sent to the parent");
    assert_eq!(resumed.len(), 1, "{log}");
    assert!(
        resumed[0] > 0 && resumed[0] <= reached,
        "resumed from {}, the city had {reached}",
        resumed[0]
    );

    // The hospital downloads it by Range; the bytes are the scan's.
    let half = scan.len() / 2;
    let mut bytes =
        tokio::task::block_in_place(|| ranged(city, hosp, &sha, &format!("0-{}", half - 1)));
    bytes.extend(tokio::task::block_in_place(|| {
        ranged(city, hosp, &sha, &format!("{half}-"))
    }));
    assert_eq!(hex::encode(Sha256::digest(&bytes)), sha);

    // The clinic was told the command waited for its file, then that it was delivered.
    let statuses =
        tokio::task::block_in_place(|| receipts_until(township, clinic, &id, "delivered"));
    let pending = statuses.iter().position(|s| s == "files_pending");
    let delivered = statuses.iter().position(|s| s == "delivered");
    assert!(
        matches!((pending, delivered), (Some(p), Some(d)) if p < d),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| *s == "delivered").count(),
        1,
        "{statuses:?}"
    );
}

#[test]
fn a_report_goes_down_to_the_clinic_which_fetches_it_and_only_its_recipient_reads_it() {
    let t = Tree::start(&[
        spec(CITY, None, &["hosp"]),
        spec(COUNTY, Some(CITY), &[]),
        spec(TOWNSHIP, Some(COUNTY), &["clinic", "visitor"]),
    ]);
    let clinic: Login = Some(("clinic", PASSWORD));
    let visitor: Login = Some(("visitor", PASSWORD));
    let hosp: Login = Some(("hosp", PASSWORD));
    let city = t.nodes[CITY].http_port;
    let township = t.nodes[TOWNSHIP].http_port;
    let report = scan(3 * MB + 17);
    let sha = hex::encode(Sha256::digest(&report));
    let file = upload(city, hosp, "report.pdf", &report);
    // Three commands in order: the report between two without files.
    let mut ids = Vec::new();
    for (n, files) in [(1, json!([])), (2, json!([file])), (3, json!([]))] {
        ids.push(submit(
            city,
            hosp,
            &json!({"to": {"node": TOWNSHIP, "client": "clinic"}, "cmd": "consult.report",
                    "params": {"n": n}, "files": files}),
        ));
    }
    let got = inbox(township, clinic, &mut String::new(), 3, 60);
    let got_ids: Vec<&str> = got.iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(got_ids.len(), 3, "{got:?}");
    let mut sorted = got_ids.clone();
    sorted.sort();
    let mut sent: Vec<&str> = ids.iter().map(String::as_str).collect();
    sent.sort();
    assert_eq!(sorted, sent, "each once");
    // The two without files keep their order.
    let first = got_ids.iter().position(|i| *i == ids[0]).unwrap();
    let third = got_ids.iter().position(|i| *i == ids[2]).unwrap();
    assert!(first < third, "{got_ids:?}");
    // The report is at the township's node when its command is: the clinic reads it there.
    let whole = download(township, clinic, &sha, None);
    assert_eq!(whole.status, 200);
    assert_eq!(hex::encode(Sha256::digest(&whole.body)), sha);
    // Nobody else at the township may.
    let other = download(township, visitor, &sha, None);
    assert_eq!(other.status, 403);
    assert_eq!(other.json()["code"], "forbidden", "a JSON error");
    // The county kept a copy on the way and fetched it once.
    let log = t.nodes[COUNTY].log_text();
    assert_eq!(
        offsets(&log, "file fetched from the parent"),
        vec![0],
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_of_every_priority_overtake_a_large_transfer_on_a_capped_link() {
    let mut t = Tree::new(&[
        spec(COUNTY, None, &["hosp"]),
        spec(TOWNSHIP, Some(COUNTY), &["clinic"]),
    ]);
    // 500 MB at 40 MB/s: about 12 s on the link.
    t.set_parent_key(TOWNSHIP, "files_max_rate", &(40 * MB).to_string());
    for id in [COUNTY, TOWNSHIP] {
        t.node(id).start();
    }
    let clinic: Login = Some(("clinic", PASSWORD));
    let township = t.node(TOWNSHIP).http_port;
    let county = t.node(COUNTY).http_port;
    let county_dir = t.node(COUNTY).data_dir.clone();
    let mut hosp = App::connect(COUNTY, "hosp", t.node(COUNTY).port).await;

    let big = tokio::task::block_in_place(|| scan(500 * MB));
    let sha = hex::encode(Sha256::digest(&big));
    let file = tokio::task::block_in_place(|| upload(township, clinic, "ct-study.bin", &big));
    drop(big);
    submit(
        township,
        clinic,
        &json!({"to": {"node": COUNTY, "client": "hosp"}, "cmd": "consult.ct",
                "params": {"n": 0}, "files": [file]}),
    );
    let started =
        tokio::task::block_in_place(|| within(60, || largest_part(&county_dir) > 50 * MB));
    assert!(started, "the transfer did not start");
    // An urgent and a normal command, sent while the file is on the link.
    let mut sent_at = Vec::new();
    for (n, priority) in [(1, "urgent"), (2, "normal")] {
        sent_at.push(Instant::now());
        submit(
            township,
            clinic,
            &json!({"to": {"node": COUNTY, "client": "hosp"}, "cmd": "consult.note",
                    "params": {"n": n}, "priority": priority}),
        );
    }
    let mut arrived = Vec::new();
    while arrived.len() < 2 {
        let cmd = hosp.expect_cmd(30).await;
        let n = cmd["params"]["n"].as_u64().unwrap();
        assert_ne!(n, 0, "the file's command came first");
        arrived.push((n, Instant::now()));
    }
    let transfer_left = !object(&county_dir, &sha).exists();
    for (n, at) in &arrived {
        eprintln!(
            "command {n} arrived {} ms after it was sent, during the transfer",
            at.duration_since(sent_at[*n as usize - 1]).as_millis()
        );
    }
    assert!(transfer_left, "the commands did not overtake the transfer");
    assert_eq!(
        arrived.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![1, 2],
        "each once, in order"
    );
    // The file's command follows its file, once.
    let cmd = hosp.expect_cmd(60).await;
    assert_eq!(cmd["params"]["n"], 0);
    assert!(object(&county_dir, &sha).exists());
    assert!(hosp.recv(2).await.is_none(), "a command came twice");
    let _ = county;
}

/// Asserts `out` (a `medlink` run) succeeded, showing its stderr if not.
fn succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `medlink <verb>` as `who` at `node` over its HTTP API, the password in the environment.
fn cli(verb: &str, port: u16, node: &str, who: &str, args: &[&str]) -> std::process::Output {
    cli_at(
        verb,
        &format!("http://127.0.0.1:{port}"),
        None,
        (node, who),
        args,
    )
}

/// The same at `url`, trusting `ca` for HTTPS.
fn cli_at(
    verb: &str,
    url: &str,
    ca: Option<&Path>,
    (node, who): (&str, &str),
    args: &[&str],
) -> std::process::Output {
    let mut c = std::process::Command::new(BIN);
    c.arg(verb)
        .args(["--url", url, "--node", node, "--identity", who]);
    if let Some(ca) = ca {
        c.arg("--ca").arg(ca);
    }
    c.args(args)
        .env("MEDLINK_PASSWORD", PASSWORD)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("medlink runs")
}

#[test]
fn files_move_over_a_tls_tree_where_the_child_logs_in_by_certificate() {
    let mut t = Tree::new_tls(&[
        spec(CITY, None, &["hosp"]),
        spec(COUNTY, Some(CITY), &["clinic"]),
    ]);
    for id in [CITY, COUNTY] {
        t.node(id).start();
    }
    let ca = t.ca();
    let city = format!("https://127.0.0.1:{}", t.node(CITY).http_port);
    let county = format!("https://127.0.0.1:{}", t.node(COUNTY).http_port);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.bin");
    let bytes = scan(2 * MB + 9);
    std::fs::write(&path, &bytes).unwrap();
    let sent = cli_at(
        "send",
        &county,
        Some(&ca),
        (COUNTY, "clinic"),
        &[
            "--to",
            &format!("{CITY}/hosp"),
            "--cmd",
            "consult.echo",
            "--file",
            path.to_str().unwrap(),
        ],
    );
    succeeded(&sent);
    let heard = cli_at(
        "listen",
        &city,
        Some(&ca),
        (CITY, "hosp"),
        &["--count", "1"],
    );
    succeeded(&heard);
    let cmd: Value = serde_json::from_slice(&heard.stdout).expect("one JSON line");
    let out = dir.path().join("got.bin");
    let reference = cmd["files"][0].to_string();
    let fetched = cli_at(
        "fetch",
        &city,
        Some(&ca),
        (CITY, "hosp"),
        &["--ref", &reference, "--out", out.to_str().unwrap()],
    );
    succeeded(&fetched);
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
}

#[test]
fn the_cli_sends_a_file_with_its_command_and_the_recipient_fetches_it_resuming_a_partial_copy() {
    let t = Tree::start(&[
        spec(CITY, None, &["hosp"]),
        spec(COUNTY, Some(CITY), &["clinic"]),
    ]);
    let city = t.nodes[CITY].http_port;
    let county = t.nodes[COUNTY].http_port;
    let dir = tempfile::tempdir().unwrap();
    let scan_path = dir.path().join("ct.bin");
    let bytes = scan(9 * MB + 5);
    let sha = hex::encode(Sha256::digest(&bytes));
    std::fs::write(&scan_path, &bytes).unwrap();

    let sent = cli(
        "send",
        county,
        COUNTY,
        "clinic",
        &[
            "--to",
            &format!("{CITY}/hosp"),
            "--cmd",
            "consult.ct",
            "--params",
            r#"{"patient":"p-2"}"#,
            "--file",
            scan_path.to_str().unwrap(),
            "--media-type",
            "application/dicom",
        ],
    );
    succeeded(&sent);
    let id = String::from_utf8_lossy(&sent.stdout).trim().to_string();

    let heard = cli("listen", city, CITY, "hosp", &["--count", "1"]);
    succeeded(&heard);
    let cmd: Value = serde_json::from_slice(&heard.stdout).expect("one JSON line");
    assert_eq!(cmd["id"], id.as_str());
    let file = &cmd["files"][0];
    assert_eq!(
        (
            file["sha256"].as_str(),
            file["size"].as_u64(),
            file["name"].as_str(),
            file["media_type"].as_str()
        ),
        (
            Some(sha.as_str()),
            Some(bytes.len() as u64),
            Some("ct.bin"),
            Some("application/dicom")
        )
    );

    // A partial copy is continued from its length (Range), then checked.
    let out = dir.path().join("received.bin");
    let part = dir.path().join("received.bin.part");
    std::fs::write(&part, &bytes[..3 * MB as usize]).unwrap();
    let reference = file.to_string();
    let fetched = cli(
        "fetch",
        city,
        CITY,
        "hosp",
        &["--ref", &reference, "--out", out.to_str().unwrap()],
    );
    succeeded(&fetched);
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    assert!(!part.exists());
    // A damaged partial copy is found out by the hash, dropped, and fetched whole next time.
    let mut damaged = bytes[..MB as usize].to_vec();
    damaged[100] ^= 0xff;
    std::fs::write(&part, &damaged).unwrap();
    let args = [
        "--sha256",
        sha.as_str(),
        "--size",
        &bytes.len().to_string(),
        "--out",
        out.to_str().unwrap(),
    ];
    std::fs::remove_file(&out).unwrap();
    let bad = cli("fetch", city, CITY, "hosp", &args);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("SHA-256"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(!out.exists() && !part.exists());
    let again = cli("fetch", city, CITY, "hosp", &args);
    succeeded(&again);
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    // A stranger's fetch is refused with the node's reason.
    let stranger = cli(
        "fetch",
        county,
        COUNTY,
        "clinic",
        &[
            "--sha256",
            &"0".repeat(64),
            "--size",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(!stranger.status.success());
    assert!(
        String::from_utf8_lossy(&stranger.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&stranger.stderr)
    );
}
