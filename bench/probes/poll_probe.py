#!/usr/bin/env python3
"""Long-poll / SSE memory probe: N idle long-polls (or SSE streams), N identities; RSS per poll.
usage: poll_probe.py BIN N poll|sse|idle [heaptrack]"""
import asyncio, os, subprocess, sys, tempfile, time, base64, resource, http.client
BIN, N, MODE = sys.argv[1], int(sys.argv[2]), sys.argv[3]
import probe_node
wrapper = ["heaptrack", "-o", "/tmp/heap.poll"] if len(sys.argv) > 4 else []
node, work = probe_node.start(BIN, N, 29971, "pprobe.", "max_wait_s = 120", wrapper)
rss = probe_node.rss_kb
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
    probe_node.wait_ready(29973)
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
