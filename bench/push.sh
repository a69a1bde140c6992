#!/usr/bin/env bash
# Push to many recipients (issue 12, "Scale"): one command to each of N connected recipients,
# medlink over MQTT, SSE and long-poll, side by side with mosquitto, at several N, with the
# node's memory per connection and a projection to 100,000.
#
#   bench/push.sh                                # 1,000 / 5,000 / 10,000 / 19,000, every transport
#   SIZES="1000 5000" TRANSPORTS="mqtt mosquitto" bench/push.sh
#   STORM=1 bench/push.sh                        # also restart the node (and mosquitto) with N
#   AUTH=token STORM=1 bench/push.sh             # medlink recipients log in with device tokens
#                                                # recipients connected: time to re-admit them all
#
# Environment: SIZES, TRANSPORTS (mqtt sse longpoll mosquitto), PROCS (load processes, 4),
# DEADLINE (s after the first POST; what has not arrived by then is reported lost, 600:
# the current code needs ~270 s at 19,000 over MQTT),
# STORM=1, NO_PUSH=1 (connect, measure memory and the storm, send nothing: a storm costs a minute
# instead of the push's minutes), SKIP_BUILD=1 (use the binaries as built), RESULTS=file (keep the
# JSON lines).
#
# Each run starts a fresh node (empty journal) or a fresh mosquitto, so runs do not share
# state. The load tool is `medlink-bench push` (bench/src/push/): it spawns PROCS load
# processes holding the recipients, reads the broker's RSS from /proc, posts the commands
# (`POST /v1/messages`, 1,000 per request, one sender, one request at a time unless `--in-flight`) or publishes them (mosquitto, one
# publisher, QoS 1), and checks every delivery: lost or duplicated -> exit 3.
#
# BENCH-ONLY CREDENTIALS: the recipients' credentials file holds *cheap* argon2id hashes
# (m=8 KiB, t=1, p=1, written by `medlink-bench push-creds`). The node reads the cost from
# each hash, so this only makes 19,000 logins quick; at the OWASP cost `medlink passwd` uses
# they would take ~10 minutes to create and as long to log in. Never use such hashes for real
# identities: the production path for phones is device tokens.
#
# The node's fd limit (`ulimit -n`, hard 20,000 here) bounds N: the node needs a socket per
# recipient, so 19,000 is the top size on this machine.
set -euo pipefail
SIZES=${SIZES:-1000 5000 10000 19000}
TRANSPORTS=${TRANSPORTS:-mqtt sse longpoll mosquitto}
PROCS=${PROCS:-4}
DEADLINE=${DEADLINE:-600}
STORM=${STORM:-0}
# password: cheap argon2 hashes (below); token: a JWT per recipient from a [[token_key]].
AUTH=${AUTH:-password}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET/release/medlink"
BENCH="$TARGET/release/medlink-bench"
WORK=$(mktemp -d /tmp/medlink-push.XXXXXX)
RESULTS=${RESULTS:-$WORK/results.jsonl}
ML_MQTT=127.0.0.1:19971
ML_HTTP=127.0.0.1:19972
ML_METRICS=127.0.0.1:19973
MOSQ=127.0.0.1:19981

