#!/usr/bin/env bash
# Side-by-side 4-tier chain benchmark: medlink vs. 4 bridged mosquitto brokers.
#
#   bench/chain.sh [MESSAGES] [PUBLISHERS]
#
# Both chains carry the same load from the same tool (`medlink-bench mqtt`, built from this
# folder's crate): 256-byte payloads at
# QoS 1, published at the bottom broker/tier and received at the top one.
#   - mosquitto: 4 brokers, each bridging `bench/#` out to the next at QoS 1, persistence on,
#     max_queued_messages raised so the chain does not drop by design.
#   - medlink: 4 node processes (durability = "process": every hop commits to its SQLite
#     journal before acknowledging), a client at the bottom sending commands to a client at
#     the root.
# Runs: throughput (as fast as possible) and latency at a fixed 1,000 msg/s, for each chain;
# then request -> reply round trips from the bottom to the top and back (`medlink-bench rtt`):
# one at a time and 32 in flight, through the SDK over MQTT and over HTTP for medlink, and with
# the same tool over plain MQTT for mosquitto (its bridges carry `rtt/up/#` up and
# `rtt/down/#` down).
# Prints one JSON line per run and a summary table. Needs: mosquitto (Debian package).
#
# MOSQ_NODELAY=1 sets mosquitto's `set_tcp_nodelay` (see below).
# TLS=1 runs both chains over TLS (every listener, every bridge/link, the bench clients), with
# certificates from `medlink certs`; medlink's links then authenticate by client certificate.
# The per-identity rate limit is turned off in the bench configs (all publishers share one
# identity and the point is to measure the fabric, not the limiter).
set -euo pipefail

# ONLY=medlink or ONLY=mosquitto runs one side; KEEP=1 leaves the chains running until Enter.
# ROUNDS=k runs the throughput and latency pairs k times, alternating their order (below).
# NODE_LOG sets the nodes' MEDLINK_LOG (default warn); their logs are $WORK/ml<i>.log, kept while KEEP=1.
# HOPS=1 measures only the latency at 1,000 msg/s by the number of nodes crossed: the publisher
# at the top tier (1 node), then one tier lower each time (2, 3, 4), the subscriber always at the
# top; ROUNDS times, the order alternating. It shows what one more hop costs each chain. Each
# round also runs `medlink-bench floor` (bench/src/floor.rs) through as many relays: the leanest
# hop that commits to SQLite before passing on, one that appends to a log instead, and one that
# does neither (FLOOR=0 leaves it out).
N=${1:-100000}
P=${2:-4}
LAT_N=${LAT_N:-10000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# The node binary and the load tools (a crate of their own, outside the binary an operator
# installs), built fresh so a run never measures stale code.
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
# MEDLINK_BIN runs another build of the node (an A/B comparison against a copy of an older one).
BIN="${MEDLINK_BIN:-$TARGET/release/medlink}"
BENCH="$TARGET/release/medlink-bench"
WORK=$(mktemp -d "${CHAIN_TMP:-/tmp}/medlink-chain.XXXXXX")
PIDS=()
ML_PIDS=()
MQ_PIDS=()

MOUNTS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for m in "${MOUNTS[@]}"; do umount "$m" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

command -v mosquitto >/dev/null || { echo "mosquitto is not installed (apt-get install mosquitto)" >&2; exit 2; }
(cd "$ROOT" && cargo build --release --quiet -p medlink-bench -p medlink)
TLS=${TLS:-0}
if [ "$TLS" = 1 ]; then
    "$BIN" certs --dir "$WORK/certs" b b.c b.c.d b.c.d.e mosq > /dev/null 2>&1
    SCHEME=mqtts
    CA_ARGS=(--ca "$WORK/certs/ca.crt")
else
    SCHEME=mqtt
    CA_ARGS=()
fi

wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "port $1 did not open" >&2
    return 1
}

