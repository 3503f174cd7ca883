//! Flow telemetry on PostgreSQL. An ingest is one statement: it bumps the single
//! `flow_head` row (whose lock is held until commit, so seqs are handed out and committed
//! in order across replicas) and writes the whole batch with `INSERT … SELECT FROM
//! UNNEST(…) ON CONFLICT (id) DO NOTHING`, numbering the rows from the bumped head. A
//! batch without audit events is that one statement in its own implicit transaction: one
//! round trip, whatever its size. With audit events it runs inside `BEGIN … COMMIT` with
//! the appends, so the flows and their entries commit together.

use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};
use wardmesh_proto::flow::{FlowRecord, StoredFlow};

use super::PostgresBackend;
use crate::StoreError;
use crate::flows::{
    FlowAudit, FlowParam, FlowQuery, IngestOutcome, PRUNE_CHUNK, RawFlow, events_for, flow_query,
    inserted_mask, stored_count,
};
use crate::schema::to_micros;

/// `$1` is the batch size; `$2…$21` the columns, one array each, in batch order. Record
/// `i` (1-based ordinality) gets seq `head - n + i`, as the SQLite backend numbers them.
const INSERT: &str = "WITH head AS (UPDATE flow_head SET seq = seq + $1 WHERE singleton = 1 \
     RETURNING seq) \
     INSERT INTO flows (seq, id, at_us, kind, direction, source, destination, method, route, \
     status, verdict, policy_revision, rule, latency_us, bytes_in, bytes_out, user_subject, \
     purpose, break_glass, subject_pseudonym, request_id) \
     SELECT head.seq - $1 + r.n, r.id, r.at_us, r.kind, r.direction, r.source, r.destination, \
     r.method, r.route, r.status, r.verdict, r.policy_revision, r.rule, r.latency_us, \
     r.bytes_in, r.bytes_out, r.user_subject, r.purpose, r.break_glass, r.subject_pseudonym, \
     r.request_id \
     FROM head, UNNEST($2::text[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::text[], \
     $8::text[], $9::text[], $10::int4[], $11::text[], $12::text[], $13::text[], $14::int8[], \
     $15::int8[], $16::int8[], $17::text[], $18::text[], $19::bool[], $20::text[], $21::text[]) \
     WITH ORDINALITY AS r(id, at_us, kind, direction, source, destination, method, route, \
     status, verdict, policy_revision, rule, latency_us, bytes_in, bytes_out, user_subject, \
     purpose, break_glass, subject_pseudonym, request_id, n) \
     ON CONFLICT (id) DO NOTHING RETURNING id";

/// The batch as one array per column, borrowing the records' text.
#[derive(Default)]
struct Columns<'a> {
    id: Vec<&'a str>,
    at_us: Vec<i64>,
    kind: Vec<&'static str>,
    direction: Vec<&'static str>,
    source: Vec<Option<&'a str>>,
    destination: Vec<&'a str>,
    method: Vec<Option<&'a str>>,
    route: Vec<Option<&'a str>>,
    status: Vec<Option<i32>>,
    verdict: Vec<&'static str>,
    policy_revision: Vec<Option<&'a str>>,
    rule: Vec<Option<&'a str>>,
    latency_us: Vec<i64>,
    bytes_in: Vec<i64>,
    bytes_out: Vec<i64>,
    user: Vec<Option<&'a str>>,
    purpose: Vec<Option<&'a str>>,
    break_glass: Vec<bool>,
    subject_pseudonym: Vec<Option<&'a str>>,
    request_id: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    fn new(records: &'a [FlowRecord]) -> Self {
        let mut c = Self::default();
        for r in records {
            c.id.push(&r.id);
            c.at_us.push(to_micros(r.at));
            c.kind.push(r.kind.as_str());
            c.direction.push(r.direction.as_str());
            c.source.push(r.source.as_deref());
            c.destination.push(&r.destination);
            c.method.push(r.method.as_deref());
            c.route.push(r.route.as_deref());
            c.status.push(r.status.map(i32::from));
            c.verdict.push(r.verdict.as_str());
            c.policy_revision.push(r.policy_revision.as_deref());
            c.rule.push(r.rule.as_deref());
            c.latency_us.push(stored_count(r.latency_us));
            c.bytes_in.push(stored_count(r.bytes_in));
            c.bytes_out.push(stored_count(r.bytes_out));
            c.user.push(r.user.as_deref());
            c.purpose.push(r.purpose.as_deref());
            c.break_glass.push(r.break_glass);
            c.subject_pseudonym.push(r.subject_pseudonym.as_deref());
            c.request_id.push(r.request_id.as_deref());
        }
        c
    }
}

