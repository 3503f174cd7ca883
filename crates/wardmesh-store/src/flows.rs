//! Flow telemetry in the store: what a query asks for, what an ingest did, and what both
//! backends share — the `SELECT` built from a [`FlowQuery`] and the conversion of stored
//! columns back into records. The statements are in `sqlite/flows.rs` and
//! `postgres/flows.rs`; the schema in `schema/<backend>/0004_flows.sql` (and
//! `0005_flow_request_id.sql`, which added `request_id` as the last column).

mod bench;

use time::OffsetDateTime;
use wardmesh_proto::flow::{FlowDirection, FlowKind, FlowRecord, StoredFlow, Verdict};

pub use bench::{IngestRate, ingest_benchmark};

use crate::StoreError;
use crate::schema::{from_micros, to_micros};

/// Rows deleted per statement when pruning, so retention never holds the SQLite write
/// lock (and ingest) for long.
pub(crate) const PRUNE_CHUNK: i64 = 5_000;

/// The columns every flow query selects, in this order (see [`RawFlow`]).
pub(crate) const FLOW_COLUMNS: &str = "seq, id, at_us, kind, direction, source, destination, \
     method, route, status, verdict, policy_revision, rule, latency_us, bytes_in, bytes_out, \
     user_subject, purpose, break_glass, subject_pseudonym, request_id";

/// What [`Store::ingest_flows`](crate::Store::ingest_flows) did:
/// `inserted + duplicates` is the number of records given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IngestOutcome {
    pub inserted: u64,
    /// Records whose id was already stored (or repeated within the batch).
    pub duplicates: u64,
    /// Audit events appended (those whose record was inserted by this call).
    pub audited: u64,
}

/// An audit event to append if, and only if, record `record` of the batch is new: a
/// resent batch then writes neither its flows nor their audit entries twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowAudit {
    /// Index into the batch.
    pub record: usize,
    pub event: crate::Event,
}

/// Which records of `records` this ingest stored, from the ids the insert returned: the
/// first occurrence of each returned id (a repeat within the batch is a duplicate).
pub(crate) fn inserted_mask(records: &[FlowRecord], returned: &[String]) -> Vec<bool> {
    let mut fresh: std::collections::HashSet<&str> = returned.iter().map(String::as_str).collect();
    records
        .iter()
        .map(|r| fresh.remove(r.id.as_str()))
        .collect()
}

/// The events of `audit` whose record was inserted, in batch order.
pub(crate) fn events_for<'a>(audit: &'a [FlowAudit], mask: &[bool]) -> Vec<&'a crate::Event> {
    audit
        .iter()
        .filter(|a| mask.get(a.record).copied().unwrap_or(false))
        .map(|a| &a.event)
        .collect()
}

impl IngestOutcome {
    pub(crate) fn new(records: usize, mask: &[bool], audited: usize) -> Self {
        let inserted = mask.iter().filter(|&&b| b).count() as u64;
        Self {
            inserted,
            duplicates: records as u64 - inserted,
            audited: audited as u64,
        }
    }
}

/// Matches a source or destination SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdFilter {
    Exact(String),
    /// Every ID starting with this, e.g. `spiffe://td/ns/clinic/sa/` for a namespace.
    Prefix(String),
}

/// Which flows to read. Flows come back ascending by `seq` (ingest order).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlowQuery {
    /// Only flows with `seq > after`: the paging and follow cursor.
    pub after: i64,
    pub source: Option<IdFilter>,
    pub destination: Option<IdFilter>,
    pub verdict: Option<Verdict>,
    /// Exact route template (or `unmatched`).
    pub route: Option<String>,
    pub user: Option<String>,
    pub purpose: Option<String>,
    pub break_glass: Option<bool>,
    /// Exact `x-request-id`: both agents' records of one request.
    pub request_id: Option<String>,
    /// Only flows at or after this instant (record time).
    pub since: Option<OffsetDateTime>,
    /// Only flows strictly before this instant.
    pub until: Option<OffsetDateTime>,
    pub limit: u32,
    /// Take the newest `limit` matches instead of the oldest (still returned ascending).
    pub newest: bool,
}

