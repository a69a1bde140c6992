#!/usr/bin/env bash
# A large file across a 4-tier medlink tree, against curl copying the same file over loopback
# HTTP in the same run (BENCHMARKS.md, "Files").
#
#   bench/files.sh [SIZE_MB]          (default 1024)
#
# - curl: the file uploaded whole to an HTTP server on loopback (the root node's own
#   `GET /v1/files/<sha256>` serves it back to curl too: both directions are timed).
# - medlink: a client at the bottom tier (b.c.d.e) uploads the file to its node (tus, one
#   PATCH), then sends a command that refers to it to a client at the root (b). The file climbs
#   three links (each child sends it to its parent, resumable, SHA-256 checked at each hop)
#   before the command goes on; timed from the command's POST to its arrival at the root.
# - Node RSS of the middle tier (b.c.d), sampled every 200 ms before and during the transfer:
#   streaming, not buffering, keeps it flat.
# - Command latency at 200 msg/s from the bottom to the root (`medlink-bench mqtt`): without a
#   transfer, then while a second file climbs the tree.
# Prints the figures as `# name value` lines. Needs curl.
set -euo pipefail

SIZE_MB=${1:-1024}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET/release/medlink"
BENCH="$TARGET/release/medlink-bench"
WORK=$(mktemp -d /tmp/medlink-files.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ "${KEEP_LOGS:-0}" = 1 ] && cp "$WORK"/ml*.log /tmp/ 2>/dev/null; rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
command -v curl >/dev/null || { echo "curl is not installed" >&2; exit 2; }
(cd "$ROOT" && cargo build --release --quiet -p medlink-bench -p medlink)

wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "port $1 did not open" >&2
    return 1
}
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }

ML=(19711 19712 19713 19714)
MH=(19721 19722 19723 19724)
IDS=(b b.c b.c.d b.c.d.e)
echo "link-password" > "$WORK/link-pw"
for i in 0 1 2 3; do
    id=${IDS[$i]}
    creds="$WORK/ml$i.credentials.toml"
    [ "$i" -lt 3 ] && echo "link-password" | "$BIN" passwd --file "$creds" add "${IDS[$((i + 1))]}" --role node --password-stdin 2> /dev/null
    # `sink` takes the latency run's commands, `archive` the files' (one reader per stream).
    for who in sink archive; do
        [ "$i" -eq 0 ] && echo "bench-password" | "$BIN" passwd --file "$creds" add "$who" --role client --password-stdin 2> /dev/null
    done
    [ "$i" -eq 3 ] && echo "bench-password" | "$BIN" passwd --file "$creds" add source --role client --password-stdin 2> /dev/null
    {
        printf '[node]\nid = "%s"\ndata_dir = "%s"\ncredentials = "%s"\n' "$id" "$WORK/ml$i" "$creds"
        printf '[limits]\nrate_per_second = 0\n'
        printf '[files]\nmax_file_bytes = %s\n' $(((SIZE_MB + 1) << 20))
        printf '[[listener]]\nkind = "tcp"\naddr = "127.0.0.1:%s"\n' "${ML[$i]}"
        printf '[http]\naddr = "127.0.0.1:%s"\n' "${MH[$i]}"
        if [ "$i" -gt 0 ]; then
            printf '[parent]\naddresses = ["mqtt://127.0.0.1:%s"]\npassword_file = "%s"\nfiles_url = "http://127.0.0.1:%s"\n' \
                "${ML[$((i - 1))]}" "$WORK/link-pw" "${MH[$((i - 1))]}"
        fi
    } > "$WORK/ml$i.toml"
    MEDLINK_LOG=info "$BIN" node --config "$WORK/ml$i.toml" > "$WORK/ml$i.log" 2>&1 &
    PIDS+=($!)
done
for i in 0 1 2 3; do wait_port "${ML[$i]}"; wait_port "${MH[$i]}"; done
sleep 1

SRC=(-u source:bench-password)
SINK=(-u archive:bench-password)
make_file() { head -c $((SIZE_MB << 20)) /dev/urandom > "$1"; sha256sum "$1" | cut -d' ' -f1; }

