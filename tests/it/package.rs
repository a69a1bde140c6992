//! The Debian package (README "Install on a server"): `cargo deb` makes a .deb holding the
//! binary, the example config as a conffile, the medlink system user (sysusers.d) and a
//! hardened systemd unit that systemd itself accepts.
//!
//! The package wraps the debug binary this test run has already built (`--profile dev
//! --no-build`; cargo-deb warns that it prefers release builds), with `--fast` compression, so
//! it takes seconds and compiles nothing. cargo-deb, dpkg-deb and systemd-analyze must be
//! installed: scripts/test.sh installs them, and a missing one fails the test rather than
//! skipping it.

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Settings the unit must keep (`packaging/medlink.service`), one per line.
const HARDENING: &str = "Type=notify
User=medlink
Group=medlink
ExecStart=/usr/bin/medlink node --config /etc/medlink/medlink.toml
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
StateDirectory=medlink
StateDirectoryMode=0700
UMask=0077
ProtectSystem=strict
ProtectHome=yes
NoNewPrivileges=yes
MemoryDenyWriteExecute=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
SystemCallFilter=@system-service
CapabilityBoundingSet=
WantedBy=multi-user.target";

/// Runs `cmd` and returns its stdout, failing the test (with stderr) unless it succeeds. A
/// program that is not installed fails with a pointer to scripts/test.sh.
fn run(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{shown}: cannot run ({e}); scripts/test.sh installs cargo-deb, dpkg-deb and systemd-analyze")
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("no such command"),
        "{shown}: cargo-deb is not installed; scripts/test.sh installs it\n{stderr}"
    );
    let status = out.status;
    assert!(status.success(), "{shown} failed: {status}\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref()).unwrap()
}

#[test]
fn unit_file_is_hardened() {
    let unit = read(Path::new(ROOT).join("packaging/medlink.service"));
    for setting in HARDENING.lines() {
        assert!(
            unit.lines().any(|l| l.trim() == setting),
            "medlink.service lacks `{setting}`"
        );
    }
}

#[test]
fn debian_package_installs_a_hardened_service() {
    let out = tempfile::tempdir().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let args = "deb --no-build --profile dev --fast -q -o".split(' ');
    run(Command::new(cargo)
        .current_dir(ROOT)
        .args(args)
        .arg(out.path()));
    let deb = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("cargo deb wrote a .deb");
    let dpkg_deb =
        |flag: &str, more: &[&str]| run(Command::new("dpkg-deb").arg(flag).arg(&deb).args(more));

    // What it installs; the config is readable by root and the medlink group only.
    let listing = dpkg_deb("-c", &[]);
    let entry = |path: &str| listing.lines().find(|l| l.ends_with(&format!(" ./{path}")));
    for path in [
        "usr/bin/medlink",
        "etc/medlink/medlink.toml",
        "usr/lib/systemd/system/medlink.service",
        "usr/lib/sysusers.d/medlink.conf",
        "usr/share/doc/medlink/README.md",
    ] {
        assert!(
            entry(path).is_some(),
            "{path} missing from the package:\n{listing}"
        );
    }
    let config = entry("etc/medlink/medlink.toml").unwrap();
    assert!(config.starts_with("-rw-r----- "), "config mode: {config}");

    let fields = dpkg_deb("-f", &["Package", "Depends"]);
    assert!(fields.contains("Package: medlink\n"), "{fields}");
    let depends = fields.lines().find_map(|l| l.strip_prefix("Depends: "));
    assert!(
        depends.is_some_and(|d| d.contains("libc6") && d.contains("systemd")),
        "{fields}"
    );

    // Control files: the conffile, and maintainer scripts that create the user and enable the
    // service but do not start it (the operator adds credentials and certificates first).
    let root = out.path().join("root");
    dpkg_deb("-R", &[root.to_str().unwrap()]);
    let control = |name: &str| read(root.join("DEBIAN").join(name));
    assert!(control("conffiles")
        .lines()
        .any(|l| l == "/etc/medlink/medlink.toml"));
    let postinst = control("postinst");
    assert!(postinst.contains("systemd-sysusers") && postinst.contains("dpkg-statoverride"));
    assert!(
        postinst.contains("deb-systemd-helper enable medlink.service"),
        "{postinst}"
    );
    assert!(
        !postinst.contains("deb-systemd-invoke start"),
        "starts on install:\n{postinst}"
    );
    assert!(!postinst.contains("#DEBHELPER#") && !control("postrm").contains("#DEBHELPER#"));

    // The unit as shipped, verified by systemd. Nothing is installed on the test machine, so a
    // drop-in next to it points ExecStart at the extracted binary (verify checks it exists).
    let units = root.join("usr/lib/systemd/system");
    let source = read(Path::new(ROOT).join("packaging/medlink.service"));
    assert_eq!(
        read(units.join("medlink.service")),
        source,
        "packaged unit differs"
    );
    let binary = root.join("usr/bin/medlink");
    std::fs::create_dir(units.join("medlink.service.d")).unwrap();
    std::fs::write(
        units.join("medlink.service.d/test.conf"),
        format!(
            "[Service]\nExecStart=\nExecStart={} node --config /x\n",
            binary.display()
        ),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.join("medlink.service"))
        .output()
        .expect("systemd-analyze runs; scripts/test.sh installs it (Debian package systemd)");
    let said = [&verify.stdout, &verify.stderr].map(|b| String::from_utf8_lossy(b).into_owned());
    let said = said.concat();
    assert!(
        verify.status.success(),
        "systemd-analyze verify failed:\n{said}"
    );
    // Unknown keys and bad values are only warnings (exit 0): none may be about our unit.
    let ours: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("medlink.service"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify:\n{}",
        ours.join("\n")
    );
}
