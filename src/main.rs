//! `meshlet`: one binary for the init container, the sidecar, the webhook, the issuer,
//! certificates and the demo.
#![forbid(unsafe_code)]

mod cert_cmd;
mod check_cmd;
mod init_cmd;
mod inject_cmd;
mod issuer_cmd;
mod proxy_cmd;
mod webhook_cmd;
mod webhook_limits;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// meshlet gives Kubernetes Pods mutual TLS without changing the application.
#[derive(Parser, Debug)]
#[command(name = "meshlet", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Program the Pod's iptables so its TCP traffic goes through the proxy (needs NET_ADMIN).
    Init(init_cmd::InitArgs),
    /// Run the sidecar proxy.
    Proxy(Box<meshlet_proxy::args::ProxyArgs>),
    /// Make and inspect certificates (a throwaway CA, SVIDs).
    #[command(subcommand)]
    Cert(cert_cmd::CertCommand),
    /// Add the init container and the sidecar to Kubernetes manifests (or take them out).
    Inject(inject_cmd::InjectArgs),
    /// The mutating admission webhook: injects pods as `meshlet inject` does.
    Webhook(webhook_cmd::WebhookArgs),
    /// Sign short-lived SVIDs for pods that prove their service account (runs in the cluster).
    Issuer(issuer_cmd::IssuerArgs),
    /// Inside a meshed pod: are the capture rules installed and run, is the identity loaded,
    /// is the proxy ready? One line per check; exit 1 when one fails.
    Check(check_cmd::CheckArgs),
    /// Wait until the proxy is ready (the classic sidecar's postStart hook).
    WaitReady(check_cmd::WaitReadyArgs),
    /// Two meshed pods in network namespaces on this machine, showing mTLS at work (needs root).
    Demo(meshlet_lab::demo::DemoArgs),
    /// The demo's small HTTP app: answers with what it saw (caller address, headers).
    #[command(hide = true)]
    DemoApp(meshlet_lab::app::AppArgs),
}

/// How a command failed: bad usage or configuration (exit 2), or at runtime (exit 1).
pub enum Failure {
    Usage(String),
    Runtime(String),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(format!("{e:#}"))
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Init(args) => init_cmd::run(args),
        Command::Proxy(args) => proxy_cmd::run(*args),
        Command::Cert(cmd) => cert_cmd::run(cmd),
        Command::Inject(args) => inject_cmd::run(args),
        Command::Webhook(args) => webhook_cmd::run(args),
        Command::Issuer(args) => issuer_cmd::run(args),
        Command::Check(args) => check_cmd::run(args),
        Command::WaitReady(args) => check_cmd::wait_ready(args),
        Command::Demo(args) => meshlet_lab::demo::run(args).map_err(Failure::from),
        Command::DemoApp(args) => meshlet_lab::app::run(args).map_err(Failure::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("meshlet: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(msg)) => {
            eprintln!("meshlet: error: {msg}");
            ExitCode::from(1)
        }
    }
}

/// Plain text logs on stderr, for the short-lived commands.
pub fn init_cli_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
