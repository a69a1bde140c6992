//! Serving an axum application over HTTP or HTTPS (rustls), with the node's certificate.
//!
//! axum 0.7's `serve` takes a plain TCP listener only, so TLS connections are accepted here and
//! handed to hyper one by one. A failed TLS handshake ends only that connection. Either way
//! every request carries the peer address (`ConnectInfo<SocketAddr>`, for the login throttle)
//! and, over TLS, the common name of a verified client certificate (`PeerCertificate`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

use crate::http::auth::PeerCertificate;

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Serves `app` on `listener` until `shutdown` turns true; with `tls`, every connection must
/// complete a TLS handshake first (within 10 s).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(config) = tls else {
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        let _ = axum::serve(listener, service)
            .with_graceful_shutdown(async move { stopped(&mut shutdown).await })
            .await;
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(&mut shutdown) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                debug!(error = %e, "https accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    _ => {
                        debug!(%peer, "https handshake failed");
                        return;
                    }
                };
            let certificate = PeerCertificate(
                stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(medlink_broker::tls::common_name),
            );
            let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(certificate.clone());
                let app = app.clone();
                async move {
                    Ok::<_, Infallible>(
                        tower::ServiceExt::oneshot(app, req)
                            .await
                            .unwrap_or_else(|e: Infallible| match e {}),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
