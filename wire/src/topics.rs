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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(inbox_topic("js.nj", "a"), "org/js.nj/a/cmd");
        assert_eq!(outbox_topic("js.nj", "a"), "org/js.nj/a/out");
        assert_eq!(receipt_topic("js.nj", "a"), "org/js.nj/a/receipt");
        assert_eq!(link_up_topic("js.nj.gl"), "link/js.nj.gl/up");
        assert_eq!(link_down_topic("js.nj.gl"), "link/js.nj.gl/down");
    }
}