# ---- mosquitto chain: 19901 (top) <- 19902 <- 19903 <- 19904 (bottom) ----
MQ=(19901 19902 19903 19904)
ONLY=${ONLY:-both}
for i in 0 1 2 3; do
    [ "$ONLY" = medlink ] && break
    port=${MQ[$i]}
    dir="$WORK/mosq$i"
    mkdir -p "$dir"
    {
        echo "listener $port 127.0.0.1"
        if [ "$TLS" = 1 ]; then
            echo "cafile $WORK/certs/ca.crt"
            echo "certfile $WORK/certs/mosq.crt"
            echo "keyfile $WORK/certs/mosq.key"
        fi
        echo "allow_anonymous true"
        # MOSQ_NODELAY=1: small writes on client sockets are not held back for delayed ACKs
        # (Nagle), like medlink's. It halves a lone round trip but costs mosquitto about a
        # quarter of its one-way throughput, so the default keeps the setting every earlier
        # figure in BENCHMARKS.md used.
        [ "${MOSQ_NODELAY:-0}" = 1 ] && echo "set_tcp_nodelay true"
        echo "user root"
        echo "persistence true"
        echo "persistence_location $dir/"
        echo "max_queued_messages 10000000"
        echo "max_inflight_messages 1000"
        if [ "$i" -gt 0 ]; then
            echo "connection up$i"
            echo "address 127.0.0.1:${MQ[$((i - 1))]}"
            echo "topic bench/# out 1"
            echo "topic rtt/up/# out 1"
            echo "topic rtt/down/# in 1"
            echo "cleansession false"
            echo "bridge_protocol_version mqttv311"
            [ "$TLS" = 1 ] && echo "bridge_cafile $WORK/certs/ca.crt"
        fi
    } > "$dir/mosquitto.conf"
    mosquitto -c "$dir/mosquitto.conf" > "$dir/log" 2>&1 &
    PIDS+=($!)
    MQ_PIDS+=($!)
done
[ "$ONLY" = medlink ] || { for p in "${MQ[@]}"; do wait_port "$p"; done; sleep 1; } # bridges connect

# NODE_DISKS=1 gives each medlink node a file system of its own (a 1 GiB ext4 image on a loop
# device, needs root), as each tier has its own machine and disk in production. It showed that
# the latency tail does not come from sharing one file system: a commit's WAL write waits on its
# own WAL (BENCHMARKS.md, "The journal's page size"). The images still share this machine's one
# physical disk.
if [ "${NODE_DISKS:-0}" = 1 ] && [ "$ONLY" != mosquitto ]; then
    for i in 0 1 2 3; do
        mkdir -p "$WORK/ml$i"
        truncate -s 1G "$WORK/ml$i.img"
        mkfs.ext4 -q -F "$WORK/ml$i.img"
        mount -o loop "$WORK/ml$i.img" "$WORK/ml$i"
        MOUNTS+=("$WORK/ml$i")
    done
fi

