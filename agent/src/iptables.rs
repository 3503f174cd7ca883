//! Transparent interception: `wardmesh-agent init-iptables` (DESIGN.md §3).
//!
//! Decide, then do. [`plan`] turns an [`InterceptConfig`] into the nat-table rules, and
//! [`install_steps`] / [`remove_steps`] into the iptables commands that converge a
//! namespace onto them; both are pure and table-tested. [`exec`] runs the steps with the
//! `iptables` binary (iptables-nft or iptables-legacy, whichever `iptables` is).
//!
//! The ruleset, for the defaults (what `iptables -t nat -S` shows afterwards):
//!
//! ```text
//! -N WARDMESH_INBOUND
//! -N WARDMESH_OUTPUT
//! -A PREROUTING -p tcp -j WARDMESH_INBOUND
//! -A OUTPUT -p tcp -j WARDMESH_OUTPUT
//! -A WARDMESH_INBOUND -p tcp -m tcp --dport 7143 -j RETURN    the agent's own ports
//! -A WARDMESH_INBOUND -p tcp -m tcp --dport 7140 -j RETURN    (direct connections,
//! -A WARDMESH_INBOUND -p tcp -m tcp --dport 7191 -j RETURN     probes, explicit mode)
//! -A WARDMESH_INBOUND -p tcp -j REDIRECT --to-ports 7143      everything else → inbound
//! -A WARDMESH_OUTPUT -m owner --uid-owner 1337 -j RETURN      the agent's own traffic
//! -A WARDMESH_OUTPUT -o lo -j RETURN                          stays in the pod
//! -A WARDMESH_OUTPUT -d 127.0.0.0/8 -j RETURN                 loopback
//! -A WARDMESH_OUTPUT -p tcp -j REDIRECT --to-ports 7140       everything else → outbound
//! ```
//!
//! Excluded inbound ports add `RETURN` rules to `WARDMESH_INBOUND` before the redirect;
//! excluded outbound CIDRs and ports add them to `WARDMESH_OUTPUT` after the loopback
//! rules.
//!
//! Loopback, simply: everything leaving through `lo` is left alone, like Linkerd's
//! proxy-init. That covers `127.0.0.0/8` and also an app calling its own pod IP, which
//! reaches the app directly rather than through the inbound proxy (Istio instead loops
//! such calls through its inbound listener; we do not). The explicit `127.0.0.0/8` rule
//! states the intent even where loopback traffic is routed oddly.
//!
//! Idempotent: chains are created when missing, flushed and refilled, and the jumps from
//! `PREROUTING`/`OUTPUT` are added only when `iptables -C` does not find them, so running
//! it twice yields the same ruleset. Removal deletes every copy of the jumps and both
//! chains, tolerating their absence.

mod args;
mod exec;
mod types;

use std::fmt;

pub(crate) use args::INIT_IPTABLES_EXAMPLE;
pub use args::{InitIptablesArgs, main};
pub use exec::{Iptables, IptablesError};
pub use types::{Ipv4Cidr, ParseError, PortRange};

use serde::Serialize;
use wardmesh_proto::ports;

/// The chain that `PREROUTING` jumps to: inbound TCP → the inbound listener.
pub const INBOUND_CHAIN: &str = "WARDMESH_INBOUND";
/// The chain that `OUTPUT` jumps to: the app's outgoing TCP → the outbound listener.
pub const OUTPUT_CHAIN: &str = "WARDMESH_OUTPUT";
/// The UID the agent runs as by default (the injected sidecar's `runAsUser`).
pub const DEFAULT_PROXY_UID: u32 = 1337;
/// The only table we touch.
pub const TABLE: &str = "nat";
/// How long an iptables command waits for the xtables lock (iptables-legacy).
pub const LOCK_WAIT_SECONDS: u32 = 5;

