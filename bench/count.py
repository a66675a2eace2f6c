#!/usr/bin/env python3
"""Counts, rather than times, what a proxy pair spends per request, per new connection and per
byte: user-space instructions (valgrind's callgrind) and system calls (perf's
raw_syscalls:sys_enter tracepoint), for meshlet and for the TLS tunnel peers of bench.py, and
for ztunnel when given its binary (`--ztunnel PATH`, as bench.py; system calls only: it is not
run under valgrind). `--by-syscall` also counts each system call by name, so that two proxies'
counts can be compared call by call.

Wall-clock measurements on a shared 2-vCPU VM move by 10 % from run to run; these counts do not.
The load is serial (one request at a time, one connection at a time), so every count is the same
from one run to the next for the same binaries and configuration: it tells whether a change made
the proxy do less work, and where, without a quiet machine. It does not tell throughput under
load, where batching changes the picture (bench.py measures that).

Each scenario runs in the pods topology of bench.py, natively under `perf stat` for the system
calls (valgrind's own would pollute them), and under callgrind for the instructions. perf counts
only while a workload runs, after a warm-up. callgrind counts a whole process lifetime (its
`callgrind_control -z` cannot reach a process that changed its user, as the proxy runs), so each
workload gets a lifetime of its own, warm-up included, and the count of a lifetime with the warm-up
alone is subtracted: start-up, handshakes and shutdown cancel out.

  new conn     M connections one after the other, one request each, `Connection: close`
  keep-alive   one connection, N requests one after the other (each a 29-byte response); the
               count of one new connection (with its first request) is taken off
  bulk         iperf3 -n BYTES through the pair, counted per KiB

meshlet runs with `outbound.bulk_rate: 0` here, so that "meshlet" counts bulk on the pooled
connection (under valgrind a transfer's rate, which the adaptive rule looks at, depends on the
machine); "meshlet-per-connection" counts it on a connection of its own, the path the adaptive
rule gives a bulk destination.

Run as root: `sudo bench/count.py` (about 4 minutes). Writes bench/results/count.json and prints
a table; callgrind's files stay in the printed directory for `callgrind_annotate`.
"""

import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the topology, certificates and peer configurations are bench.py's)
from bench import CLIENT, SERVER, SERVER_IP, ns, sh  # noqa: E402

SERIAL_CLIENT = r"""
import socket, sys
host, port, mode, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def response(s, buf):
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit(f"connection closed mid-response after {done} requests")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
    while len(rest) < length:
        rest += s.recv(65536)
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"unexpected answer: {head[:40]!r}")
    return rest[length:]

done = 0
if mode == "keepalive":
    s = socket.create_connection((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    for done in range(n):
        s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        buf = response(s, buf)
    s.close()
else:
    for done in range(n):
        s = socket.create_connection((host, port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        response(s, b"")
        s.close()
print("ok")
"""


def meshlet_conf(d, who, transport):
    path = bench.meshlet_conf(d, who, transport)
    if who == "client":
        # Bulk stays on the transport under test (see the module doc).
        open(path, "a").write("  bulk_rate: 0\n")
    return path


