//! Pods as network namespaces on a bridge that itself lives in a namespace of its own.
//!
//! Addresses come only from 198.18.0.0/15 and 2001:2::/48 (benchmarking ranges). Each lab is a
//! separate layer-2 world, so labs running in parallel may use the same addresses; only the
//! namespace names must differ, and they carry the process id and a counter.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One "pod": a network namespace with `eth0` on the lab's bridge.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    /// The pod's port on the bridge (in the bridge namespace).
    pub bridge_port: String,
}

/// A set of pods on one bridge. Dropping it kills the processes it started and deletes every
/// namespace (which deletes the veths and the bridge with them).
pub struct Lab {
    pub prefix: String,
    pub bridge_ns: String,
    pods: Vec<Pod>,
    children: Vec<(String, Child)>,
}

/// Runs a command and fails with its stderr when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

/// Whether this process can build labs: root, `ip` and `iptables` present.
pub fn check_privileges() -> Result<(), String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        });
    if uid.as_deref() != Some("0") {
        return Err(
            "needs root (it creates network namespaces and iptables rules): run it with sudo"
                .into(),
        );
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("iptables-restore", "iptables"),
        ("setpriv", "util-linux"),
    ] {
        if which(tool).is_none() {
            return Err(format!(
                "needs {tool}: install the {package} package (apt-get install -y {package})"
            ));
        }
    }
    Ok(())
}

/// Finds a program on PATH or in the sbin directories.
pub fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(Into::into))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

