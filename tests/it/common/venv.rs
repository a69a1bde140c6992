//! Python tools from PyPI in virtualenvs under `target/tmp` (schemathesis, tuspy): made once
//! per pinned set of packages and Python version, then reused.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Starts `cmd` with its stdout and stderr in `log`.
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> std::process::Child {
    let out = File::create(log).expect("create log");
    let err = out.try_clone().expect("clone log handle");
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// Waits for `child` at most `limit`; kills it after that (`None`).
pub fn wait_bounded(mut child: std::process::Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `cmd` to completion within `limit`; panics with `what` and its output otherwise.
pub fn run_step(cmd: &mut Command, log: &Path, what: &str, limit: Duration) {
    let child = spawn_logged(cmd, log);
    let status = wait_bounded(child, limit);
    if status.is_some_and(|s| s.success()) {
        return;
    }
    let output = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = output.lines().rev().take(30).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    panic!(
        "{what}: {}\n{}",
        status.map_or(format!("not done within {limit:?}"), |s| s.to_string()),
        tail.join("\n")
    );
}

/// The directory of a virtualenv named `name` holding `requirements` (pip's format), made on
/// first use within `limit`.
pub fn venv(name: &str, requirements: &str, limit: Duration) -> PathBuf {
    let python = Command::new("python3")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| panic!("python3 is needed for {name}: {e}"));
    // FNV-1a of what the virtualenv holds: a new pin or Python makes a new one.
    let key = format!("{python}\n{requirements}")
        .bytes()
        .fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let venv = tmp.join(format!("{name}-{key:016x}"));
    let done = venv.join(".installed");
    if done.exists() {
        return venv;
    }
    let _ = std::fs::remove_dir_all(&venv);
    std::fs::create_dir_all(tmp).expect("create target/tmp");
    let log = tmp.join(format!("{name}-install.log"));
    run_step(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        &log,
        "`python3 -m venv` failed (on Debian: apt install python3-venv)",
        limit,
    );
    let file = venv.join("requirements.txt");
    std::fs::write(&file, requirements).expect("write requirements.txt");
    run_step(
        Command::new(venv.join("bin").join("python"))
            .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input"])
            .args(["--progress-bar", "off", "--retries", "2", "--timeout", "30", "-r"])
            .arg(&file),
        &log,
        &format!("could not install {name} from PyPI into a virtualenv (needed once per pinned version; CI has PyPI)"),
        limit,
    );
    File::create(&done).expect("mark the virtualenv complete");
    venv
}
