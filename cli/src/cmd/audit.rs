//! `wardctl audit log`, `wardctl audit disclosures` and `wardctl audit verify`.
//!
//! `verify` trusts nothing the control plane says about integrity: it downloads the entries
//! and checkpoints (paged), recomputes every hash locally and checks every checkpoint
//! signature against a key pinned on this machine.

use std::io::{BufRead as _, Read as _};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use time::OffsetDateTime;
use wardmesh_control_plane::audit::{
    AuditPublicKey, AuditVerifier, MAX_PAGE, VerifyReport, checkpoint_from_api, entry_from_api,
};
use wardmesh_identity::TrustDomain;
use wardmesh_proto::audit::{
    AuditCheckpoint, AuditCheckpoints, AuditEntry, AuditKey, AuditSubjectLookup,
};
use wardmesh_proto::disclosure::{
    Disclosure, DisclosurePage, DisclosureRequest, MAX_SUBJECT_LEN, check_subject,
};
use wardmesh_proto::paths;

use crate::args::{AuditCommand, Format, Global, Output, rfc3339_utc};
use crate::client::Client;
use crate::cmd::flows::{short_id, time_cell, verdict_cell};
use crate::output::{print_rows, rfc3339};

/// Where the key is pinned on first use.
const PINNED_KEY_FILE: &str = "audit-key.pub";
const DEFAULT_LAST: u32 = 100;

pub async fn run(g: &Global, c: AuditCommand) -> anyhow::Result<()> {
    let client = Client::new(g)?;
    match c {
        AuditCommand::Log {
            kind,
            actor,
            since,
            until,
            last,
        } => {
            let filter = LocalFilter { actor, until };
            log(g, &client, kind, since, filter, last).await
        }
        AuditCommand::Disclosures {
            subject,
            since,
            until,
            include_denied,
        } => {
            let subject = read_subject(&subject)?;
            disclosures(g, &client, subject, since, until, include_denied).await
        }
        AuditCommand::Verify { key } => verify(g, &client, key).await,
    }
}

/// The filters the API lacks, applied by wardctl to the entries it reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct LocalFilter {
    /// Exact, or a prefix ending in `*`.
    actor: Option<String>,
    /// Exclusive.
    until: Option<OffsetDateTime>,
}

impl LocalFilter {
    fn is_empty(&self) -> bool {
        self.actor.is_none() && self.until.is_none()
    }

    fn matches(&self, e: &AuditEntry) -> bool {
        let actor_ok = match self.actor.as_deref() {
            None => true,
            Some(a) => match a.strip_suffix('*') {
                Some(prefix) => e.actor.starts_with(prefix),
                None => e.actor == a,
            },
        };
        actor_ok && self.until.is_none_or(|u| e.at < u)
    }
}

async fn log(
    g: &Global,
    client: &Client,
    kind: Option<String>,
    since: Option<OffsetDateTime>,
    filter: LocalFilter,
    last: Option<u32>,
) -> anyhow::Result<()> {
    let mut query = Vec::new();
    if let Some(kind) = kind {
        query.push(("kind", kind));
    }
    if let Some(since) = since {
        query.push(("since", rfc3339_utc(since)));
    }
    let last = match (last, since) {
        (Some(n), _) => Some(n),
        (None, None) => Some(DEFAULT_LAST),
        (None, Some(_)) => None,
    };
    let rows: Vec<AuditEntry> = match last {
        Some(n) if n == 0 || n > MAX_PAGE => bail!("--last must be between 1 and {MAX_PAGE}"),
        Some(n) if filter.is_empty() => {
            query.push(("last", n.to_string()));
            client.get(paths::AUDIT_ENTRIES, &query).await?
        }
        // The newest N that pass the local filter: read backwards, page by page.
        Some(n) => {
            let mut found: Vec<AuditEntry> = Vec::new();
            let mut before: Option<i64> = None;
            loop {
                let mut q = query.clone();
                q.push(("last", MAX_PAGE.to_string()));
                if let Some(b) = before {
                    q.push(("before", b.to_string()));
                }
                let page: Vec<AuditEntry> = client.get(paths::AUDIT_ENTRIES, &q).await?;
                let Some(oldest) = page.first().map(|e| e.seq) else {
                    break;
                };
                let short = page.len() < MAX_PAGE as usize;
                let mut hits: Vec<AuditEntry> =
                    page.into_iter().filter(|e| filter.matches(e)).collect();
                hits.append(&mut found);
                found = hits;
                if found.len() >= n as usize || short || oldest <= 1 {
                    break;
                }
                before = Some(oldest);
            }
            let skip = found.len().saturating_sub(n as usize);
            found.split_off(skip)
        }
        None => {
            let mut all = Vec::new();
            let mut after = 0;
            loop {
                let mut q = query.clone();
                q.push(("after", after.to_string()));
                q.push(("limit", MAX_PAGE.to_string()));
                let page: Vec<AuditEntry> = client.get(paths::AUDIT_ENTRIES, &q).await?;
                let done = page.len() < MAX_PAGE as usize;
                after = page.last().map_or(after, |e| e.seq);
                all.extend(page.into_iter().filter(|e| filter.matches(e)));
                if done {
                    break all;
                }
            }
        }
    };
    let cells = rows
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                rfc3339(e.at),
                e.kind.clone(),
                e.actor.clone(),
                e.subject.clone(),
                short_detail(&e.detail),
            ]
        })
        .collect();
    print_rows(
        g.format,
        &rows,
        &["SEQ", "AT", "KIND", "ACTOR", "SUBJECT", "DETAIL"],
        cells,
    )
}

