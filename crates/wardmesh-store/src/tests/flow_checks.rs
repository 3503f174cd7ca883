//! Flow telemetry checks, each run on both backends (see `tests.rs`): idempotent batch
//! ingest, every query filter, cursor paging and `newest`, retention, and a follower that
//! pages by seq while two replicas ingest concurrently and still sees every flow once.

use std::collections::HashSet;

use time::OffsetDateTime;
use wardmesh_proto::flow::{
    FlowDirection, FlowKind, FlowRecord, StoredFlow, UNMATCHED_ROUTE, Verdict, new_record_id,
    subject_pseudonym,
};

use super::TestDb;
use super::fixtures::{ALICE, BOB, T0, at};
use crate::schema::{CREATE_SCHEMA_VERSION, POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS};
use crate::{
    AuditQuery, Event, FlowAudit, FlowQuery, IdFilter, IngestOutcome, SCHEMA_VERSION, Store,
};

const NOTES: &str = "spiffe://wardmesh.local/ns/records/sa/notes";

/// Flow `n`: a spread of verdicts, routes, users and subjects decided by `n`.
pub(super) fn flow(n: u64) -> FlowRecord {
    let verdict = match n % 4 {
        0 => Verdict::Allowed,
        1 => Verdict::Denied,
        2 => Verdict::DryRun,
        _ => Verdict::Error,
    };
    let http = n % 5 != 4;
    FlowRecord {
        id: new_record_id(u128::from(n) * 0x9e37_79b9_7f4a_7c15 + 1),
        at: at(T0 + n as i64),
        // HTTP only (a TCP record has none), and shared by pairs of records like the
        // inbound and outbound record of one request.
        request_id: http.then(|| format!("req-{:04}", n / 2)),
        kind: if http { FlowKind::Http } else { FlowKind::Tcp },
        direction: FlowDirection::Inbound,
        source: if n % 7 == 6 {
            None
        } else if n.is_multiple_of(2) {
            Some(ALICE.to_owned())
        } else {
            Some(BOB.to_owned())
        },
        destination: NOTES.to_owned(),
        method: http.then(|| "GET".to_owned()),
        route: http.then(|| {
            if n.is_multiple_of(3) {
                UNMATCHED_ROUTE.to_owned()
            } else {
                "/patients/{patient}/notes".to_owned()
            }
        }),
        status: http.then_some(if verdict == Verdict::Denied { 403 } else { 200 }),
        verdict,
        policy_revision: Some("rev-1".to_owned()),
        rule: Some(format!("rule-{}", n % 2)),
        latency_us: n * 10,
        bytes_in: n,
        bytes_out: n * 100 + u64::from(u32::MAX),
        user: (n.is_multiple_of(2)).then(|| "dr-alice".to_owned()),
        purpose: Some(
            if n.is_multiple_of(2) {
                "TREAT"
            } else {
                "HOPERAT"
            }
            .to_owned(),
        ),
        break_glass: n % 10 == 9,
        subject_pseudonym: (n % 3 == 1).then(|| subject_pseudonym(b"key", &format!("p{}", n % 2))),
    }
}

