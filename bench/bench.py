#!/usr/bin/env python3
"""meshlet benchmark: direct traffic, the meshlet sidecar pair, and mTLS tunnel pairs built
from haproxy, nginx (stream) and stunnel, measured in one run under the same conditions.

Topology: two network namespaces joined by a veth pair, client pod 198.18.0.1 and server pod
198.18.0.2 (RFC 2544 benchmarking range). The server pod runs nginx (small fixed response, one
worker) on :8080 and iperf3 on :5201. Every proxy runs with one worker thread.

  direct    client -> 198.18.0.2:8080
  meshlet   meshlet init + meshlet proxy (uid 1337) in both pods; client -> 198.18.0.2:8080
  haproxy   client -> 127.0.0.1:18080 [haproxy] --TLS 1.3, mutual--> [haproxy] :18443 -> 127.0.0.1:8080
  nginx     same with nginx's stream module
  stunnel   same with stunnel
  relay     the haproxy pair without TLS: the floor any pair of user-space relays pays here
  meshlet-plain  meshlet's capture and relaying with TLS off (outbound mtls off, inbound
            permissive): the floor of the sidecar architecture itself
  meshlet-previous  "meshlet" with another build (`--previous BIN`, e.g. the last release built
            from git), interleaved with this one: a no-regression check within one run

Metrics: keep-alive requests/s and p50/p99 (wrk, 50 connections), new connections/s
(wrk with `Connection: close`), p50/p99 at a fixed 2,000 requests/s (oha, when installed:
`cargo install oha`), bulk throughput (iperf3), proxy CPU time per request (both proxies, during
the keep-alive run), proxy RSS idle and after load, and memory per idle connection (N idle
connections held through the pair), and the first request after the pair starts (curl, before any
warm-up: the pair's first handshake and whatever else a proxy does only once; the peers' start-up
check connects once first, which lets haproxy handshake with its server side in advance).

Second topology, `svc:` scenarios (as in a cluster): the pods hang off a routing "node" namespace
that publishes a Service address 198.18.9.10 the way kube-proxy's iptables mode does (DNAT per
connection to one of two server pods 198.18.0.2 and 198.18.0.3, chosen at random, sources kept).
The client calls 198.18.9.10:80, translated to port 8080 of a backend; the tunnels' client side
connects to 198.18.9.10:18443. Every server pod runs its own app, iperf3 and server-side proxy;
the bulk (iperf3) Services have one backend, since iperf3's control and data connections must
meet the same server.

The namespaces are built here, in Python, rather than with meshlet-lab (the Rust harness the
tests and the demo use, whose pods share a bridge): the benchmark needs only a release binary
and its peers, and a veth pair between the two pods; the Service node follows the same recipe as
the lab's `make_node` (routing, DNAT per connection, sources kept).

Run as root: `sudo bench/bench.py` (full), `bench/bench.py --smoke` (seconds, numbers not judged).
Writes bench/results/latest.json and prints a table.
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

CLIENT, SERVER, SERVER2, NODE = "mlbench-client", "mlbench-server", "mlbench-server2", "mlbench-node"
CLIENT_IP, SERVER_IP, SERVER2_IP, NODE_IP = "198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.0.254"
VIP = "198.18.9.10"
# (service port, target port, backends): the app's Service maps 80 to 8080, as Services often do.
# iperf3's control and data connections must meet the same server, so its Services (direct and
# through the tunnels) have one backend (kube-proxy would need sessionAffinity: ClientIP).
SERVICE_PORTS = ((80, 8080, 2), (5201, 5201, 1), (18443, 18443, 2), (15443, 15443, 1))


class Topo:
    """Where the servers are and what the client calls, in one of the two topologies."""

    def __init__(self, service):
        self.service = service
        self.servers = [(SERVER, SERVER_IP), (SERVER2, SERVER2_IP)] if service else [(SERVER, SERVER_IP)]
        # The address the client side dials: a Service address, or the server pod itself.
        self.host = VIP if service else SERVER_IP
        self.app_port = 80 if service else 8080
        self.prefix = "svc:" if service else ""
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every process gets the hard limit on open files; a proxied connection holds two descriptors in
# each proxy, so the idle-connection measurement is capped at about half of it.
NOFILE = str(resource.getrlimit(resource.RLIMIT_NOFILE)[1])


def sh(*args, check=True, capture=True, **kw):
    res = subprocess.run(args, check=False, text=True, capture_output=capture, **kw)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def ns(name, *args, **kw):
    return sh("ip", "netns", "exec", name, *args, **kw)


class Procs:
    """Long-running processes, each in its own session so its CPU and memory can be summed."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.procs = {}

    def start(self, name, args, wait_port=None, netns=None):
        log = open(os.path.join(self.logdir, f"{name}.log"), "w")
        cmd = (["ip", "netns", "exec", netns] if netns else []) + ["prlimit", f"--nofile={NOFILE}:{NOFILE}"] + args
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = p
        if wait_port:
            host, port = wait_port
            deadline = time.time() + 10
            while time.time() < deadline:
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited: {open(log.name).read()[-2000:]}")
                if ns(netns or CLIENT, "bash", "-c", f"exec 3<>/dev/tcp/{host}/{port}", check=False).returncode == 0:
                    return p
                time.sleep(0.05)
            raise RuntimeError(f"{name} did not listen on {host}:{port}: {open(log.name).read()[-2000:]}")
        return p

    def pids(self, names):
        sids = {self.procs[n].pid for n in names if n in self.procs}
        out = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[3]) in sids:  # session id
                    out.append(int(pid))
            except (OSError, IndexError, ValueError):
                pass
        return out

    def cpu_times(self, names):
        """User plus system time of the processes, and the system time alone, read together."""
        tick = os.sysconf("SC_CLK_TCK")
        user = system = 0
        for pid in self.pids(names):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                user, system = user + int(fields[11]), system + int(fields[12])  # utime, stime
            except (OSError, IndexError, ValueError):
                pass
        return (user + system) / tick, system / tick

    def cpu_seconds(self, names):
        """User plus system time of the processes."""
        return self.cpu_times(names)[0]

    def memory_kb(self, names, field="VmRSS"):
        total = 0
        for pid in self.pids(names):
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith(field + ":"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total

    def stop(self, names=None, grace=5):
        """SIGTERM, then SIGKILL after `grace` seconds; returns the names that had to be killed."""
        killed = []
        for name in list(names or self.procs):
            p = self.procs.pop(name, None)
            if p is None:
                continue
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=grace)
            except ProcessLookupError:
                p.wait()  # it had exited already
            except subprocess.TimeoutExpired:
                killed.append(name)
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return killed


