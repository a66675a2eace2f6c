#!/usr/bin/env python3
"""Where the proxies' CPU goes under load, peer beside peer: sampled with `perf record` while
bench.py's loads run (keep-alive and new connections with wrk, 50 connections; bulk with
iperf3), and sorted into four parts:

  kernel   everything in the kernel on the proxies' behalf: their system calls and the TCP
           work of the sockets they write to, which on one machine runs in the writer's context
  crypto   TLS record encryption and handshakes: the crypto library's own functions (for the
           Debian-built peers, whose libcrypto is stripped, all of libcrypto)
  copies   memcpy, memmove and memset in user space
  other    the rest of user space: the proxy itself, its runtime, its TLS library's framing

With the CPU time the proxies spent per unit of work (µs per request, per connection, per
KiB) this tells what part of a peer's cost any proxy that relays through local sockets and
encrypts each byte also pays (kernel and crypto), so that a target can be checked against
what is left to win: a pair that spent nothing at all in user space outside the crypto would
still cost `floor` per unit. Beside it: what the apps (the load generator and the servers
behind the pair) and the whole machine spent per unit, how busy the machine was (below 100 %,
the rate was bound by waiting, not by CPU), and the rate the same machine time would give if
the pair's user space outside the crypto cost nothing — the most that work in user space can
win. bench.py measures the rates; this script explains them (perf's sampling costs each peer
a few per cent of its rate).

Run as root, with perf installed (linux-perf): `sudo bench/profile.py [--ztunnel PATH]`
(about a minute per peer). Writes bench/results/profile.json and prints a table per workload.
"""

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the topology, certificates and peer configurations are bench.py's)
from bench import CLIENT, ns  # noqa: E402

# A symbol of the crypto library, whichever proxy links it (aws-lc in meshlet and ztunnel,
# OpenSSL in the Debian peers, where only exported names survive stripping).
CRYPTO_SYMBOL = re.compile(r"aes|gcm|ghash|chacha|poly1305|sha(1|256|512|3)|keccak|ecp_nistz|p256|p384|x25519|"
                           r"curve25519|ecdsa|bn_|rsaz|mont|EVP_|jent", re.I)
CRYPTO_DSO = re.compile(r"libcrypto")
COPY_SYMBOL = re.compile(r"^(__)?(memcpy|memmove|memset)|^__mem(cpy|move|set)_")
PARTS = ("kernel", "crypto", "copies", "other")
UNITS = {"keepalive": "request", "new_connection": "connection", "bulk": "KiB"}


def part(dso, symbol, kernel):
    if kernel:
        return "kernel"
    if CRYPTO_DSO.search(dso) or CRYPTO_SYMBOL.search(symbol):
        return "crypto"
    if COPY_SYMBOL.search(symbol):
        return "copies"
    return "other"


def parts(perf_data):
    """Shares of the samples in `perf_data` by part (fractions summing to 1)."""
    out = subprocess.run(["perf", "report", "-i", perf_data, "--stdio", "--no-children", "--sort", "dso,sym", "-q"],
                         capture_output=True, text=True, check=True).stdout
    shares = dict.fromkeys(PARTS, 0.0)
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[([k.])\]\s+(.*)", line)
        if m:
            pct, dso, mode, symbol = m.groups()
            shares[part(dso, symbol.strip(), mode == "k")] += float(pct) / 100
    total = sum(shares.values())
    return {k: v / total for k, v in shares.items()} if total else shares


def load(workload, target, ihost, iport, seconds):
    """Runs one workload; returns how many units it did."""
    if workload == "keepalive":
        return bench.wrk(target, seconds, 50)["requests"]
    if workload == "new_connection":
        return bench.wrk(target, seconds, 50, close=True)["requests"]
    out = ns(CLIENT, "iperf3", "-c", ihost, "-p", str(iport), "-t", str(seconds), "-J").stdout
    data = json.loads(out)
    if "error" in data:
        raise RuntimeError(f"iperf3 to {ihost}:{iport}: {data['error']}")
    return data["end"]["sum_received"]["bytes"] / 1024


