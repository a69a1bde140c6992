#!/usr/bin/env bash
# HTTP API benchmarks against one node (release build), the load on the same 2 cores:
#   1. single-message POST /v1/messages throughput with keep-alive (wrk, Debian package);
#   2. POLLS long-polls held open at once, from several load processes (one process may hold
#      at most ~20,000 sockets here), with the node's memory per open poll;
#   3. latency from a POST to the waiting long-poll that delivers it (p50/p99).
#
#   bench/http.sh [POLLS]        (default 10000)
set -euo pipefail
POLLS=${1:-10000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# The node binary and the load tools (a crate of their own, outside the binary an operator
# installs), built fresh so a run never measures stale code.
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET/release/medlink"
BENCH="$TARGET/release/medlink-bench"
WORK=$(mktemp -d /tmp/medlink-http.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }
(cd "$ROOT" && cargo build --release --quiet -p medlink-bench -p medlink)

for who in sender receiver idle lat-a lat-b; do
    echo "bench-password-$who" | "$BIN" passwd --file "$WORK/creds.toml" add "$who" --role client --password-stdin 2>/dev/null
done
cat > "$WORK/node.toml" <<CONF
[node]
id = "hb"
data_dir = "$WORK/data"
credentials = "$WORK/creds.toml"
[[listener]]
kind = "tcp"
addr = "127.0.0.1:19951"
[http]
addr = "127.0.0.1:19952"
max_wait_s = 120
[metrics]
addr = "127.0.0.1:19953"
[limits]
rate_per_second = 0
CONF
ulimit -n 20000 2>/dev/null || true
MEDLINK_LOG=warn "$BIN" node --config "$WORK/node.toml" 2> "$WORK/node.log" &
NODE=$!
PIDS+=($NODE)
for _ in $(seq 1 100); do curl -sf 127.0.0.1:19953/healthz >/dev/null && break; sleep 0.05; done
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
metric() { curl -s 127.0.0.1:19953/metrics | awk -v m="$1" '$1 == m {print $2}'; }

echo "# 1. POST /v1/messages, one command per request, keep-alive (wrk, 10 s per run)" >&2
AUTH=$(printf 'sender:bench-password-sender' | base64)
cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"to":{"node":"hb","client":"receiver"},"cmd":"bench","params":{"pad":"0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic $AUTH"
LUA
for c in 32 64 128; do
    rps=$(wrk -t2 -c"$c" -d10s -s "$WORK/post.lua" http://127.0.0.1:19952/v1/messages | awk '/Requests\/sec/ {print $2}')
    echo "{\"mode\":\"post\",\"connections\":$c,\"requests_per_s\":$rps}"
done

echo "# 2. $POLLS long-polls held open" >&2
sleep 2
before=$(rss_kb "$NODE")
per=5000
procs=$(( (POLLS + per - 1) / per ))
LOADS=()
for i in $(seq 1 "$procs"); do
    n=$per
    [ "$i" -eq "$procs" ] && n=$(( POLLS - per * (procs - 1) ))
    (ulimit -n 20000; exec "$BENCH" http polls --addr 127.0.0.1:19952 --login idle:bench-password-idle --count "$n" --hold 60) > "$WORK/polls$i.out" 2>&1 &
    LOADS+=($!)
    PIDS+=($!)
done
open=0
for _ in $(seq 1 600); do
    open=$(metric medlink_http_polls_open)
    [ "${open:-0}" -ge "$POLLS" ] && break
    sleep 0.1
done
sleep 1
after=$(rss_kb "$NODE")
load_rss=0
for p in "${LOADS[@]}"; do load_rss=$(( load_rss + $(rss_kb "$p") )); done
per_poll=$(( (after - before) * 1024 / (open > 0 ? open : 1) ))
echo "{\"mode\":\"polls\",\"requested\":$POLLS,\"open_at_node\":$open,\"load_processes\":$procs,\"node_rss_before_kb\":$before,\"node_rss_after_kb\":$after,\"node_bytes_per_poll\":$per_poll,\"load_rss_kb\":$load_rss}"
for p in "${LOADS[@]}"; do kill "$p" 2>/dev/null || true; done

echo "# 3. POST -> waiting long-poll latency" >&2
"$BENCH" http latency --addr 127.0.0.1:19952 --sender lat-a:bench-password-lat-a \
    --receiver lat-b:bench-password-lat-b --node hb --count 2000