/// What to intercept and what to leave alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterceptConfig {
    /// Connections from this UID (the agent itself) are never redirected.
    pub proxy_uid: u32,
    /// Inbound TCP is redirected here.
    pub inbound_port: u16,
    /// The app's outgoing TCP is redirected here.
    pub outbound_port: u16,
    /// The agent's admin port: reachable directly (kubelet probes, scraping).
    pub admin_port: u16,
    /// Inbound destination ports reached directly, without the agent.
    pub exclude_inbound_ports: Vec<PortRange>,
    /// Outbound destination ports reached directly, without the agent.
    pub exclude_outbound_ports: Vec<PortRange>,
    /// Outbound destinations reached directly, without the agent.
    pub exclude_outbound_cidrs: Vec<Ipv4Cidr>,
}

impl Default for InterceptConfig {
    fn default() -> Self {
        Self {
            proxy_uid: DEFAULT_PROXY_UID,
            inbound_port: ports::AGENT_INBOUND,
            outbound_port: ports::AGENT_OUTBOUND,
            admin_port: ports::AGENT_ADMIN,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("port 0 cannot be {0}; pick a real port")]
    ZeroPort(&'static str),
    #[error(
        "the {a} and {b} ports are both {port}; the agent needs distinct inbound, outbound \
         and admin ports"
    )]
    SamePort {
        a: &'static str,
        b: &'static str,
        port: u16,
    },
    #[error(
        "proxy uid 0 would exempt every root process from interception; run the agent as \
         its own user (default {DEFAULT_PROXY_UID})"
    )]
    RootUid,
}

impl InterceptConfig {
    /// Checks what can be checked without iptables.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let named = [
            ("inbound", self.inbound_port),
            ("outbound", self.outbound_port),
            ("admin", self.admin_port),
        ];
        for (i, (name, port)) in named.iter().enumerate() {
            if *port == 0 {
                return Err(ConfigError::ZeroPort(name));
            }
            if let Some((other, _)) = named[..i].iter().find(|(_, p)| p == port) {
                return Err(ConfigError::SamePort {
                    a: other,
                    b: name,
                    port: *port,
                });
            }
        }
        if self.proxy_uid == 0 {
            return Err(ConfigError::RootUid);
        }
        Ok(())
    }
}

/// One nat-table rule: `chain` and the match/target arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub chain: &'static str,
    pub spec: Vec<String>,
}

impl Rule {
    fn new(chain: &'static str, spec: &[&str]) -> Self {
        Self {
            chain,
            spec: spec.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// The argv after `iptables` that appends this rule: `-t nat -A CHAIN …`.
    pub fn append(&self) -> Vec<String> {
        self.with_op("-A")
    }

    /// The argv that checks whether this rule exists (`-C`).
    pub fn check(&self) -> Vec<String> {
        self.with_op("-C")
    }

    /// The argv that deletes one copy of this rule (`-D`).
    pub fn delete(&self) -> Vec<String> {
        self.with_op("-D")
    }

    fn with_op(&self, op: &str) -> Vec<String> {
        let mut argv = vec!["-t".to_owned(), TABLE.to_owned(), op.to_owned()];
        argv.push(self.chain.to_owned());
        argv.extend(self.spec.iter().cloned());
        argv
    }

    /// Whether this is a jump from a built-in chain into ours.
    pub fn is_jump(&self) -> bool {
        self.chain == "PREROUTING" || self.chain == "OUTPUT"
    }
}

/// As `iptables -t nat -S` prints it: `-A CHAIN spec…`.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {}", self.chain)?;
        for arg in &self.spec {
            write!(f, " {arg}")?;
        }
        Ok(())
    }
}

/// The jumps from the built-in chains into ours.
pub fn jumps() -> [Rule; 2] {
    [
        Rule::new("PREROUTING", &["-p", "tcp", "-j", INBOUND_CHAIN]),
        Rule::new("OUTPUT", &["-p", "tcp", "-j", OUTPUT_CHAIN]),
    ]
}