/// A query parameter, bound by each backend in its own way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FlowParam {
    Int(i64),
    Text(String),
    Bool(bool),
}

/// The `SELECT` for `q` with placeholders from `placeholder(n)` (1-based), and its
/// parameters in order. Rows come newest first when `q.newest`; the caller reverses.
pub(crate) fn flow_query(
    q: &FlowQuery,
    placeholder: impl Fn(usize) -> String,
) -> (String, Vec<FlowParam>) {
    let (mut sql, mut params) = flow_filter(q, true, &placeholder);
    let order = if q.newest { "DESC" } else { "ASC" };
    params.push(FlowParam::Int(i64::from(q.limit)));
    sql.push_str(&format!(
        " ORDER BY seq {order} LIMIT {}",
        placeholder(params.len())
    ));
    (sql, params)
}

/// `SELECT … FROM flows WHERE …` with every filter of `q` (the request id only if
/// `with_request_id`), without order or limit; `placeholder(n)` names the `n`th parameter.
pub(crate) fn flow_filter(
    q: &FlowQuery,
    with_request_id: bool,
    placeholder: impl Fn(usize) -> String,
) -> (String, Vec<FlowParam>) {
    let mut params = vec![FlowParam::Int(q.after)];
    let mut sql = format!(
        "SELECT {FLOW_COLUMNS} FROM flows WHERE seq > {}",
        placeholder(1)
    );
    let mut push = |sql: &mut String, clause: &str, p: FlowParam| {
        params.push(p);
        sql.push_str(&clause.replace('?', &placeholder(params.len())));
    };
    for (column, filter) in [("source", &q.source), ("destination", &q.destination)] {
        match filter {
            Some(IdFilter::Exact(id)) => push(
                &mut sql,
                &format!(" AND {column} = ?"),
                FlowParam::Text(id.clone()),
            ),
            // One parameter used twice (see audit_sql::entry_query): no LIKE, whose
            // case-folding and wildcards differ between the backends.
            Some(IdFilter::Prefix(prefix)) => push(
                &mut sql,
                &format!(" AND substr({column}, 1, length(?)) = ?"),
                FlowParam::Text(prefix.clone()),
            ),
            None => {}
        }
    }
    if let Some(v) = q.verdict {
        push(
            &mut sql,
            " AND verdict = ?",
            FlowParam::Text(v.as_str().to_owned()),
        );
    }
    for (column, value) in [
        ("route", &q.route),
        ("user_subject", &q.user),
        ("purpose", &q.purpose),
        (
            "request_id",
            &q.request_id.clone().filter(|_| with_request_id),
        ),
    ] {
        if let Some(v) = value {
            push(
                &mut sql,
                &format!(" AND {column} = ?"),
                FlowParam::Text(v.clone()),
            );
        }
    }
    if let Some(b) = q.break_glass {
        push(&mut sql, " AND break_glass = ?", FlowParam::Bool(b));
    }
    if let Some(since) = q.since {
        push(
            &mut sql,
            " AND at_us >= ?",
            FlowParam::Int(to_micros(since)),
        );
    }
    if let Some(until) = q.until {
        push(&mut sql, " AND at_us < ?", FlowParam::Int(to_micros(until)));
    }
    (sql, params)
}

/// A flow row as read from either backend, before its enums and time are checked.
#[derive(Debug)]
pub(crate) struct RawFlow {
    pub(crate) seq: i64,
    pub(crate) id: String,
    pub(crate) at_us: i64,
    pub(crate) kind: String,
    pub(crate) direction: String,
    pub(crate) source: Option<String>,
    pub(crate) destination: String,
    pub(crate) method: Option<String>,
    pub(crate) route: Option<String>,
    pub(crate) status: Option<i64>,
    pub(crate) verdict: String,
    pub(crate) policy_revision: Option<String>,
    pub(crate) rule: Option<String>,
    pub(crate) latency_us: i64,
    pub(crate) bytes_in: i64,
    pub(crate) bytes_out: i64,
    pub(crate) user: Option<String>,
    pub(crate) purpose: Option<String>,
    pub(crate) break_glass: bool,
    pub(crate) subject_pseudonym: Option<String>,
    pub(crate) request_id: Option<String>,
}