class Pair:
    """One scenario's proxies, started natively, or under callgrind writing into `cg_dir`."""

    def __init__(self, kind, procs, d, meshlet, cg_dir):
        self.kind, self.procs, self.d = kind, procs, d
        self.cg_dir = cg_dir
        wrap = []
        if cg_dir:
            shutil.rmtree(self.cg_dir, ignore_errors=True)
            os.makedirs(self.cg_dir)
            os.chmod(self.cg_dir, 0o777)
            wrap = ["valgrind", "--tool=callgrind", "--trace-children=yes", "--dump-instr=no", "--vgdb=no",
                    f"--callgrind-out-file={self.cg_dir}/%p.out"]
        self.names = []
        if kind == "ztunnel":
            # As bench.py runs it (its own redirect rules, HBONE on 15008); natively only.
            if cg_dir:
                raise RuntimeError("ztunnel is counted for system calls only")
            target, _, _, self.names = bench.start_pair("ztunnel", procs, d, meshlet, bench.Topo(False))
            host, port = target.rsplit(":", 1)
            self.http, self.iperf = (host, int(port)), (host, 5201)
            return
        if kind.startswith("meshlet"):
            transport = "per_connection" if kind == "meshlet-per-connection" else "pooled"
            for name, netns, who in (("meshlet-client", CLIENT, "client"), ("meshlet-server", SERVER, "server")):
                ns(netns, meshlet, "init")
                procs.start(name, ["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups", *wrap,
                                   meshlet, "proxy", "--config", meshlet_conf(d, who, transport)], netns=netns)
                self.names.append(name)
            for netns in (CLIENT, SERVER):
                wait_listening(netns, "127.0.0.1", 15021, procs, self.names)
            self.http, self.iperf = (SERVER_IP, 8080), (SERVER_IP, 5201)
            return
        bench.haproxy_confs(d, SERVER_IP)
        bench.nginx_stream_confs(d, SERVER_IP)
        if kind == "haproxy":
            server, client = [["haproxy", "-db", "-f", f"{d}/haproxy-{w}.cfg"] for w in ("server", "client")]
        else:
            server, client = [["nginx", "-p", d, "-c", f"{d}/ngx-{w}.conf", "-g", "daemon off;"] for w in ("server", "client")]
        procs.start(f"{kind}-server", wrap + server, netns=SERVER)
        procs.start(f"{kind}-client", wrap + client, netns=CLIENT)
        self.names = [f"{kind}-client", f"{kind}-server"]
        wait_listening(SERVER, SERVER_IP, 18443, procs, self.names)
        wait_listening(CLIENT, "127.0.0.1", 18080, procs, self.names)
        self.http, self.iperf = ("127.0.0.1", 18080), ("127.0.0.1", 15201)

    def pids(self):
        return self.procs.pids(self.names)

    def stop(self):
        """Stops the pair gracefully (callgrind writes its counts at exit) and waits for it."""
        killed = self.procs.stop(self.names, grace=120)
        if killed:
            raise RuntimeError(f"{', '.join(killed)} did not exit on SIGTERM; their counts are lost")

    def instructions(self):
        """Instructions over the pair's lifetime, all its processes together."""
        total = 0
        for f in glob.glob(f"{self.cg_dir}/*.out"):
            m = re.search(r"^(?:summary|totals): (\d+)", open(f).read(), re.M)
            total += int(m.group(1)) if m else 0
        if total == 0:
            raise RuntimeError(f"callgrind wrote no counts for {self.kind} in {self.cg_dir}")
        return total


def wait_listening(netns, host, port, procs, names, seconds=120):
    # Under valgrind a proxy takes seconds to start. Asked with ss, not by connecting: every
    # probe connection would be work for the proxy, and their number would depend on timing.
    deadline = time.time() + seconds
    while time.time() < deadline:
        if ns(netns, "ss", "-Hltn", f"sport = :{port}", check=False).stdout.strip():
            return
        for n in names:
            p = procs.procs.get(n)
            if p is not None and p.poll() is not None:
                raise RuntimeError(f"{n} exited: {open(os.path.join(procs.logdir, n + '.log')).read()[-2000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {host}:{port} in {netns} after {seconds}s")


def serial(d, target, mode, n):
    script = f"{d}/serial.py"
    open(script, "w").write(SERIAL_CLIENT)
    r = ns(CLIENT, sys.executable, script, target[0], str(target[1]), mode, str(n), check=False)
    if r.returncode != 0 or "ok" not in r.stdout:
        raise RuntimeError(f"serial {mode} client to {target}: {r.stdout} {r.stderr}")


def iperf_bytes(target, nbytes):
    r = ns(CLIENT, "iperf3", "-c", target[0], "-p", str(target[1]), "-n", str(nbytes), "-J")
    data = json.loads(r.stdout)
    if "error" in data:
        raise RuntimeError(f"iperf3 to {target}: {data['error']}")
    return data["end"]["sum_received"]["bytes"]