# ---- medlink chain: b (top) <- b.c <- b.c.d <- b.c.d.e (bottom) ----
ML=(19911 19912 19913 19914)
MH=(19921 19922 19923 19924)
IDS=(b b.c b.c.d b.c.d.e)
# Written once, before any node starts: a node reads it at start, so rewriting it while the
# tiers above are starting could hand one of them an empty file.
echo "link-password" > "$WORK/link-pw"
for i in 0 1 2 3; do
    [ "$ONLY" = mosquitto ] && break
    id=${IDS[$i]}
    creds="$WORK/ml$i.credentials.toml"
    [ "$i" -lt 3 ] && echo "link-password" | "$BIN" passwd --file "$creds" add "${IDS[$((i + 1))]}" --role node --password-stdin 2> /dev/null
    for who in sink web-sink; do
        [ "$i" -eq 0 ] && echo "bench-password" | "$BIN" passwd --file "$creds" add "$who" --role client --password-stdin 2> /dev/null
    done
    for who in source web-source; do
        [ "$i" -eq 3 ] && echo "bench-password" | "$BIN" passwd --file "$creds" add "$who" --role client --password-stdin 2> /dev/null
    done
    # HOPS=1 publishes from every tier.
    if [ "$i" -lt 3 ] && [ "${HOPS:-0}" = 1 ]; then
        echo "bench-password" | "$BIN" passwd --file "$creds" add source --role client --password-stdin 2> /dev/null
    fi
    {
        echo "[node]"
        echo "id = \"$id\""
        echo "data_dir = \"$WORK/ml$i\""
        echo "credentials = \"$creds\""
        # NODE_EXTRA: more lines for every node's [node] section (experiments).
        [ -n "${NODE_EXTRA:-}" ] && echo "$NODE_EXTRA"
        echo "[limits]"
        echo "rate_per_second = 0"
        echo "[[listener]]"
        if [ "$TLS" = 1 ]; then
            echo "kind = \"tls\""
        else
            echo "kind = \"tcp\""
        fi
        echo "addr = \"127.0.0.1:${ML[$i]}\""
        # The HTTP API; the web-* identities are told to use HTTP (round trips over HTTP).
        echo "[http]"
        echo "addr = \"127.0.0.1:${MH[$i]}\""
        [ "$TLS" = 1 ] && echo "tls = true"
        echo "[transport]"
        echo "identities = { web-source = \"http\", web-sink = \"http\" }"
        if [ "$TLS" = 1 ]; then
            printf '[tls]\ncert = "%s"\nkey = "%s"\nclient_ca = "%s"\n' \
                "$WORK/certs/$id.crt" "$WORK/certs/$id.key" "$WORK/certs/ca.crt"
        fi
        if [ "$i" -gt 0 ]; then
            echo "[parent]"
            echo "addresses = [\"$SCHEME://127.0.0.1:${ML[$((i - 1))]}\"]"
            if [ "$TLS" = 1 ]; then
                printf 'ca = "%s"\ncert = "%s"\nkey = "%s"\n' \
                    "$WORK/certs/ca.crt" "$WORK/certs/$id.crt" "$WORK/certs/$id.key"
            else
                echo "password_file = \"$WORK/link-pw\""
            fi
        fi
    } > "$WORK/ml$i.toml"
    MEDLINK_LOG="${NODE_LOG:-warn}" "$BIN" node --config "$WORK/ml$i.toml" > "$WORK/ml$i.log" 2>&1 &
    PIDS+=($!)
    ML_PIDS+=($!)
done
if [ "$ONLY" != mosquitto ]; then
    for i in 0 1 2 3; do
        wait_port "${ML[$i]}" || { cat "$WORK/ml$i.log" >&2; exit 1; }
    done
    sleep 1 # links connect
fi

MOSQ_ARGS=(--pub-url "$SCHEME://127.0.0.1:19904" --sub-url "$SCHEME://127.0.0.1:19901" "${CA_ARGS[@]}")
ML_ARGS=(--medlink --pub-url "$SCHEME://127.0.0.1:19914" --sub-url "$SCHEME://127.0.0.1:19911" "${CA_ARGS[@]}"
    --pub-node b.c.d.e --pub-user source --pub-pass bench-password
    --sub-node b --sub-user sink --sub-pass bench-password)