/// `--subject`: the id itself, or `-` for the first line of stdin (keeps it out of shell
/// history and the process list). Checked here too, so a bad one costs no request; the
/// message never repeats the id.
fn read_subject(arg: &str) -> anyhow::Result<String> {
    let subject = if arg == "-" {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .take(MAX_SUBJECT_LEN as u64 + 2)
            .read_line(&mut line)
            .context("reading the subject from stdin")?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        arg.to_owned()
    };
    check_subject(&subject).map_err(|why| anyhow!("--subject: {why}"))?;
    Ok(subject.trim().to_owned())
}

pub const DISCLOSURE_HEADERS: [&str; 11] = [
    "TIME",
    "USER",
    "PURPOSE",
    "SOURCE",
    "DESTINATION",
    "METHOD",
    "ROUTE",
    "STATUS",
    "VERDICT",
    "RULE",
    "BG",
];

async fn disclosures(
    g: &Global,
    client: &Client,
    subject: String,
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
    include_denied: bool,
) -> anyhow::Result<()> {
    if let (Some(s), Some(u)) = (since, until)
        && s >= u
    {
        bail!("--since must be before --until");
    }
    // Every page, so the accounting is complete.
    let mut all: Vec<Disclosure> = Vec::new();
    let mut after = 0;
    loop {
        let req = DisclosureRequest {
            subject: subject.clone(),
            since,
            until,
            after: Some(after),
            limit: Some(MAX_PAGE),
            include_denied,
        };
        let page: DisclosurePage = client.post(paths::AUDIT_DISCLOSURES, &req).await?;
        let done = page.disclosures.len() < MAX_PAGE as usize;
        after = page.next_after;
        all.extend(page.disclosures);
        if done {
            break;
        }
    }
    let td = match g.format {
        Format::Table => client.trust_domain().await,
        Format::Json | Format::Jsonl => None,
    };
    if all.is_empty() && g.format == Format::Table {
        eprintln!(
            "no {}accesses recorded for this subject{}; the id must match the one in request \
             paths exactly",
            if include_denied { "" } else { "released " },
            if since.is_some() || until.is_some() {
                " in this period"
            } else {
                ""
            },
        );
    }
    let cells = all.iter().map(|d| disclosure_row(d, td.as_ref())).collect();
    print_rows(g.format, &all, &DISCLOSURE_HEADERS, cells)
}

fn disclosure_row(d: &Disclosure, td: Option<&TrustDomain>) -> Vec<String> {
    let dash = || "-".to_owned();
    vec![
        time_cell(d.at),
        d.user.clone().unwrap_or_else(dash),
        d.purpose.clone().unwrap_or_else(dash),
        d.source.as_deref().map_or_else(dash, |s| short_id(s, td)),
        d.destination
            .as_deref()
            .map_or_else(dash, |s| short_id(s, td)),
        d.method.clone().unwrap_or_else(dash),
        d.route.clone().unwrap_or_else(dash),
        d.status.map_or_else(dash, |s| s.to_string()),
        d.verdict.map_or_else(dash, |v| verdict_cell(v).to_owned()),
        d.rule.clone().unwrap_or_else(dash),
        if d.break_glass { "yes" } else { "-" }.to_owned(),
    ]
}