class Syscalls:
    """perf stat on the pair's processes for the duration of a `with` block: the count of all
    system calls, and with `by_name` also each system call's own count (`self.names`)."""

    def __init__(self, pair, by_name=False):
        self.pair, self.by_name = pair, by_name

    def __enter__(self):
        pids = ",".join(str(p) for p in self.pair.pids())
        events = "raw_syscalls:sys_enter" + (",syscalls:sys_enter_*" if self.by_name else "")
        self.proc = subprocess.Popen(["perf", "stat", "-x,", "-e", events, "-p", pids],
                                     stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)  # perf attaches
        return self

    def __exit__(self, *exc):
        time.sleep(0.1)
        self.proc.send_signal(signal.SIGINT)
        err = self.proc.communicate()[1]
        m = re.search(r"^(\d+),,raw_syscalls:sys_enter", err, re.M)
        if not m:
            raise RuntimeError(f"perf stat gave no syscall count: {err.strip()[-500:]}")
        self.count = int(m.group(1))
        self.names = {n: int(c) for c, n in re.findall(r"^(\d+),,syscalls:sys_enter_(\w+)", err, re.M) if int(c)}


def workloads(pair, d, a):
    """(name, unit count, run) for each workload."""
    return [("new_connection", a.connections, lambda: serial(d, pair.http, "close", a.connections)),
            ("keepalive", a.requests, lambda: serial(d, pair.http, "keepalive", a.requests)),
            ("bulk_kib", a.bytes / 1024, lambda: iperf_bytes(pair.iperf, a.bytes))]


def per_unit(out, name, total, units):
    """The keep-alive load opens one connection (a whole handshake for a tunnel, a stream for
    meshlet) and sends its first request on it: that is one `new_connection`, counted just
    before, so it comes off, and the rest is per request."""
    if name == "keepalive":
        return (total - out["new_connection"]) / (units - 1)
    return total / units


def by_syscall(names, a):
    """Each system call's count per unit of each workload, the most frequent first (the keep-alive
    workload's first connection taken off as in `per_unit`)."""
    out = {}
    for name, units, _ in workloads(None, None, a):
        counts = dict(names[name])
        if name == "keepalive":
            first = names["new_connection"]
            units = units - 1
            counts = {n: c - first.get(n, 0) / a.connections for n, c in counts.items()}
        out[name] = {n: round(c / units, 3) for n, c in sorted(counts.items(), key=lambda kv: -kv[1]) if c / units >= 0.005}
    return out


def warm_up(pair, d):
    # Serial, so that its count is the same every time (a streaming transfer's is not: how
    # bytes fall into reads and TLS records depends on timing). It opens the pooled connection.
    serial(d, pair.http, "keepalive", 20)
    serial(d, pair.http, "close", 5)


def lifetime(kind, d, a, cg_dir=None, work=None):
    """One life of the pair: start, warm up, then either count each workload's system calls
    (natively) or run `work` and return the pair's instructions (under callgrind, writing into
    `cg_dir`)."""
    procs = bench.Procs(d)
    bench.topology(bench.Topo(False))
    try:
        procs.start("app", ["nginx", "-p", d, "-c", bench.nginx_app_conf(d, 0), "-g", "daemon off;"],
                    netns=SERVER, wait_port=(SERVER_IP, 8080))
        procs.start("iperf3", ["iperf3", "-s", "-p", "5201"], netns=SERVER, wait_port=(SERVER_IP, 5201))
        pair = Pair(kind, procs, d, a.meshlet, cg_dir)
        warm_up(pair, d)
        if cg_dir is None:
            out, names = {}, {}
            for name, units, run in workloads(pair, d, a):
                with Syscalls(pair, a.by_syscall) as s:
                    run()
                out[name] = per_unit(out, name, s.count, units)
                if a.by_syscall:
                    names[name] = s.names
            if a.by_syscall:
                out["by_syscall"] = by_syscall(names, a)
            return out
        for name, units, run in workloads(pair, d, a):
            if name == work:
                run()
        pair.stop()
        return pair.instructions()
    finally:
        procs.stop()
        bench.teardown()


