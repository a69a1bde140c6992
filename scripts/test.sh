#!/usr/bin/env bash
# The test command (README, and .ci/run): installs what the tests need, then checks
# formatting and lints and runs every test. Works on a fresh Debian machine with Rust.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real MQTT peers for the interop tests: mosquitto_pub/mosquitto_sub, and mosquitto itself
# for the side-by-side bench.
need=()
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
command -v prlimit >/dev/null 2>&1 || need+=(util-linux) # the descriptor-exhaustion test
command -v curl >/dev/null 2>&1 || need+=(curl)            # the HTTPS metrics test
command -v promtool >/dev/null 2>&1 || need+=(prometheus)   # checks and unit-tests conf/alerts.yml
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd) # verifies the packaged unit
# tests/schemathesis.rs makes a virtualenv (python3 -m venv) and pip-installs schemathesis.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
# The browser test (tests/browser.rs): Debian's chromium, driven from Node.js. A Node.js from
# elsewhere (e.g. NodeSource) already brings npm; Debian's npm would conflict with it.
[ -x /usr/bin/chromium ] || need+=(chromium)
if ! command -v node >/dev/null 2>&1; then
    need+=(nodejs npm)
elif ! command -v npm >/dev/null 2>&1; then
    need+=(npm)
fi
if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# playwright-core, pinned by tests/browser/package-lock.json (it drives the chromium above and
# downloads no browser). Reinstalled only when the lock file changed.
if [ ! -f tests/browser/node_modules/.package-lock.json ] ||
    [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

# cargo-deb for the package test (tests/it/package.rs), pinned: the test packages the debug
# build with `--profile dev`, which newer releases may refuse.
if ! cargo deb --version 2>/dev/null | grep -q '3\.8\.0'; then
    cargo install cargo-deb --locked --version 3.8.0
fi

# s3s-fs, an S3-compatible server that checks signatures and presigned URLs' expiry (moto
# checks neither), for the shared-bucket tests (tests/it/file_store_s3.rs). Pinned: later
# releases need a newer rustc.
if ! s3s-fs --version 2>/dev/null | grep -q '0\.14\.1'; then
    cargo install s3s-fs --locked --version 0.14.1 --features binary
fi

# rustfmt and clippy ship with rustup's default profile; add them where a minimal one was used.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Multi-process tests start several node processes each; two at a time suits 2 cores.
cargo test --workspace --locked -- --test-threads=2
