//! `wardctl flows`: the flow records of `GET /v1/flows`, filtered like `hubble observe`,
//! as a table, JSON or JSON lines; `--follow` polls for new ones with the `after` cursor.
//!
//! Arguments are checked here where that is cheap (forms of IDs, lengths, time order), so
//! a typo fails before any request; the control plane checks everything again and its
//! message is shown as is.

use std::io::{self, Write};
use std::time::Duration;

use anyhow::bail;
use clap::{Args, ValueEnum};
use time::OffsetDateTime;
use time::macros::format_description;
use wardmesh_control_plane::flows::MAX_PAGE;
use wardmesh_identity::{SpiffeId, TrustDomain};
use wardmesh_proto::flow::{FlowKind, FlowPage, StoredFlow, Verdict};
use wardmesh_proto::paths;

use crate::args::{Format, Global, parse_time, rfc3339_utc};
use crate::client::Client;
use crate::output::{StreamTable, write_rows};

/// Flows shown when neither --since nor --last is given.
const DEFAULT_LAST: u32 = 20;
/// How often `--follow` asks for new flows.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);
const MAX_TEXT_LEN: usize = 512;
const MAX_REQUEST_ID_LEN: usize = 128;

pub const HEADERS: [&str; 11] = [
    "TIME",
    "SOURCE",
    "DESTINATION",
    "METHOD",
    "ROUTE",
    "STATUS",
    "VERDICT",
    "RULE",
    "USER",
    "PURPOSE",
    "BG",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerdictArg {
    Allowed,
    Denied,
    /// The policy (in dry-run mode) would have denied; the request went through.
    DryRun,
    /// No decision could be made.
    Error,
}

impl VerdictArg {
    fn as_query(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::DryRun => "dry-run",
            Self::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct FlowsArgs {
    /// Source: a SPIFFE ID, namespace/service-account, or namespace (every service account
    /// in it).
    #[arg(long, value_parser = parse_peer)]
    pub from: Option<String>,
    /// Destination, same forms as --from.
    #[arg(long, value_parser = parse_peer)]
    pub to: Option<String>,
    #[arg(long, value_enum)]
    pub verdict: Option<VerdictArg>,
    /// Exact route template, e.g. '/patients/{patient}/notes', or `unmatched`.
    #[arg(long, value_parser = parse_route)]
    pub route: Option<String>,
    /// End user (`sub` claim).
    #[arg(long, value_parser = parse_text)]
    pub user: Option<String>,
    /// Purpose of use, e.g. TREAT, ETREAT.
    #[arg(long, value_parser = parse_text)]
    pub purpose: Option<String>,
    /// Only requests let through under a break-glass grant.
    #[arg(long)]
    pub break_glass: bool,
    /// One request (its `x-request-id`), as both agents and the app saw it.
    #[arg(long, value_parser = parse_request_id)]
    pub request_id: Option<String>,
    /// Only flows since this time: RFC 3339, or an age such as 30s, 10m, 2h, 7d.
    #[arg(long, value_parser = parse_time)]
    pub since: Option<OffsetDateTime>,
    /// Only flows before this time, same forms as --since.
    #[arg(long, value_parser = parse_time)]
    pub until: Option<OffsetDateTime>,
    /// The newest N matching flows (1-1000; default 20 when --since is not given).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PAGE)))]
    pub last: Option<u32>,
    /// Keep printing new flows as they arrive (polls every second) until Ctrl-C. With
    /// -o json, one object per line, like jsonl.
    #[arg(short = 'f', long, conflicts_with = "until")]
    pub follow: bool,
}

/// What to fetch before following (if at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The newest N matches.
    Last(u32),
    /// Every match, page by page (`--since` without `--last`).
    All,
}

impl FlowsArgs {
    /// The filter parameters of every request, in the API's spelling.
    pub fn filters(&self) -> anyhow::Result<Vec<(&'static str, String)>> {
        if let (Some(since), Some(until)) = (self.since, self.until)
            && since >= until
        {
            bail!("--since must be before --until");
        }
        let mut q = Vec::new();
        let mut push = |k: &'static str, v: Option<String>| {
            if let Some(v) = v {
                q.push((k, v));
            }
        };
        push("from", self.from.clone());
        push("to", self.to.clone());
        push("verdict", self.verdict.map(|v| v.as_query().to_owned()));
        push("route", self.route.clone());
        push("user", self.user.clone());
        push("purpose", self.purpose.clone());
        push("break_glass", self.break_glass.then(|| "true".to_owned()));
        push("request_id", self.request_id.clone());
        push("since", self.since.map(rfc3339_utc));
        push("until", self.until.map(rfc3339_utc));
        Ok(q)
    }

    pub fn start(&self) -> Start {
        match (self.last, self.since) {
            (Some(n), _) => Start::Last(n),
            (None, Some(_)) => Start::All,
            (None, None) => Start::Last(DEFAULT_LAST),
        }
    }
}

/// `--from`/`--to`: `spiffe://…`, `ns/sa` or `ns` (Kubernetes names: lowercase letters,
/// digits, '-' and '.').
fn parse_peer(s: &str) -> Result<String, String> {
    if s.starts_with("spiffe://") {
        return SpiffeId::parse(s)
            .map(|id| id.to_string())
            .map_err(|e| format!("not a valid SPIFFE ID: {e}"));
    }
    let label = |p: &str| {
        !p.is_empty()
            && p.len() <= 253
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
    };
    let ok = match s.split_once('/') {
        Some((ns, sa)) => label(ns) && label(sa),
        None => label(s),
    };
    if ok {
        Ok(s.to_owned())
    } else {
        Err(
            "use a SPIFFE ID, namespace/service-account or namespace (lowercase letters, \
             digits, '-' and '.')"
                .to_owned(),
        )
    }
}

fn parse_text(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > MAX_TEXT_LEN || s.contains(char::is_control) {
        return Err(format!(
            "use 1 to {MAX_TEXT_LEN} bytes without control characters"
        ));
    }
    Ok(s.to_owned())
}

fn parse_route(s: &str) -> Result<String, String> {
    let s = parse_text(s)?;
    if s != "unmatched" && (!s.starts_with('/') || s.contains(['?', '#'])) {
        return Err(
            "use a route template as declared, e.g. '/patients/{patient}/notes' (no query \
             string), or `unmatched`"
                .to_owned(),
        );
    }
    Ok(s)
}

fn parse_request_id(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > MAX_REQUEST_ID_LEN || s.contains(char::is_control) {
        return Err(format!(
            "use the request's x-request-id: 1 to {MAX_REQUEST_ID_LEN} bytes without control \
             characters"
        ));
    }
    Ok(s.to_owned())
}

pub async fn run(g: &Global, a: FlowsArgs) -> anyhow::Result<()> {
    let filters = a.filters()?;
    let client = Client::new(g)?;
    let td = match g.format {
        Format::Table => client.trust_domain().await,
        Format::Json | Format::Jsonl => None,
    };
    let mut out = Printer::new(g.format, a.follow, td);
    let mut stdout = io::stdout();

    let (initial, mut after) = match a.start() {
        Start::Last(n) => {
            let mut q = filters.clone();
            q.push(("last", n.to_string()));
            let page: FlowPage = client.get(paths::FLOWS, &q).await?;
            (page.flows, page.next_after)
        }
        Start::All => {
            let mut all = Vec::new();
            let mut after = 0;
            loop {
                let page = next_page(&client, &filters, after).await?;
                let done = page.flows.len() < MAX_PAGE as usize;
                after = page.next_after;
                all.extend(page.flows);
                if done {
                    break (all, after);
                }
            }
        }
    };
    if initial.is_empty() && !a.follow {
        eprintln!("no flows match; widen the filters or the time range (--since 1d)");
    }
    if initial.is_empty() && a.follow && g.format == Format::Table {
        eprintln!("waiting for flows (Ctrl-C to stop)…");
    }
    if !out.write(&mut stdout, &initial)? || !a.follow {
        return Ok(());
    }

    let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        // Ctrl-C also ends a request in flight: a slow control plane must not keep the
        // operator waiting for the client timeout.
        let page = tokio::select! {
            _ = &mut stop => return Ok(()),
            page = next_page(&client, &filters, after) => page?,
        };
        let full = page.flows.len() >= MAX_PAGE as usize;
        after = page.next_after;
        if !out.write(&mut stdout, &page.flows)? {
            return Ok(());
        }
        // A full page means more are waiting: fetch them now, not a second later.
        if full {
            continue;
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
    }
}

/// One bounded page after the cursor.
async fn next_page(
    client: &Client,
    filters: &[(&'static str, String)],
    after: i64,
) -> anyhow::Result<FlowPage> {
    let mut q = filters.to_vec();
    q.push(("after", after.to_string()));
    q.push(("limit", MAX_PAGE.to_string()));
    client.get(paths::FLOWS, &q).await
}

/// Prints batches of flows in one format: a table keeps its columns across batches, and
/// `-o json` while following prints one object per line (a stream has no closing `]`).
#[derive(Debug)]
pub struct Printer {
    format: Format,
    td: Option<TrustDomain>,
    table: StreamTable,
}

impl Printer {
    pub fn new(format: Format, follow: bool, td: Option<TrustDomain>) -> Self {
        let format = match format {
            Format::Json if follow => Format::Jsonl,
            other => other,
        };
        Self {
            format,
            td,
            table: StreamTable::default(),
        }
    }

    /// Writes a batch (a table prints its header with the first, even an empty one;
    /// later empty batches print nothing). `false` when the reader has gone (`| head`):
    /// the caller stops quietly.
    pub fn write<W: Write>(&mut self, w: &mut W, flows: &[StoredFlow]) -> anyhow::Result<bool> {
        let cells: Vec<Vec<String>> = match self.format {
            Format::Table => flows.iter().map(|f| row(f, self.td.as_ref())).collect(),
            Format::Json | Format::Jsonl => Vec::new(),
        };
        match write_rows(w, self.format, flows, &mut self.table, &HEADERS, &cells) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Flows as an aligned table (what `wardctl flows` prints; `wardctl up` shows the demo's
/// newest flows with it).
pub fn table(flows: &[StoredFlow], td: &TrustDomain) -> String {
    let cells: Vec<Vec<String>> = flows.iter().map(|f| row(f, Some(td))).collect();
    crate::output::table(&HEADERS, &cells)
}

/// One table row.
pub fn row(f: &StoredFlow, td: Option<&TrustDomain>) -> Vec<String> {
    let r = &f.record;
    let dash = || "-".to_owned();
    let method = match (r.kind, &r.method) {
        (_, Some(m)) => m.clone(),
        (FlowKind::Tcp, None) => "tcp".to_owned(),
        (FlowKind::Http, None) => dash(),
    };
    vec![
        time_cell(r.at),
        r.source.as_deref().map_or_else(dash, |s| short_id(s, td)),
        short_id(&r.destination, td),
        method,
        r.route.clone().unwrap_or_else(dash),
        r.status.map_or_else(dash, |s| s.to_string()),
        verdict_cell(r.verdict).to_owned(),
        r.rule.clone().unwrap_or_else(dash),
        r.user.clone().unwrap_or_else(dash),
        r.purpose.clone().unwrap_or_else(dash),
        if r.break_glass { "yes" } else { "-" }.to_owned(),
    ]
}

/// The CLI's spelling (`--verdict dry-run`).
pub fn verdict_cell(v: Verdict) -> &'static str {
    match v {
        Verdict::DryRun => "dry-run",
        other => other.as_str(),
    }
}

/// UTC with milliseconds: flows of one request are microseconds apart.
pub fn time_cell(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    ))
    .unwrap_or_else(|_| rfc3339_utc(t))
}

/// `ns/sa` for the mesh's own workloads; any other ID in full.
pub fn short_id(id: &str, td: Option<&TrustDomain>) -> String {
    let short = SpiffeId::parse(id).ok().and_then(|sid| {
        let mine = td.is_some_and(|td| sid.trust_domain() == td);
        match (mine, sid.namespace(), sid.service_account()) {
            (true, Some(ns), Some(sa)) => Some(format!("{ns}/{sa}")),
            _ => None,
        }
    });
    short.unwrap_or_else(|| id.to_owned())
}

#[cfg(test)]
mod tests;