impl Lab {
    /// A new lab named after `purpose` (short, e.g. the test name).
    pub fn new(purpose: &str) -> anyhow::Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let short: String = purpose
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        Self::with_prefix(&format!("ml{}-{n}-{short}", std::process::id()))
    }

    /// A lab whose namespaces are all named `prefix-*` (see [`remove_prefix`]).
    pub fn with_prefix(prefix: &str) -> anyhow::Result<Self> {
        let prefix = prefix.to_owned();
        let bridge_ns = format!("{prefix}-br");
        let lab = Lab {
            prefix,
            bridge_ns: bridge_ns.clone(),
            pods: Vec::new(),
            children: Vec::new(),
        };
        ip(&["netns", "add", &bridge_ns])?;
        ip(&["-n", &bridge_ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &bridge_ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge_ns, "link", "set", "br0", "up"])?;
        Ok(lab)
    }

    /// Adds a pod with address 198.18.0.`index` and 2001:2::`index`.
    pub fn add_pod(&mut self, name: &str, index: u8) -> anyhow::Result<Pod> {
        let ns = format!("{}-{name}", self.prefix);
        let v4 = Ipv4Addr::new(198, 18, 0, index);
        let v6 = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, index as u16);
        let host_side = format!("v{index}");
        ip(&["netns", "add", &ns])?;
        let pod = Pod {
            name: name.to_owned(),
            ns: ns.clone(),
            ip: v4,
            ip6: v6,
            bridge_port: host_side.clone(),
        };
        self.pods.push(pod.clone());
        ip(&[
            "-n",
            &self.bridge_ns,
            "link",
            "add",
            &host_side,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ])?;
        ip(&[
            "-n",
            &self.bridge_ns,
            "link",
            "set",
            &host_side,
            "master",
            "br0",
            "up",
        ])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        Ok(pod)
    }

    /// A command that runs inside `pod`'s namespace.
    pub fn cmd(&self, pod: &Pod, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &pod.ns]).arg(program);
        c
    }

    /// A command that runs inside `pod` as `uid`/`gid` (as a sidecar would).
    pub fn cmd_as(&self, pod: &Pod, uid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &pod.ns, "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg(program);
        c
    }

    /// Starts a long-running process that the lab stops when dropped. Its output goes to `log`.
    pub fn spawn(&mut self, what: &str, mut cmd: Command, log: &Path) -> anyhow::Result<()> {
        let file = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let err = file.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        self.children.push((what.to_owned(), child));
        Ok(())
    }

    /// Like [`Lab::spawn`], then waits until the log shows `marker` (e.g. "listening").
    pub fn spawn_until(
        &mut self,
        what: &str,
        cmd: Command,
        log: &Path,
        marker: &str,
    ) -> anyhow::Result<()> {
        self.spawn(what, cmd, log)?;
        Self::wait_for(Duration::from_secs(10), || {
            self.check_alive()?;
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains(marker) {
                Ok(())
            } else {
                bail!("{what} did not log {marker:?}: {text}")
            }
        })
    }

    /// The pid of a process started with [`Lab::spawn`] (`ip netns exec` execs the program).
    pub fn pid(&self, what: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(w, _)| w == what)
            .map(|(_, c)| c.id())
    }

    /// Fails if a process started with [`Lab::spawn`] has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for (what, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!("{what} exited early ({status})");
            }
        }
        Ok(())
    }

    /// Stops the process named `what` with SIGTERM and waits for it, returning its exit status.
    pub fn stop(
        &mut self,
        what: &str,
        grace: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let i = self
            .children
            .iter()
            .position(|(w, _)| w == what)
            .with_context(|| format!("no process {what}"))?;
        let (_, mut child) = self.children.remove(i);
        // `ip netns exec` execs the program, so the pid is the program's own.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Ok(child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Retries `f` until it succeeds or `timeout` passes.
    pub fn wait_for<T>(
        timeout: Duration,
        mut f: impl FnMut() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Leaves everything running: the processes and namespaces outlive this value.
    pub fn keep(mut self) {
        self.children.clear();
        self.pods.clear();
        self.bridge_ns.clear();
    }
}

/// Removes every namespace named `prefix-*`, killing the processes inside first.
/// Returns how many namespaces were removed.
pub fn remove_prefix(prefix: &str) -> usize {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return 0;
    };
    let want = format!("{prefix}-");
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&want))
        .map(str::to_owned)
        .collect();
    for ns in &names {
        if let Ok(pids) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
    names.len()
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self
            .pods
            .iter()
            .map(|p| &p.ns)
            .chain(std::iter::once(&self.bridge_ns))
        {
            if !ns.is_empty() {
                let _ = Command::new("ip")
                    .args(["netns", "del", ns])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// A packet capture on every port of the lab's bridge (all traffic between pods).
///
/// One tcpdump per port: forwarded frames do not show on the bridge device itself, and on some
/// kernels the `any` pseudo-device misses them too. Immediate mode, so that stopping tcpdump
/// never loses packets still waiting in its ring buffer.
pub struct Capture {
    children: Vec<Child>,
    files: Vec<std::path::PathBuf>,
}

impl Capture {
    /// Starts tcpdump on each pod's bridge port and waits until all are listening.
    pub fn start(lab: &Lab, dir: &Path) -> anyhow::Result<Self> {
        use std::io::{BufRead, BufReader};
        if which("tcpdump").is_none() {
            bail!("needs tcpdump: install the tcpdump package");
        }
        let mut capture = Capture {
            children: Vec::new(),
            files: Vec::new(),
        };
        for pod in lab.pods() {
            let file = dir.join(format!("capture-{}.pcap", pod.name));
            let mut child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &lab.bridge_ns,
                    "tcpdump",
                    "--immediate-mode",
                    "-i",
                    &pod.bridge_port,
                    "-U",
                    "-n",
                    "-s",
                    "0",
                    "-w",
                ])
                .arg(&file)
                .arg("tcp")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("cannot start tcpdump")?;
            let stderr = child.stderr.take().context("tcpdump stderr")?;
            capture.children.push(child);
            capture.files.push(file);
            let mut lines = BufReader::new(stderr).lines();
            loop {
                match lines.next() {
                    Some(Ok(l)) if l.contains("listening on") => break,
                    Some(Ok(_)) => continue,
                    _ => bail!("tcpdump on {} did not start", pod.bridge_port),
                }
            }
            // Keep draining stderr so tcpdump never blocks on it.
            std::thread::spawn(move || for _ in lines {});
        }
        Ok(capture)
    }

    /// Stops the capture and returns the raw pcap bytes of all ports, one after the other.
    pub fn finish(mut self) -> anyhow::Result<Vec<u8>> {
        std::thread::sleep(Duration::from_millis(200));
        for child in &mut self.children {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        let mut all = Vec::new();
        for f in &self.files {
            all.extend(std::fs::read(f)?);
        }
        Ok(all)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The bridge namespace as a Kubernetes node: it routes, and translates Service addresses the
/// way kube-proxy's iptables mode does (DNAT to one backend per connection, chosen at random;
/// replies translated back by conntrack, with br_netfilter, as on a bridge CNI).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);

impl Lab {
    /// Gives the bridge namespace the address [`NODE_IP`] and makes it route: the "node"
    /// where kube-proxy's rules and the kubelet live. Idempotent.
    pub fn make_node(&self) -> anyhow::Result<()> {
        let br = &self.bridge_ns;
        let has_addr = run(Command::new("ip").args(["-n", br, "-4", "addr", "show", "dev", "br0"]))
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&NODE_IP.to_string()))?;
        if !has_addr {
            ip(&[
                "-n",
                br,
                "addr",
                "add",
                &format!("{NODE_IP}/24"),
                "dev",
                "br0",
            ])?;
            run(Command::new("ip").args([
                "netns",
                "exec",
                br,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ]))?;
            // Replies from a backend to a client on the same bridge are bridged, not routed:
            // like kube-proxy on a bridge CNI, the node needs br_netfilter for conntrack to
            // translate them back to the Service address. Sources stay the pods' own, as
            // pod-to-Service calls in a cluster do.
            run(Command::new("ip").args([
                "netns",
                "exec",
                br,
                "sysctl",
                "-qw",
                "net.bridge.bridge-nf-call-iptables=1",
            ]))?;
        }
        Ok(())
    }

    /// Makes the node masquerade translated connections as well (kube-proxy's
    /// `masqueradeAll`, or a CNI that source-NATs Service traffic): backends then see the node's
    /// address as the caller's.
    pub fn masquerade_services(&self) -> anyhow::Result<()> {
        self.make_node()?;
        run(Command::new("ip").args([
            "netns",
            "exec",
            &self.bridge_ns,
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-m",
            "conntrack",
            "--ctstate",
            "DNAT",
            "-m",
            "comment",
            "--comment",
            "kube-proxy-like masquerade",
            "-j",
            "MASQUERADE",
        ]))
        .map(|_| ())
    }

    /// A command that runs on the node (the bridge namespace, at [`NODE_IP`]).
    pub fn node_cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        self.make_node()?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.bridge_ns]).arg(program);
        Ok(c)
    }

    /// Makes the bridge namespace a routing node at [`NODE_IP`] and gives every pod a route to
    /// `vip` through it. Idempotent per address.
    fn route_through_node(&self, vip: Ipv4Addr) -> anyhow::Result<()> {
        self.make_node()?;
        for pod in &self.pods {
            run(Command::new("ip").args([
                "-n",
                &pod.ns,
                "route",
                "replace",
                &format!("{vip}/32"),
                "via",
                &NODE_IP.to_string(),
            ]))?;
        }
        Ok(())
    }

    /// Publishes a Service at `vip:port` on the node, balanced over `backends` (pod address and
    /// target port) as kube-proxy does; calling it again replaces the backends.
    pub fn set_service(
        &self,
        vip: Ipv4Addr,
        port: u16,
        backends: &[(Ipv4Addr, u16)],
    ) -> anyhow::Result<()> {
        self.route_through_node(vip)?;
        let chain = format!("SVC-{}-{port}", u32::from(vip) & 0xffff);
        let ipt = |args: &[&str]| -> anyhow::Result<()> {
            run(Command::new("ip")
                .args(["netns", "exec", &self.bridge_ns, "iptables", "-t", "nat"])
                .args(args))
            .map(|_| ())
        };
        if ipt(&["-N", &chain]).is_ok() {
            ipt(&[
                "-A",
                "PREROUTING",
                "-d",
                &format!("{vip}/32"),
                "-p",
                "tcp",
                "--dport",
                &port.to_string(),
                "-j",
                &chain,
            ])?;
        } else {
            ipt(&["-F", &chain])?;
        }
        let n = backends.len();
        for (i, (ip, target)) in backends.iter().enumerate() {
            let to = format!("{ip}:{target}");
            let left = n - i;
            if left > 1 {
                let p = format!("{:.5}", 1.0 / left as f64);
                ipt(&[
                    "-A",
                    &chain,
                    "-p",
                    "tcp",
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DNAT",
                    "--to-destination",
                    &to,
                ])?;
            } else {
                ipt(&[
                    "-A",
                    &chain,
                    "-p",
                    "tcp",
                    "-j",
                    "DNAT",
                    "--to-destination",
                    &to,
                ])?;
            }
        }
        if n == 0 {
            ipt(&[
                "-A",
                &chain,
                "-p",
                "tcp",
                "-j",
                "REJECT",
                "--reject-with",
                "tcp-reset",
            ])
            .or_else(|_| ipt(&["-A", &chain, "-p", "tcp", "-j", "DROP"]))?;
        }
        Ok(())
    }
}