impl RawFlow {
    pub(crate) fn into_stored(self) -> Result<StoredFlow, StoreError> {
        let corrupt = |what: &str, v: &str| {
            StoreError::Corrupt(format!("flow seq {} has an unknown {what} {v:?}", self.seq))
        };
        let kind = FlowKind::parse(&self.kind).ok_or_else(|| corrupt("kind", &self.kind))?;
        let direction = FlowDirection::parse(&self.direction)
            .ok_or_else(|| corrupt("direction", &self.direction))?;
        let verdict =
            Verdict::parse(&self.verdict).ok_or_else(|| corrupt("verdict", &self.verdict))?;
        let status = self
            .status
            .map(|s| u16::try_from(s).map_err(|_| corrupt("status", &s.to_string())))
            .transpose()?;
        let unsigned = |v: i64| u64::try_from(v).map_err(|_| corrupt("count", &v.to_string()));
        Ok(StoredFlow {
            seq: self.seq,
            record: FlowRecord {
                id: self.id,
                at: from_micros(self.at_us)?,
                request_id: self.request_id,
                kind,
                direction,
                source: self.source,
                destination: self.destination,
                method: self.method,
                route: self.route,
                status,
                verdict,
                policy_revision: self.policy_revision,
                rule: self.rule,
                latency_us: unsigned(self.latency_us)?,
                bytes_in: unsigned(self.bytes_in)?,
                bytes_out: unsigned(self.bytes_out)?,
                user: self.user,
                purpose: self.purpose,
                break_glass: self.break_glass,
                subject_pseudonym: self.subject_pseudonym,
            },
        })
    }
}

/// A count as the signed 64-bit integer both backends store; records are validated
/// before ingest, so saturation only guards against callers that skipped that.
pub(crate) fn stored_count(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_queries_number_their_placeholders_in_order() {
        let q = FlowQuery {
            after: 7,
            source: Some(IdFilter::Prefix("spiffe://td/ns/a/sa/".into())),
            destination: Some(IdFilter::Exact("spiffe://td/ns/b/sa/c".into())),
            verdict: Some(Verdict::DryRun),
            route: Some("/x".into()),
            user: None,
            purpose: Some("TREAT".into()),
            break_glass: Some(true),
            request_id: Some("req-1".into()),
            since: Some(OffsetDateTime::UNIX_EPOCH),
            until: None,
            limit: 10,
            newest: true,
        };
        let (sql, params) = flow_query(&q, |n| format!("${n}"));
        assert_eq!(
            sql,
            format!(
                "SELECT {FLOW_COLUMNS} FROM flows WHERE seq > $1 AND substr(source, 1, \
                 length($2)) = $2 AND destination = $3 AND verdict = $4 AND route = $5 AND \
                 purpose = $6 AND request_id = $7 AND break_glass = $8 AND at_us >= $9 ORDER BY \
                 seq DESC LIMIT $10"
            )
        );
        assert_eq!(params.len(), 10);
        assert_eq!(params[3], FlowParam::Text("dry_run".into()));
        assert_eq!(params[6], FlowParam::Text("req-1".into()));
        assert_eq!(params[7], FlowParam::Bool(true));
        let (sql, params) = flow_query(&FlowQuery::default(), |n| format!("?{n}"));
        assert_eq!(
            sql,
            format!("SELECT {FLOW_COLUMNS} FROM flows WHERE seq > ?1 ORDER BY seq ASC LIMIT ?2")
        );
        assert_eq!(params, [FlowParam::Int(0), FlowParam::Int(0)]);
    }
}
