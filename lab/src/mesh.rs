//! Meshed pods: a lab plus a throwaway CA, and helpers that run `meshlet init`, `meshlet proxy`
//! (as uid 1337, as in a Pod) and the demo app inside the pods.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use meshlet_identity::issue::{write_svid_dir, Ca};
use meshlet_identity::SpiffeId;

use crate::netns::{run, Lab, Pod};

pub const PROXY_UID: u32 = meshlet_defaults::PROXY_UID;
pub const TRUST_DOMAIN: &str = "cluster.local";

pub struct Mesh {
    pub lab: Lab,
    pub dir: PathBuf,
    pub exe: PathBuf,
    pub ca: Ca,
    _tmp: Option<tempfile::TempDir>,
}

/// One HTTP exchange as `meshlet demo-app get` reports it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Mesh {
    /// A lab with a fresh CA; files go to a new temporary directory.
    pub fn new(purpose: &str, exe: &Path) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new().prefix("meshlet-lab-").tempdir()?;
        let dir = tmp.path().to_owned();
        let mut mesh = Self::in_dir(Lab::new(purpose)?, &dir, exe)?;
        mesh._tmp = Some(tmp);
        Ok(mesh)
    }

    /// A mesh over an existing lab, with files under `dir` (kept by the caller).
    pub fn in_dir(lab: Lab, dir: &Path, exe: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        // The proxy runs as uid 1337 and must reach its files.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        let ca = Ca::new(TRUST_DOMAIN, Duration::from_secs(86400))?;
        Ok(Mesh {
            lab,
            dir: dir.to_owned(),
            exe: exe.to_owned(),
            ca,
            _tmp: None,
        })
    }

    /// Issues an SVID for `spiffe://cluster.local{path}` into `DIR/<pod>/identity`, readable by
    /// the proxy's uid only.
    pub fn issue(&self, pod: &Pod, path: &str) -> anyhow::Result<PathBuf> {
        let id = SpiffeId::parse(&format!("spiffe://{TRUST_DOMAIN}{path}"))?;
        let leaf = self.ca.issue_svid(&id, Duration::from_secs(3600))?;
        let dir = self.dir.join(&pod.name).join("identity");
        write_svid_dir(&dir, &leaf, &self.ca.pem.cert)?;
        for entry in ["", "tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::chown(dir.join(entry), Some(PROXY_UID), Some(PROXY_UID))?;
        }
        std::fs::set_permissions(
            self.dir.join(&pod.name),
            std::fs::Permissions::from_mode(0o755),
        )?;
        Ok(dir)
    }

    /// Runs `meshlet init` in the pod.
    pub fn init(&self, pod: &Pod, args: &[&str]) -> anyhow::Result<String> {
        let out = run(self.lab.cmd(pod, &self.exe).arg("init").args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `meshlet proxy` in the pod as uid 1337 with the identity of `identity_dir` and
    /// `extra` YAML appended to the configuration; waits until it is ready.
    pub fn start_proxy(
        &mut self,
        pod: &Pod,
        identity_dir: &Path,
        extra: &str,
    ) -> anyhow::Result<PathBuf> {
        let identity = format!(
            "identity:\n  cert: {0}/tls.crt\n  key: {0}/tls.key\n  bundle: {0}/ca.crt\n",
            identity_dir.display()
        );
        self.start_proxy_with(pod, &identity, extra)
    }

    /// Starts `meshlet proxy` as [`Mesh::start_proxy`] does, with `identity` as the
    /// configuration's `identity:` section (another source than files).
    pub fn start_proxy_with(
        &mut self,
        pod: &Pod,
        identity: &str,
        extra: &str,
    ) -> anyhow::Result<PathBuf> {
        let pod_dir = self.dir.join(&pod.name);
        std::fs::create_dir_all(&pod_dir)?;
        let config = pod_dir.join("meshlet.yaml");
        let text = format!(
            "trust_domain: {TRUST_DOMAIN}\n{identity}log:\n  level: info\ntimeouts:\n  drain: 2s\n{extra}\n"
        );
        std::fs::write(&config, text)?;
        let log = pod_dir.join("proxy.log");
        let mut cmd = self.lab.cmd_as(pod, PROXY_UID, &self.exe);
        cmd.arg("proxy").arg("--config").arg(&config);
        self.lab.spawn(&format!("proxy-{}", pod.name), cmd, &log)?;
        let admin = SocketAddr::from(([127, 0, 0, 1], meshlet_defaults::ADMIN_PORT));
        Lab::wait_for(Duration::from_secs(10), || {
            self.lab.check_alive()?;
            let r = self.get(pod, admin, &["/ready"])?;
            if r[0].status != 200 {
                bail!("not ready");
            }
            Ok(())
        })
        .with_context(|| {
            format!(
                "proxy in {} did not become ready; its log:\n{}",
                pod.name,
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
        Ok(log)
    }

    /// Starts the demo HTTP app in the pod on `port`.
    pub fn start_app(&mut self, pod: &Pod, port: u16) -> anyhow::Result<()> {
        let mut cmd = self.lab.cmd(pod, &self.exe);
        cmd.args([
            "demo-app",
            "serve",
            "--listen",
            &format!("[::]:{port}"),
            "--name",
            &pod.name,
        ]);
        let log = self.dir.join(format!("{}-app-{port}.log", pod.name));
        self.lab
            .spawn(&format!("app-{}-{port}", pod.name), cmd, &log)?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        Lab::wait_for(Duration::from_secs(10), || {
            self.get(pod, addr, &["/"]).map(|_| ())
        })
    }

    /// Starts the echo server in the pod on `port`.
    pub fn start_echo(&mut self, pod: &Pod, port: u16) -> anyhow::Result<()> {
        let mut cmd = self.lab.cmd(pod, &self.exe);
        cmd.args(["demo-app", "echo", "--listen", &format!("[::]:{port}")]);
        let log = self.dir.join(format!("{}-echo-{port}.log", pod.name));
        self.lab
            .spawn_until(&format!("echo-{}-{port}", pod.name), cmd, &log, "listening")
    }

    /// Sends HTTP requests from inside `from` over one connection (keep-alive).
    pub fn get(&self, from: &Pod, addr: SocketAddr, paths: &[&str]) -> anyhow::Result<Vec<Reply>> {
        self.request(from, addr, "GET", &[], paths)
    }

    /// Requests `paths` from inside `from` `n` times, each time over a new connection.
    pub fn get_each_new(
        &self,
        from: &Pod,
        addr: SocketAddr,
        n: usize,
        paths: &[&str],
    ) -> anyhow::Result<Vec<Reply>> {
        self.requests(from, addr, "GET", &[], paths, n)
    }

    pub fn request(
        &self,
        from: &Pod,
        addr: SocketAddr,
        method: &str,
        headers: &[&str],
        paths: &[&str],
    ) -> anyhow::Result<Vec<Reply>> {
        self.requests(from, addr, method, headers, paths, 1)
    }

    /// `demo-app get` from inside `from`: `paths` over one connection, `connections` times.
    fn requests(
        &self,
        from: &Pod,
        addr: SocketAddr,
        method: &str,
        headers: &[&str],
        paths: &[&str],
        connections: usize,
    ) -> anyhow::Result<Vec<Reply>> {
        let mut cmd = self.lab.cmd(from, &self.exe);
        cmd.args([
            "demo-app",
            "get",
            "--json",
            "--timeout",
            "5s",
            "--connections",
            &connections.to_string(),
            "--method",
            method,
            "--addr",
            &addr.to_string(),
        ]);
        for h in headers {
            cmd.args(["--header", h]);
        }
        cmd.arg("--").args(paths);
        let out = run(&mut cmd)?;
        parse_replies(&String::from_utf8_lossy(&out.stdout))
    }

    /// Runs `demo-app send` from `from`: N bytes to an echo server and back.
    pub fn echo_roundtrip(&self, from: &Pod, addr: SocketAddr, bytes: usize) -> anyhow::Result<()> {
        run(self.lab.cmd(from, &self.exe).args([
            "demo-app",
            "send",
            "--addr",
            &addr.to_string(),
            "--bytes",
            &bytes.to_string(),
        ]))
        .map(|_| ())
    }
}

/// Parses the one-JSON-object-per-line output of `demo-app get --json`.
fn parse_replies(text: &str) -> anyhow::Result<Vec<Reply>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).with_context(|| format!("bad reply line {l:?}"))?;
            Ok(Reply {
                status: v["status"].as_u64().context("no status")? as u16,
                body: v["body"].as_str().context("no body")?.to_owned(),
            })
        })
        .collect()
}