RESULTS="$WORK/results.jsonl"
# CPU time (ns) the processes $@ have used, all threads, from the scheduler's own count.
cpu_ns() {
    local t=0 p f ns
    for p in "$@"; do
        for f in /proc/"$p"/task/*/schedstat; do
            read -r ns _ < "$f" 2> /dev/null && t=$((t + ns))
        done
    done
    echo "$t"
}
# Bytes the forwarding threads of the processes $@ have read from disk: a write into a
# file-system block whose page was evicted reads the block first, inside the write. A medlink
# node counts its dispatcher thread only (its checkpoint thread reads the WAL ahead on purpose,
# off the path); a mosquitto broker is one thread.
read_bytes() {
    local t=0 p f b
    for p in "$@"; do
        f=$(grep -lx dispatcher /proc/"$p"/task/*/comm 2> /dev/null | head -1)
        f=${f:+${f%/comm}/io}
        b=$(awk '/^read_bytes/ {print $2}' "${f:-/proc/$p/io}" 2> /dev/null || echo 0)
        t=$((t + ${b:-0}))
    done
    echo "$t"
}
# One load run; also records the CPU its chain (every broker or node of it) spent per message:
# a steadier figure than a latency percentile, for what one message costs the chain; and what
# the chain read from disk meanwhile.
run() {
    local label="" n=0 prev="" a pids before
    for a in "$@"; do
        [ "$prev" = --label ] && label=$a
        [ "$prev" = -n ] && n=$a
        prev=$a
    done
    case "$label" in mosquitto*) pids=("${MQ_PIDS[@]}") ;; *) pids=("${ML_PIDS[@]}") ;; esac
    before=$(cpu_ns "${pids[@]}")
    local read_before
    read_before=$(read_bytes "${pids[@]}")
    "$BENCH" mqtt "$@" | tee -a "$RESULTS" | sed -n '2p' >&2
    local used=$(( $(cpu_ns "${pids[@]}") - before ))
    local read_kb=$(( ($(read_bytes "${pids[@]}") - read_before) / 1024 ))
    echo "{\"cpu_label\":\"$label\",\"cpu_us_per_msg\":$(( used / 1000 / (n > 0 ? n : 1) )),\"disk_read_kb\":$read_kb}" >> "$RESULTS"
    echo "#   CPU of the whole chain: $(( used / 1000 / (n > 0 ? n : 1) )) us per message; read from disk on the forwarding threads: $read_kb KiB" >&2
}

mosq() { [ "$ONLY" = medlink ] || run "${MOSQ_ARGS[@]}" "$@"; }
med() { [ "$ONLY" = mosquitto ] || run "${ML_ARGS[@]}" "$@"; }
: > "$RESULTS"
echo "# warm-up" >&2
[ "$ONLY" = medlink ] || "$BENCH" mqtt "${MOSQ_ARGS[@]}" -n 2000 -p 1 --label warmup > /dev/null
[ "$ONLY" = mosquitto ] || "$BENCH" mqtt "${ML_ARGS[@]}" -n 2000 -p 1 --label warmup > /dev/null

# Disk use of a chain's four data directories (medlink: journal.db, -wal, -shm; mosquitto: its
# persistence file), sampled every 200 ms: the peak during a run, then after DISK_IDLE seconds
# idle (default 35: medlink truncates its WALs after `wal_idle_truncate_ms`, 30 s).
DISK_IDLE=${DISK_IDLE:-35}
DISK="$WORK/disk.txt"
: > "$DISK"
disk_now() { du -scb "$@" 2>/dev/null | tail -1 | cut -f1; }
disk_watch() { # label dirs...; runs until killed, keeps the peak in $WORK/peak
    local peak=0 now
    while :; do
        now=$(disk_now "$@")
        [ "$now" -gt "$peak" ] && peak=$now && echo "$peak" > "$WORK/peak"
        sleep 0.2
    done
}
with_disk() { # label dirs... -- command...
    local label=$1; shift
    local dirs=()
    while [ "$1" != "--" ]; do dirs+=("$1"); shift; done
    shift
    echo 0 > "$WORK/peak"
    disk_watch "${dirs[@]}" & local watcher=$!
    "$@"
    sleep "$DISK_IDLE"
    kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null || true
    echo "$label $(cat "$WORK/peak") $(disk_now "${dirs[@]}")" >> "$DISK"
}
ML_DIRS=("$WORK/ml0" "$WORK/ml1" "$WORK/ml2" "$WORK/ml3")
MQ_DIRS=("$WORK/mosq0" "$WORK/mosq1" "$WORK/mosq2" "$WORK/mosq3")

