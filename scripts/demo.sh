#!/usr/bin/env bash
# The main job: builds medlink and runs a 4-tier tree (province, city, county, township) as
# separate processes on loopback from conf/, sending a consultation up and the reply down.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet
exec ./target/release/medlink demo "$@"
