//! The client side of the HTTP transport, as the SDK and a child node's uplink both use it.

use std::time::Duration;

/// How long a long-poll asks the node to wait (`wait=`), in seconds. Nodes cap it at their
/// own `max_wait`.
pub const POLL_WAIT_S: u64 = 20;

/// The HTTP client of one connection to a node: TLS as configured (the node's CA, and a
/// client certificate where one is used), connections kept alive between requests, and a
/// request timeout that outlasts a full long-poll.
pub fn client(
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(POLL_WAIT_S + 15))
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .build()
}