def instructions(kind, d, a):
    """Instructions per unit of each workload: its lifetime minus a warm-up-only lifetime."""
    cg = f"{d}/callgrind-{kind}"
    base = lifetime(kind, d, a, f"{cg}-warm-up")
    out = {}
    for name, units, _ in workloads(None, d, a):
        out[name] = per_unit(out, name, lifetime(kind, d, a, f"{cg}-{name}", name) - base, units)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="meshlet,meshlet-per-connection,haproxy,nginx")
    ap.add_argument("--requests", type=int, default=2000, help="keep-alive requests")
    ap.add_argument("--connections", type=int, default=200, help="new connections")
    ap.add_argument("--bytes", type=int, default=32 << 20, help="bulk bytes")
    ap.add_argument("--no-callgrind", action="store_true", help="system calls only (fast)")
    ap.add_argument("--by-syscall", action="store_true", help="also count each system call by name (printed, and in the JSON)")
    ap.add_argument("--meshlet", help="the meshlet binary (default: the one scripts/release-binary.sh builds)")
    ap.add_argument("--ztunnel", default=os.environ.get("MESHLET_BENCH_ZTUNNEL"),
                    help="ztunnel's binary, built beside the project (bench/README.md): adds its system calls")
    ap.add_argument("--out", default=os.path.join(bench.ROOT, "bench/results/count.json"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("count.py needs root (network namespaces, iptables, perf): run it with sudo")
    tools = ["ip", "iperf3", "nginx", "haproxy", "perf"] + ([] if a.no_callgrind else ["valgrind"])
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        sys.exit(f"missing tools: {' '.join(missing)} (apt-get install -y linux-perf valgrind iperf3 nginx-light libnginx-mod-stream haproxy)")
    a.meshlet = a.meshlet or bench.release_binary()
    kinds = a.only.split(",")
    if a.ztunnel:
        bench.ZTUNNEL = os.path.abspath(a.ztunnel)
        kinds += [] if "ztunnel" in kinds else ["ztunnel"]
    elif "ztunnel" in kinds:
        sys.exit("ztunnel needs its binary: --ztunnel PATH (or MESHLET_BENCH_ZTUNNEL)")
    d = tempfile.mkdtemp(prefix="meshlet-count-")
    os.chmod(d, 0o755)
    bench.certificates(a.meshlet, d)
    results = {}
    for kind in kinds:
        print(f"== {kind}: system calls", file=sys.stderr, flush=True)
        results[kind] = {"syscalls": lifetime(kind, d, a)}
        # ztunnel under valgrind is not counted: its instructions are left out, not guessed.
        if not a.no_callgrind and kind != "ztunnel":
            print(f"== {kind}: instructions (callgrind)", file=sys.stderr, flush=True)
            results[kind]["instructions"] = instructions(kind, d, a)
    report = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "commit": sh("git", "-C", bench.ROOT, "rev-parse", "--short", "HEAD", check=False).stdout.strip(),
              "requests": a.requests, "connections": a.connections, "bytes": a.bytes, "results": results}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    json.dump(report, open(a.out, "w"), indent=2)
    cols = [("syscalls", "keepalive", ".1f"), ("syscalls", "new_connection", ".1f"), ("syscalls", "bulk_kib", ".3f"),
            ("instructions", "keepalive", ".0f"), ("instructions", "new_connection", ".0f"), ("instructions", "bulk_kib", ".0f")]
    print("| scenario | syscalls/request | syscalls/new conn | syscalls/KiB | instructions/request | instructions/new conn | instructions/KiB |")
    print("|---" * 7 + "|")
    for kind, r in results.items():
        cells = [format(r[k][w], f) if k in r else "-" for k, w, f in cols]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    for kind, r in results.items():
        for work, counts in r["syscalls"].get("by_syscall", {}).items():
            print(f"{kind} {work}: " + ", ".join(f"{n} {c:g}" for n, c in counts.items()))
    print(f"\nboth proxies of the pair; {a.requests} serial keep-alive requests, {a.connections} serial connections, "
          f"{a.bytes} bytes of iperf3; JSON in {a.out}; callgrind files in {d}")


if __name__ == "__main__":
    main()
