//! `meshlet init`: the capture rules.

use clap::{Args, ValueEnum};
use meshlet_init::model::{parse_cidr_selection, parse_port_selection};
use meshlet_init::{parse_cidrs, parse_ports, BackendChoice, CaptureConfig, Ipv6Mode};

use crate::Failure;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// uid the proxy runs as; its traffic is never captured
    #[arg(long, default_value_t = meshlet_defaults::PROXY_UID)]
    proxy_uid: u32,
    /// gid the proxy runs as; its traffic is never captured either
    #[arg(long)]
    proxy_gid: Option<u32>,
    /// port of the proxy's inbound listener
    #[arg(long, default_value_t = meshlet_defaults::INBOUND_PORT)]
    inbound_port: u16,
    /// port of the proxy's outbound listener
    #[arg(long, default_value_t = meshlet_defaults::OUTBOUND_PORT)]
    outbound_port: u16,
    /// port of the proxy's admin server (never captured)
    #[arg(long, default_value_t = meshlet_defaults::ADMIN_PORT)]
    admin_port: u16,
    /// inbound ports to capture: '*' or a list (8080,9000-9100); '' captures none
    #[arg(long, default_value = "*", value_name = "'*'|P,..")]
    include_inbound_ports: String,
    /// inbound ports never captured
    #[arg(long, default_value = "", value_name = "P,..")]
    exclude_inbound_ports: String,
    /// outbound destinations to capture: '*' or a list of CIDRs
    #[arg(long, default_value = "*", value_name = "'*'|CIDR,..")]
    include_outbound_cidrs: String,
    /// outbound destinations never captured
    #[arg(long, default_value = "", value_name = "CIDR,..")]
    exclude_outbound_cidrs: String,
    /// outbound destination ports never captured
    #[arg(long, default_value = "", value_name = "P,..")]
    exclude_outbound_ports: String,
    /// outbound destination ports to capture: '*' or a list; '' captures none
    #[arg(long, default_value = "*", value_name = "'*'|P,..")]
    include_outbound_ports: String,
    /// program IPv6 too: auto (when the namespace has a global IPv6 address), on, off
    #[arg(long, value_enum, default_value_t = Ipv6Arg::Auto)]
    ipv6: Ipv6Arg,
    /// iptables backend: auto (legacy if it already holds rules, else nft), legacy, nft
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// print the exact iptables-restore input; apply nothing
    #[arg(long)]
    dry_run: bool,
    /// remove every rule and chain meshlet added (both families, any backend)
    #[arg(long)]
    cleanup: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Ipv6Arg {
    Auto,
    On,
    Off,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendArg {
    Auto,
    Legacy,
    Nft,
}

impl InitArgs {
    fn capture_config(&self) -> Result<CaptureConfig, Failure> {
        let usage = |e: meshlet_init::ParseError| Failure::Usage(e.0);
        let cfg = CaptureConfig {
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            admin_port: self.admin_port,
            include_inbound_ports: parse_port_selection(
                "--include-inbound-ports",
                &self.include_inbound_ports,
            )
            .map_err(usage)?,
            exclude_inbound_ports: parse_ports(
                "--exclude-inbound-ports",
                &self.exclude_inbound_ports,
            )
            .map_err(usage)?,
            include_outbound_cidrs: parse_cidr_selection(
                "--include-outbound-cidrs",
                &self.include_outbound_cidrs,
            )
            .map_err(usage)?,
            exclude_outbound_cidrs: parse_cidrs(
                "--exclude-outbound-cidrs",
                &self.exclude_outbound_cidrs,
            )
            .map_err(usage)?,
            exclude_outbound_ports: parse_ports(
                "--exclude-outbound-ports",
                &self.exclude_outbound_ports,
            )
            .map_err(usage)?,
            include_outbound_ports: parse_port_selection(
                "--include-outbound-ports",
                &self.include_outbound_ports,
            )
            .map_err(usage)?,
        };
        cfg.validate().map_err(usage)?;
        Ok(cfg)
    }
}

pub fn run(args: InitArgs) -> Result<(), Failure> {
    crate::init_cli_logging();
    let cfg = args.capture_config()?;
    if args.cleanup {
        let removed =
            meshlet_init::cleanup(args.dry_run).map_err(|e| Failure::Runtime(e.to_string()))?;
        if args.dry_run {
            for (backend, family, input) in &removed {
                println!(
                    "# {family} via {backend}: iptables-restore --noflush <<EOF\n{input}# EOF"
                );
            }
        }
        if removed.is_empty() {
            tracing::info!("no meshlet rules found; nothing to clean up");
        }
        return Ok(());
    }
    let backend = match args.backend {
        BackendArg::Auto => BackendChoice::Auto,
        BackendArg::Legacy => BackendChoice::Legacy,
        BackendArg::Nft => BackendChoice::Nft,
    };
    let ipv6 = match args.ipv6 {
        Ipv6Arg::Auto => Ipv6Mode::Auto,
        Ipv6Arg::On => Ipv6Mode::On,
        Ipv6Arg::Off => Ipv6Mode::Off,
    };
    let report = meshlet_init::apply(&cfg, backend, ipv6, args.dry_run)
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    if args.dry_run {
        for (family, input) in &report.inputs {
            let (_, restore) = report.backend.tool_names(*family);
            println!("# {family}: {restore} --noflush <<EOF\n{input}# EOF");
        }
    }
    Ok(())
}
