//! `wardmesh-agent init-iptables`: its flags and its (synchronous) entry point.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use tracing::info;
use wardmesh_proto::ports;

use super::{
    DEFAULT_PROXY_UID, InterceptConfig, Iptables, Ipv4Cidr, PortRange, install_steps, plan,
    remove_steps,
};

pub(crate) const INIT_IPTABLES_EXAMPLE: &str = "\
Examples (run as root, or in an init container with NET_ADMIN and NET_RAW, before the app \
starts; the agent then runs as uid 1337):
  wardmesh-agent init-iptables
  wardmesh-agent init-iptables --exclude-inbound-ports 9090 \\
    --exclude-outbound-ports 5432,6379-6380 --exclude-outbound-cidrs 169.254.169.254/32
  wardmesh-agent init-iptables --dry-run     # print the iptables commands, change nothing
  wardmesh-agent init-iptables --remove      # undo

Running it again converges on the same rules; inspect them with `iptables -t nat -S`.";

/// Flags of `wardmesh-agent init-iptables`.
#[derive(Debug, Clone, Args)]
pub struct InitIptablesArgs {
    /// The UID the agent runs as: its own connections are never redirected.
    #[arg(long, default_value_t = DEFAULT_PROXY_UID, value_name = "UID")]
    pub proxy_uid: u32,

    /// The agent's inbound port: incoming TCP is redirected here.
    #[arg(long, default_value_t = ports::AGENT_INBOUND, value_name = "PORT")]
    pub inbound_port: u16,

    /// The agent's outbound port: the app's outgoing TCP is redirected here.
    #[arg(long, default_value_t = ports::AGENT_OUTBOUND, value_name = "PORT")]
    pub outbound_port: u16,

    /// The agent's admin port: always reachable directly (probes, metrics).
    #[arg(long, default_value_t = ports::AGENT_ADMIN, value_name = "PORT")]
    pub admin_port: u16,

    /// Inbound ports that bypass the agent (comma-separated; ranges like 9000-9100).
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    pub exclude_inbound_ports: Vec<PortRange>,

    /// Outbound destination ports that bypass the agent (comma-separated; ranges allowed).
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    pub exclude_outbound_ports: Vec<PortRange>,

    /// Outbound destination networks that bypass the agent (comma-separated IPv4 CIDRs).
    #[arg(long, value_delimiter = ',', value_name = "CIDRS")]
    pub exclude_outbound_cidrs: Vec<Ipv4Cidr>,

    /// Remove wardmesh's jumps and chains instead of installing them.
    #[arg(long)]
    pub remove: bool,

    /// Print the iptables commands as a shell script instead of running them.
    #[arg(long)]
    pub dry_run: bool,

    /// The iptables binary to run (e.g. iptables-legacy on kernels without nf_tables).
    #[arg(long, default_value = "iptables", value_name = "CMD")]
    pub iptables: String,
}

impl InitIptablesArgs {
    /// The validated interception settings.
    pub fn config(&self) -> Result<InterceptConfig, super::ConfigError> {
        let cfg = InterceptConfig {
            proxy_uid: self.proxy_uid,
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            admin_port: self.admin_port,
            exclude_inbound_ports: self.exclude_inbound_ports.clone(),
            exclude_outbound_ports: self.exclude_outbound_ports.clone(),
            exclude_outbound_cidrs: self.exclude_outbound_cidrs.clone(),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Runs `init-iptables`: installs (or with `--remove` removes) the rules, or prints the
/// commands with `--dry-run`. Synchronous: it only runs short iptables commands.
pub fn main(args: InitIptablesArgs) -> anyhow::Result<()> {
    let cfg = args.config()?;
    let iptables = Iptables::new(args.iptables.clone());
    let steps = if args.remove {
        remove_steps()
    } else {
        install_steps(&cfg)
    };
    if args.dry_run {
        let mut out = std::io::stdout().lock();
        out.write_all(iptables.script(&steps).as_bytes())
            .and_then(|()| out.flush())
            .context("cannot write the dry-run script to stdout")?;
        return Ok(());
    }
    iptables.check_installed()?;
    iptables.execute(&steps)?;
    if args.remove {
        info!("transparent interception removed");
    } else {
        info!(
            inbound_port = cfg.inbound_port,
            outbound_port = cfg.outbound_port,
            proxy_uid = cfg.proxy_uid,
            rules = plan(&cfg).len(),
            "transparent interception installed: inbound and outbound TCP now go through the agent"
        );
    }
    Ok(())
}
