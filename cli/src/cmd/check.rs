//! `wardctl check`: verify a running installation, one pass/warn/fail line per check
//! (like `linkerd check`). Gathering (HTTP, kubectl) is separate from judging
//! ([`judge`]), which is pure and unit-tested.

mod judge;

use std::process::Command;

use anyhow::bail;
use clap::Args;
use serde::Serialize;
use wardmesh_proto::operator::CaStatus;
use wardmesh_proto::paths;

use crate::args::{Global, Output};
use crate::client::Client;
pub use judge::{Gathered, Status, WebhookProbe, judge};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Warn when a CA certificate expires within this many days.
    #[arg(long, default_value_t = 30)]
    pub expiry_warning_days: u32,
    /// Skip the Kubernetes checks (no kubectl call): for meshes outside Kubernetes.
    #[arg(long)]
    pub no_kubernetes: bool,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
}

pub async fn run(g: &Global, a: CheckArgs) -> anyhow::Result<()> {
    let gathered = gather(g, &a).await;
    let results = judge(
        &gathered,
        time::OffsetDateTime::now_utc(),
        a.expiry_warning_days,
    );
    match g.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&results)?),
        Output::Table => {
            for r in &results {
                let mark = match r.status {
                    Status::Pass => "[ok]  ",
                    Status::Warn => "[warn]",
                    Status::Fail => "[FAIL]",
                    Status::Skip => "[skip]",
                };
                println!("{mark} {}: {}", r.check, r.detail);
            }
        }
    }
    let failed = results.iter().filter(|r| r.status == Status::Fail).count();
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    Ok(())
}

async fn gather(g: &Global, a: &CheckArgs) -> Gathered {
    let client = Client::new(g).map_err(|e| format!("{e:#}"));
    let (ca, agents) = match &client {
        Ok(c) => (
            c.get::<CaStatus>(paths::CA, &[])
                .await
                .map_err(|e| format!("{e:#}")),
            c.get::<Vec<serde_json::Value>>(paths::AGENTS, &[])
                .await
                .map_err(|e| format!("{e:#}")),
        ),
        Err(e) => (Err(e.clone()), Err(e.clone())),
    };
    let webhook = if a.no_kubernetes {
        WebhookProbe::Skipped("--no-kubernetes".into())
    } else {
        kubectl_webhook()
    };
    Gathered {
        control_plane: g.control_plane.clone(),
        ca,
        agents,
        webhook,
    }
}

/// The MutatingWebhookConfiguration, read with the operator's own kubectl and context.
fn kubectl_webhook() -> WebhookProbe {
    let out = Command::new("kubectl")
        .args([
            "get",
            "mutatingwebhookconfiguration",
            "wardmesh-injector",
            "-o",
            "json",
        ])
        .output();
    match out {
        Err(e) => WebhookProbe::Skipped(format!("kubectl is not available ({e})")),
        Ok(o) if !o.status.success() => {
            WebhookProbe::Error(String::from_utf8_lossy(&o.stderr).trim().to_owned())
        }
        Ok(o) => match serde_json::from_slice(&o.stdout) {
            Ok(v) => WebhookProbe::Found(v),
            Err(e) => WebhookProbe::Error(format!("kubectl output is not JSON: {e}")),
        },
    }
}