cleanup() {
    for f in "$WORK"/*.pid; do
        [ -e "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

command -v mosquitto >/dev/null || { echo "mosquitto is not installed (apt-get install mosquitto)" >&2; exit 2; }
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release --quiet -p medlink-bench -p medlink)
fi
# The node and mosquitto need a socket per recipient: take the whole hard limit.
ulimit -n "$(ulimit -Hn)"
MAX=0
for n in $SIZES; do [ "$n" -gt "$MAX" ] && MAX=$n; done
if [ "$MAX" -gt $(( $(ulimit -n) - 600 )) ]; then
    echo "N = $MAX needs more files than ulimit -n $(ulimit -n) leaves the node" >&2
    exit 2
fi

# Recipients pt-00001 ... and the sender, with cheap bench-only hashes (see above). With
# device tokens the recipients need no line (as in production), only the sender: and the node's
# memory before the recipients connect is not inflated by parsing 19,000 lines it never needs.
COUNT=$MAX
[ "$AUTH" = token ] && COUNT=0
"$BENCH" push-creds --out "$WORK/creds.toml" --count "$COUNT" --client push-sender:bench-push

cat > "$WORK/node.toml" <<CONF
[node]
id = "pb"
data_dir = "$WORK/data"
credentials = "$WORK/creds.toml"
[[listener]]
kind = "tcp"
addr = "$ML_MQTT"
[http]
addr = "$ML_HTTP"
max_wait_s = 600            # long-polls stay open through the whole run
[metrics]
addr = "$ML_METRICS"
[limits]
rate_per_second = 0         # one sender posts N commands within seconds
# The default (19,000) is shared by MQTT, HTTP and metrics connections: N = 19,000 recipients
# plus the sender, the SSE ack connections and a metrics scrape need a little more, and the
# node's 20,000 files leave room for it.
max_connections = 19400
connect_timeout_ms = 30000  # thousands of CONNECTs queue on two cores at the start
CONF
AUTH_ARGS=()
if [ "$AUTH" = token ]; then
    # The phones' way in: a device token per recipient, no line of its own needed.
    (umask 077; head -c 48 /dev/urandom | base64 -w0 > "$WORK/token.key")
    cat >> "$WORK/node.toml" <<CONF
[[token_key]]
kid = "bench"
alg = "HS256"
secret_file = "$WORK/token.key"
subjects = "pt-*"
CONF
    AUTH_ARGS=(--auth token --token-secret-file "$WORK/token.key" --kid bench)
fi

cat > "$WORK/mosquitto.conf" <<CONF
listener ${MOSQ##*:} 127.0.0.1
allow_anonymous true
persistence false
user root
log_dest stderr
log_type error
log_type warning
CONF

# start_broker node|mosquitto [keep]: starts it in the background, pid in $WORK/<kind>.pid.
# Without `keep` the node's journal starts empty.
cat > "$WORK/start.sh" <<EOF
#!/usr/bin/env bash
set -eu
kind=\$1
if [ "\$kind" = node ]; then
    [ "\${2:-}" = keep ] || rm -rf "$WORK/data"
    MEDLINK_LOG=warn setsid "$BIN" node --config "$WORK/node.toml" >> "$WORK/node.log" 2>&1 < /dev/null &
else
    setsid mosquitto -c "$WORK/mosquitto.conf" >> "$WORK/mosquitto.log" 2>&1 < /dev/null &
fi
echo \$! > "$WORK/\$kind.pid"
echo \$!
EOF
# stop.sh node|mosquitto: SIGTERM, then waits until the process is gone (SIGKILL after 20 s).
cat > "$WORK/stop.sh" <<EOF
#!/usr/bin/env bash
kind=\$1
pid=\$(cat "$WORK/\$kind.pid" 2>/dev/null) || exit 0
kill -TERM "\$pid" 2>/dev/null || exit 0
for _ in \$(seq 1 400); do [ -e "/proc/\$pid" ] || exit 0; sleep 0.05; done
kill -9 "\$pid" 2>/dev/null || true
EOF
# The storm's restart: the same broker stopped and started again, its journal kept.
printf '#!/usr/bin/env bash\n"%s" "$1" && "%s" "$1" keep\n' "$WORK/stop.sh" "$WORK/start.sh" > "$WORK/restart.sh"
chmod +x "$WORK/start.sh" "$WORK/stop.sh" "$WORK/restart.sh"

wait_port() {
    for _ in $(seq 1 400); do
        (exec 3<>"/dev/tcp/${1%%:*}/${1##*:}") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "$1 did not open" >&2
    return 1
}

: > "$RESULTS"
STATUS=0
for t in $TRANSPORTS; do
    for n in $SIZES; do
        if [ "$t" = mosquitto ]; then
            kind=mosquitto
            args=(--broker mosquitto --mqtt "$MOSQ")
            port=$MOSQ
        else
            kind=node
            args=(--broker medlink --transport "$t" --node pb --mqtt "$ML_MQTT" --http "$ML_HTTP" --metrics "$ML_METRICS" "${AUTH_ARGS[@]}")
            port=$ML_MQTT
        fi
        pid=$("$WORK/start.sh" "$kind")
        wait_port "$port" || { tail -20 "$WORK/$kind.log" >&2; exit 1; }
        sleep 2 # let the fresh process settle before its RSS is read
        extra=()
        [ "${NO_PUSH:-0}" = 1 ] && extra+=(--no-push)
        # IN_FLIGHT=k: the sender keeps k requests in flight (default one at a time).
        [ -n "${IN_FLIGHT:-}" ] && [ "$kind" = node ] && extra+=(--in-flight "$IN_FLIGHT")
        if [ "$STORM" = 1 ] && { [ "$t" = mqtt ] || [ "$t" = mosquitto ]; }; then
            extra+=(--storm --restart-cmd "$WORK/restart.sh $kind")
        fi
        echo "# $t, N = $n" >&2
        rc=0
        nice -n 5 "$BENCH" push "${args[@]}" -n "$n" --procs "$PROCS" --node-pid "$pid" \
            --deadline "$DEADLINE" --label "$t-$n" "${extra[@]}" > "$WORK/run.out" || rc=$?
        grep '^{' "$WORK/run.out" >> "$RESULTS" || echo "# $t N=$n: no result (exit $rc)" >&2
        grep '^#' "$WORK/run.out" >&2 || true
        [ "$rc" = 0 ] || STATUS=$rc
        "$WORK/stop.sh" "$kind"
        sleep 2
    done
done

python3 - "$RESULTS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def series(r):
    return "mosquitto" if r["broker"] == "mosquitto" else "medlink " + r["transport"]
names = []
for r in rows:
    if series(r) not in names:
        names.append(series(r))
sizes = sorted({r["recipients"] for r in rows})
by = {(series(r), r["recipients"]): r for r in rows}
def fmt(v, spec):
    return "—" if v is None else format(v, spec)

print("\n## Time from the first POST (publish) to the last delivery, s (p50 / p99 ms per recipient)\n")
print("| N | " + " | ".join(names) + " |")
print("|---:|" + "---:|" * len(names))
for n in sizes:
    cells = []
    for s in names:
        r = by.get((s, n))
        if r is None:
            cells.append("")
        elif not r.get("pushed", True):
            cells.append("not sent")
        elif r["time_to_last_s"] is None:
            cells.append(f'{r["delivered"]:,} of {n:,} by the deadline')
        else:
            cells.append(f'{r["time_to_last_s"]:.2f} ({r["p50_ms"]:.0f} / {r["p99_ms"]:.0f})')
    print(f"| {n:,} | " + " | ".join(cells) + " |")

print("\n## Broker memory per idle connection, KB ((RSS idle − RSS before) / N)\n")
print("| N | " + " | ".join(names) + " |")
print("|---:|" + "---:|" * len(names))
for n in sizes:
    cells = []
    for s in names:
        r = by.get((s, n))
        b = r and r["bytes_per_conn"]
        cells.append("" if not b else f'{b / 1000:.1f}')
    print(f"| {n:,} | " + " | ".join(cells) + " |")

print("\n## Every run\n")
print("| run | N | connect s | RSS before / idle / after MB | send s | last delivery s | p50 ms | p99 ms | delivered | lost | dup | misrouted | disconnects |")
print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
mb = lambda k: "?" if k is None else f"{k / 1024:.0f}"
for r in rows:
    print(f'| {series(r)} | {r["recipients"]:,} | {r["connect_s"]:.1f} | {mb(r["rss_before_kb"])} / {mb(r["rss_idle_kb"])} / {mb(r["rss_after_kb"])} | '
          f'{r["send_s"]:.2f} | {fmt(r["time_to_last_s"], ".2f")} | {r["p50_ms"] or 0:.1f} | {r["p99_ms"] or 0:.1f} | '
          f'{r["delivered"]:,} | {r["lost"]} | {r["duplicated"]} | {r["misrouted"]} | {r["disconnects"]} |')

storms = [r for r in rows if r.get("storm")]
if storms:
    print("\n## Reconnect storm: broker restarted with N recipients connected\n")
    print("Devices reconnect as the SDK does (100 ms doubling to a 5 s cap, plus up to half again at random),")
    print("so the time after listening includes their backoff; admission is the node's side alone: from the")
    print("start of a device's successful attempt (or the node's listening, if later) to its SUBACK.\n")
    print("| run | N | restart s | listening after s | all re-admitted after listening s | p50 s | admission p50 / p99 / max ms | of which TCP p50 / p99 ms | of which CONNECT..SUBACK p50 / p99 ms | re-admitted |")
    print("|---|---:|---:|---:|---:|---:|---|---|---|---:|")
    for r in storms:
        s = r["storm"]
        print(f'| {series(r)} | {r["recipients"]:,} | {s["restart_cmd_s"]:.2f} | {fmt(s["listening_s"], ".2f")} | '
              f'{fmt(s["readmit_after_listening_s"], ".2f")} | {fmt(s["p50_after_listening_s"], ".2f")} | '
              f'{s["admit_p50_ms"] or 0:.0f} / {s["admit_p99_ms"] or 0:.0f} / {s["admit_max_ms"] or 0:.0f} | '
              f'{s.get("tcp_p50_ms") or 0:.0f} / {s.get("tcp_p99_ms") or 0:.0f} | {s.get("handshake_p50_ms") or 0:.0f} / {s.get("handshake_p99_ms") or 0:.0f} | '
              f'{s["readmitted"]:,} of {s["recipients"]:,} |')

def fit(points):
    """Least squares y = a + b x; returns a, b, R²."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    a = my - b * mx
    ss = sum((y - my) ** 2 for _, y in points)
    res = sum((y - a - b * x) ** 2 for x, y in points)
    return a, b, (1 - res / ss) if ss else 1.0

import math
P = 100_000
print(f"\n## Projection to {P:,} recipients\n")
print("Method: an ordinary least-squares straight line (y = a + b·N) through the measured points of each")
print("series, evaluated at N = 100,000; R² says how well a line fits them. Growth is flagged as not")
print("linear when the time per recipient at the largest N is more than 1.5× that at the smallest; the")
print("straight line then understates, so a power law (log y = log c + k·log N, least squares) is shown")
print("beside it. Runs that hit the deadline are left out of the time fit.\n")
print("| series | points | time at 100k, linear (R²) | time growth | time at 100k, power law (k) | RSS at 100k, linear MB (R²) |")
print("|---|---:|---:|---|---:|---:|")
for s in names:
    pts = [(r["recipients"], r["time_to_last_s"]) for r in rows if series(r) == s and r["time_to_last_s"]]
    mem = [(r["recipients"], r["rss_idle_kb"] / 1024) for r in rows if series(r) == s and r["rss_idle_kb"]]
    t_lin = t_pow = growth = m_lin = "—"
    if len(pts) >= 2:
        a, b, r2 = fit(pts)
        t_lin = f"{a + b * P:.1f} s ({r2:.3f})"
        (n0, y0), (n1, y1) = min(pts), max(pts)
        ratio = (y1 / n1) / (y0 / n0)
        growth = (f"**not linear**: {ratio:.1f}× the time per recipient at {n1:,} as at {n0:,}"
                  if ratio > 1.5 else f"linear ({ratio:.2f}× per recipient, {n0:,} → {n1:,})")
        if all(y > 0 for _, y in pts):
            lc, k, _ = fit([(math.log(x), math.log(y)) for x, y in pts])
            t_pow = f"{math.exp(lc + k * math.log(P)):.1f} s (k = {k:.2f})"
    if len(mem) >= 2:
        a, b, r2 = fit(mem)
        m_lin = f"{a + b * P:,.0f} ({r2:.3f})"
    print(f"| {s} | {len(pts)} | {t_lin} | {growth} | {t_pow} | {m_lin} |")
EOF
echo
echo "JSON lines: $RESULTS" >&2
[ "${RESULTS}" = "$WORK/results.jsonl" ] && cat "$RESULTS"
exit "$STATUS"
