//! `medlink certs`: a development certificate authority and certificates for nodes and
//! clients (rcgen), so the demo and the tests run with TLS on.
//!
//! Every certificate it issues carries the name as its common name (which is how a child node
//! proves its identity to its parent on mutual TLS) and is valid both as a server certificate
//! (the node's listeners) and as a client certificate (its link to its parent). Production
//! sites use their own PKI; the files have the same shape.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// Arguments of `medlink certs`.
#[derive(clap::Args, Debug)]
pub struct CertsArgs {
    /// Directory for ca.crt/ca.key and NAME.crt/NAME.key (created if missing). An existing CA
    /// there is reused, so more certificates can be issued later.
    #[arg(long, default_value = "certs")]
    dir: PathBuf,
    /// Host names and IP addresses the certificates are valid for (repeatable).
    #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
    hosts: Vec<String>,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    days: i64,
    /// Replace certificates that already exist (the CA is kept).
    #[arg(long)]
    force: bool,
    /// Node ids or client names to issue certificates for.
    names: Vec<String>,
}

/// Runs `medlink certs`.
pub fn run(args: CertsArgs) -> ExitCode {
    match issue(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("medlink certs: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Issues certificates for `names` in `dir` with the default hosts, keeping any that exist
/// (the demo's first-run setup).
pub fn ensure(dir: &Path, names: &[&str]) -> Result<(), String> {
    issue(&CertsArgs {
        dir: dir.to_path_buf(),
        hosts: ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec(),
        days: 365,
        force: false,
        names: names.iter().map(|n| n.to_string()).collect(),
    })
}

fn issue(args: &CertsArgs) -> Result<(), String> {
    if args.days <= 0 {
        return Err("--days: must be positive".into());
    }
    for n in &args.names {
        if !medlink_broker::identity::valid_name(n) {
            return Err(format!(
                "'{n}': a name must be 1-128 characters without + # / or control characters"
            ));
        }
    }
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let (ca, ca_key) = load_or_create_ca(&args.dir, args.days.max(3650))?;
    for name in &args.names {
        let crt = args.dir.join(format!("{name}.crt"));
        if crt.exists() && !args.force {
            eprintln!("{} exists (kept; --force replaces it)", crt.display());
            continue;
        }
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        for h in &args.hosts {
            let san = match h.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    h.clone()
                        .try_into()
                        .map_err(|e| format!("--host '{h}': {e}"))?,
                ),
            };
            params.subject_alt_names.push(san);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        validity(&mut params, args.days);
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params
            .signed_by(&key, &ca, &ca_key)
            .map_err(|e| format!("{name}: {e}"))?;
        write(&crt, &cert.pem(), false)?;
        write(
            &args.dir.join(format!("{name}.key")),
            &key.serialize_pem(),
            true,
        )?;
        println!("{} issued for '{name}'", crt.display());
    }
    Ok(())
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A day of slack for clocks that are behind.
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
}

fn load_or_create_ca(dir: &Path, days: i64) -> Result<(Certificate, KeyPair), String> {
    let crt = dir.join("ca.crt");
    let key = dir.join("ca.key");
    if crt.exists() && key.exists() {
        let read =
            |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
        let ca_key =
            KeyPair::from_pem(&read(&key)?).map_err(|e| format!("{}: {e}", key.display()))?;
        let params = CertificateParams::from_ca_cert_pem(&read(&crt)?)
            .map_err(|e| format!("{}: {e}", crt.display()))?;
        // Re-signing the same name and key gives an issuer that verifies against ca.crt.
        let ca = params
            .self_signed(&ca_key)
            .map_err(|e| format!("{}: {e}", crt.display()))?;
        return Ok((ca, ca_key));
    }
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "medlink development CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    let ca_key = KeyPair::generate().map_err(|e| e.to_string())?;
    let ca = params.self_signed(&ca_key).map_err(|e| e.to_string())?;
    write(&crt, &ca.pem(), false)?;
    write(&key, &ca_key.serialize_pem(), true)?;
    println!("{} created (development CA)", crt.display());
    Ok((ca, ca_key))
}

/// Writes `text` to `path`; private keys get mode 0600.
fn write(path: &Path, text: &str, private: bool) -> Result<(), String> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    use std::io::Write;
    opts.open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}
