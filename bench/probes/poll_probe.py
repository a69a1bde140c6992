#!/usr/bin/env python3
"""Long-poll / SSE memory probe: N idle long-polls (or SSE streams), N identities; RSS per poll.
usage: poll_probe.py BIN N poll|sse [heaptrack]"""
import asyncio, os, subprocess, sys, tempfile, time, base64, resource, http.client
BIN, N, MODE = sys.argv[1], int(sys.argv[2]), sys.argv[3]
from argon2 import PasswordHasher, Type
ph = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.ID)
work = tempfile.mkdtemp(prefix="pprobe.")
h = ph.hash("pw")
with open(f"{work}/creds.toml", "w") as f:
    for i in range(N):
        f.write('[[identity]]\nname = "pt-%05d"\nrole = "client"\npassword_hash = "%s"\n' % (i, h))
os.chmod(f"{work}/creds.toml", 0o600)
open(f"{work}/node.toml", "w").write(f"""[node]
id = "hb"
data_dir = "{work}/data"
credentials = "{work}/creds.toml"
[[listener]]
kind = "tcp"
addr = "127.0.0.1:29971"
[http]
addr = "127.0.0.1:29972"
max_wait_s = 120
[metrics]
addr = "127.0.0.1:29973"
[limits]
rate_per_second = 0
max_connections = 19990
""")
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
cmd = [BIN, "node", "--config", f"{work}/node.toml"]
if len(sys.argv) > 4: cmd = ["heaptrack", "-o", "/tmp/heap.poll"] + cmd
node = subprocess.Popen(cmd, stderr=open(f"{work}/node.log", "w"), stdout=subprocess.DEVNULL, env={**os.environ, "MEDLINK_LOG": "warn"})
def rss(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
def nodepid():
    if len(sys.argv) <= 4: return node.pid
    out = subprocess.run(["pgrep", "-f", "-n", "^" + BIN + " node"], capture_output=True, text=True).stdout.split()
    return int(out[-1])
ready = 0
async def poller(i):
    global ready
    r, w = await asyncio.open_connection("127.0.0.1", 29972)
    auth = base64.b64encode(b"pt-%05d:pw" % i).decode()
    path = "/v1/inbox?wait=110" if MODE == "poll" else "/v1/stream"
    if MODE != "idle":
        w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\r\n".encode())
    await w.drain()
    ready += 1
    if MODE == "sse":
        await r.read(100)
    await asyncio.sleep(1000)
async def main():
    for _ in range(100):
        try:
            c = http.client.HTTPConnection("127.0.0.1", 29973); c.request("GET", "/healthz"); c.getresponse().read(); break
        except OSError: await asyncio.sleep(0.2)
    await asyncio.sleep(1)
    pid = nodepid(); before = rss(pid)
    tasks = [asyncio.create_task(poller(i)) for i in range(N)]
    while ready < N: await asyncio.sleep(0.1)
    await asyncio.sleep(float(os.environ.get("SETTLE", "5")))
    after = rss(pid)
    c = http.client.HTTPConnection("127.0.0.1", 29973); c.request("GET", "/metrics"); m = c.getresponse().read().decode()
    opened = [l for l in m.splitlines() if l.startswith("medlink_http_polls_open") or l.startswith("medlink_http_streams")]
    print(f"{MODE} {N}: RSS {before} -> {after} KB = {(after-before)*1024/N:.0f} B each; {opened}")
try:
    asyncio.run(main())
finally:
    try: os.kill(nodepid(), 2)
    except Exception: node.send_signal(2)
    node.wait()
