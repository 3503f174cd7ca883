//! `wardctl breakglass grant | list | review`: time-boxed emergency access. A grant
//! names the end user (`sub`), a reason and a TTL; policies honour it for ETREAT
//! requests; every use is audited (`breakglass.use`) and the grant stays in the review
//! queue until an auditor reviews it.

use clap::{Args, Subcommand};
use wardmesh_proto::paths;
use wardmesh_proto::policy::{
    BreakGlassEntry, BreakGlassGrant, BreakGlassRequest, BreakGlassReviewRequest,
};

use crate::args::{Global, Output};
use crate::client::Client;
use crate::output::{print, rfc3339};

#[derive(Debug, Subcommand)]
pub enum BreakGlassCommand {
    /// Grant a user emergency access for a limited time (at most 24 h).
    ///
    /// Example:
    ///   wardctl breakglass grant --user dr-ada --reason "unconscious patient in the ER" --ttl 1h
    #[command(verbatim_doc_comment)]
    Grant(GrantArgs),
    /// List grants with their audited uses (`--pending`: not yet reviewed).
    ///
    /// Example:
    ///   wardctl breakglass list --pending
    #[command(verbatim_doc_comment)]
    List {
        #[arg(long)]
        pending: bool,
    },
    /// Record the review of a grant and its uses.
    ///
    /// Example:
    ///   wardctl breakglass review bg-0123456789abcdef --note "ER admission confirmed"
    #[command(verbatim_doc_comment)]
    Review {
        grant_id: String,
        #[arg(long)]
        note: String,
    },
}

#[derive(Debug, Args)]
pub struct GrantArgs {
    /// The end user's `sub` claim.
    #[arg(long)]
    user: String,
    /// Why: kept with the grant and shown to the reviewer.
    #[arg(long)]
    reason: String,
    /// How long: `90s`, `30m`, `1h` (at most 24h).
    #[arg(long, value_parser = parse_ttl)]
    ttl: u64,
}

/// `90s`, `30m`, `1h` or plain seconds → seconds.
fn parse_ttl(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 30m or 1h"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{s:?}: the unit must be s, m or h")),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{s:?} is not a positive duration"))
}

pub async fn run(g: &Global, c: BreakGlassCommand) -> anyhow::Result<()> {
    let client = Client::new(g)?;
    match c {
        BreakGlassCommand::Grant(a) => {
            let req = BreakGlassRequest {
                user: a.user,
                reason: a.reason,
                ttl_seconds: a.ttl,
            };
            let grant: BreakGlassGrant = client.post(paths::BREAKGLASS, &req).await?;
            show_grant(g.output, &grant)
        }
        BreakGlassCommand::Review { grant_id, note } => {
            let path = paths::BREAKGLASS_REVIEW.replace("{grant_id}", &grant_id);
            let grant: BreakGlassGrant = client
                .post(&path, &BreakGlassReviewRequest { note })
                .await?;
            show_grant(g.output, &grant)
        }
        BreakGlassCommand::List { pending } => {
            let q = vec![("pending", pending.to_string())];
            let rows: Vec<BreakGlassEntry> = client.get(paths::BREAKGLASS, &q).await?;
            let cells = rows
                .iter()
                .map(|e| {
                    vec![
                        e.grant.grant_id.clone(),
                        e.grant.user.clone(),
                        if e.active { "active" } else { "expired" }.to_owned(),
                        e.uses.to_string(),
                        rfc3339(e.grant.expires_at),
                        e.grant
                            .review
                            .as_ref()
                            .map_or("pending".to_owned(), |r| format!("by {}", r.reviewed_by)),
                        e.grant.reason.clone(),
                    ]
                })
                .collect();
            print(
                g.output,
                &rows,
                &[
                    "GRANT", "USER", "STATE", "USES", "EXPIRES", "REVIEW", "REASON",
                ],
                cells,
            )
        }
    }
}

fn show_grant(out: Output, grant: &BreakGlassGrant) -> anyhow::Result<()> {
    let cells = vec![vec![
        grant.grant_id.clone(),
        grant.user.clone(),
        rfc3339(grant.expires_at),
        grant.review.as_ref().map_or("pending".to_owned(), |r| {
            format!("by {}: {}", r.reviewed_by, r.note)
        }),
    ]];
    print(out, grant, &["GRANT", "USER", "EXPIRES", "REVIEW"], cells)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ttls_parse_with_units_and_refuse_nonsense() {
        assert_eq!(super::parse_ttl("90s"), Ok(90));
        assert_eq!(super::parse_ttl("30m"), Ok(1800));
        assert_eq!(super::parse_ttl("1h"), Ok(3600));
        assert_eq!(super::parse_ttl("120"), Ok(120));
        for bad in ["", "0s", "1d", "h", "-5m"] {
            assert!(super::parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
