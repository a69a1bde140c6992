//! The MQTT topic names of the contract (`topics.md`, "Overview"). The broker's ACL compares
//! against them, the node publishes on them, the SDK and child nodes subscribe to them.

/// `org/<node>/<client>/cmd`: where a client receives commands.
pub fn inbox_topic(node: &str, client: &str) -> String {
    format!("org/{node}/{client}/cmd")
}

/// `org/<node>/<client>/out`: where a client sends commands.
pub fn outbox_topic(node: &str, client: &str) -> String {
    format!("org/{node}/{client}/out")
}

/// `org/<node>/<client>/receipt`: receipts about the client's own commands.
pub fn receipt_topic(node: &str, client: &str) -> String {
    format!("org/{node}/{client}/receipt")
}

/// `link/<child>/up`: frames from a child node to its parent.
pub fn link_up_topic(child: &str) -> String {
    format!("link/{child}/up")
}

/// `link/<child>/down`: frames from a parent to its child node.
pub fn link_down_topic(child: &str) -> String {
    format!("link/{child}/down")
}

/// Whether `topic` is [`outbox_topic`]`(node, client)`, compared piece by piece: the broker
/// asks this of every PUBLISH, and building the name to compare cost an allocation each.
pub fn is_outbox_topic(topic: &str, node: &str, client: &str) -> bool {
    topic
        .strip_prefix("org/")
        .and_then(|t| t.strip_prefix(node))
        .and_then(|t| t.strip_prefix('/'))
        .and_then(|t| t.strip_prefix(client))
        == Some("/out")
}

/// Whether `topic` is [`link_up_topic`]`(child)`, without building it (see [`is_outbox_topic`]).
pub fn is_link_up_topic(topic: &str, child: &str) -> bool {
    topic
        .strip_prefix("link/")
        .and_then(|t| t.strip_prefix(child))
        == Some("/up")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matchers_agree_with_the_names() {
        let topics = [
            "org/js.nj/a/out",
            "org/js.nj/a/outx",
            "org/js.nj/a/cmd",
            "org/js.nj/ab/out",
            "org/js.nj.x/a/out",
            "org/js.nj//out",
            "org/js.nj/a/b/out",
            "org/js.nja/out",
            "link/js.nj.gl/up",
            "link/js.nj.gl/upx",
            "link/js.nj.gl/down",
            "link/js.nj.g/up",
            "link/js.nj.gl.x/up",
            "link//up",
            "",
        ];
        let names = [
            ("js.nj", "a"),
            ("js.nj", "b"),
            ("js.nj", ""),
            ("js", "nj/a"),
        ];
        for topic in topics {
            for (node, client) in names {
                assert_eq!(
                    is_outbox_topic(topic, node, client),
                    topic == outbox_topic(node, client),
                    "{topic} {node} {client}"
                );
            }
            for child in ["js.nj.gl", "js.nj.g", ""] {
                assert_eq!(
                    is_link_up_topic(topic, child),
                    topic == link_up_topic(child),
                    "{topic} {child}"
                );
            }
        }
    }

    #[test]
    fn names() {
        assert_eq!(inbox_topic("js.nj", "a"), "org/js.nj/a/cmd");
        assert_eq!(outbox_topic("js.nj", "a"), "org/js.nj/a/out");
        assert_eq!(receipt_topic("js.nj", "a"), "org/js.nj/a/receipt");
        assert_eq!(link_up_topic("js.nj.gl"), "link/js.nj.gl/up");
        assert_eq!(link_down_topic("js.nj.gl"), "link/js.nj.gl/down");
    }
}