def machine_busy_seconds():
    """CPU time the whole machine spent busy (every CPU, all but idle and iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_seconds():
    """User plus system time of this script's finished children (the load generator)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def profile(procs, names, apps, workload, target, ihost, iport, seconds, d, label):
    """CPU per unit of the pair and its parts, for one workload; and of the apps (the load
    generator and the servers), and of the whole machine, to see what bounds the rate."""
    pids = procs.pids(names)
    data = f"{d}/perf-{label}-{workload}.data"
    perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "1999", "-o", data,
                             "-p", ",".join(map(str, pids)), "--", "sleep", str(seconds + 1)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    # Every CPU figure over the load alone (perf's window is a little wider).
    (cpu0, sys0), app0 = procs.cpu_times(names), procs.cpu_seconds(apps)
    gen0, m0, t0 = children_seconds(), machine_busy_seconds(), time.time()
    units = load(workload, target, ihost, iport, seconds)
    gen1, m1, t1 = children_seconds(), machine_busy_seconds(), time.time()
    (cpu1, sys1), app1 = procs.cpu_times(names), procs.cpu_seconds(apps)
    _, err = perf.communicate()
    if perf.returncode != 0:
        raise RuntimeError(f"perf record: {err.strip()}")
    per = (lambda seconds_: seconds_ * 1e6 / units) if units else (lambda _: None)
    us = per(cpu1 - cpu0)
    shares = parts(data)
    return {"unit": UNITS[workload], "units": units, "rate": units / (t1 - t0),
            "cpu_us_per_unit": us,
            "system_share": (sys1 - sys0) / (cpu1 - cpu0) if cpu1 > cpu0 else None,
            "parts": shares,
            "floor_us_per_unit": us * (shares["kernel"] + shares["crypto"]) if us else None,
            # The load generator (wrk, iperf3's client) and the servers behind the pair.
            "apps_us_per_unit": per(gen1 - gen0 + app1 - app0),
            # Every CPU's busy time during the load, whoever spent it, and its share of what
            # the machine had (below 1: the rate was not bound by CPU alone).
            "machine_us_per_unit": per(m1 - m0),
            "machine_busy": (m1 - m0) / ((t1 - t0) * os.cpu_count())}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="meshlet,meshlet-per-connection,haproxy,nginx")
    ap.add_argument("--workloads", default="keepalive,new_connection,bulk")
    ap.add_argument("--topology", choices=("pods", "service"), default="pods")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--meshlet", help="the meshlet binary (default: the one scripts/release-binary.sh builds)")
    ap.add_argument("--ztunnel", default=os.environ.get("MESHLET_BENCH_ZTUNNEL"),
                    help="a ztunnel binary (built with --features testing), profiled beside the others")
    ap.add_argument("--out", default=os.path.join(bench.ROOT, "bench/results/profile.json"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("profile.py needs root (network namespaces, iptables, perf): run it with sudo")
    missing = [t for t in ("perf", "wrk", "iperf3", "nginx", "haproxy", "setpriv", "prlimit") if not shutil.which(t)]
    if missing:
        sys.exit(f"missing tools: {' '.join(missing)} (apt-get install -y linux-perf wrk iperf3 nginx-light "
                 "libnginx-mod-stream haproxy util-linux)")
    meshlet = a.meshlet or bench.release_binary()
    kinds = [k for k in a.only.split(",") if k != "ztunnel"]
    if a.ztunnel:
        bench.ZTUNNEL = os.path.abspath(a.ztunnel)
        kinds.append("ztunnel")
    workloads = a.workloads.split(",")
    topo = bench.Topo(a.topology == "service")
    d = tempfile.mkdtemp(prefix="meshlet-profile-")
    procs = bench.Procs(d)
    results = {}
    try:
        bench.certificates(meshlet, d)
        for kind in kinds:
            print(f"== {kind}", file=sys.stderr, flush=True)
            bench.topology(topo)
            backends = []
            for i, (netns, ip) in enumerate(topo.servers):
                backends += [f"app{i}", f"iperf3-{i}"]
                procs.start(f"app{i}", ["nginx", "-p", d, "-c", bench.nginx_app_conf(d, i), "-g", "daemon off;"],
                            netns=netns, wait_port=(ip, 8080))
                procs.start(f"iperf3-{i}", ["iperf3", "-s", "-p", "5201"], netns=netns, wait_port=(ip, 5201))
            target, ihost, iport, names = bench.start_pair(kind, procs, d, meshlet, topo)
            bench.wrk(target, 1, 4)  # warm-up, as bench.py
            results[kind] = {}
            for workload in workloads:
                if workload == "bulk":
                    bench.iperf(ihost, iport, 2)  # as bench.py: a bulk destination is known as one
                results[kind][workload] = profile(procs, names, backends, workload, target, ihost, iport,
                                                  a.seconds, d, kind)
            bench.stop_pair(procs, names)
            procs.stop(backends)
    finally:
        procs.stop()
        bench.teardown()
    report = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "topology": a.topology,
              "seconds": a.seconds, "results": results, "perf_data": d}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    json.dump(report, open(a.out, "w"), indent=2)
    for workload in workloads:
        print(f"\n{workload}: CPU per {UNITS[workload]} of the pair, its perf samples by part, and of the apps"
              " and the whole machine; the rate, how busy the machine was, and the rate the same machine time"
              " would give if the pair's user space outside the crypto cost nothing\n")
        print("| peer | pair µs | kernel | crypto | copies | other | floor µs | apps µs | machine µs | rate/s | busy"
              " | rate, pair's user space free |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for kind, by in results.items():
            r = by[workload]
            p, us, machine = r["parts"], r["cpu_us_per_unit"], r["machine_us_per_unit"]
            if not us or not machine:
                print(f"| {kind} | - | | | | | | | | | | |")
                continue
            free = machine - us * (p["copies"] + p["other"])
            print(f"| {kind} | {us:.2f} | " + " | ".join(f"{p[k] * 100:.0f} %" for k in PARTS)
                  + f" | {r['floor_us_per_unit']:.2f} | {r['apps_us_per_unit']:.2f} | {machine:.2f}"
                  f" | {r['rate']:.0f} | {r['machine_busy'] * 100:.0f} % | {r['rate'] * machine / free:.0f} |")
    print(f"\nJSON in {a.out}; perf data in {d} (perf report -i FILE)")


if __name__ == "__main__":
    main()
