//! `wardctl audit log` and `wardctl audit verify`.
//!
//! `verify` trusts nothing the control plane says about integrity: it downloads the entries
//! and checkpoints (paged), recomputes every hash locally and checks every checkpoint
//! signature against a key pinned on this machine.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wardmesh_control_plane::audit::{
    AuditPublicKey, AuditVerifier, MAX_PAGE, VerifyReport, checkpoint_from_api, entry_from_api,
};
use wardmesh_proto::audit::{AuditCheckpoint, AuditCheckpoints, AuditEntry, AuditKey};
use wardmesh_proto::paths;

use crate::args::{AuditCommand, Global, Output};
use crate::client::Client;
use crate::output::{print, rfc3339};

/// Where the key is pinned on first use.
const PINNED_KEY_FILE: &str = "audit-key.pub";
const DEFAULT_LAST: u32 = 100;

pub async fn run(g: &Global, c: AuditCommand) -> anyhow::Result<()> {
    let client = Client::new(g)?;
    match c {
        AuditCommand::Log { kind, since, last } => log(g, &client, kind, since, last).await,
        AuditCommand::Verify { key } => verify(g, &client, key).await,
    }
}

async fn log(
    g: &Global,
    client: &Client,
    kind: Option<String>,
    since: Option<String>,
    last: Option<u32>,
) -> anyhow::Result<()> {
    let mut query = Vec::new();
    if let Some(kind) = kind {
        query.push(("kind", kind));
    }
    if let Some(since) = &since {
        query.push(("since", parse_since(since, OffsetDateTime::now_utc())?));
    }
    let last = match (last, &since) {
        (Some(n), _) => Some(n),
        (None, None) => Some(DEFAULT_LAST),
        (None, Some(_)) => None,
    };
    let rows: Vec<AuditEntry> = match last {
        Some(n) if n == 0 || n > MAX_PAGE => bail!("--last must be between 1 and {MAX_PAGE}"),
        Some(n) => {
            query.push(("last", n.to_string()));
            client.get(paths::AUDIT_ENTRIES, &query).await?
        }
        None => {
            let mut all = Vec::new();
            loop {
                let mut q = query.clone();
                q.push((
                    "after",
                    all.last().map_or(0, |e: &AuditEntry| e.seq).to_string(),
                ));
                q.push(("limit", MAX_PAGE.to_string()));
                let page: Vec<AuditEntry> = client.get(paths::AUDIT_ENTRIES, &q).await?;
                let done = page.len() < MAX_PAGE as usize;
                all.extend(page);
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
    print(
        g.output,
        &rows,
        &["SEQ", "AT", "KIND", "ACTOR", "SUBJECT", "DETAIL"],
        cells,
    )
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

/// `--since`: an RFC 3339 time, or an age (`90s`, `10m`, `2h`, `7d`) before `now`.
fn parse_since(text: &str, now: OffsetDateTime) -> anyhow::Result<String> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t.to_offset(time::UtcOffset::UTC).format(&Rfc3339)?);
    }
    let bad = || {
        anyhow!(
            "--since {text:?}: use an RFC 3339 time (2025-06-01T12:00:00Z) or an age like 30s, 10m, 2h, 7d"
        )
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = text.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let age = match unit {
        "s" => time::Duration::seconds(n),
        "m" => time::Duration::minutes(n),
        "h" => time::Duration::hours(n),
        "d" => time::Duration::days(n),
        _ => return Err(bad()),
    };
    Ok((now - age).format(&Rfc3339)?)
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

    #[test]
    fn since_takes_times_and_ages() {
        let now = OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap();
        assert_eq!(
            parse_since("2025-06-01T12:00:00+02:00", now).unwrap(),
            "2025-06-01T10:00:00Z"
        );
        assert_eq!(parse_since("90s", now).unwrap(), "2025-06-15T15:05:10Z");
        assert_eq!(parse_since("2h", now).unwrap(), "2025-06-15T13:06:40Z");
        assert_eq!(parse_since("7d", now).unwrap(), "2025-06-08T15:06:40Z");
        for bad in ["yesterday", "10", "5w", "h", ""] {
            let err = parse_since(bad, now).unwrap_err().to_string();
            assert!(err.contains("RFC 3339"), "{bad}: {err}");
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