/// Runs [`INSERT`] on `client` (a connection or a transaction); returns the ids stored.
async fn insert_batch(
    client: &impl tokio_postgres::GenericClient,
    records: &[FlowRecord],
) -> Result<Vec<String>, StoreError> {
    let n = i64::try_from(records.len()).unwrap_or(i64::MAX);
    let c = Columns::new(records);
    let params: [(&(dyn ToSql + Sync), Type); 21] = [
        (&n, Type::INT8),
        (&c.id, Type::TEXT_ARRAY),
        (&c.at_us, Type::INT8_ARRAY),
        (&c.kind, Type::TEXT_ARRAY),
        (&c.direction, Type::TEXT_ARRAY),
        (&c.source, Type::TEXT_ARRAY),
        (&c.destination, Type::TEXT_ARRAY),
        (&c.method, Type::TEXT_ARRAY),
        (&c.route, Type::TEXT_ARRAY),
        (&c.status, Type::INT4_ARRAY),
        (&c.verdict, Type::TEXT_ARRAY),
        (&c.policy_revision, Type::TEXT_ARRAY),
        (&c.rule, Type::TEXT_ARRAY),
        (&c.latency_us, Type::INT8_ARRAY),
        (&c.bytes_in, Type::INT8_ARRAY),
        (&c.bytes_out, Type::INT8_ARRAY),
        (&c.user, Type::TEXT_ARRAY),
        (&c.purpose, Type::TEXT_ARRAY),
        (&c.break_glass, Type::BOOL_ARRAY),
        (&c.subject_pseudonym, Type::TEXT_ARRAY),
        (&c.request_id, Type::TEXT_ARRAY),
    ];
    // query_typed: parse, bind and execute go out together (no separate prepare round
    // trip), and the parameter types are given rather than inferred.
    let rows = client.query_typed(INSERT, &params).await?;
    if rows.is_empty() && flow_head_missing(client).await? {
        return Err(StoreError::Corrupt(
            "the flow_head row is missing".to_owned(),
        ));
    }
    Ok(rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<Vec<String>, _>>()?)
}

/// After an insert that stored nothing: was that because `flow_head` is gone (the CTE then
/// yields no head and silently inserts nothing) rather than because every record was a
/// duplicate? Only asked in that rare case, so the common path stays one round trip.
async fn flow_head_missing(
    client: &impl tokio_postgres::GenericClient,
) -> Result<bool, StoreError> {
    let rows = client
        .query("SELECT 1 FROM flow_head WHERE singleton = 1", &[])
        .await?;
    Ok(rows.is_empty())
}

impl PostgresBackend {
    pub(crate) async fn ingest_flows(
        &self,
        records: &[FlowRecord],
        audit: &[FlowAudit],
    ) -> Result<IngestOutcome, StoreError> {
        if records.is_empty() {
            return Ok(IngestOutcome::default());
        }
        let mut client = self.client().await?;
        if audit.is_empty() {
            // One statement is its own transaction: flows and the head bump commit together.
            let returned = insert_batch(&*client, records).await?;
            let mask = inserted_mask(records, &returned);
            return Ok(IngestOutcome::new(records.len(), &mask, 0));
        }
        let tx = client.transaction().await?;
        let returned = insert_batch(&tx, records).await?;
        let mask = inserted_mask(records, &returned);
        let events = events_for(audit, &mask);
        super::audit::append_in(&tx, &events).await?;
        tx.commit().await?;
        Ok(IngestOutcome::new(records.len(), &mask, events.len()))
    }

    pub(crate) async fn query_flows(&self, q: &FlowQuery) -> Result<Vec<StoredFlow>, StoreError> {
        let (sql, params) = flow_query(q, |n| format!("${n}"));
        let boxed: Vec<Box<dyn ToSql + Sync + Send>> = params
            .into_iter()
            .map(|p| -> Box<dyn ToSql + Sync + Send> {
                match p {
                    FlowParam::Int(i) => Box::new(i),
                    FlowParam::Text(t) => Box::new(t),
                    FlowParam::Bool(b) => Box::new(b),
                }
            })
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> = boxed
            .iter()
            .map(|b| -> &(dyn ToSql + Sync) { b.as_ref() })
            .collect();
        let client = self.client().await?;
        let rows = client.query(&sql, &refs).await?;
        let mut flows = rows
            .iter()
            .map(|r| raw_from_row(r)?.into_stored())
            .collect::<Result<Vec<_>, _>>()?;
        if q.newest {
            flows.reverse();
        }
        Ok(flows)
    }

    pub(crate) async fn prune_flows(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let before_us = to_micros(before);
        let mut removed = 0u64;
        loop {
            // Chunks keep each transaction (and its WAL and locks) small.
            let client = self.client().await?;
            let n = client
                .execute(
                    "DELETE FROM flows WHERE seq IN \
                     (SELECT seq FROM flows WHERE at_us < $1 LIMIT $2)",
                    &[&before_us, &PRUNE_CHUNK],
                )
                .await?;
            drop(client);
            removed += n;
            if n < PRUNE_CHUNK as u64 {
                return Ok(removed);
            }
        }
    }
}

fn raw_from_row(r: &Row) -> Result<RawFlow, StoreError> {
    Ok(RawFlow {
        seq: r.try_get(0)?,
        id: r.try_get(1)?,
        at_us: r.try_get(2)?,
        kind: r.try_get(3)?,
        direction: r.try_get(4)?,
        source: r.try_get(5)?,
        destination: r.try_get(6)?,
        method: r.try_get(7)?,
        route: r.try_get(8)?,
        status: r.try_get::<_, Option<i32>>(9)?.map(i64::from),
        verdict: r.try_get(10)?,
        policy_revision: r.try_get(11)?,
        rule: r.try_get(12)?,
        latency_us: r.try_get(13)?,
        bytes_in: r.try_get(14)?,
        bytes_out: r.try_get(15)?,
        user: r.try_get(16)?,
        purpose: r.try_get(17)?,
        break_glass: r.try_get(18)?,
        subject_pseudonym: r.try_get(19)?,
        request_id: r.try_get(20)?,
    })
}