# Uploads $1 to the bottom node in one PATCH; prints the file reference.
upload() {
    local file=$1 sha=$2 size loc
    size=$(stat -c %s "$file")
    loc=$(curl -sS -D - -o /dev/null "${SRC[@]}" -X POST "http://127.0.0.1:${MH[3]}/v1/files" \
        -H 'Tus-Resumable: 1.0.0' -H "Upload-Length: $size" \
        -H "Upload-Metadata: filename $(printf scan.bin | base64),sha256 $(printf %s "$sha" | base64 -w0)" |
        tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
    curl -sS -f "${SRC[@]}" -X PATCH "http://127.0.0.1:${MH[3]}$loc" -H 'Tus-Resumable: 1.0.0' \
        -H 'Upload-Offset: 0' -H 'Content-Type: application/offset+octet-stream' -T "$file" -o /dev/null
    curl -sS -f "${SRC[@]}" "http://127.0.0.1:${MH[3]}$loc"
}

# Sends a command referring to file reference $1; prints its id.
send_with() {
    curl -sS -f "${SRC[@]}" -H 'Content-Type: application/json' "http://127.0.0.1:${MH[3]}/v1/messages" \
        -d "{\"to\":{\"node\":\"b\",\"client\":\"archive\"},\"cmd\":\"consult.ct\",\"files\":[$1]}" |
        sed -n 's/.*"id":"\([^"]*\)".*/\1/p'
}

# Waits until the root's archive client has command $1 (reads its inbox from cursor $CURSOR on).
CURSOR=""
wait_for() {
    while :; do
        page=$(curl -sS -f "${SINK[@]}" "http://127.0.0.1:${MH[0]}/v1/inbox?wait=20&cursor=$CURSOR")
        CURSOR=$(printf %s "$page" | sed -n 's/.*"cursor":"\([^"]*\)".*/\1/p')
        printf %s "$page" | grep -q "\"$1\"" && return 0
    done
}

rss_watch() { # pid out: the peak RSS (KB) until killed
    local peak=0 r
    while :; do
        r=$(awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0)
        [ "$r" -gt "$peak" ] && peak=$r && echo "$peak" > "$2"
        sleep 0.2
    done
}

echo "# file: $SIZE_MB MiB of random bytes" >&2
SHA=$(make_file "$WORK/scan.bin")
BASE_SHA=$(make_file "$WORK/base.bin") # another file for curl: the root must not have the climbing one

# ---- curl over loopback: upload to the root node's store, download it back ----
t0=$(now)
REF_ROOT=$(curl -sS -D - -o /dev/null "${SINK[@]}" -X POST "http://127.0.0.1:${MH[0]}/v1/files" \
    -H 'Tus-Resumable: 1.0.0' -H "Upload-Length: $(stat -c %s "$WORK/base.bin")" |
    tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
curl -sS -f "${SINK[@]}" -X PATCH "http://127.0.0.1:${MH[0]}$REF_ROOT" -H 'Tus-Resumable: 1.0.0' \
    -H 'Upload-Offset: 0' -H 'Content-Type: application/offset+octet-stream' -T "$WORK/base.bin" -o /dev/null
t1=$(now)
curl -sS -f "${SINK[@]}" "http://127.0.0.1:${MH[0]}/v1/files/$BASE_SHA" -o "$WORK/copy.bin"
t2=$(now)
rm -f "$WORK/copy.bin"
CURL_UP=$(secs "$t0" "$t1")
CURL_DOWN=$(secs "$t1" "$t2")

# ---- commands alone: latency at 200 msg/s ----
ML_ARGS=(--medlink --pub-url "mqtt://127.0.0.1:${ML[3]}" --sub-url "mqtt://127.0.0.1:${ML[0]}"
    --pub-node b.c.d.e --pub-user source --pub-pass bench-password
    --sub-node b --sub-user sink --sub-pass bench-password)
"$BENCH" mqtt "${ML_ARGS[@]}" -n 1000 -p 1 --label warmup > /dev/null
"$BENCH" mqtt "${ML_ARGS[@]}" -n 2000 -s 256 -p 1 --rate 200 --label idle > "$WORK/idle.json"

# ---- the file across 4 tiers ----
REF=$(upload "$WORK/scan.bin" "$SHA")
MIDPID=${PIDS[2]}
RSS_BEFORE=$(awk '/VmRSS/ {print $2}' "/proc/$MIDPID/status")
rss_watch "$MIDPID" "$WORK/rss.peak" &
WATCH=$!
t0=$(now)
ID=$(send_with "$REF")
wait_for "$ID"
t1=$(now)
kill "$WATCH" 2>/dev/null || true
TREE=$(secs "$t0" "$t1")
RSS_PEAK=$(cat "$WORK/rss.peak" 2>/dev/null || echo "$RSS_BEFORE")

# ---- commands during a transfer: a second file climbs while the latency run goes ----
SHA2=$(make_file "$WORK/scan2.bin")
REF2=$(upload "$WORK/scan2.bin" "$SHA2")
ID2=$(send_with "$REF2")
sleep 0.5
"$BENCH" mqtt "${ML_ARGS[@]}" -n 2000 -s 256 -p 1 --rate 200 --label during > "$WORK/during.json"
still=$(grep -c "file sent to the parent" "$WORK/ml1.log" || true)
wait_for "$ID2"

p() { sed -n '1p' "$1" | tr ',' '\n' | sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p" | head -1; }
MB=$SIZE_MB
echo "# curl upload over loopback (one copy):   $CURL_UP s  $(echo "$MB / $CURL_UP" | bc -l | xargs printf %.0f) MiB/s"
echo "# curl download over loopback:            $CURL_DOWN s  $(echo "$MB / $CURL_DOWN" | bc -l | xargs printf %.0f) MiB/s"
echo "# medlink across 4 tiers (3 links):       $TREE s  $(echo "$MB / $TREE" | bc -l | xargs printf %.0f) MiB/s end to end, $(echo "3 * $MB / $TREE" | bc -l | xargs printf %.0f) MiB/s per link"
echo "# ratio to curl's upload:                  $(echo "$CURL_UP / $TREE * 100" | bc -l | xargs printf %.0f) % end to end"
echo "# middle tier RSS:                         $RSS_BEFORE KB before, $RSS_PEAK KB peak during"
echo "# command latency at 200 msg/s, idle:      p50 $(p "$WORK/idle.json" p50_ms) ms, p99 $(p "$WORK/idle.json" p99_ms) ms, lost $(p "$WORK/idle.json" lost), dup $(p "$WORK/idle.json" duplicates)"
echo "# command latency during the transfer:     p50 $(p "$WORK/during.json" p50_ms) ms, p99 $(p "$WORK/during.json" p99_ms) ms, lost $(p "$WORK/during.json" lost), dup $(p "$WORK/during.json" duplicates)"
echo "# (files through the second link when the latency run ended: $still)"
