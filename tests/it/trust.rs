//! What a client can and cannot make others believe (issue "Holes and defects found from
//! outside"): a reply counts only from the request's target (or a member of the target
//! service), params nest no deeper than every reader can parse, client-supplied strings
//! cannot forge log lines, and a device without a cursor does not replay what was
//! acknowledged.

use crate::common;
use crate::sdk_support;

use std::time::Duration;

use common::http::{get_json, ns, post_json, Login};
use common::raw::{connect, dial, handshake, suback_codes};
use common::*;
use medlink_sdk::{Address, SendOptions};
use sdk_support::{connect as sdk_connect, mqtt_url, options};
use serde_json::{json, Value};

fn trust_tree() -> Tree {
    let mut js = spec("js", None, &["asker", "target", "stranger", "rad"]);
    js.extra = "\n[[service]]\nname = \"consult.radiology\"\nmembers = [\"rad\"]\n".into();
    Tree::start(&[js])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_takes_its_answer_only_from_its_target_or_a_member_of_its_service() {
    let mut tree = trust_tree();
    let url = mqtt_url(tree.node("js").port);
    let (asker, mut asker_inbox) = sdk_connect(options(url.clone(), "js", "asker")).await;
    let mut target = App::connect("js", "target", tree.node("js").port).await;
    let stranger = App::connect("js", "stranger", tree.node("js").port).await;
    let opts = SendOptions {
        id: Some("req-1".into()),
        ..SendOptions::default()
    };
    let asking = tokio::spawn(async move {
        let answer = asker
            .request_with(
                &Address::new("js", "target"),
                "ask",
                json!({}),
                Duration::from_secs(20),
                opts,
            )
            .await;
        (asker, answer)
    });
    assert_eq!(target.expect_cmd(10).await["id"], "req-1");
    // Someone who knows the id answers first, also claiming a service it does not serve.
    let forged = json!({"to": {"node": "js", "client": "asker"}, "cmd": "ask.reply",
                        "reply_to": "req-1", "params": {"from": "stranger"}});
    stranger.publish_raw(forged.to_string()).await;
    let claimed = json!({"to": {"node": "js", "client": "asker"}, "cmd": "ask.reply",
                         "reply_to": "req-1", "as_service": "consult.radiology",
                         "params": {"from": "stranger-as-service"}});
    stranger.publish_raw(claimed.to_string()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let real = json!({"to": {"node": "js", "client": "asker"}, "cmd": "ask.reply",
                      "reply_to": "req-1", "params": {"from": "target"}});
    target.publish_raw(real.to_string()).await;
    let (asker, answer) = asking.await.unwrap();
    let answer = answer.expect("the target's reply");
    assert_eq!(answer.params["from"], "target", "{answer:?}");
    // The stranger's answer is an ordinary command to the asker, not the request's answer.
    let other = tokio::time::timeout(Duration::from_secs(5), asker_inbox.commands.recv())
        .await
        .expect("the stranger's command arrives")
        .unwrap();
    assert_eq!(other.params["from"], "stranger");
    // Its false service claim was refused outright.
    let mut stranger = stranger;
    let receipt = stranger.expect_receipt(10).await;
    assert_eq!(receipt["params"]["status"], "rejected", "{receipt}");
    assert!(
        receipt["params"]["reason"]
            .as_str()
            .unwrap()
            .contains("not a member"),
        "{receipt}"
    );

    // A request to the service is answered by its member, vouched for by the node.
    let (rad, mut rad_inbox) = sdk_connect(options(url.clone(), "js", "rad")).await;
    let serving = tokio::spawn(async move {
        let ask = rad_inbox.commands.recv().await.expect("a consultation");
        assert_eq!(ask.to.client, "consult.radiology");
        rad.reply(&ask, json!({"opinion": "clear"})).await.unwrap();
        rad
    });
    let answer = asker
        .request(
            &Address::new("js", "consult.radiology"),
            "consult",
            json!({}),
            Duration::from_secs(20),
        )
        .await
        .expect("the member's reply");
    assert_eq!(answer.from, Address::new("js", "rad"));
    assert_eq!(answer.as_service.as_deref(), Some("consult.radiology"));
    serving.await.unwrap();
}

/// The SDK could not read params nested past serde_json's 128 levels and dropped them after
/// acknowledging. Now the node refuses what is deeper than the documented 64 at submission,
/// over MQTT and HTTP, and what it accepts reaches the application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_deeper_than_the_limit_are_refused_and_the_limit_reaches_the_application() {
    let mut tree = trust_tree();
    let port = tree.node("js").port;
    let http = tree.node("js").http_port;
    let nested = |levels: usize| -> Value {
        serde_json::from_str(&format!("{}1{}", "[".repeat(levels), "]".repeat(levels))).unwrap()
    };
    let raw_submission = |levels: usize, id: &str| {
        format!(
            r#"{{"id":"{id}","to":{{"node":"js","client":"target"}},"cmd":"deep","params":{}1{}}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    };
    let mut asker = App::connect("js", "asker", port).await;
    asker.publish_raw(raw_submission(65, "too-deep")).await;
    let receipt = asker.expect_receipt(10).await;
    assert_eq!(receipt["params"]["status"], "rejected", "{receipt}");
    assert!(receipt["params"]["reason"]
        .as_str()
        .unwrap()
        .contains("params"));
    let r = common::http::call(
        http,
        "POST",
        "/v1/messages",
        Some(("asker", PASSWORD)),
        raw_submission(65, "too-deep-http").as_bytes(),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["field"], "params");
    // 64 levels: accepted, and the SDK hands it over intact.
    let url = mqtt_url(port);
    let (_target, mut inbox) = sdk_connect(options(url, "js", "target")).await;
    asker.publish_raw(raw_submission(64, "at-limit")).await;
    let got = tokio::time::timeout(Duration::from_secs(10), inbox.commands.recv())
        .await
        .expect("the command at the limit reaches the application")
        .unwrap();
    assert_eq!(got.id, "at-limit");
    assert_eq!(got.params, nested(64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_strings_cannot_forge_log_lines() {
    let mut tree = trust_tree();
    let port = tree.node("js").port;
    let mut wire = dial(port);
    assert_eq!(
        handshake(&mut wire, &connect(4, "inj", "asker", PASSWORD, 30)),
        Some(0)
    );
    let codes = suback_codes(
        &mut wire,
        4,
        1,
        &["org/js/target/cmd\nINJECTED subscribe line"],
    );
    assert_eq!(codes, [0x80]);
    let asker = App::connect("js", "asker", port).await;
    asker
        .publish_raw(
            r#"{"to":{"node":"js","client":"target"},"cmd":"x","k\nINJECTED json line":1}"#,
        )
        .await;
    let (status, _) = post_json(
        tree.node("js").http_port,
        "/v1/messages",
        Some(("asker", PASSWORD)),
        &json!({"to": {"node": "js", "client": "target"}, "cmd": "x", "k\nINJECTED http line": 1}),
    );
    assert_eq!(status, 400);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = tree.node("js").log_text();
    assert!(
        log.contains("INJECTED"),
        "the attempts should be logged:\n{log}"
    );
    let forged: Vec<&str> = log.lines().filter(|l| l.starts_with("INJECTED")).collect();
    assert!(forged.is_empty(), "forged log lines: {forged:?}");
}

const PAT: Login = Some(("target", PASSWORD));

#[test]
fn a_poll_without_a_cursor_starts_at_the_oldest_unacknowledged_command() {
    let mut tree = trust_tree();
    let http = tree.node("js").http_port;
    let send = |n: u64| {
        let (status, _) = post_json(
            http,
            "/v1/messages",
            Some(("asker", PASSWORD)),
            &json!({"to": {"node": "js", "client": "target"}, "cmd": "x", "params": {"n": n}}),
        );
        assert_eq!(status, 202);
    };
    for n in 0..3 {
        send(n);
    }
    let (_, first) = get_json(http, "/v1/inbox", PAT);
    assert_eq!(ns(&first), [0, 1, 2]);
    let (status, _) = post_json(
        http,
        "/v1/inbox/ack",
        PAT,
        &json!({"cursor": first["cursor"]}),
    );
    assert_eq!(status, 200);
    // A late device (no cursor): nothing that was acknowledged, and told where it stands.
    let (_, late) = get_json(http, "/v1/inbox", PAT);
    assert_eq!(ns(&late), Vec::<u64>::new(), "{late}");
    assert_eq!(late["cursor"], first["cursor"], "{late}");
    send(3);
    let (_, next) = get_json(http, "/v1/inbox", PAT);
    assert_eq!(ns(&next), [3]);
    // A device that has a cursor from before still gets what another device acknowledged
    // meanwhile (several devices of one identity each get every message).
    let (_, behind) = get_json(http, "/v1/inbox?cursor=0", PAT);
    assert_eq!(ns(&behind), [0, 1, 2, 3], "{behind}");
}