/// The detail as compact JSON, cut to fit a table row.
fn short_detail(detail: &serde_json::Value) -> String {
    const MAX: usize = 72;
    let text = detail.to_string();
    if text.chars().count() <= MAX {
        return text;
    }
    let cut: String = text.chars().take(MAX - 1).collect();
    format!("{cut}…")
}

async fn verify(g: &Global, client: &Client, key_file: Option<PathBuf>) -> anyhow::Result<()> {
    let key = pinned_key(g, client, key_file.as_deref()).await?;

    // Checkpoints first: entries appended while we download are still verified, only not
    // yet covered by a checkpoint.
    let mut checkpoints: Vec<AuditCheckpoint> = Vec::new();
    let last_page: AuditCheckpoints = loop {
        let after = checkpoints.last().map_or(0, |c| c.id);
        let page: AuditCheckpoints = client
            .get(
                paths::AUDIT_CHECKPOINTS,
                &[
                    ("after", after.to_string()),
                    ("limit", MAX_PAGE.to_string()),
                ],
            )
            .await?;
        let done = page.checkpoints.len() < MAX_PAGE as usize;
        checkpoints.extend(page.checkpoints.iter().cloned());
        if done {
            break page;
        }
    };
    let anchor = last_page.anchor.map(|a| checkpoint_from_api(a.checkpoint));
    // The server reads the head after the checkpoints, so it covers them all.
    let head_seq = last_page.head.seq;
    let mut after = anchor.as_ref().map_or(0, |a| a.seq);
    let mut verifier = AuditVerifier::new(
        key,
        anchor,
        checkpoints.into_iter().map(checkpoint_from_api).collect(),
    );
    // Each request is itself audited, so the log grows while we read it: stop at the head
    // seen at the start (or at a short page).
    'pages: while after < head_seq {
        let page: Vec<AuditEntry> = client
            .get(
                paths::AUDIT_ENTRIES,
                &[
                    ("after", after.to_string()),
                    ("limit", MAX_PAGE.to_string()),
                ],
            )
            .await?;
        let short = page.len() < MAX_PAGE as usize;
        for e in page {
            after = e.seq;
            if !verifier.push(&entry_from_api(e)) {
                break 'pages;
            }
        }
        if short {
            break;
        }
    }
    let lookup: AuditSubjectLookup = client.get(paths::AUDIT_SUBJECT_LOOKUP, &[]).await?;
    verifier.subject_lookup(lookup.first_missing_seq);
    let report = verifier.finish();
    show(g.output, &report)?;
    if report.ok {
        Ok(())
    } else {
        Err(anyhow!("audit log verification failed"))
    }
}

fn show(out: Output, r: &VerifyReport) -> anyhow::Result<()> {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(r)?),
        Output::Table => {
            println!("{}", r.message);
            if let Some(anchor) = r.anchor_seq {
                println!("the log was pruned: it starts after signed checkpoint seq {anchor}");
            }
            if let Some(d) = &r.damage {
                println!("first bad entry: seq {}", d.seq());
            }
        }
    }
    Ok(())
}

