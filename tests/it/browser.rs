//! The patient-notification page (`GET /push`) in a real browser: Debian's chromium driven by
//! `tests/browser/push.mjs` (playwright-core, Node.js), against real node processes.
//!
//! A queue call sent at the province travels two tiers down to the county node, where the
//! patient's identity is signed in on two tabs at once. Both tabs must show it within one
//! second of the sender getting custody (the 202), exactly once, and a second call after it.
//!
//! Prerequisites (installed by `scripts/test.sh`): `/usr/bin/chromium`, `node`, and
//! `npm ci` in `tests/browser/`. Missing ones fail the test under `CI=true` and skip it,
//! loudly, elsewhere.

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::http::*;
use common::*;
use serde_json::{json, Value};

const PROVINCE: &str = "js";
const CITY: &str = "js.nj";
const COUNTY: &str = "js.nj.gulou";
const SENDER: &str = "queue-desk";
const PATIENT: &str = "patient-a017";
/// The promise the page makes: shown this soon after the sender has custody.
const BUDGET_MS: i64 = 1000;

pub(crate) fn chromium_path() -> PathBuf {
    std::env::var_os("MEDLINK_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

pub(crate) fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// What is missing to run the browser test, if anything.
fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    let chromium = chromium_path();
    if !chromium.is_file() {
        missing.push(format!("{} (apt-get install chromium)", chromium.display()));
    }
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(node, Ok(s) if s.success()) {
        missing.push("node (apt-get install nodejs npm)".into());
    }
    let pw = browser_dir().join("node_modules/playwright-core/package.json");
    if !pw.is_file() {
        missing.push(format!(
            "{} (npm ci in tests/browser)",
            pw.parent().map_or(pw.clone(), Path::to_path_buf).display()
        ));
    }
    missing
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// True if the test can run; panics in CI when it cannot; otherwise says loudly why not.
/// Starts `tests/browser/<script>` under Node.js with `cfg` as its argument; returns the
/// process, its stdin, and its stdout's JSON lines (other lines are printed).
pub(crate) fn spawn_script(
    script: &str,
    cfg: &Value,
) -> (Child, ChildStdin, mpsc::Receiver<Value>) {
    let mut child = Command::new("node")
        .arg(browser_dir().join(script))
        .arg(cfg.to_string())
        .current_dir(browser_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn node tests/browser/{script}: {e}"));
    let stdin = child.stdin.take().expect("stdin was piped");
    let stdout = child.stdout.take().expect("stdout was piped");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            match serde_json::from_str::<Value>(&line) {
                Ok(v) => {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
                Err(_) => eprintln!("browser script: {line}"),
            }
        }
    });
    (child, stdin, lines)
}

pub(crate) fn browser_available() -> bool {
    let missing = missing_prerequisites();
    if missing.is_empty() {
        return true;
    }
    let list = missing.join(", ");
    if in_ci() {
        panic!("the browser test cannot run in CI: missing {list}; scripts/test.sh installs them");
    }
    eprintln!(
        "\n**********************************************************************\n\
         SKIPPED browser test: missing {list}.\n\
         Run scripts/test.sh (or install them) to run it; under CI=true this fails.\n\
         **********************************************************************\n"
    );
    false
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The browser script, talking JSON lines.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Value>,
    /// Console errors and page errors seen so far.
    complaints: Vec<Value>,
}

impl Browser {
    /// Two tabs of `url` signed in with `login` (`{identity, password}` or `{token}`).
    fn launch(url: &str, login: Value) -> Browser {
        let mut cfg = json!({
            "url": url,
            "tabs": 2,
            "chromium": chromium_path(),
        });
        for (k, v) in login.as_object().expect("a login object") {
            cfg[k] = v.clone();
        }
        let (child, stdin, lines) = spawn_script("push.mjs", &cfg);
        Browser {
            child,
            stdin,
            lines,
            complaints: Vec::new(),
        }
    }

    /// The next line whose `event` is `want`, within `secs`; console and page errors are kept,
    /// a script error fails the test.
    fn next(&mut self, want: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(v) => v,
                Err(e) => panic!("browser script: no '{want}' within {secs} s ({e})"),
            };
            match line["event"].as_str() {
                Some(e) if e == want => return line,
                Some("console") | Some("pageerror") => {
                    eprintln!("page: {line}");
                    self.complaints.push(line);
                }
                Some("error") => panic!("browser script failed: {}", line["message"]),
                _ => eprintln!("browser script: {line}"),
            }
        }
    }

    fn send(&mut self, cmd: &Value) {
        writeln!(self.stdin, "{cmd}").expect("write to the browser script");
        self.stdin.flush().expect("flush to the browser script");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"cmd": "quit"}));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a queue call from the province to the patient at the county over HTTP; returns
