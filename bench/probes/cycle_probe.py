#!/usr/bin/env python3
"""Connect/disconnect cycles (developer tool): N raw MQTT clients connect and subscribe, then all
close; repeated. Prints node RSS after each connect and each disconnect, to see whether memory
comes back.

usage: cycle_probe.py BIN N CYCLES [--distinct]
"""
import asyncio, json, os, struct, subprocess, sys, tempfile, time, base64, http.client

BIN, N = sys.argv[1], int(sys.argv[2])
DISTINCT = "--distinct" in sys.argv  # each cycle new identities
TOTAL = N * (int(sys.argv[3]) if DISTINCT else 1)
import probe_node

node, work = probe_node.start(BIN, TOTAL, 19961, "cycle.")


def rss(pid):
    return probe_node.rss_kb(pid)


def enc_str(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def varint(n):
    out = b""
    while True:
        d = n % 128
        n //= 128
        if n:
            d |= 0x80
        out += bytes([d])
        if not n:
            return out


def connect_pkt(cid, user, pw):
    vh = enc_str("MQTT") + bytes([4, 0xC2]) + struct.pack(">H", 600)
    body = vh + enc_str(cid) + enc_str(user) + enc_str(pw)
    return bytes([0x10]) + varint(len(body)) + body


def sub_pkt(topic):
    body = struct.pack(">H", 1) + enc_str(topic) + bytes([1])
    return bytes([0x82]) + varint(len(body)) + body



CYCLES = int(sys.argv[3])


async def one(i):
    name = "pt-%05d" % i
    for _ in range(200):
        try:
            r, w = await asyncio.open_connection("127.0.0.1", 19961)
            break
        except OSError:
            await asyncio.sleep(0.05)
    w.write(connect_pkt(name, name, "pw"))
    ack = await r.readexactly(4)
    assert ack[3] == 0, ack
    w.write(sub_pkt(f"org/hb/{name}/cmd"))
    await r.readexactly(5)
    return w


async def main():
    probe_node.wait_ready(19963)
    await asyncio.sleep(2)
    print(f"start: {rss(node.pid)//1024} MB", flush=True)
    for cycle in range(CYCLES):
        sem = asyncio.Semaphore(500)
        async def gated(i):
            async with sem:
                return await one(i + (cycle * N if DISTINCT else 0))
        writers = await asyncio.gather(*(gated(i) for i in range(N)))
        await asyncio.sleep(3)
        up = rss(node.pid)
        for w in writers:
            w.close()
        await asyncio.sleep(5)
        down = rss(node.pid)
        print(f"cycle {cycle+1}: {N} connected {up//1024} MB, all closed {down//1024} MB", flush=True)

try:
    asyncio.run(main())
finally:
    node.send_signal(2); node.wait()
