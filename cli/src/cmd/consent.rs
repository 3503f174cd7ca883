//! `wardctl consent set | list`: patient consent records by purpose of use. The control
//! plane stores only the subject's pseudonym; the raw id is sent once, over TLS, and
//! never stored or logged.

use clap::{Args, Subcommand};
use wardmesh_proto::paths;
use wardmesh_proto::policy::{ConsentInfo, ConsentRequest};

use crate::args::Global;
use crate::client::Client;
use crate::output::{print, rfc3339};

#[derive(Debug, Subcommand)]
pub enum ConsentCommand {
    /// Record a patient's consent (or refusal) for one purpose of use. Policies see it as
    /// `input.context.consent` on requests for that patient. `--part2` marks a 42 CFR
    /// Part 2 record: disclosure then needs explicit consent for the purpose.
    ///
    /// Examples:
    ///   wardctl consent set --subject p-2001 --purpose TREAT --allow --part2
    ///   wardctl consent set --subject p-2001 --purpose HPAYMT --deny
    #[command(verbatim_doc_comment)]
    Set(SetArgs),
    /// List consent records (all, or one subject's).
    ///
    /// Example:
    ///   wardctl consent list --subject p-2001 -o json
    #[command(verbatim_doc_comment)]
    List {
        /// Only this patient's record (looked up by its pseudonym).
        #[arg(long)]
        subject: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// The patient id as the services know it.
    #[arg(long)]
    subject: String,
    /// HL7 PurposeOfUse code: TREAT, ETREAT, HPAYMT, HOPERAT, …
    #[arg(long)]
    purpose: String,
    /// Consent given.
    #[arg(long, conflicts_with = "deny", required_unless_present = "deny")]
    allow: bool,
    /// Consent refused.
    #[arg(long)]
    deny: bool,
    /// 42 CFR Part 2 record: requires explicit consent.
    #[arg(long)]
    part2: bool,
}

pub async fn run(g: &Global, c: ConsentCommand) -> anyhow::Result<()> {
    let client = Client::new(g)?;
    let rows: Vec<ConsentInfo> = match c {
        ConsentCommand::Set(a) => {
            let req = ConsentRequest {
                subject: a.subject,
                purpose: a.purpose.to_ascii_uppercase(),
                allow: a.allow && !a.deny,
                part2: a.part2,
            };
            vec![client.put(paths::CONSENTS, &req).await?]
        }
        ConsentCommand::List { subject } => {
            let q: Vec<(&str, String)> = subject.into_iter().map(|s| ("subject", s)).collect();
            client.get(paths::CONSENTS, &q).await?
        }
    };
    let cells = rows
        .iter()
        .map(|c| {
            let purposes: Vec<String> = c
                .record
                .purposes
                .iter()
                .map(|(p, ok)| format!("{p}={}", if *ok { "allow" } else { "deny" }))
                .collect();
            vec![
                c.subject_pseudonym.chars().take(16).collect::<String>() + "…",
                c.record.part2.to_string(),
                purposes.join(","),
                c.updated_by.clone(),
                rfc3339(c.updated_at),
            ]
        })
        .collect();
    print(
        g.output,
        &rows,
        &["SUBJECT (PSEUDONYM)", "PART2", "PURPOSES", "BY", "UPDATED"],
        cells,
    )
}
