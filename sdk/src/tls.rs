//! One rustls client configuration for every transport (MQTT over TLS, secure WebSocket,
//! HTTPS), built from the CA the application names, with the aws-lc-rs provider the rest of
//! the workspace uses, so only one TLS stack is compiled in and no process-wide default
//! provider has to be installed.

use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;

use crate::Error;

fn config_err(ca: &Path, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("CA {}: {e}", ca.display()))
}

/// A configuration trusting exactly the certificates in `ca` (PEM).
pub(crate) fn trusting(ca: &Path) -> Result<Arc<ClientConfig>, Error> {
    let pem = std::fs::read(ca).map_err(|e| config_err(ca, e))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| config_err(ca, e))?;
        roots.add(cert).map_err(|e| config_err(ca, e))?;
    }
    if roots.is_empty() {
        return Err(config_err(ca, "no certificate in the file"));
    }
    build(roots)
}

/// A configuration that trusts nothing, for clear-text URLs (reqwest wants one anyway; any
/// TLS server it met would fail verification, which is the point).
pub(crate) fn trusting_nothing() -> Result<Arc<ClientConfig>, Error> {
    build(rustls::RootCertStore::empty())
}

fn build(roots: rustls::RootCertStore) -> Result<Arc<ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