/// `--key`, else the key pinned in `<home>/audit-key.pub`, else the control plane's key,
/// pinned now (trust on first use).
async fn pinned_key(
    g: &Global,
    client: &Client,
    key_file: Option<&Path>,
) -> anyhow::Result<AuditPublicKey> {
    let read = |path: &Path| -> anyhow::Result<AuditPublicKey> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the audit public key {}", path.display()))?;
        Ok(AuditPublicKey::parse(&text, &path.display().to_string())?)
    };
    if let Some(path) = key_file {
        return read(path);
    }
    let pinned = g.home.join(PINNED_KEY_FILE);
    if pinned.exists() {
        return read(&pinned);
    }
    let served: AuditKey = client.get(paths::AUDIT_KEY, &[]).await?;
    if served.algorithm != "ed25519" {
        bail!(
            "the control plane signs audit checkpoints with {:?}, which this wardctl does not know",
            served.algorithm
        );
    }
    let key = AuditPublicKey::parse(&served.public_key, "the control plane's answer")?;
    std::fs::create_dir_all(&g.home).with_context(|| format!("creating {}", g.home.display()))?;
    std::fs::write(&pinned, format!("{}\n", key.to_text()))
        .with_context(|| format!("writing {}", pinned.display()))?;
    eprintln!(
        "pinned audit key {} in {} (first use: compare it with the control plane's \
         audit-signing.pub; later runs trust only this key)",
        key.key_id(),
        pinned.display()
    );
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64, actor: &str, minute: i64) -> AuditEntry {
        AuditEntry {
            seq,
            at: OffsetDateTime::from_unix_timestamp(1_750_000_000 + minute * 60).unwrap(),
            kind: "phi.access".into(),
            actor: actor.into(),
            subject: "ab".repeat(32),
            detail: serde_json::json!({}),
            prev_hash: "0".repeat(64),
            hash: "1".repeat(64),
        }
    }

    #[test]
    fn local_filters_match_actors_and_times() {
        let e = entry(1, "operator:alice", 10);
        assert!(LocalFilter::default().is_empty());
        assert!(LocalFilter::default().matches(&e));
        let actor = |a: &str| LocalFilter {
            actor: Some(a.into()),
            until: None,
        };
        assert!(actor("operator:alice").matches(&e));
        assert!(actor("operator:*").matches(&e));
        assert!(!actor("operator:al").matches(&e));
        assert!(!actor("user:*").matches(&e));
        let until = |minute: i64| LocalFilter {
            actor: None,
            until: Some(OffsetDateTime::from_unix_timestamp(1_750_000_000 + minute * 60).unwrap()),
        };
        assert!(until(11).matches(&e));
        assert!(!until(10).matches(&e), "until is exclusive");
    }

    #[test]
    fn disclosure_rows_name_who_when_and_why() {
        let d = Disclosure {
            seq: 4,
            at: OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap(),
            source: Some("spiffe://wardmesh.local/ns/clinic/sa/frontend".into()),
            destination: Some("spiffe://wardmesh.local/ns/records/sa/notes".into()),
            method: Some("GET".into()),
            route: Some("/patients/{patient}/notes".into()),
            status: Some(200),
            verdict: Some(wardmesh_proto::flow::Verdict::DryRun),
            user: Some("dr-ada".into()),
            purpose: Some("ETREAT".into()),
            policy_revision: Some("rev-1".into()),
            rule: None,
            break_glass: true,
            request_id: None,
        };
        let td = TrustDomain::new("wardmesh.local").unwrap();
        assert_eq!(
            disclosure_row(&d, Some(&td)),
            [
                "2025-06-15T15:06:40.000Z",
                "dr-ada",
                "ETREAT",
                "clinic/frontend",
                "records/notes",
                "GET",
                "/patients/{patient}/notes",
                "200",
                "dry-run",
                "-",
                "yes",
            ]
        );
        let table = crate::output::table(&DISCLOSURE_HEADERS, &[disclosure_row(&d, None)]);
        assert!(table.starts_with("TIME  "), "{table}");
        assert!(table.contains("spiffe://wardmesh.local/ns/clinic/sa/frontend"));
        // An audit entry whose detail lacked the destination and verdict: dashes.
        let bare = Disclosure {
            destination: None,
            verdict: None,
            ..d
        };
        let row = disclosure_row(&bare, Some(&td));
        assert_eq!((row[4].as_str(), row[8].as_str()), ("-", "-"));
    }

    #[test]
    fn subjects_are_checked_before_sending_and_never_repeated() {
        assert_eq!(read_subject(" p-2001 ").unwrap(), "p-2001");
        for bad in ["", "p-2001\u{7}", &"x".repeat(MAX_SUBJECT_LEN + 1)] {
            let err = read_subject(bad).unwrap_err().to_string();
            assert!(err.starts_with("--subject: subject "), "{err}");
            assert!(!err.contains("p-2001"), "{err}");
        }
    }

    #[test]
    fn long_details_are_cut() {
        let long = serde_json::json!({ "text": "x".repeat(200) });
        let cut = short_detail(&long);
        assert_eq!(cut.chars().count(), 72);
        assert!(cut.ends_with('…'));
        assert_eq!(short_detail(&serde_json::json!({"a": 1})), r#"{"a":1}"#);
    }
}
