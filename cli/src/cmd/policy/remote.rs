//! `wardctl policy push | rollback | list`: the control plane's side of the workflow.
//! The control plane verifies a pushed bundle's signature before storing it; agents pick
//! up the active revision within seconds and verify it again.

use std::path::Path;

use anyhow::Context;
use wardmesh_proto::paths;
use wardmesh_proto::policy::{ActivateRequest, ActivePolicy, PolicyMode, PolicyStatus};

use crate::args::{Global, Output};
use crate::client::Client;
use crate::output::{print, rfc3339};

pub async fn push(g: &Global, bundle: &Path, mode: PolicyMode) -> anyhow::Result<()> {
    let bytes = std::fs::read(bundle).with_context(|| format!("reading {}", bundle.display()))?;
    let client = Client::new(g)?;
    let q = vec![("mode", mode.as_str().to_owned())];
    let active: ActivePolicy = client
        .post_bytes(paths::POLICY, &q, "application/gzip", bytes)
        .await?;
    show_active(g.output, &active)?;
    if g.output == Output::Table {
        eprintln!("agents switch within seconds; `wardctl policy list` shows the active revision");
    }
    Ok(())
}

pub async fn rollback(
    g: &Global,
    revision: String,
    mode: Option<PolicyMode>,
) -> anyhow::Result<()> {
    let client = Client::new(g)?;
    let active: ActivePolicy = client
        .post(paths::POLICY_ACTIVATE, &ActivateRequest { revision, mode })
        .await?;
    show_active(g.output, &active)
}

pub async fn list(g: &Global) -> anyhow::Result<()> {
    let client = Client::new(g)?;
    let status: PolicyStatus = client.get(paths::POLICY, &[]).await?;
    let active = status.active.as_ref();
    let cells = status
        .revisions
        .iter()
        .map(|r| {
            let mark = match active {
                Some(a) if a.revision == r.revision => format!("active ({})", a.mode.as_str()),
                _ => String::new(),
            };
            vec![
                r.revision.clone(),
                mark,
                r.sha256.chars().take(12).collect(),
                r.signed_by.clone(),
                r.uploaded_by.clone(),
                rfc3339(r.uploaded_at),
            ]
        })
        .collect();
    print(
        g.output,
        &status,
        &[
            "REVISION",
            "STATE",
            "SHA256",
            "SIGNED BY",
            "PUSHED BY",
            "PUSHED",
        ],
        cells,
    )
}

fn show_active(out: Output, a: &ActivePolicy) -> anyhow::Result<()> {
    let cells = vec![vec![
        a.revision.clone(),
        a.mode.as_str().to_owned(),
        a.sha256.chars().take(12).collect(),
        a.activated_by.clone(),
        rfc3339(a.activated_at),
    ]];
    print(
        out,
        a,
        &["ACTIVE REVISION", "MODE", "SHA256", "BY", "AT"],
        cells,
    )
}
