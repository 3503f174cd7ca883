//! The demo's flow records: once the callers' requests are done, wait until the
//! notes-api agent's spool has shipped them to the control plane, then print the newest
//! ones — what `wardctl flows --last 20` shows from another terminal.

use std::time::Duration;

use anyhow::Context;
use wardmesh_control_plane::RunningControlPlane;
use wardmesh_store::FlowQuery;

/// How long shipping may take: the spool commits within milliseconds and the shipper
/// sends at once, so this only covers a slow machine.
const SHIP_TIMEOUT: Duration = Duration::from_secs(20);
const SHOWN: u32 = 20;

pub async fn show_recent(cp: &RunningControlPlane, sent: u64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + SHIP_TIMEOUT;
    let mut query = FlowQuery {
        limit: 1000,
        ..FlowQuery::default()
    };
    let mut stored = 0u64;
    while stored < sent && tokio::time::Instant::now() < deadline {
        let page = cp
            .store
            .query_flows(&query)
            .await
            .context("reading flows")?;
        if let Some(last) = page.last() {
            query.after = last.seq;
        }
        stored += page.len() as u64;
        if stored < sent {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!(
        "flows: {stored} of {sent} requests recorded by the notes-api agent and shipped to the control plane"
    );
    let newest = FlowQuery {
        limit: SHOWN,
        newest: true,
        ..FlowQuery::default()
    };
    let flows = cp
        .store
        .query_flows(&newest)
        .await
        .context("reading flows")?;
    let td = cp.ca.current().trust_domain().clone();
    print!("{}", crate::cmd::flows::table(&flows, &td));
    Ok(())
}