/// (sent_at, custody_at) in Unix ms: just before the POST and when its 202 arrived.
fn send_call(port: u16, id: &str, ticket: &str, room: &str) -> (i64, i64) {
    let body = json!({
        "id": id,
        "to": {"node": COUNTY, "client": PATIENT},
        "cmd": "queue.call",
        "params": {"ticket": ticket, "room": room, "name": "Wang Fang"},
        "ttl_ms": 600_000,
        "receipts": ["delivered"],
    });
    let sent_at = now_ms();
    let (status, answer) = post_json(port, "/v1/messages", Some((SENDER, PASSWORD)), &body);
    let custody_at = now_ms();
    assert_eq!(status, 202, "the province took custody: {answer}");
    (sent_at, custody_at)
}

/// The statuses of the sender's receipts about `id`, read over HTTP until 3 s of quiet after
/// the first (acknowledging as it goes).
fn sender_receipts(port: u16, id: &str) -> Vec<String> {
    let mut cursor = String::new();
    let mut statuses = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let wait = if statuses.is_empty() { 10 } else { 3 };
        let (status, page) = get_json(
            port,
            &format!("/v1/receipts?cursor={cursor}&wait={wait}"),
            Some((SENDER, PASSWORD)),
        );
        assert_eq!(status, 200, "{page}");
        let msgs = page["messages"].as_array().cloned().unwrap_or_default();
        if msgs.is_empty() && !statuses.is_empty() {
            break;
        }
        for m in msgs.iter().filter(|m| m["params"]["ref"] == id) {
            statuses.push(m["params"]["status"].as_str().unwrap_or("").to_string());
        }
        cursor = page["cursor"].as_str().unwrap_or_default().to_string();
    }
    statuses
}

/// Waits for every tab's view of `id`; checks it arrived once and, with a `budget`, within
/// `budget` ms of `custody_at`; returns the views.
fn expect_everywhere(
    browser: &mut Browser,
    id: &str,
    (sent_at, custody_at): (i64, i64),
    budget: Option<i64>,
) -> Vec<Value> {
    browser.send(&json!({
        "cmd": "expect", "id": id, "sent_at": sent_at, "custody_at": custody_at,
        "timeout_ms": 20_000, "settle_ms": 1500,
    }));
    let views: Vec<Value> = (0..2).map(|_| browser.next("seen", 30)).collect();
    browser.next("done", 5);
    for v in &views {
        let tab = &v["tab"];
        println!(
            "{id}: tab {tab}: latency {} ms after custody ({} ms after the POST began), shown {} time(s)",
            v["latency_ms"], v["since_send_ms"], v["count"]
        );
    }
    for v in &views {
        let tab = &v["tab"];
        assert_eq!(
            v["count"], 1,
            "tab {tab} must show {id} exactly once (0 = never arrived, >1 = duplicates): {v}"
        );
        let latency = v["latency_ms"].as_i64().expect("an arrival time");
        if let Some(budget) = budget {
            assert!(
                latency <= budget,
                "tab {tab} showed {id} {latency} ms after the sender had custody (budget {budget} ms): {v}"
            );
        }
        assert_eq!(v["state"], "connected", "tab {tab}: {v}");
        assert_eq!(
            v["call_id"], id,
            "tab {tab} shows {id} as the current call: {v}"
        );
    }
    views
}