def release_binary():
    """The project's one release build (scripts/release-binary.sh builds it if needed)."""
    out = subprocess.run([os.path.join(ROOT, "scripts/release-binary.sh")], check=True,
                         stdout=subprocess.PIPE, text=True)
    return out.stdout.strip()


def topology(topo):
    teardown()
    if not topo.service:
        sh("ip", "netns", "add", CLIENT)
        sh("ip", "netns", "add", SERVER)
        sh("ip", "-n", CLIENT, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", SERVER)
        for name, ip in ((CLIENT, CLIENT_IP), (SERVER, SERVER_IP)):
            sh("ip", "-n", name, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", name, "link", "set", "eth0", "up")
            sh("ip", "-n", name, "link", "set", "lo", "up")
        return
    # The node: a bridge for the pods, an address they route the Service through, and
    # kube-proxy's iptables-mode translation (random per connection; replies bridged back
    # through conntrack with br_netfilter, as kube-proxy needs on a bridge CNI).
    sh("ip", "netns", "add", NODE)
    sh("ip", "-n", NODE, "link", "set", "lo", "up")
    sh("ip", "-n", NODE, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", NODE, "addr", "add", f"{NODE_IP}/24", "dev", "br0")
    sh("ip", "-n", NODE, "link", "set", "br0", "up")
    ns(NODE, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    ns(NODE, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
    for i, (name, ip) in enumerate(((CLIENT, CLIENT_IP), (SERVER, SERVER_IP), (SERVER2, SERVER2_IP))):
        sh("ip", "netns", "add", name)
        sh("ip", "-n", NODE, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0", "netns", name)
        sh("ip", "-n", NODE, "link", "set", f"p{i}", "master", "br0", "up")
        sh("ip", "-n", name, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", name, "route", "add", f"{VIP}/32", "via", NODE_IP)
    rules = ["*nat"]
    for port, target, n in SERVICE_PORTS:
        chain = f"SVC-{port}"
        rules += [f":{chain} - [0:0]", f"-A PREROUTING -d {VIP}/32 -p tcp --dport {port} -j {chain}"]
        if n == 2:
            rules.append(f"-A {chain} -p tcp -m statistic --mode random --probability 0.50000 -j DNAT --to-destination {SERVER_IP}:{target}")
            rules.append(f"-A {chain} -p tcp -j DNAT --to-destination {SERVER2_IP}:{target}")
        else:
            rules.append(f"-A {chain} -p tcp -j DNAT --to-destination {SERVER_IP}:{target}")
    rules += ["COMMIT", ""]
    ns(NODE, "iptables-restore", "--noflush", input="\n".join(rules))


def teardown():
    for name in (CLIENT, SERVER, SERVER2, NODE):
        pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
        for pid in pids:
            sh("kill", "-9", pid, check=False)
        sh("ip", "netns", "del", name, check=False)


def certificates(meshlet, d):
    sh(meshlet, "cert", "ca", "--trust-domain", "cluster.local", "--out", f"{d}/ca")
    for who in ("client", "server"):
        sh(meshlet, "cert", "issue", "--ca", f"{d}/ca", "--spiffe-id", f"spiffe://cluster.local/ns/bench/sa/{who}",
           "--dns", f"{who}.bench", "--out", f"{d}/{who}")
        with open(f"{d}/{who}/both.pem", "w") as f:
            f.write(open(f"{d}/{who}/tls.crt").read() + open(f"{d}/{who}/tls.key").read())
        sh("chown", "-R", "1337:1337", f"{d}/{who}")
    os.chmod(d, 0o755)


def nginx_app_conf(d, i):
    conf = f"""worker_processes 1;
worker_rlimit_nofile 200000;
pid {d}/nginx-app{i}.pid;
error_log {d}/nginx-app.err;
events {{ worker_connections 60000; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  keepalive_requests 1000000;
  server {{ listen 8080 reuseport; location / {{ return 200 "hello from the benchmark app\\n"; }} }}
}}
"""
    os.makedirs(f"{d}/tmp", exist_ok=True)
    path = f"{d}/nginx-app{i}.conf"
    open(path, "w").write(conf)
    return path


# Each tunnel maps client-side 127.0.0.1:18080 -> server :18443 -> app :8080, and
# 127.0.0.1:15201 -> server :15443 -> iperf3 :5201.
MAPS = ((18080, 18443, 8080), (15201, 15443, 5201))


def haproxy_confs(d, host):
    # Tuned as haproxy's configuration manual says for a TLS tunnel: one thread here (the
    # comparison is one worker each), 32 KB buffers (tune.bufsize: fewer reads and writes per
    # byte on bulk transfers), kernel splicing wherever both sides are plain TCP (the relay
    # floor; haproxy skips it on TLS sides), TLS session reuse towards the server (its default).
    # maxpipes bounds the splice pipes so that maxconn still fits the open-files limit.
    head = ("global\n  nbthread 1\n  maxconn 9000\n  tune.bufsize 32768\n  maxpipes 256\n"
            "  ssl-default-bind-options ssl-min-ver TLSv1.3\n  ssl-default-server-options ssl-min-ver TLSv1.3\n"
            "defaults\n  mode tcp\n  option splice-auto\n  timeout connect 5s\n  timeout client 5m\n  timeout server 5m\n  maxconn 9000\n")
    client, server = head, head
    for local, tls, app in MAPS:
        client += (f"frontend f{local}\n  bind 127.0.0.1:{local}\n  default_backend b{local}\n"
                   f"backend b{local}\n  server s {host}:{tls} ssl crt {d}/client/both.pem ca-file {d}/ca/ca.crt verify required verifyhost server.bench\n")
        server += (f"frontend f{tls}\n  bind 0.0.0.0:{tls} ssl crt {d}/server/both.pem ca-file {d}/ca/ca.crt verify required\n  default_backend b{tls}\n"
                   f"backend b{tls}\n  server a 127.0.0.1:{app}\n")
    open(f"{d}/haproxy-client.cfg", "w").write(client)
    open(f"{d}/haproxy-server.cfg", "w").write(server)
    # The same pair without TLS: what two user-space relays cost in this topology, whatever
    # they do with the bytes. No sidecar pair can do better than this on a column where the
    # kernel's work dominates (see bench/README.md).
    client, server = head, head
    for local, tls, app in MAPS:
        client += (f"frontend f{local}\n  bind 127.0.0.1:{local}\n  default_backend b{local}\n"
                   f"backend b{local}\n  server s {host}:{tls}\n")
        server += (f"frontend f{tls}\n  bind 0.0.0.0:{tls}\n  default_backend b{tls}\n"
                   f"backend b{tls}\n  server a 127.0.0.1:{app}\n")
    open(f"{d}/relay-client.cfg", "w").write(client)
    open(f"{d}/relay-server.cfg", "w").write(server)


def nginx_stream_confs(d, host):
    # Tuned as nginx's stream module documents: one worker (the comparison is one each), 64 KB
    # proxy buffers (proxy_buffer_size; the default 16k costs more reads per byte on bulk),
    # a shared TLS session cache on the server and session reuse on the client (its default),
    # tcp_nodelay (its default).
    head = (f"load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nworker_processes 1;\nworker_rlimit_nofile 200000;\n"
            f"events {{ worker_connections 60000; }}\n")
    client = head + f"pid {d}/ngx-client.pid;\nerror_log {d}/ngx-client.err;\nstream {{\n  proxy_buffer_size 64k;\n"
    server = head + f"pid {d}/ngx-server.pid;\nerror_log {d}/ngx-server.err;\nstream {{\n  proxy_buffer_size 64k;\n  ssl_session_cache shared:SSL:10m;\n"
    for local, tls, app in MAPS:
        client += (f"  server {{ listen 127.0.0.1:{local}; proxy_pass {host}:{tls}; proxy_ssl on;\n"
                   f"    proxy_ssl_protocols TLSv1.3; proxy_ssl_certificate {d}/client/tls.crt; proxy_ssl_certificate_key {d}/client/tls.key;\n"
                   f"    proxy_ssl_trusted_certificate {d}/ca/ca.crt; proxy_ssl_verify on; proxy_ssl_name server.bench; }}\n")
        server += (f"  server {{ listen 0.0.0.0:{tls} ssl; ssl_protocols TLSv1.3;\n"
                   f"    ssl_certificate {d}/server/tls.crt; ssl_certificate_key {d}/server/tls.key;\n"
                   f"    ssl_client_certificate {d}/ca/ca.crt; ssl_verify_client on; proxy_pass 127.0.0.1:{app}; }}\n")
    open(f"{d}/ngx-client.conf", "w").write(client + "}\n")
    open(f"{d}/ngx-server.conf", "w").write(server + "}\n")


def stunnel_confs(d, host):
    # Tuned as stunnel's manual suggests for latency: TCP_NODELAY on both sides of each tunnel
    # (socket = l:/r:); its session cache is on by default.
    client = f"foreground = yes\npid =\nsslVersionMin = TLSv1.3\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n"
    server = client
    for local, tls, app in MAPS:
        client += (f"[c{local}]\nclient = yes\naccept = 127.0.0.1:{local}\nconnect = {host}:{tls}\n"
                   f"cert = {d}/client/tls.crt\nkey = {d}/client/tls.key\nCAfile = {d}/ca/ca.crt\nverifyChain = yes\ncheckHost = server.bench\n")
        server += (f"[s{tls}]\naccept = 0.0.0.0:{tls}\nconnect = 127.0.0.1:{app}\n"
                   f"cert = {d}/server/tls.crt\nkey = {d}/server/tls.key\nCAfile = {d}/ca/ca.crt\nverifyChain = yes\nrequireCert = yes\n")
    open(f"{d}/stunnel-client.conf", "w").write(client)
    open(f"{d}/stunnel-server.conf", "w").write(server)


def meshlet_conf(d, who, transport):
    path = f"{d}/meshlet-{who}.yaml"
    if transport == "plain":
        # No TLS at all: what capture and relaying cost by themselves.
        extra = "outbound:\n  mtls: \"off\"\n" if who == "client" else "inbound:\n  mode: permissive\n"
    elif who == "client":
        extra = f"outbound:\n  mtls: mtls\n  transport: {transport}\n"
    else:
        extra = "inbound:\n  mode: strict\n"
    open(path, "w").write(
        f"trust_domain: cluster.local\nidentity:\n  cert: {d}/{who}/tls.crt\n  key: {d}/{who}/tls.key\n  bundle: {d}/{who}/ca.crt\n"
        f"workers: 1\nlog:\n  level: warn\n{extra}")
    return path


# ztunnel, when bench.py is given its binary (--ztunnel or MESHLET_BENCH_ZTUNNEL): built from
# its own source beside the project (see bench/README.md), never fetched or built by this script.
ZTUNNEL = None
# The build "meshlet-previous" runs (--previous).
PREVIOUS = None
# The packet mark ztunnel sets on its own connections; the client pod's redirect spares them.
ZTUNNEL_MARK = 1337


def ztunnel_xds(d, topo):
    """ztunnel's local XDS file: the pods as HBONE workloads and, in the Service topology, the
    Service with its address and ports (ztunnel balances over the endpoints itself; iperf's
    port has one endpoint, as the node's translation does)."""
    svc = "bench/app.bench.svc.cluster.local"
    lines = ["workloads:"]
    pods = [("client", CLIENT_IP, "client", None)] + [
        (f"server{i or ''}", ip, "server", {80: 8080, 5201: 5201} if i == 0 else {80: 8080})
        for i, (_, ip) in enumerate(topo.servers)]
    for name, ip, sa, ports in pods:
        lines += [f"- uid: cluster1//v1/Pod/bench/{name}", f"  name: {name}", "  namespace: bench",
                  f"  serviceAccount: {sa}", f"  workloadIps: [\"{ip}\"]", "  protocol: HBONE",
                  f"  node: {name}", "  network: \"\""]
        if ports and topo.service:
            lines += ["  services:", f"    \"{svc}\":"] + [f"      {p}: {t}" for p, t in ports.items()]
        else:
            lines.append("  services: {}")
    if topo.service:
        lines += ["services:", "- name: app", "  namespace: bench", "  hostname: app.bench.svc.cluster.local",
                  f"  vips: [\"/{VIP}\"]", "  ports:", "    80: 8080", "    5201: 0"]
    path = f"{d}/ztunnel-xds.yaml"
    open(path, "w").write("\n".join(lines) + "\n")
    return path


def start_ztunnel(procs, d, name, netns, pod, sa, xds):
    """One ztunnel as it runs in a pod in dedicated mode: its workload's identity from the fake
    CA, the local XDS file, one worker thread (as meshlet's `workers: 1`)."""
    env = ["env", "PROXY_MODE=dedicated", f"PROXY_WORKLOAD_INFO=bench/{pod}/{sa}", "FAKE_CA=true",
           f"LOCAL_XDS_PATH={xds}", "XDS_ADDRESS=", "CA_ADDRESS=", "ZTUNNEL_WORKER_THREADS=1",
           f"PACKET_MARK={ZTUNNEL_MARK}", "ENABLE_ORIG_SRC=false", "RUST_LOG=warn"]
    procs.start(name, env + [ZTUNNEL], netns=netns)
    wait_ready(procs, name, netns, "/healthz/ready")


def start_pair(kind, procs, d, meshlet, topo):
    """Starts the proxies of `kind`; returns (http target, iperf target host, iperf port, names)."""
    if kind == "direct":
        return f"{topo.host}:{topo.app_port}", topo.host, 5201, []
    servers = [(f"{kind}-server{i or ''}", netns, ip) for i, (netns, ip) in enumerate(topo.servers)]
    if kind == "ztunnel":
        xds = ztunnel_xds(d, topo)
        # The client pod's app connections go to ztunnel's outbound port, its own do not
        # (ztunnel's redirect rules for dedicated mode); servers take HBONE on 15008 directly.
        ns(CLIENT, "iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "!", "-o", "lo", "-m", "mark",
           "!", "--mark", f"{ZTUNNEL_MARK:#x}/0xfff", "-j", "REDIRECT", "--to-ports", "15001")
        start_ztunnel(procs, d, "ztunnel-client", CLIENT, "client", "client", xds)
        for i, (name, netns, _) in enumerate(servers):
            start_ztunnel(procs, d, name, netns, f"server{i or ''}", "server", xds)
        return f"{topo.host}:{topo.app_port}", topo.host, 5201, ["ztunnel-client"] + [n for n, _, _ in servers]
    if kind.startswith("meshlet"):
        # "meshlet": the default pooled transport; "meshlet-per-connection": one mTLS connection
        # each; "meshlet-plain": the same capture and relaying without TLS (a floor, not a mode
        # anyone should run).
        transport = {"meshlet-per-connection": "per_connection", "meshlet-plain": "plain"}.get(kind, "pooled")
        binary = PREVIOUS if kind == "meshlet-previous" else meshlet
        names = []
        for name, netns, who in [("meshlet-client", CLIENT, "client")] + [(n, netns, "server") for n, netns, _ in servers]:
            ns(netns, meshlet, "init")
            procs.start(name, ["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups",
                               binary, "proxy", "--config", meshlet_conf(d, who, transport)], netns=netns)
            names.append(name)
        for name, netns in zip(names, [CLIENT] + [netns for _, netns, _ in servers]):
            wait_ready(procs, name, netns)
        return f"{topo.host}:{topo.app_port}", topo.host, 5201, names
    haproxy_confs(d, topo.host)
    nginx_stream_confs(d, topo.host)
    stunnel_confs(d, topo.host)
    for i, (name, netns, ip) in enumerate(servers):
        if kind in ("relay", "haproxy"):
            args = ["haproxy", "-db", "-f", f"{d}/{kind}-server.cfg"]
        elif kind == "nginx":
            conf = f"{d}/ngx-server{i}.conf"
            open(conf, "w").write(open(f"{d}/ngx-server.conf").read().replace("ngx-server.pid", f"ngx-server{i}.pid"))
            args = ["nginx", "-p", d, "-c", conf, "-g", "daemon off;"]
        else:
            args = ["stunnel", f"{d}/stunnel-server.conf"]
        procs.start(name, args, netns=netns, wait_port=(ip, 18443))
    client = {"relay": ["haproxy", "-db", "-f", f"{d}/relay-client.cfg"],
              "haproxy": ["haproxy", "-db", "-f", f"{d}/haproxy-client.cfg"],
              "nginx": ["nginx", "-p", d, "-c", f"{d}/ngx-client.conf", "-g", "daemon off;"],
              "stunnel": ["stunnel", f"{d}/stunnel-client.conf"]}[kind]
    procs.start(f"{kind}-client", client, netns=CLIENT, wait_port=("127.0.0.1", 18080))
    return "127.0.0.1:18080", "127.0.0.1", 15201, [f"{kind}-client"] + [n for n, _, _ in servers]


def stop_pair(procs, names):
    procs.stop(names)


def wait_ready(procs, name, netns, path="/ready"):
    """Waits for the proxy `name` in `netns` to answer `path` on 15021 (meshlet's admin port,
    ztunnel's readiness port); says why when it does not."""
    deadline = time.time() + 30
    log = os.path.join(procs.logdir, f"{name}.log")
    while time.time() < deadline:
        if procs.procs[name].poll() is not None:
            raise RuntimeError(f"{name} in {netns} exited: {open(log).read()[-2000:]}")
        r = ns(netns, "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/15021 && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && head -c 12 <&3", check=False)
        if "200" in r.stdout:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} in {netns} not ready after 30 s: {open(log).read()[-2000:]}")


def ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return None
    v, unit = float(m.group(1)), m.group(2)
    return {"us": v / 1000, "ms": v, "s": v * 1000}[unit]


def wrk(target, seconds, conns, close=False):
    args = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency"]
    if close:
        args += ["-H", "Connection: close"]
    out = ns(CLIENT, *args, f"http://{target}/").stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = {p: ms(v) for p, v in re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M)}
    return {"rps": rps, "requests": total, "p50_ms": lat.get("50"), "p99_ms": lat.get("99"),
            "errors": (errors.group(1) if errors else None), "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def first_request(target):
    out = ns(CLIENT, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", f"http://{target}/").stdout.split()
    if not out or out[0] != "200":
        raise RuntimeError(f"first request to {target}: {out}")
    return float(out[1]) * 1000


def oha_fixed_rate(target, seconds, rate):
    oha = shutil.which("oha") or os.path.expanduser("~/.cargo/bin/oha")
    if not os.path.exists(oha):
        return None
    out = ns(CLIENT, oha, "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-q", str(rate), "-c", "16",
             f"http://{target}/").stdout
    data = json.loads(out)
    pct = data["latencyPercentiles"]
    return {"p50_ms": pct["p50"] * 1000, "p99_ms": pct["p99"] * 1000, "rps": data["summary"]["requestsPerSec"]}


def iperf(host, port, seconds):
    out = ns(CLIENT, "iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-J").stdout
    data = json.loads(out)
    if "error" in data:
        raise RuntimeError(f"iperf3 to {host}:{port}: {data['error']}")
    return data["end"]["sum_received"]["bits_per_second"] / 1e9


IDLE_HOLDER = r"""
import asyncio, sys
async def main(host, port, n, hold):
    conns = []
    for i in range(n):
        try:
            conns.append(await asyncio.open_connection(host, port))
        except OSError as e:
            print(f"opened {len(conns)} then: {e}", flush=True); break
    print(f"open {len(conns)}", flush=True)
    await asyncio.sleep(hold)
asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
"""


def idle_memory(procs, names, target, n, d):
    """KB per idle connection held through the pair (both proxies together)."""
    if not names:
        return None
    host, port = target.rsplit(":", 1)
    script = f"{d}/idle.py"
    open(script, "w").write(IDLE_HOLDER)
    before = procs.memory_kb(names)
    holder = subprocess.Popen(["ip", "netns", "exec", CLIENT, "prlimit", f"--nofile={NOFILE}:{NOFILE}", sys.executable, script,
                               host, port, str(n), "600"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    line = holder.stdout.readline().strip()
    time.sleep(1.0)
    after = procs.memory_kb(names)
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    opened = int(line.split()[1]) if line.startswith("open") else 0
    time.sleep(0.5)
    return {"connections": opened, "kb_per_connection": (after - before) / opened if opened else None}


def run_scenario(kind, procs, d, meshlet, secs, conns, idle_n, topo):
    target, ihost, iport, names = start_pair(kind, procs, d, meshlet, topo)
    r = {}
    # The first request after start, before any warm-up: what the first caller of a new pod
    # waits for (the pair's first TLS handshake and whatever else a proxy does only once).
    r["first_request_ms"] = first_request(target)
    wrk(target, 1, 4)  # warm-up
    r["rss_idle_kb"] = procs.memory_kb(names)
    cpu0, sys0 = procs.cpu_times(names)
    ka = wrk(target, secs, conns)
    cpu1, sys1 = procs.cpu_times(names)
    r["keepalive"] = ka
    r["cpu_us_per_request"] = (cpu1 - cpu0) * 1e6 / ka["requests"] if names and ka["requests"] else None
    # How much of it the kernel spends on the proxies' behalf (their system calls, and the
    # TCP work of the sockets they write to, done in their context on one machine).
    r["cpu_kernel_share"] = (sys1 - sys0) / (cpu1 - cpu0) if names and cpu1 > cpu0 else None
    r["new_connections"] = wrk(target, secs, conns, close=True)
    r["fixed_rate"] = oha_fixed_rate(target, secs, 2000)
    # A 2 s transfer first, for every scenario alike: a sidecar that adapts to bulk
    # destinations (meshlet's pooled transport does) is measured as it runs once it has seen
    # one, and the peers' TCP and TLS paths are warm too.
    iperf(ihost, iport, 2)
    r["bulk_gbps"] = iperf(ihost, iport, secs)
    r["rss_loaded_kb"] = procs.memory_kb(names, "VmHWM")
    r["idle"] = idle_memory(procs, names, target, idle_n, d)
    stop_pair(procs, names)
    return r


def median(values):
    """The per-field median of several runs' results (nested dicts of numbers)."""
    first = values[0]
    if isinstance(first, dict):
        return {k: median([v.get(k) if isinstance(v, dict) else None for v in values]) for k in first}
    nums = sorted(v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool))
    if not nums:
        return first
    mid = len(nums) // 2
    return nums[mid] if len(nums) % 2 else (nums[mid - 1] + nums[mid]) / 2


def spread(values):
    """The per-field (min, max) of several runs' results, nested like them."""
    first = values[0]
    if isinstance(first, dict):
        return {k: spread([v.get(k) if isinstance(v, dict) else None for v in values]) for k in first}
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return (min(nums), max(nums)) if nums else None


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def fmt_spread(v, lo_hi, spec):
    """`median (min-max)` when there were several runs."""
    if v is None or not lo_hi or lo_hi[0] == lo_hi[1]:
        return fmt(v, spec)
    return f"{format(v, spec)} ({format(lo_hi[0], spec)}–{format(lo_hi[1], spec)})"


def table(results, spreads=None):
    cols = ["keep-alive rps", "p50 ms", "p99 ms", "new conn/s", "fixed p50", "fixed p99", "bulk Gb/s", "CPU us/req", "RSS idle MB", "RSS load MB", "KB/idle conn", "first req ms"]
    lines = ["| scenario | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for kind, r in results.items():
        sp = (spreads or {}).get(kind) or {}
        fr = r.get("fixed_rate") or {}
        frs = sp.get("fixed_rate") or {}
        idle = r.get("idle") or {}
        ka, kas = r["keepalive"], sp.get("keepalive") or {}
        nc, ncs = r["new_connections"], sp.get("new_connections") or {}
        row = [fmt_spread(ka["rps"], kas.get("rps"), ".0f"), fmt(ka["p50_ms"], ".3f"), fmt(ka["p99_ms"], ".3f"),
               fmt_spread(nc["rps"], ncs.get("rps"), ".0f"), fmt(fr.get("p50_ms"), ".3f"),
               fmt_spread(fr.get("p99_ms"), frs.get("p99_ms"), ".3f"),
               fmt_spread(r["bulk_gbps"], sp.get("bulk_gbps"), ".2f"),
               fmt_spread(r["cpu_us_per_request"], sp.get("cpu_us_per_request"), ".1f"),
               fmt(r["rss_idle_kb"] / 1024 if r["rss_idle_kb"] else None, ".1f"),
               fmt(r["rss_loaded_kb"] / 1024 if r["rss_loaded_kb"] else None, ".1f"), fmt(idle.get("kb_per_connection"), ".1f"),
               fmt(r.get("first_request_ms"), ".1f")]
        lines.append(f"| {kind} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a few seconds per scenario, to keep the script working")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--idle", type=int, default=10000, help="idle connections for the memory measurement")
    ap.add_argument("--runs", type=int, default=1, help="repeat every scenario; the table shows medians")
    ap.add_argument("--only", default="direct,relay,meshlet-plain,meshlet,meshlet-per-connection,haproxy,nginx,stunnel")
    ap.add_argument("--topologies", default="pods,service",
                    help="pods: client calls the server pod; service: client calls a Service address DNATed by a node to two server pods")
    ap.add_argument("--meshlet", help="the meshlet binary (default: the one scripts/release-binary.sh builds)")
    ap.add_argument("--ztunnel", default=os.environ.get("MESHLET_BENCH_ZTUNNEL"),
                    help="a ztunnel binary (built with --features testing) to measure beside the others; without it ztunnel is skipped")
    ap.add_argument("--previous", help="another meshlet binary, run as the scenario meshlet-previous beside this one")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/latest.json"))
    a = ap.parse_args()
    if a.smoke:
        a.seconds, a.idle = 1, 200
    fd_cap = (int(NOFILE) - 1000) // 2
    if a.idle > fd_cap:
        print(f"note: the open-files hard limit here is {NOFILE}: holding {fd_cap} idle connections instead of {a.idle}", file=sys.stderr)
        a.idle = fd_cap
    if os.geteuid() != 0:
        sys.exit("bench.py needs root (network namespaces, iptables): run it with sudo")
    missing = [t for t in ("ip", "wrk", "iperf3", "nginx", "haproxy", "stunnel", "setpriv", "prlimit") if not shutil.which(t)]
    if missing:
        sys.exit(f"missing tools: {' '.join(missing)} (apt-get install -y iproute2 wrk iperf3 nginx-light libnginx-mod-stream haproxy stunnel4 util-linux)")
    a.meshlet = a.meshlet or release_binary()
    global ZTUNNEL, PREVIOUS
    kinds = [k for k in a.only.split(",") if k not in ("ztunnel", "meshlet-previous")]
    if a.previous:
        PREVIOUS = os.path.abspath(a.previous)
        kinds.insert(kinds.index("meshlet") if "meshlet" in kinds else len(kinds), "meshlet-previous")
    if a.ztunnel:
        ZTUNNEL = os.path.abspath(a.ztunnel)
        kinds.append("ztunnel")
    elif "ztunnel" in a.only.split(","):
        print("note: ztunnel skipped: give its binary with --ztunnel PATH (or MESHLET_BENCH_ZTUNNEL)", file=sys.stderr)
    d = tempfile.mkdtemp(prefix="meshlet-bench-")
    procs = Procs(d)
    runs, results, spreads = {}, {}, {}
    try:
        certificates(a.meshlet, d)
        # Runs are interleaved (every scenario once, then again) so that a slow period of the
        # machine does not land on one scenario only; the table shows medians.
        for run in range(a.runs):
            for topo in [Topo(t == "service") for t in a.topologies.split(",")]:
                for kind in kinds:
                    label = topo.prefix + kind
                    print(f"== {label} (run {run + 1}/{a.runs})", file=sys.stderr, flush=True)
                    # Fresh namespaces per scenario: connection-tracking entries left by one scenario
                    # must not steer the next one's connections past (or into) its NAT rules.
                    topology(topo)
                    backends = []
                    for i, (netns, ip) in enumerate(topo.servers):
                        backends += [f"app{i}", f"iperf3-{i}"]
                        procs.start(f"app{i}", ["nginx", "-p", d, "-c", nginx_app_conf(d, i), "-g", "daemon off;"], netns=netns, wait_port=(ip, 8080))
                        procs.start(f"iperf3-{i}", ["iperf3", "-s", "-p", "5201"], netns=netns, wait_port=(ip, 5201))
                    runs.setdefault(label, []).append(run_scenario(kind, procs, d, a.meshlet, a.seconds, a.connections, a.idle, topo))
                    procs.stop(backends)
        results = {kind: median(rs) for kind, rs in runs.items()}
        spreads = {kind: spread(rs) for kind, rs in runs.items()}
    finally:
        procs.stop()
        teardown()
        if not a.smoke:
            print(f"(logs and configs kept in {d})", file=sys.stderr)
        else:
            shutil.rmtree(d, ignore_errors=True)
    machine = {"cpus": os.cpu_count(), "kernel": os.uname().release,
               "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")}
    report = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine, "smoke": a.smoke,
              "seconds": a.seconds, "connections": a.connections, "runs": a.runs, "results": results, "spread": spreads,
              "all_runs": runs}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    json.dump(report, open(a.out, "w"), indent=2)
    print(table(results, spreads))
    print(f"\n{machine['cpus']} CPUs, {machine['cpu_model']}, kernel {machine['kernel']}; {a.seconds}s per measurement, "
          f"{a.connections} connections, median of {a.runs} interleaved run(s), (min–max) where they differ; JSON in {a.out}")
    for kind, r in results.items():
        for label, m in (("keep-alive", r["keepalive"]), ("new connections", r["new_connections"])):
            if m["non_2xx"] or m["errors"]:
                print(f"warning: {kind} {label}: {m['non_2xx']} non-2xx, socket errors: {m['errors']}", file=sys.stderr)


if __name__ == "__main__":
    main()