/// Every rule, in order: our chains' contents, then the two jumps. Arguments are in the
/// canonical form `iptables -S` prints (e.g. the implicit `-m tcp`), so the installed
/// ruleset can be compared line by line with the plan.
pub fn plan(cfg: &InterceptConfig) -> Vec<Rule> {
    let mut rules = Vec::new();

    let own_ports = [cfg.inbound_port, cfg.outbound_port, cfg.admin_port].map(PortRange::single);
    for range in own_ports.iter().chain(&cfg.exclude_inbound_ports) {
        rules.push(return_for_port(INBOUND_CHAIN, *range));
    }
    rules.push(redirect(INBOUND_CHAIN, cfg.inbound_port));

    let uid = cfg.proxy_uid.to_string();
    rules.push(Rule::new(
        OUTPUT_CHAIN,
        &["-m", "owner", "--uid-owner", &uid, "-j", "RETURN"],
    ));
    rules.push(Rule::new(OUTPUT_CHAIN, &["-o", "lo", "-j", "RETURN"]));
    rules.push(Rule::new(
        OUTPUT_CHAIN,
        &["-d", "127.0.0.0/8", "-j", "RETURN"],
    ));
    for cidr in &cfg.exclude_outbound_cidrs {
        rules.push(Rule::new(
            OUTPUT_CHAIN,
            &["-d", &cidr.to_string(), "-j", "RETURN"],
        ));
    }
    for range in &cfg.exclude_outbound_ports {
        rules.push(return_for_port(OUTPUT_CHAIN, *range));
    }
    rules.push(redirect(OUTPUT_CHAIN, cfg.outbound_port));

    rules.extend(jumps());
    rules
}

fn return_for_port(chain: &'static str, range: PortRange) -> Rule {
    Rule::new(
        chain,
        &[
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--dport",
            &range.to_string(),
            "-j",
            "RETURN",
        ],
    )
}

fn redirect(chain: &'static str, port: u16) -> Rule {
    Rule::new(
        chain,
        &[
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &port.to_string(),
        ],
    )
}

/// One iptables invocation or a conditional group of them. Each `Vec<String>` is the
/// argv after `iptables`. A check "fails" when iptables exits 1 (no such rule/chain);
/// any other failure is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Must succeed.
    Run(Vec<String>),
    /// Runs `then` unless `check` succeeds: creates what is missing.
    Unless {
        check: Vec<String>,
        then: Vec<String>,
    },
    /// Runs `then` while `check` succeeds: deletes every copy of a rule.
    While {
        check: Vec<String>,
        then: Vec<String>,
    },
    /// Runs each of `then` if `check` succeeds: removes what is there.
    If { check: Vec<String>, then: Vec<Step> },
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

fn chain_exists(chain: &str) -> Vec<String> {
    argv(&["-t", TABLE, "-S", chain])
}

/// The steps that converge the nat table onto [`plan`]: create our chains if missing,
/// flush and refill them, then add each jump unless it is already there.
pub fn install_steps(cfg: &InterceptConfig) -> Vec<Step> {
    let mut steps = Vec::new();
    for chain in [INBOUND_CHAIN, OUTPUT_CHAIN] {
        steps.push(Step::Unless {
            check: chain_exists(chain),
            then: argv(&["-t", TABLE, "-N", chain]),
        });
        steps.push(Step::Run(argv(&["-t", TABLE, "-F", chain])));
    }
    let rules = plan(cfg);
    let (jumps, ours): (Vec<_>, Vec<_>) = rules.into_iter().partition(Rule::is_jump);
    steps.extend(ours.iter().map(|r| Step::Run(r.append())));
    steps.extend(jumps.iter().map(|r| Step::Unless {
        check: r.check(),
        then: r.append(),
    }));
    steps
}

/// The steps that undo [`install_steps`]: for each of our chains that exists, every
/// copy of the jump into it, then the chain. Anything already absent is skipped (the
/// chain is checked first: `iptables -C` of a jump to a missing chain is an error, not
/// "absent").
pub fn remove_steps() -> Vec<Step> {
    [INBOUND_CHAIN, OUTPUT_CHAIN]
        .into_iter()
        .zip(jumps())
        .map(|(chain, jump)| Step::If {
            check: chain_exists(chain),
            then: vec![
                Step::While {
                    check: jump.check(),
                    then: jump.delete(),
                },
                Step::Run(argv(&["-t", TABLE, "-F", chain])),
                Step::Run(argv(&["-t", TABLE, "-X", chain])),
            ],
        })
        .collect()
}

#[cfg(test)]
mod tests;