async fn all(store: &Store, q: FlowQuery) -> Vec<StoredFlow> {
    let mut out: Vec<StoredFlow> = Vec::new();
    loop {
        let page = store
            .query_flows(&FlowQuery {
                after: out.last().map_or(q.after, |f| f.seq),
                limit: 7,
                ..q.clone()
            })
            .await
            .unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

fn ids(flows: &[StoredFlow]) -> Vec<String> {
    flows.iter().map(|f| f.record.id.clone()).collect()
}

fn expect(records: &[FlowRecord], keep: impl Fn(&FlowRecord) -> bool) -> Vec<String> {
    records
        .iter()
        .filter(|r| keep(r))
        .map(|r| r.id.clone())
        .collect()
}

pub(super) async fn check_flows_ingest_idempotent(store: Store) {
    let batch: Vec<FlowRecord> = (0..10).map(flow).collect();
    for r in &batch {
        r.validate().unwrap();
    }
    let out = store.ingest_flows(&batch).await.unwrap();
    assert_eq!(
        out,
        IngestOutcome {
            inserted: 10,
            duplicates: 0,
            audited: 0,
        }
    );
    // A resent batch with two new records and one repeated inside itself.
    let mut again: Vec<FlowRecord> = (8..12).map(flow).collect();
    again.push(flow(11));
    let out = store.ingest_flows(&again).await.unwrap();
    assert_eq!(
        out,
        IngestOutcome {
            inserted: 2,
            duplicates: 3,
            audited: 0,
        }
    );
    assert_eq!(
        store.ingest_flows(&[]).await.unwrap(),
        IngestOutcome::default()
    );

    let stored = all(&store, FlowQuery::default()).await;
    let want: Vec<FlowRecord> = (0..12).map(flow).collect();
    let got: Vec<FlowRecord> = stored.iter().map(|f| f.record.clone()).collect();
    assert_eq!(got, want, "every field round-trips, in ingest order");
    assert!(stored.windows(2).all(|w| w[0].seq < w[1].seq));

    // Microseconds survive; nanoseconds are truncated like everywhere in the store.
    let mut fine = flow(100);
    fine.at = OffsetDateTime::from_unix_timestamp_nanos(1_750_000_000_123_456_789).unwrap();
    store
        .ingest_flows(std::slice::from_ref(&fine))
        .await
        .unwrap();
    let got = store.query_flows(&last_n(1)).await.unwrap();
    assert_eq!(
        got[0].record.at.unix_timestamp_nanos(),
        1_750_000_000_123_456_000
    );
}

/// A `phi.access` entry for each record that names a patient, as the control plane
/// makes them (fewer fields).
pub(super) fn audit_for(records: &[FlowRecord]) -> Vec<FlowAudit> {
    records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            Some(FlowAudit {
                record: i,
                event: Event {
                    id: 0,
                    at: r.at,
                    kind: "phi.access".to_owned(),
                    actor: r.source.clone().unwrap_or_default(),
                    subject: r.subject_pseudonym.clone()?,
                    detail: serde_json::json!({ "flow_id": r.id }),
                },
            })
        })
        .collect()
}