#[test]
fn queue_calls_reach_two_tabs_of_one_patient_once_and_in_time() {
    if !browser_available() {
        return;
    }
    let mut t = Tree::start(&[
        spec(PROVINCE, None, &[SENDER]),
        spec(CITY, Some(PROVINCE), &[]),
        spec(COUNTY, Some(CITY), &[PATIENT]),
    ]);
    let county = t.node(COUNTY).http_port;
    let province = t.node(PROVINCE).http_port;

    // The page: public, HTML, a nonce policy that allows its own inline script and nothing else.
    let page = call(county, "GET", "/push", None, b"");
    assert_eq!(page.status, 200, "the page needs no login");
    assert_eq!(
        page.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").expect("a CSP");
    let nonce = csp
        .split("script-src 'nonce-")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .unwrap_or_else(|| panic!("the CSP allows scripts by nonce: {csp}"));
    let html = String::from_utf8_lossy(&page.body);
    assert!(
        html.contains(&format!("<script nonce=\"{nonce}\">")),
        "{csp}"
    );
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
    assert!(
        html.contains(&format!("content=\"{COUNTY}\"")),
        "the page knows its node"
    );
    assert_eq!(page.header("cache-control").as_deref(), Some("no-store"));
    let again = call(county, "GET", "/push", None, b"");
    assert_ne!(
        again.header("content-security-policy").as_deref(),
        Some(csp.as_str()),
        "a fresh nonce per response"
    );

    let mut browser = Browser::launch(
        &format!("http://127.0.0.1:{county}/push"),
        json!({"identity": PATIENT, "password": PASSWORD}),
    );
    let ready = browser.next("ready", 60);
    println!("both tabs connected: {ready}");
    for url in ready["urls"].as_array().expect("urls") {
        let url = url.as_str().unwrap_or_default();
        assert!(
            !url.contains("password") && !url.contains(PASSWORD),
            "the credentials are removed from the address bar: {url}"
        );
    }

    let sent = send_call(province, "call-a017-1", "A017", "Radiology 2");
    let first = expect_everywhere(&mut browser, "call-a017-1", sent, Some(BUDGET_MS));
    for v in &first {
        assert_eq!(v["ids"], json!(["call-a017-1"]), "{v}");
        assert_eq!(v["call_ticket"], "A017");
    }
    // The page acknowledges what it has shown, so the sender learns at once, and once, that
    // the call reached the patient (not only at the tabs' next reconnect).
    assert_eq!(
        sender_receipts(province, "call-a017-1"),
        ["delivered"],
        "one `delivered` receipt for the first call"
    );

    let sent = send_call(province, "call-a017-2", "A017", "Radiology 3");
    let second = expect_everywhere(&mut browser, "call-a017-2", sent, Some(BUDGET_MS));
    for v in &second {
        assert_eq!(
            v["ids"],
            json!(["call-a017-1", "call-a017-2"]),
            "each call once, in the order sent: {v}"
        );
    }

    assert!(
        browser.complaints.is_empty(),
        "the page logged errors (CSP violations show up here): {:?}",
        browser.complaints
    );

    // The patient's node restarts while a third call is on its way: both tabs reconnect on
    // their own (with Last-Event-ID) and show it, and nothing earlier comes twice.
    assert_eq!(t.node(COUNTY).stop(), Some(0), "the county stops cleanly");
    let sent = send_call(province, "call-a017-3", "A017", "Radiology 4");
    std::thread::sleep(Duration::from_millis(500));
    t.node(COUNTY).start();
    let third = expect_everywhere(&mut browser, "call-a017-3", sent, None);
    for v in &third {
        assert_eq!(
            v["ids"],
            json!(["call-a017-1", "call-a017-2", "call-a017-3"]),
            "after reconnecting, each call once, in order: {v}"
        );
    }
    // While the node was down, failed reconnects were logged; nothing else may have been.
    let unexpected: Vec<&Value> = browser
        .complaints
        .iter()
        .filter(|c| {
            !(c["event"] == "console"
                && c["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("Failed to load resource: net::ERR_")))
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "the page logged errors: {unexpected:?}"
    );
}

/// Reads `GET /v1/stream` events from `s` until `n` arrived or `secs` passed; returns
/// (sequence, envelope id) of each.
fn read_events(s: &mut std::net::TcpStream, n: usize, secs: u64) -> Vec<(String, String)> {
    use std::io::Read;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    let events = |text: &str| -> Vec<(String, String)> {
        text.split("\n\n")
            .filter(|frame| frame.contains("data:"))
            .filter_map(|frame| {
                let seq = frame
                    .lines()
                    .find_map(|l| l.strip_prefix("id:"))?
                    .trim()
                    .parse()
                    .ok()?;
                let data = frame.lines().find_map(|l| l.strip_prefix("data:"))?;
                let env: Value = serde_json::from_str(data.trim()).ok()?;
                Some((seq, env["id"].as_str()?.to_string()))
            })
            .collect()
    };
    while events(&text).len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(200))))
            .expect("set a read timeout");
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => text.push_str(&String::from_utf8_lossy(&buf[..k])),
            Err(_) => continue,
        }
    }
    events(&text)
}