if [ "${HOPS:-0}" = 1 ]; then
    for round in $(seq 1 "${ROUNDS:-1}"); do
        for t in 0 1 2 3; do
            hops=$((t + 1))
            echo "# round $round of ${ROUNDS:-1}: $LAT_N messages at 1000 msg/s through $hops node(s)" >&2
            mq=(--pub-url "$SCHEME://127.0.0.1:${MQ[$t]}" --sub-url "$SCHEME://127.0.0.1:19901" "${CA_ARGS[@]}")
            ml=(--medlink --pub-url "$SCHEME://127.0.0.1:${ML[$t]}" --sub-url "$SCHEME://127.0.0.1:19911" "${CA_ARGS[@]}"
                --pub-node "${IDS[$t]}" --pub-user source --pub-pass bench-password
                --sub-node b --sub-user sink --sub-pass bench-password)
            hop_mq() { [ "$ONLY" = medlink ] || run "${mq[@]}" -n "$LAT_N" -s 256 -p 1 --rate 1000 --label "mosquitto-hops$hops"; }
            hop_ml() { [ "$ONLY" = mosquitto ] || run "${ml[@]}" -n "$LAT_N" -s 256 -p 1 --rate 1000 --label "medlink-hops$hops"; }
            # The floor of a custody hop (bench/src/floor.rs): the leanest relays, committing
            # before they pass on, and not.
            hop_floor() {
                [ "${FLOOR:-1}" = 1 ] || return 0
                "$BENCH" floor --hops "$hops" -n "$LAT_N" --commit --label "floor-commit-hops$hops" | tee -a "$RESULTS" | sed -n '2p' >&2
                "$BENCH" floor --hops "$hops" -n "$LAT_N" --log --label "floor-log-hops$hops" | tee -a "$RESULTS" | sed -n '2p' >&2
                "$BENCH" floor --hops "$hops" -n "$LAT_N" --label "floor-pass-hops$hops" | tee -a "$RESULTS" | sed -n '2p' >&2
            }
            if [ $((round % 2)) = 0 ]; then hop_ml; hop_mq; hop_floor; else hop_floor; hop_mq; hop_ml; fi
        done
    done
    echo
    echo "| nodes crossed | medlink p50 / p99 | mosquitto p50 / p99 | floor, SQLite commit then pass on | floor, log append then pass on | floor, no commit | CPU per message, medlink / mosquitto chain | medlink lost / dup / out of order |"
    echo "|---:|---|---|---|---|---|---|---|"
    PYTHONPATH="$ROOT/bench" python3 - "$RESULTS" <<'EOF'
import sys
from results import load, median
lines = load(sys.argv[1])
rows = [r for r in lines if "label" in r]
cpu = [r for r in lines if "cpu_label" in r]
def pair(label):
    rs = [r for r in rows if r["label"] == label]
    return f'{median([r["p50_ms"] for r in rs]):.3f} / {median([r["p99_ms"] for r in rs]):.3f} ms', rs
def cpu_of(label):
    return f'{median([r["cpu_us_per_msg"] for r in cpu if r["cpu_label"] == label]):.0f} us'
for hops in range(1, 5):
    ml, mls = pair(f"medlink-hops{hops}")
    mq, _ = pair(f"mosquitto-hops{hops}")
    fc, fcs = pair(f"floor-commit-hops{hops}")
    fl, fls = pair(f"floor-log-hops{hops}")
    fp, fps = pair(f"floor-pass-hops{hops}")
    bad = " / ".join(str(sum(r[k] for r in mls + fcs + fls + fps)) for k in ("lost", "duplicates", "out_of_order"))
    print(f"| {hops} | {ml} | {mq} | {fc} | {fl} | {fp} | {cpu_of(f'medlink-hops{hops}')} / {cpu_of(f'mosquitto-hops{hops}')} | {bad} |")
rounds = max(len([r for r in rows if r["label"] == f"{side}-hops1"]) for side in ("medlink", "mosquitto"))
print(f"\nmedians of {rounds} round(s)")
EOF
    exit 0
fi