/// Audit events ride along with their records: appended once, in the same transaction,
/// never again for a resent batch.
pub(super) async fn check_flows_ingest_audited(store: Store) {
    let batch: Vec<FlowRecord> = (0..9).map(flow).collect();
    let out = store
        .ingest_flows_audited(&batch, &audit_for(&batch))
        .await
        .unwrap();
    assert_eq!((out.inserted, out.audited), (9, 3));
    // Resent with three new records (one PHI) and a repeat inside the batch.
    let mut again: Vec<FlowRecord> = (6..12).map(flow).collect();
    again.push(flow(10));
    let out = store
        .ingest_flows_audited(&again, &audit_for(&again))
        .await
        .unwrap();
    assert_eq!((out.inserted, out.duplicates, out.audited), (3, 4, 1));
    let entries = store
        .audit_entries(&AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let flows: Vec<String> = entries
        .iter()
        .map(|e| e.detail["flow_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(flows, [1, 4, 7, 10].map(|n| flow(n).id));
    assert_eq!(entries[3].subject, flow(10).subject_pseudonym.unwrap());
}

/// The newest `n`.
fn last_n(n: u32) -> FlowQuery {
    FlowQuery {
        limit: n,
        newest: true,
        ..FlowQuery::default()
    }
}

/// Which records a query should return.
type Keep = Box<dyn Fn(&FlowRecord) -> bool + Send + Sync>;

pub(super) async fn check_flows_query_filters(store: Store) {
    let records: Vec<FlowRecord> = (0..60).map(flow).collect();
    // 45 spans two multi-row statements on SQLite: seqs must stay exact across them.
    for chunk in records.chunks(45) {
        store.ingest_flows(chunk).await.unwrap();
    }
    let q = FlowQuery::default;
    assert_eq!(ids(&all(&store, q()).await), expect(&records, |_| true));

    let cases: Vec<(FlowQuery, Keep)> = vec![
        (
            FlowQuery {
                source: Some(IdFilter::Exact(ALICE.into())),
                ..q()
            },
            Box::new(|r| r.source.as_deref() == Some(ALICE)),
        ),
        (
            FlowQuery {
                source: Some(IdFilter::Prefix(
                    "spiffe://wardmesh.local/ns/clinic/sa/".into(),
                )),
                ..q()
            },
            Box::new(|r| r.source.is_some()),
        ),
        (
            FlowQuery {
                destination: Some(IdFilter::Prefix(
                    "spiffe://wardmesh.local/ns/clinic/".into(),
                )),
                ..q()
            },
            Box::new(|_| false),
        ),
        (
            FlowQuery {
                destination: Some(IdFilter::Exact(NOTES.into())),
                verdict: Some(Verdict::DryRun),
                ..q()
            },
            Box::new(|r| r.verdict == Verdict::DryRun),
        ),
        (
            FlowQuery {
                route: Some(UNMATCHED_ROUTE.into()),
                ..q()
            },
            Box::new(|r| r.route.as_deref() == Some(UNMATCHED_ROUTE)),
        ),
        (
            FlowQuery {
                user: Some("dr-alice".into()),
                purpose: Some("TREAT".into()),
                ..q()
            },
            Box::new(|r| r.user.is_some()),
        ),
        (
            FlowQuery {
                purpose: Some("HOPERAT".into()),
                ..q()
            },
            Box::new(|r| r.purpose.as_deref() == Some("HOPERAT")),
        ),
        (
            FlowQuery {
                break_glass: Some(true),
                ..q()
            },
            Box::new(|r| r.break_glass),
        ),
        (
            FlowQuery {
                break_glass: Some(false),
                verdict: Some(Verdict::Denied),
                ..q()
            },
            Box::new(|r| !r.break_glass && r.verdict == Verdict::Denied),
        ),
        (
            FlowQuery {
                request_id: Some("req-0003".into()),
                ..q()
            },
            Box::new(|r| r.request_id.as_deref() == Some("req-0003")),
        ),
        (
            FlowQuery {
                request_id: Some("req-0003".into()),
                verdict: Some(Verdict::Error),
                ..q()
            },
            Box::new(|r| {
                r.request_id.as_deref() == Some("req-0003") && r.verdict == Verdict::Error
            }),
        ),
        (
            FlowQuery {
                request_id: Some("req-9999".into()),
                ..q()
            },
            Box::new(|_| false),
        ),
        (
            FlowQuery {
                since: Some(at(T0 + 10)),
                until: Some(at(T0 + 20)),
                ..q()
            },
            Box::new(|r| (at(T0 + 10)..at(T0 + 20)).contains(&r.at)),
        ),
    ];
    for (query, keep) in cases {
        let want = expect(&records, keep);
        assert_eq!(ids(&all(&store, query.clone()).await), want, "{query:?}");
    }
    // The request-id filter is not vacuous: flows 6 and 7 share one, and come back whole.
    let pair = all(
        &store,
        FlowQuery {
            request_id: Some("req-0003".into()),
            ..q()
        },
    )
    .await;
    assert_eq!(
        pair.iter().map(|f| f.record.clone()).collect::<Vec<_>>(),
        [flow(6), flow(7)]
    );

    // The newest 5, still ascending; and paging from a cursor.
    let newest = store.query_flows(&last_n(5)).await.unwrap();
    assert_eq!(ids(&newest), expect(&records[55..], |_| true));
    let after = newest[0].seq;
    let rest = store
        .query_flows(&FlowQuery {
            after,
            limit: 100,
            ..q()
        })
        .await
        .unwrap();
    assert_eq!(ids(&rest), expect(&records[56..], |_| true));
    let denied_last_2 = store
        .query_flows(&FlowQuery {
            verdict: Some(Verdict::Denied),
            ..last_n(2)
        })
        .await
        .unwrap();
    assert_eq!(ids(&denied_last_2), [flow(53).id, flow(57).id]);
    // Values that would be SQL are just values.
    let odd = FlowQuery {
        route: Some("' OR 1=1 --".into()),
        ..q()
    };
    assert!(all(&store, odd).await.is_empty());
}

pub(super) async fn check_flows_prune(store: Store) {
    let records: Vec<FlowRecord> = (0..30).map(flow).collect();
    store.ingest_flows(&records).await.unwrap();
    assert_eq!(store.prune_flows(at(T0)).await.unwrap(), 0);
    assert_eq!(store.prune_flows(at(T0 + 12)).await.unwrap(), 12);
    assert_eq!(store.prune_flows(at(T0 + 12)).await.unwrap(), 0);
    let left = all(&store, FlowQuery::default()).await;
    assert_eq!(ids(&left), expect(&records[12..], |_| true));
    // Seqs keep growing after a prune that emptied the table: a follower's cursor stays
    // valid.
    let last_seq = left.last().unwrap().seq;
    assert_eq!(store.prune_flows(at(T0 + 1000)).await.unwrap(), 18);
    store.ingest_flows(&[flow(500)]).await.unwrap();
    let after = store
        .query_flows(&FlowQuery {
            after: last_seq,
            limit: 10,
            ..FlowQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&after), [flow(500).id]);
}

/// Flows by request id stay exact however batches fall (SQLite seals runs of 4 flows in
/// unit tests, so these cross run edges inside a batch, at its end and several at once;
/// a duplicate leaves a gap in the seqs), newest-first, and around a prune by time.
pub(super) async fn check_flows_by_request_id_across_batches_and_prune(store: Store) {
    let records: Vec<FlowRecord> = (0..40).map(flow).collect();
    let mut from = 0;
    for size in [1, 3, 4, 9, 2, 1, 5, 15] {
        let mut batch = records[from..from + size].to_vec();
        // A resent record: skipped, its seq left unused.
        batch.push(records[from].clone());
        store.ingest_flows(&batch).await.unwrap();
        from += size;
    }
    assert_eq!(from, records.len());
    let by = |id: &str, newest: bool| FlowQuery {
        request_id: Some(id.to_owned()),
        newest,
        limit: 10,
        ..FlowQuery::default()
    };
    let check = |store: Store, kept: std::ops::Range<usize>, why: &'static str| {
        let records = records.clone();
        async move {
            for r in 0..25 {
                let id = format!("req-{r:04}");
                let want = expect(&records[kept.clone()], |f| {
                    f.request_id.as_deref() == Some(&id)
                });
                assert_eq!(ids(&all(&store, by(&id, false)).await), want, "{id} {why}");
                let newest = store
                    .query_flows(&FlowQuery {
                        limit: 1,
                        ..by(&id, true)
                    })
                    .await
                    .unwrap();
                assert_eq!(
                    ids(&newest),
                    want.last().cloned().into_iter().collect::<Vec<_>>(),
                    "{id} newest {why}"
                );
            }
        }
    };
    check(store.clone(), 0..40, "before the prune").await;
    // The cut (time T0 + 13: flows 0..13) lands inside a run.
    assert_eq!(store.prune_flows(at(T0 + 13)).await.unwrap(), 13);
    check(store.clone(), 13..40, "after the prune").await;
    let more: Vec<FlowRecord> = (40..50).map(flow).collect();
    store.ingest_flows(&more).await.unwrap();
    let mut records_now = records.clone();
    records_now.extend(more);
    for r in [20, 22, 24] {
        let id = format!("req-{r:04}");
        let want = expect(&records_now[13..], |f| f.request_id.as_deref() == Some(&id));
        assert!(!want.is_empty());
        assert_eq!(
            ids(&all(&store, by(&id, false)).await),
            want,
            "{id} after more batches"
        );
    }
}

/// Two replicas ingest interleaved batches (with overlap) while a follower pages by seq:
/// the follower ends up with every record exactly once.
pub(super) async fn check_flows_follow_concurrent_replicas(db: TestDb) {
    let a = db.open().await;
    let b = db.open().await;
    let follower = db.open().await;
    let writer = |store: Store, start: u64| {
        tokio::spawn(async move {
            for i in 0..20u64 {
                let first = start + i * 10;
                // Overlaps the other writer's range half the time: duplicates by id.
                let batch: Vec<FlowRecord> = (first..first + 15).map(flow).collect();
                store.ingest_flows(&batch).await.unwrap();
            }
        })
    };
    let wa = writer(a, 0);
    let wb = writer(b, 5);
    let mut seen = Vec::new();
    let mut cursor = 0;
    let mut writers_done = false;
    loop {
        let page = follower
            .query_flows(&FlowQuery {
                after: cursor,
                limit: 50,
                ..FlowQuery::default()
            })
            .await
            .unwrap();
        if let Some(last) = page.last() {
            cursor = last.seq;
        }
        let empty = page.is_empty();
        seen.extend(page.into_iter().map(|f| f.record.id));
        if empty && writers_done {
            break;
        }
        if empty {
            writers_done = wa.is_finished() && wb.is_finished();
            tokio::task::yield_now().await;
        }
    }
    wa.await.unwrap();
    wb.await.unwrap();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no record twice");
    let want: HashSet<String> = (0..210).map(|n| flow(n).id).collect();
    assert_eq!(unique.len(), want.len());
    assert!(seen.iter().all(|id| want.contains(id)));
}

/// Not a check: prints the ingest rate (run with `--release --ignored --nocapture`).
pub(super) async fn check_flow_ingest_rate(store: Store) {
    for batch in [500] {
        let rate = crate::ingest_benchmark(&store, 200_000, batch, batch as u64)
            .await
            .unwrap();
        assert_eq!(rate.records, 200_000);
        eprintln!(
            "flow ingest on {}: {:.0} records/s (batch {batch}, {:?})",
            store.backend_name(),
            rate.per_second,
            rate.elapsed
        );
    }
}

/// A database at schema version 4 with flows in it is upgraded on open: its flows read
/// back with no request id, and new flows store and filter by theirs.
pub(super) async fn check_flows_upgrade_from_v4(db: TestDb) {
    let migrations = match db.backend {
        "sqlite" => SQLITE_MIGRATIONS,
        _ => POSTGRES_MIGRATIONS,
    };
    let mut sql = format!("{CREATE_SCHEMA_VERSION};\n");
    // Version 2 also chains existing events in Rust; with no events its SQL is all of it.
    for m in migrations.iter().filter(|m| m.version <= 4) {
        sql.push_str(m.sql);
        sql.push_str(&format!(
            "\nINSERT INTO schema_version (version, applied_at_us) VALUES ({}, 0);\n",
            m.version
        ));
    }
    let old = flow(1);
    let break_glass = if db.backend == "sqlite" { "0" } else { "false" };
    sql.push_str(&format!(
        "INSERT INTO flows (seq, id, at_us, kind, direction, source, destination, method, \
         route, status, verdict, policy_revision, rule, latency_us, bytes_in, bytes_out, \
         user_subject, purpose, break_glass, subject_pseudonym) VALUES (1, '{}', {}, 'http', \
         'inbound', NULL, '{NOTES}', 'GET', '/x', 200, 'allowed', NULL, NULL, 1, 2, 3, NULL, \
         NULL, {break_glass}, NULL);\nUPDATE flow_head SET seq = 1;\n",
        old.id,
        T0 * 1_000_000
    ));
    super::raw_sql(&db, &sql).await;

    let store = db.open().await;
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    let before = all(&store, FlowQuery::default()).await;
    assert_eq!(ids(&before), std::slice::from_ref(&old.id));
    assert_eq!(before[0].record.request_id, None);
    let new = flow(2);
    assert!(new.request_id.is_some());
    store
        .ingest_flows(std::slice::from_ref(&new))
        .await
        .unwrap();
    let found = all(
        &store,
        FlowQuery {
            request_id: new.request_id.clone(),
            ..FlowQuery::default()
        },
    )
    .await;
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].seq, &found[0].record), (2, &new));
}