/// The multi-device case the page depends on, at the protocol level: a device (the phone) that
/// goes offline while another device of the same identity (the kiosk) shows a message and then
/// reconnects with `Last-Event-ID` must still get that message when it comes back with its own
/// `Last-Event-ID` (as the page's stream does).
///
/// The kiosk's `Last-Event-ID` acknowledges the stream (the journal drops m1); the node keeps
/// what one device acknowledged readable for the identity's other HTTP devices for a while
/// (`bridge/src/dispatcher/devices.rs`). A device that has never read the stream (no cursor)
/// starts at the oldest unacknowledged message instead: m1 is not replayed to it.
#[test]
fn a_device_that_was_offline_still_gets_what_another_device_acknowledged() {
    let mut t = Tree::start(&[spec(PROVINCE, None, &[SENDER, PATIENT])]);
    let port = t.node(PROVINCE).http_port;
    let patient = Some((PATIENT, PASSWORD));
    let call = |id: &str| {
        let body = json!({"id": id, "to": {"node": PROVINCE, "client": PATIENT},
                          "cmd": "queue.call", "params": {"ticket": "A017"}});
        let (status, answer) = post_json(port, "/v1/messages", Some((SENDER, PASSWORD)), &body);
        assert_eq!(status, 202, "{answer}");
    };
    let mut kiosk = send(port, "GET", "/v1/stream", patient, &[], b"");
    let mut phone = send(port, "GET", "/v1/stream", patient, &[], b"");
    std::thread::sleep(Duration::from_millis(300));
    // Both devices show m0; the phone then goes offline, remembering where it was.
    call("m0");
    assert_eq!(read_events(&mut kiosk, 1, 10).len(), 1, "the kiosk got m0");
    let phone_saw = read_events(&mut phone, 1, 10);
    assert_eq!(phone_saw.len(), 1, "the phone got m0");
    let phone_seq = phone_saw[0].0.clone();
    drop(phone);
    call("m1");
    let got = read_events(&mut kiosk, 1, 10);
    assert_eq!(got.len(), 1, "the kiosk got m1: {got:?}");
    let (seq, _) = got[0].clone();
    drop(kiosk);
    // The kiosk's connection drops and comes back, as EventSource or the page would.
    let mut kiosk = send(
        port,
        "GET",
        "/v1/stream",
        patient,
        &[("Last-Event-ID", &seq)],
        b"",
    );
    assert!(
        read_events(&mut kiosk, 1, 1).is_empty(),
        "nothing new for the kiosk"
    );
    // The phone comes back online with its own Last-Event-ID.
    let mut phone = send(
        port,
        "GET",
        "/v1/stream",
        patient,
        &[("Last-Event-ID", &phone_seq)],
        b"",
    );
    let phone_got = read_events(&mut phone, 1, 5);
    assert_eq!(
        phone_got
            .iter()
            .map(|(_, id)| id.as_str())
            .collect::<Vec<_>>(),
        ["m1"],
        "the phone never got m1: the kiosk's Last-Event-ID {seq} acknowledged it for every device"
    );
    // A tab opened for the first time starts at what is not yet acknowledged: nothing.
    let mut new_tab = send(port, "GET", "/v1/stream", patient, &[], b"");
    assert!(
        read_events(&mut new_tab, 1, 2).is_empty(),
        "a new device replayed what was acknowledged"
    );
}

/// A patient with no line in the credentials file signs in on `/push` with a device token in
/// the URL fragment (as a hospital app opening the page would): both tabs get each call once,
/// in order, and the token never stays in the address bar.
#[test]
fn a_device_token_signs_in_on_the_push_page() {
    if !browser_available() {
        return;
    }
    let mut t = Tree::new(&[spec(COUNTY, None, &[SENDER])]);
    let key = t.dir.path().join("hosp.key");
    std::fs::write(&key, "a-hospital-secret-of-at-least-32-bytes\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let cfg = t.node(COUNTY).config.clone();
    let text = std::fs::read_to_string(&cfg).unwrap()
        + &format!(
            "\n[[token_key]]\nkid = \"hosp\"\nalg = \"HS256\"\nsecret_file = \"{}\"\nsubjects = \"patient-*\"\n",
            key.display()
        );
    std::fs::write(&cfg, text).unwrap();
    t.node(COUNTY).start();
    let port = t.node(COUNTY).http_port;
    let (code, token, err) = medlink(&[
        "token",
        "--key-file",
        key.to_str().unwrap(),
        "--kid",
        "hosp",
        "--sub",
        PATIENT,
    ]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();
    let mut browser = Browser::launch(
        &format!("http://127.0.0.1:{port}/push"),
        json!({ "token": token }),
    );
    let ready = browser.next("ready", 60);
    for url in ready["urls"].as_array().expect("urls") {
        let url = url.as_str().unwrap_or_default();
        assert!(
            !url.contains(&token),
            "the token is removed from the address bar: {url}"
        );
    }
    let first = send_call(port, "call-t1", "T001", "Room 1");
    expect_everywhere(&mut browser, "call-t1", first, None);
    let second = send_call(port, "call-t2", "T002", "Room 2");
    let views = expect_everywhere(&mut browser, "call-t2", second, None);
    for v in &views {
        assert_eq!(
            v["ids"],
            json!(["call-t1", "call-t2"]),
            "once each, in order: {v}"
        );
    }
    assert!(
        browser.complaints.is_empty(),
        "the page complained: {:?}",
        browser.complaints
    );
    assert!(
        t.node(COUNTY)
            .metric("medlink_token_logins_total{result=\"ok\"}")
            >= 2.0,
        "both tabs logged in by token"
    );
}
