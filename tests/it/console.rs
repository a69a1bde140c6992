//! The operators' console (`/console`) in a real browser: Debian's chromium driven by
//! `tests/browser/console.mjs` (playwright-core), on a 4-tier tree of real node processes
//! whose township reaches its county through a fault proxy.
//!
//! At the root's console: an unauthenticated visitor gets the login page and no data; an
//! admin sees all four nodes; cutting the township's link marks it stale within seconds and
//! the commands for it pile up on the county's row; a command's id searched at the root shows
//! its path down to the township; a waiting command's params are revealed; a dead letter at
//! the county is re-sent from the root's console and delivered once, then purged; and the
//! county's operator log has all three actions, by the root's operator.

use std::io::Write;
use std::process::{Child, ChildStdin};
use std::sync::mpsc;
use std::time::Duration;

use crate::browser::{browser_available, chromium_path, spawn_script};
use crate::common;
use common::http::{get_json, post_json, read, send, Login};
use common::proxy::{Mode, Proxy};
use common::*;
use serde_json::{json, Value};

const ROOT: &str = "js";
const CITY: &str = "js.nj";
const COUNTY: &str = "js.nj.gulou";
const TOWNSHIP: &str = "js.nj.gulou.t3";

/// One chromium page, commanded line by line.
struct Page {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Value>,
}

impl Page {
    fn open() -> Page {
        let (child, stdin, lines) =
            spawn_script("console.mjs", &json!({ "chromium": chromium_path() }));
        Page {
            child,
            stdin,
            lines,
        }
    }

    /// Sends `cmd`; returns its answer (the page's complaints on the way are printed).
    fn run(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").expect("write to console.mjs");
        loop {
            let v = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no answer from the browser to {cmd}"));
            if v.get("event").is_none() {
                return v;
            }
            eprintln!("page: {v}");
        }
    }

    fn goto(&mut self, url: &str) -> u64 {
        let r = self.run(json!({"cmd": "goto", "url": url}));
        assert_eq!(r["ok"], true, "{r}");
        r["status"].as_u64().unwrap_or(0)
    }

    fn eval(&mut self, js: &str) -> Value {
        let r = self.run(json!({"cmd": "eval", "js": js}));
        assert_eq!(r["ok"], true, "{js}: {r}");
        r["value"].clone()
    }

    /// Waits until `js` is truthy; returns its value and how long that took.
    fn wait(&mut self, what: &str, js: &str, secs: u64) -> (Value, u64) {
        let r = self.run(json!({"cmd": "wait", "js": js, "timeout_ms": secs * 1000}));
        if r["ok"] != true {
            let shown = self.eval("location.href + ' | ' + document.body.innerText");
            panic!(
                "{what}: not within {secs} s (last value {}); the page shows:\n{}",
                r["value"],
                shown.as_str().unwrap_or_default()
            );
        }
        (r["value"].clone(), r["waited_ms"].as_u64().unwrap_or(0))
    }

    fn click(&mut self, selector: &str) {
        let r = self.run(json!({"cmd": "click", "selector": selector}));
        assert_eq!(r["ok"], true, "click {selector}: {r}");
    }

    fn fill(&mut self, selector: &str, value: &str) {
        let r = self.run(json!({"cmd": "fill", "selector": selector, "value": value}));
        assert_eq!(r["ok"], true, "fill {selector}: {r}");
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"cmd": "quit"}));
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The county row's figure for the queue towards the township.
const COUNTY_QUEUE: &str = r#"(() => { const q = document.querySelector('tr[data-node="js.nj.gulou"] td.queues div[data-dest="child:js.nj.gulou.t3"]'); return q ? Number(q.textContent.split(': ')[1].split(' ')[0]) : 0; })()"#;

fn send_to_nurse(port: u16, cmd: &str, n: u64, ttl_ms: Option<u64>) -> String {
    let mut body =
        json!({"to": {"node": TOWNSHIP, "client": "nurse"}, "cmd": cmd, "params": {"n": n}});
    if let Some(ttl) = ttl_ms {
        body["ttl_ms"] = json!(ttl);
    }
    let (status, answer) = post_json(port, "/v1/messages", Some(("doc", PASSWORD)), &body);
    assert_eq!(status, 202, "{answer}");
    answer["id"].as_str().expect("id").to_string()
}

