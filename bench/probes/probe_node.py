"""A throwaway node for the probes: N client identities `pt-00000`… with one cheap, bench-only
argon2 hash (password `pw`), listeners on three consecutive ports from `base`, and RSS readers."""
import os, resource, subprocess, tempfile, time, http.client

from argon2 import PasswordHasher, Type


def start(binary, identities, base, prefix, extra_http="", wrapper=()):
    """Writes the credentials and config, starts `binary node`; returns (process, work dir)."""
    ph = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.ID)
    work = tempfile.mkdtemp(prefix=prefix)
    h = ph.hash("pw")
    with open(f"{work}/creds.toml", "w") as f:
        for i in range(identities):
            f.write('[[identity]]\nname = "pt-%05d"\nrole = "client"\npassword_hash = "%s"\n' % (i, h))
    os.chmod(f"{work}/creds.toml", 0o600)
    with open(f"{work}/node.toml", "w") as f:
        f.write(f"""[node]
id = "hb"
data_dir = "{work}/data"
credentials = "{work}/creds.toml"
[[listener]]
kind = "tcp"
addr = "127.0.0.1:{base}"
[http]
addr = "127.0.0.1:{base + 1}"
{extra_http}
[metrics]
addr = "127.0.0.1:{base + 2}"
[limits]
rate_per_second = 0
max_connections = 19990
""")
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    node = subprocess.Popen(list(wrapper) + [binary, "node", "--config", f"{work}/node.toml"],
                            stderr=open(f"{work}/node.log", "w"), stdout=subprocess.DEVNULL,
                            env={**os.environ, "MEDLINK_LOG": "warn"})
    return node, work


def wait_ready(metrics_port):
    """Until the node answers `/healthz` (at most 20 s)."""
    for _ in range(100):
        try:
            c = http.client.HTTPConnection("127.0.0.1", metrics_port)
            c.request("GET", "/healthz")
            c.getresponse().read()
            return
        except OSError:
            time.sleep(0.2)


def rss_kb(pid):
    """VmRSS of `pid` in kB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