# ROUNDS=k repeats the throughput and latency runs k times on the same two chains, the order
# alternating (mosquitto first in odd rounds, medlink first in even ones): the host's speed drifts
# from minute to minute, and pairs run back to back in both orders cancel most of that drift.
# The summary then gives each round's ratio and the medians. Disk use is measured in round 1.
ROUNDS=${ROUNDS:-1}
for round in $(seq 1 "$ROUNDS"); do
    echo "# round $round of $ROUNDS: throughput, $N messages x 256 B, $P publishers, QoS 1" >&2
    mosq_thr() { mosq -n "$N" -s 256 -p "$P" --label mosquitto-4-chain; }
    med_thr() { med -n "$N" -s 256 -p "$P" --label medlink-4-tier; }
    if [ "$round" = 1 ]; then
        [ "$ONLY" = medlink ] || with_disk mosquitto-4-chain "${MQ_DIRS[@]}" -- mosq_thr
        [ "$ONLY" = mosquitto ] || with_disk medlink-4-tier "${ML_DIRS[@]}" -- med_thr
    elif [ $((round % 2)) = 0 ]; then
        med_thr; mosq_thr
    else
        mosq_thr; med_thr
    fi
    echo "# round $round of $ROUNDS: latency, $LAT_N messages at 1000 msg/s" >&2
    if [ $((round % 2)) = 0 ]; then
        med -n "$LAT_N" -s 256 -p 1 --rate 1000 --label medlink-4-tier-1k
        mosq -n "$LAT_N" -s 256 -p 1 --rate 1000 --label mosquitto-4-chain-1k
    else
        mosq -n "$LAT_N" -s 256 -p 1 --rate 1000 --label mosquitto-4-chain-1k
        med -n "$LAT_N" -s 256 -p 1 --rate 1000 --label medlink-4-tier-1k
    fi
done
echo "# request -> reply round trips, bottom to top and back" >&2
HTTP_SCHEME=http
[ "$TLS" = 1 ] && HTTP_SCHEME=https
RTT_N=${RTT_N:-2000}
rtt() { "$BENCH" rtt "$@" | tee -a "$RESULTS" | sed -n '2p' >&2; }
MQ_RTT=(--req-url "$SCHEME://127.0.0.1:19904" --rep-url "$SCHEME://127.0.0.1:19901" "${CA_ARGS[@]}")
ML_RTT=(--medlink --req-node b.c.d.e --rep-node b --req-pass bench-password --rep-pass bench-password "${CA_ARGS[@]}")
ML_MQTT=(--req-url "$SCHEME://127.0.0.1:19914" --rep-url "$SCHEME://127.0.0.1:19911" --req-user source --rep-user sink)
ML_HTTP=(--req-url "$HTTP_SCHEME://127.0.0.1:19924" --rep-url "$HTTP_SCHEME://127.0.0.1:19921" --req-user web-source --rep-user web-sink)
# RTT=0 skips the round trips (the one-in-flight mosquitto run alone takes about three minutes).
RTT_CONC="1 32"
[ "${RTT:-1}" = 0 ] && RTT_CONC=""
for c in $RTT_CONC; do
    [ "$ONLY" = medlink ] || rtt "${MQ_RTT[@]}" -n "$RTT_N" -c "$c" --label "mosquitto-rtt-c$c"
    [ "$ONLY" = mosquitto ] || rtt "${ML_RTT[@]}" "${ML_MQTT[@]}" -n "$RTT_N" -c "$c" --label "medlink-rtt-mqtt-c$c"
    [ "$ONLY" = mosquitto ] || rtt "${ML_RTT[@]}" "${ML_HTTP[@]}" -n "$RTT_N" -c "$c" --label "medlink-rtt-http-c$c"
done
if [ "${KEEP:-0}" = 1 ]; then
    echo "chains running (medlink on 19911-19914, mosquitto on 19901-19904); Enter stops them" >&2
    read -r _
fi

# After a clean stop (SIGTERM): medlink truncates and removes its WALs, mosquitto saves.
for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
PIDS=()
[ "$ONLY" = mosquitto ] || echo "medlink-stopped 0 $(disk_now "${ML_DIRS[@]}")" >> "$DISK"
[ "$ONLY" = medlink ] || echo "mosquitto-stopped 0 $(disk_now "${MQ_DIRS[@]}")" >> "$DISK"
echo
echo "| disk, 4 data dirs ($N commands through the chain) | peak during the run | ${DISK_IDLE} s after it |"
echo "|---|---:|---:|"
while read -r label peak after; do
    if [ "$peak" = 0 ]; then
        printf '| %s, after a clean stop | | %.1f MB |\n' "$label" "$(echo "$after / 1000000" | bc -l)"
    else
        printf '| %s | %.1f MB | %.1f MB |\n' "$label" "$(echo "$peak / 1000000" | bc -l)" "$(echo "$after / 1000000" | bc -l)"
    fi
