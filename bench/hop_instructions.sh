#!/usr/bin/env bash
# Instructions per command in one middle node of the 4-tier chain, counted by callgrind.
#
#   bench/hop_instructions.sh [COMMANDS] [RATE]
#
# Timings of one hop on a shared 2-core VM move by 20-50 % from run to run (the host's stalls,
# the other nodes' wake-ups), so a change worth a few per cent of a hop cannot be seen in them.
# Instruction counts move much less: the same build under the same load counts the same within
# a few per cent (at 500/s callgrind's slowdown let commands share rounds now and then, and
# runs differed by up to 15 %; at the default 200/s each command has its round). This runs the medlink chain of `bench/chain.sh` (KEEP=1) with the third node up,
# `b.c.d`, under `valgrind --tool=callgrind`, sends COMMANDS (default 2,000) through it at RATE
# (default 200/s) once the chain is up, and prints, per command:
#   - the instructions of the dispatcher's thread (where a hop's work runs) and of the process;
#   - the largest inclusive costs among medlink's own functions and the libraries' hot spots.
# User-space instructions only: system calls, wake-ups and cache misses are not in them; the
# chain's timings (`bench/chain.sh`) stay the measure of latency. MEDLINK_BIN runs another
# build (an A/B of two builds is two runs of this). TOP sets how many functions are listed;
# CG_OUT=FILE keeps the dispatcher thread's callgrind file (for `callgrind_annotate --tree=both`).
# Needs: valgrind and mosquitto (Debian packages).
set -euo pipefail

N=${1:-2000}
RATE=${2:-200}
TOP=${TOP:-40}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="${MEDLINK_BIN:-$TARGET/release/medlink}"
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
(cd "$ROOT" && cargo build --release --quiet -p medlink-bench -p medlink)

WORK=$(mktemp -d /tmp/medlink-hopins.XXXXXX)
CHAIN=""
cleanup() {
    exec 3>&- 2>/dev/null || true
    [ -n "$CHAIN" ] && { kill "$CHAIN" 2>/dev/null || true; wait "$CHAIN" 2>/dev/null || true; }
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# The chain starts every node through this wrapper: b.c.d (ml2) under callgrind, counting from
# the zeroing below; the others as they are.
cat > "$WORK/node.sh" <<EOF
#!/usr/bin/env bash
case "\$*" in
  *ml2.toml*) exec valgrind --tool=callgrind --separate-threads=yes \\
      --callgrind-out-file="$WORK/cg.%p" "$BIN" "\$@" ;;
  *) exec "$BIN" "\$@" ;;
esac
EOF
chmod +x "$WORK/node.sh"

mkfifo "$WORK/enter"
MEDLINK_BIN="$WORK/node.sh" KEEP=1 ONLY=medlink RTT=0 ROUNDS=1 LAT_N=200 \
    "$ROOT/bench/chain.sh" 200 1 < "$WORK/enter" > "$WORK/chain.log" 2>&1 &
CHAIN=$!
exec 3> "$WORK/enter"
for _ in $(seq 1 600); do
    grep -q "Enter stops" "$WORK/chain.log" 2>/dev/null && break
    kill -0 "$CHAIN" 2>/dev/null || { cat "$WORK/chain.log" >&2; exit 1; }
    sleep 0.5
done
grep -q "Enter stops" "$WORK/chain.log" || { echo "the chain did not come up" >&2; exit 1; }
VG=$(pgrep -f "valgrind.*ml2.toml" | head -1)

callgrind_control -z "$VG" > /dev/null
"$TARGET/release/medlink-bench" mqtt --medlink \
    --pub-url mqtt://127.0.0.1:19914 --sub-url mqtt://127.0.0.1:19911 \
    --pub-node b.c.d.e --pub-user source --pub-pass bench-password \
    --sub-node b --sub-user sink --sub-pass bench-password \
    -n "$N" -s 256 -p 1 --rate "$RATE" 2>&1 | tail -1
sleep 1
callgrind_control -d "$VG" > /dev/null
sleep 1

# The dispatcher's thread is the one that ran the rounds; the process total is every thread.
DISPATCHER=$(grep -l "Dispatcher::round" "$WORK"/cg."$VG".*-* | head -1)
total=0
for f in "$WORK"/cg."$VG".*-*; do
    n=$(sed -n 's/^summary: //p' "$f")
    total=$((total + ${n:-0}))
done
disp=$(sed -n 's/^summary: //p' "$DISPATCHER")
[ -n "${CG_OUT:-}" ] && cp "$DISPATCHER" "$CG_OUT"
echo "instructions per command, b.c.d: dispatcher thread $((disp / N)), whole process $((total / N)) ($N commands at $RATE/s)"
echo
echo "inclusive instructions per command (dispatcher thread):"
callgrind_annotate --inclusive=yes --auto=no --threshold=100 "$DISPATCHER" 2>/dev/null \
    | sed -n -E 's/^ *([0-9,]+) \([ 0-9.]+%\)  (.*) \[[^]]*\]$/\1\t\2/p' \
    | sed -E 's#\t[^:]*:([^:])#\t\1#' \
    | awk -F'\t' -v n="$N" '{gsub(",", "", $1); if (!seen[$2]++) printf "%9d  %s\n", $1 / n, $2}' \
    | grep -E "medlink_|serde_json::de::from|mi_malloc|__rust_alloc|memcpy|sqlite3_step|fmt::write|Instant" \
    | head -"$TOP"