/// Reads the nurse's inbox until `n` commands came and acknowledges them; returns them.
fn nurse_reads(port: u16, n: usize) -> Vec<Value> {
    let nurse: Login = Some(("nurse", PASSWORD));
    let mut got = Vec::new();
    let mut cursor = String::new();
    while got.len() < n {
        let (status, page) = get_json(port, &format!("/v1/inbox?cursor={cursor}&wait=10"), nurse);
        assert_eq!(status, 200, "{page}");
        let msgs = page["messages"].as_array().expect("messages").clone();
        assert!(!msgs.is_empty(), "the nurse got {} of {n}", got.len());
        got.extend(msgs);
        cursor = page["cursor"].as_str().expect("cursor").to_string();
    }
    let (_, rest) = get_json(port, &format!("/v1/inbox?cursor={cursor}&wait=1"), nurse);
    assert_eq!(
        rest["messages"],
        json!([]),
        "nothing more, nothing twice: {rest}"
    );
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_live_tree_follows_a_command_and_resends_a_dead_letter() {
    if !browser_available() {
        return;
    }
    let audit = |mut s: NodeSpec| {
        s.extra = "audit = true\n".into();
        s
    };
    let mut t = Tree::new(&[
        audit(spec(ROOT, None, &["doc"])),
        audit(spec(CITY, Some(ROOT), &[])),
        audit(spec(COUNTY, Some(CITY), &[])),
        audit(spec(TOWNSHIP, Some(COUNTY), &["nurse"])),
    ]);
    for id in [ROOT, CITY, COUNTY] {
        t.node(id).start();
    }
    let proxy = Proxy::start(([127, 0, 0, 1], t.node(COUNTY).port).into()).await;
    t.set_parent_addresses(TOWNSHIP, &[format!("mqtt://127.0.0.1:{}", proxy.port)]);
    t.node(TOWNSHIP).start();
    let root = t.node(ROOT).http_port;
    let township = t.node(TOWNSHIP).http_port;
    let console = format!("http://127.0.0.1:{root}/console");

    let mut page = tokio::task::block_in_place(Page::open);
    let mut p = |f: &mut dyn FnMut(&mut Page)| tokio::task::block_in_place(|| f(&mut page));

    // A visitor without credentials: the login page, and no data anywhere.
    p(&mut |pg| {
        assert_eq!(pg.goto(&console), 200);
        assert_eq!(pg.eval("!!document.querySelector('form#login')"), true);
        assert_eq!(
            pg.eval("document.querySelectorAll('tr[data-node]').length"),
            0
        );
        let text = pg
            .eval("document.body.innerText")
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            !text.contains(CITY),
            "the login page names no node below: {text}"
        );
        let status = pg.eval("fetch('/console/api/tree').then(r => r.status)");
        assert_eq!(status, 401);
    });
    let (status, _) = get_json(root, "/console/api/tree", Some(("doc", PASSWORD)));
    assert_eq!(status, 403, "a client identity is no operator");
    // A question needs the console's header, which another origin's page cannot send; with
    // it, an admin by HTTP Basic (as a client certificate or a token would) is answered.
    let body = json!({"to": ROOT, "op": {"op": "log"}}).to_string();
    let ops: Login = Some(("ops", PASSWORD));
    let ask = |headers: &[(&str, &str)]| {
        read(send(
            root,
            "POST",
            "/console/api/ask",
            ops,
            headers,
            body.as_bytes(),
        ))
    };
    assert_eq!(ask(&[]).status, 403);
    let answered = ask(&[("x-medlink-console", "1")]);
    assert_eq!(answered.status, 200);
    assert_eq!(answered.json()["replies"][0]["node"], ROOT);

    // The admin logs in and sees the whole tree, every node reporting.
    p(&mut |pg| {
        pg.fill("#name", "ops");
        pg.fill("#password", PASSWORD);
        pg.click("button[type=submit]");
        let all = "[...document.querySelectorAll('tr[data-node]')].filter(r => !r.classList.contains('stale')).map(r => r.dataset.node).join(' ')";
        let (rows, _) = pg.wait(
            "four reporting nodes",
            &format!("(({all}) === 'js js.nj js.nj.gulou js.nj.gulou.t3') && ({all})"),
            20,
        );
        assert_eq!(rows, "js js.nj js.nj.gulou js.nj.gulou.t3");
    });

    // A command from the province to the township's nurse: searched by id at the root, its
    // path runs down all four tiers, in order.
    let id = send_to_nurse(root, "consult", 0, None);
    let got = nurse_reads(township, 1);
    assert_eq!(got[0]["id"], id.as_str());
    p(&mut |pg| {
        pg.fill("#journey-form input[name=id]", &id);
        pg.click("#journey-form button[type=submit]");
        let path = "[...new Set([...document.querySelectorAll('#path li')].map(l => l.dataset.node))].join(' ')";
        let (nodes, _) = pg.wait(
            "the journey",
            &format!("({path}).includes('js.nj.gulou.t3') && ({path})"),
            15,
        );
        let lines = pg
            .eval("[...document.querySelectorAll('#path li')].map(l => l.textContent).join('\\n')");
        assert_eq!(
            nodes,
            "js js.nj js.nj.gulou js.nj.gulou.t3",
            "{}",
            lines.as_str().unwrap_or_default()
        );
    });

    // The township's link is cut: it turns stale, and what is sent to it waits at the county.
    proxy.set(Mode::Cut);
    p(&mut |pg| {
        let (_, waited) = pg.wait(
            "the township stale",
            "document.querySelector('tr[data-node=\"js.nj.gulou.t3\"]').classList.contains('stale')",
            10,
        );
        eprintln!("township shown stale {waited} ms after the cut");
    });
    let queued: Vec<String> = (1..=5)
        .map(|n| send_to_nurse(root, "consult", n, None))
        .collect();
    let expiring = send_to_nurse(root, "lab.urgent", 99, Some(3_000));
    p(&mut |pg| {
        let (depth, waited) = pg.wait(
            "6 waiting for the township on the county's row",
            &format!("({COUNTY_QUEUE}) >= 6 && ({COUNTY_QUEUE})"),
            15,
        );
        eprintln!("county queue {depth} shown {waited} ms after the sends");
    });

    // The county's queues, seen from the root: the oldest first, params hidden until an
    // operator reveals them (which the county's operator log records).
    let first = queued[0].clone();
    let shot_dir = t.dir.path().to_path_buf();
    p(&mut |pg| {
        pg.click("tr[data-node=\"js.nj.gulou\"]");
        pg.click("#load-queues");
        let row = format!("#queues tr[data-id=\"{first}\"]");
        pg.wait(
            "the county's queue",
            &format!("!!document.querySelector('{row}')"),
            15,
        );
        let shown = pg.eval(&format!("document.querySelector('{row}').innerText"));
        assert!(
            !shown.as_str().unwrap().contains("\"n\""),
            "params hidden: {shown}"
        );
        pg.click(&format!("{row} button.reveal"));
        let (params, _) = pg.wait(
            "the revealed params",
            &format!("(document.querySelector('{row} pre') || {{}}).textContent"),
            15,
        );
        let params: Value = serde_json::from_str(params.as_str().unwrap()).unwrap();
        assert_eq!(params, json!({"n": 1}));
        // A picture of it (README), kept where MEDLINK_CONSOLE_SCREENSHOT says.
        let shot = std::env::var("MEDLINK_CONSOLE_SCREENSHOT")
            .unwrap_or_else(|_| shot_dir.join("console.png").display().to_string());
        let r = pg.run(json!({"cmd": "screenshot", "path": shot}));
        assert_eq!(r["ok"], true, "{r}");
    });

    // The 3 s command expires at the county: a dead letter there, seen from the root.
    p(&mut |pg| {
        let js = format!(
            "(async () => {{ document.getElementById('load-dead').click(); await new Promise(r => setTimeout(r, 500)); return !!document.querySelector('#dead-letters tr[data-id=\"{expiring}\"] button.resend'); }})()"
        );
        pg.wait("the dead letter at the county", &js, 20);
    });

    // Repaired: the five drain to the nurse; the re-sent dead letter follows, once.
    proxy.set(Mode::Pass);
    p(&mut |pg| {
        pg.wait(
            "the township reporting again",
            "!document.querySelector('tr[data-node=\"js.nj.gulou.t3\"]').classList.contains('stale')",
            20,
        );
        pg.click(&format!(
            "#dead-letters tr[data-id=\"{expiring}\"] button.resend"
        ));
        let (said, _) = pg.wait(
            "the re-send's outcome",
            &format!("(document.querySelector('#dead-letters tr[data-id=\"{expiring}\"]').innerText.match(/re-sent as (\\S+)/) || [])[1]"),
            15,
        );
        assert!(said.as_str().is_some_and(|s| !s.is_empty()), "{said}");
    });
    let got = nurse_reads(township, 6);
    let ids: Vec<&str> = got.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(
        &ids[..5],
        queued.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let resent = &got[5];
    assert_eq!(resent["cmd"], "lab.urgent");
    assert_eq!(resent["params"]["n"], 99);
    assert_ne!(
        resent["id"],
        expiring.as_str(),
        "a re-send is a new command"
    );

    // Purged from the root's console once dealt with.
    p(&mut |pg| {
        let row = format!("#dead-letters tr[data-id=\"{expiring}\"]");
        let js = format!(
            "(async () => {{ document.getElementById('load-dead').click(); await new Promise(r => setTimeout(r, 500)); return !!document.querySelector('{row} button.purge'); }})()"
        );
        pg.wait("the dead letter listed again", &js, 10);
        pg.click(&format!("{row} button.purge"));
        pg.wait(
            "purged",
            &format!("document.querySelector('{row}').innerText.includes('purged')"),
            10,
        );
    });

    // The county's operator log names the root's operator, for the reveal, the re-send and
    // the purge.
    p(&mut |pg| {
        pg.click("#load-log");
        let (log, _) = pg.wait(
            "the re-send in the county's log",
            "[...document.querySelectorAll('#operator-log tr')].map(r => r.innerText).join('\\n')",
            10,
        );
        let log = log.as_str().unwrap().to_string();
        let line = |action: &str| log.lines().find(|l| l.contains(action)).map(str::to_string);
        let resend = line("resend").unwrap_or_else(|| panic!("no resend in {log}"));
        assert!(
            resend.contains("ops@js") && resend.contains(&expiring),
            "{resend}"
        );
        let reveal = line("reveal").unwrap_or_else(|| panic!("no reveal in {log}"));
        assert!(
            reveal.contains("ops@js") && reveal.contains(&first),
            "{reveal}"
        );
    });
}