done < "$DISK"

echo
echo "| run | msg/s | p50 ms | p99 ms | p99.9 ms | lost | dup | out of order |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
PYTHONPATH="$ROOT/bench" python3 - "$RESULTS" <<'EOF'
import sys
from results import load, median
lines = load(sys.argv[1])
rtts = [r for r in lines if "round_trips_s" in r]
rows = [r for r in lines if "throughput_msg_s" in r]
by = {}
for r in rows:
    by.setdefault(r["label"], []).append(r)
    print(f'| {r["label"]} | {r["throughput_msg_s"]:,.0f} | {r["p50_ms"]:.3f} | {r["p99_ms"]:.3f} | {r["p999_ms"]:.3f} | {r["lost"]} | {r["duplicates"]} | {r["out_of_order"]} |')
m, q = by.get("medlink-4-tier", []), by.get("mosquitto-4-chain", [])
ml, ql = by.get("medlink-4-tier-1k", []), by.get("mosquitto-4-chain-1k", [])
if len(m) == 1 and len(q) == 1 and q[0]["throughput_msg_s"]:
    print(f'\nthroughput ratio medlink / mosquitto: {m[0]["throughput_msg_s"] / q[0]["throughput_msg_s"]:.2f}x')
elif m and len(m) == len(q):
    print("\n| round | medlink msg/s | mosquitto msg/s | ratio | medlink p50 / p99 at 1k/s | mosquitto p50 / p99 at 1k/s |")
    print("|---:|---:|---:|---:|---|---|")
    lat = lambda rs, i: f'{rs[i]["p50_ms"]:.2f} / {rs[i]["p99_ms"]:.2f} ms' if i < len(rs) else ""
    ratios = [a["throughput_msg_s"] / b["throughput_msg_s"] for a, b in zip(m, q)]
    for i, (a, b) in enumerate(zip(m, q)):
        print(f'| {i + 1} | {a["throughput_msg_s"]:,.0f} | {b["throughput_msg_s"]:,.0f} | {ratios[i]:.2f}x | {lat(ml, i)} | {lat(ql, i)} |')
    mm, qm = median([r["throughput_msg_s"] for r in m]), median([r["throughput_msg_s"] for r in q])
    p = lambda rs, k: median([r[k] for r in rs]) if rs else float("nan")
    print(f'| median | {mm:,.0f} | {qm:,.0f} | {median(ratios):.2f}x of ratios, {mm / qm:.2f}x of medians | '
          f'{p(ml, "p50_ms"):.2f} / {p(ml, "p99_ms"):.2f} ms | {p(ql, "p50_ms"):.2f} / {p(ql, "p99_ms"):.2f} ms |')
cpu, reads = {}, {}
for r in lines:
    if "cpu_label" in r:
        cpu.setdefault(r["cpu_label"], []).append(r["cpu_us_per_msg"])
        reads.setdefault(r["cpu_label"], []).append(r.get("disk_read_kb", 0))
if cpu.get("medlink-4-tier-1k") and cpu.get("mosquitto-4-chain-1k"):
    print(f'\nCPU per message at 1,000 msg/s, whole chain (median): medlink {median(cpu["medlink-4-tier-1k"]):.0f} us, '
          f'mosquitto {median(cpu["mosquitto-4-chain-1k"]):.0f} us')
    print(f'Read from disk on the forwarding threads per latency run (median): medlink {median(reads["medlink-4-tier-1k"]):.0f} KiB, '
          f'mosquitto {median(reads["mosquitto-4-chain-1k"]):.0f} KiB')
if rtts:
    print("\n| round trips | transport | in flight | per s | p50 ms | p99 ms | p99.9 ms | lost | dup |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rtts:
        print(f'| {r["label"]} | {r["transport"]} | {r["concurrency"]} | {r["round_trips_s"]:,.0f} | {r["p50_ms"]:.3f} | {r["p99_ms"]:.3f} | {r["p999_ms"]:.3f} | {r["lost"]} | {r["duplicates"]} |')
EOF
cat "$RESULTS"
