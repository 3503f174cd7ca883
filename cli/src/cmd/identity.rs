//! `wardctl identity …` and `wardctl agents`.

use wardmesh_proto::operator::{
    AgentInfo, EventInfo, IssuanceInfo, QuarantineChange, QuarantineEntry, QuarantineRequest,
};
use wardmesh_proto::paths;

use crate::args::{Global, IdentityCommand, Output};
use crate::client::Client;
use crate::output::{print, rfc3339};

pub async fn run(g: &Global, c: IdentityCommand) -> anyhow::Result<()> {
    let client = Client::new(g)?;
    match c {
        IdentityCommand::Quarantine { spiffe_id, reason } => {
            let r: QuarantineChange = client
                .post(paths::QUARANTINE, &QuarantineRequest { spiffe_id, reason })
                .await?;
            report_change(g.output, &r, "quarantined", "was already quarantined")
        }
        IdentityCommand::Unquarantine { spiffe_id } => {
            let r: QuarantineChange = client
                .delete(paths::QUARANTINE, &[("spiffe_id", spiffe_id)])
                .await?;
            report_change(g.output, &r, "unquarantined", "was not quarantined")
        }
        IdentityCommand::Quarantined => {
            let rows: Vec<QuarantineEntry> = client.get(paths::QUARANTINE, &[]).await?;
            let cells = rows
                .iter()
                .map(|q| {
                    vec![
                        q.spiffe_id.clone(),
                        rfc3339(q.created_at),
                        q.created_by.clone(),
                        q.reason.clone(),
                    ]
                })
                .collect();
            print(
                g.output,
                &rows,
                &["SPIFFE ID", "SINCE", "BY", "REASON"],
                cells,
            )
        }
        IdentityCommand::Issuances { id, limit } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(id) = id {
                q.push(("spiffe_id", id));
            }
            let rows: Vec<IssuanceInfo> = client.get(paths::ISSUANCES, &q).await?;
            let cells = rows
                .iter()
                .map(|i| {
                    vec![
                        rfc3339(i.issued_at),
                        i.spiffe_id.clone(),
                        i.attestation.clone(),
                        rfc3339(i.not_after),
                        i.authority_id.clone(),
                        i.serial_hex.clone(),
                    ]
                })
                .collect();
            print(
                g.output,
                &rows,
                &[
                    "ISSUED",
                    "SPIFFE ID",
                    "VIA",
                    "EXPIRES",
                    "AUTHORITY",
                    "SERIAL",
                ],
                cells,
            )
        }
        IdentityCommand::Events { after, limit } => {
            let rows: Vec<EventInfo> = client
                .get(
                    paths::EVENTS,
                    &[("after", after.to_string()), ("limit", limit.to_string())],
                )
                .await?;
            let cells = rows
                .iter()
                .map(|e| {
                    vec![
                        e.id.to_string(),
                        rfc3339(e.at),
                        e.kind.clone(),
                        e.actor.clone(),
                        e.subject.clone(),
                    ]
                })
                .collect();
            print(
                g.output,
                &rows,
                &["ID", "AT", "KIND", "ACTOR", "SUBJECT"],
                cells,
            )
        }
    }
}

fn report_change(out: Output, r: &QuarantineChange, did: &str, noop: &str) -> anyhow::Result<()> {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(r)?),
        Output::Table if r.changed => println!(
            "{} {did}; deny-list revision {} is being pushed to agents",
            r.spiffe_id, r.deny_list_revision
        ),
        Output::Table => println!("{} {noop}; nothing changed", r.spiffe_id),
    }
    Ok(())
}

pub async fn agents(g: &Global) -> anyhow::Result<()> {
    let client = Client::new(g)?;
    let rows: Vec<AgentInfo> = client.get(paths::AGENTS, &[]).await?;
    let cells = rows
        .iter()
        .map(|a| {
            vec![
                a.spiffe_id.clone(),
                a.instance_id.clone(),
                rfc3339(a.last_seen),
                rfc3339(a.cert_not_after),
                a.cert_authority_id.clone(),
                a.bundle_revision.to_string(),
            ]
        })
        .collect();
    print(
        g.output,
        &rows,
        &[
            "SPIFFE ID",
            "INSTANCE",
            "LAST SEEN",
            "CERT EXPIRES",
            "AUTHORITY",
            "BUNDLE REV",
        ],
        cells,
    )
}
