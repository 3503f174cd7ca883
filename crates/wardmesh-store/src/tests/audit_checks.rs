//! The audit log's behaviour checks, each run on both backends (see `tests.rs`): chained
//! appends, queries, checkpoints, pruning, the schema-2 upgrade of existing events,
//! concurrent appenders on two replicas, and tampering done directly in the database.

use std::time::Instant;

use serde_json::json;
use time::OffsetDateTime;
use tokio::task::JoinSet;

use super::TestDb;
use super::fixtures::{T0, at, event};
use crate::chain::{ChainBreak, ChainWalker, GENESIS_HASH};
use crate::schema::{CREATE_SCHEMA_VERSION, POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS};
use crate::{
    AuditEntry, AuditQuery, ChainHead, Checkpoint, Event, SCHEMA_VERSION, Store, StoreError,
};

/// Every entry, ascending.
async fn all_entries(store: &Store) -> Vec<AuditEntry> {
    let mut out = Vec::new();
    loop {
        let q = AuditQuery {
            after: out.last().map_or(0, |e: &AuditEntry| e.seq),
            limit: 500,
            ..AuditQuery::default()
        };
        let page = store.audit_entries(&q).await.unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// Walks the whole log from its anchor (or the genesis).
pub(super) async fn verify(store: &Store) -> Result<u64, ChainBreak> {
    let anchor = store.audit_anchor().await.unwrap().map(|a| ChainHead {
        seq: a.checkpoint.seq,
        hash: a.checkpoint.head_hash,
    });
    let mut walker = ChainWalker::new(anchor);
    for e in all_entries(store).await {
        walker.push(&e)?;
    }
    Ok(walker.checked())
}

pub(super) fn checkpoint_at(head: &ChainHead) -> Checkpoint {
    Checkpoint {
        id: 0,
        seq: head.seq,
        head_hash: head.hash.clone(),
        at: at(T0 + 1000),
        key_id: "test-key".to_owned(),
        signature: "c2lnbmF0dXJl".to_owned(),
    }
}

/// The head after `seq`, read from the stored entry.
pub(super) async fn head_at(store: &Store, seq: i64) -> ChainHead {
    let q = AuditQuery {
        after: seq - 1,
        limit: 1,
        ..AuditQuery::default()
    };
    let e = store.audit_entries(&q).await.unwrap().remove(0);
    assert_eq!(e.seq, seq);
    ChainHead { seq, hash: e.hash }
}

pub(super) async fn check_audit_chain_appends(store: Store) {
    assert_eq!(store.audit_head().await.unwrap(), ChainHead::genesis());
    assert_eq!(store.append_event(&event(1)).await.unwrap(), 1);
    let batch: Vec<Event> = (2..=5).map(event).collect();
    assert_eq!(store.append_events(&batch).await.unwrap(), [2, 3, 4, 5]);
    assert!(store.append_events(&[]).await.unwrap().is_empty());
    let odd = Event {
        detail: json!({ "f": 0.1 + 0.2, "neg0": -0.0, "big": 1e300, "z": { "b": 1, "a": [] } }),
        ..event(6)
    };
    assert_eq!(store.append_event(&odd).await.unwrap(), 6);

    let entries = all_entries(&store).await;
    assert_eq!(entries.len(), 6);
    assert_eq!(entries[0].prev_hash, GENESIS_HASH);
    for pair in entries.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash, "linked");
    }
    assert_eq!(entries[5].detail, odd.detail, "floats read back exactly");
    assert_eq!(verify(&store).await, Ok(6));
    assert_eq!(
        store.audit_head().await.unwrap(),
        ChainHead {
            seq: 6,
            hash: entries[5].hash.clone()
        }
    );
    // The legacy event view is the same log.
    let events = store.list_events(0, 100).await.unwrap();
    assert_eq!(events.len(), 6);
    assert_eq!(events[1], Event { id: 2, ..event(2) });
}

pub(super) async fn check_audit_queries(store: Store) {
    let kinds = [
        "identity.issued",
        "operator.api",
        "identity.refused",
        "ca.reloaded",
    ];
    let events: Vec<Event> = (1..=8)
        .map(|n| Event {
            kind: kinds[(n as usize) % kinds.len()].to_owned(),
            ..event(n)
        })
        .collect();
    store.append_events(&events).await.unwrap();
    let run = |q: AuditQuery| {
        let store = store.clone();
        async move { store_seqs(&store, &q).await }
    };
    assert_eq!(
        run(AuditQuery {
            kind: Some("identity.issued".into()),
            limit: 100,
            ..Default::default()
        })
        .await,
        [4, 8]
    );
    assert_eq!(
        run(AuditQuery {
            kind: Some("identity.*".into()),
            limit: 100,
            ..Default::default()
        })
        .await,
        [2, 4, 6, 8]
    );
    assert_eq!(
        run(AuditQuery {
            exclude_kind: Some("operator.api".into()),
            limit: 100,
            ..Default::default()
        })
        .await,
        [2, 3, 4, 6, 7, 8]
    );
    assert_eq!(
        run(AuditQuery {
            since: Some(at(T0 + 6)),
            limit: 100,
            ..Default::default()
        })
        .await,
        [6, 7, 8]
    );
    assert_eq!(
        run(AuditQuery {
            after: 2,
            before: Some(6),
            limit: 100,
            ..Default::default()
        })
        .await,
        [3, 4, 5]
    );
    assert_eq!(
        run(AuditQuery {
            limit: 3,
            newest: true,
            ..Default::default()
        })
        .await,
        [6, 7, 8],
        "the newest three, ascending"
    );
    assert_eq!(
        run(AuditQuery {
            kind: Some("identity.*".into()),
            limit: 3,
            newest: true,
            ..Default::default()
        })
        .await,
        [4, 6, 8]
    );
    assert_eq!(
        run(AuditQuery {
            limit: 2,
            ..Default::default()
        })
        .await,
        [1, 2]
    );
}

pub(super) async fn store_seqs(store: &Store, q: &AuditQuery) -> Vec<i64> {
    store
        .audit_entries(q)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}

pub(super) async fn check_audit_checkpoints(store: Store) {
    assert_eq!(store.latest_checkpoint().await.unwrap(), None);
    let err = store
        .append_checkpoint(&checkpoint_at(&ChainHead::genesis()))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Rejected(_)), "{err:?}");

    store
        .append_events(&(1..=5).map(event).collect::<Vec<_>>())
        .await
        .unwrap();
    let head3 = head_at(&store, 3).await;
    let first = store
        .append_checkpoint(&checkpoint_at(&head3))
        .await
        .unwrap();
    assert!(first.id > 0);
    assert_eq!(
        first,
        Checkpoint {
            id: first.id,
            ..checkpoint_at(&head3)
        }
    );
    let head5 = store.audit_head().await.unwrap();
    let second = store
        .append_checkpoint(&checkpoint_at(&head5))
        .await
        .unwrap();

    // A claim the log does not back is refused, and nothing is stored.
    for bad in [
        ChainHead {
            seq: 4,
            hash: head5.hash.clone(),
        },
        ChainHead {
            seq: 9,
            hash: head5.hash.clone(),
        },
    ] {
        let err = store
            .append_checkpoint(&checkpoint_at(&bad))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Rejected(_)), "{err:?}");
        assert!(
            err.to_string().contains(&format!("seq {}", bad.seq)),
            "{err}"
        );
    }
    assert_eq!(
        store.list_checkpoints(0, 10).await.unwrap(),
        [first.clone(), second.clone()]
    );
    assert_eq!(
        store.list_checkpoints(first.id, 10).await.unwrap(),
        std::slice::from_ref(&second)
    );
    assert_eq!(store.list_checkpoints(0, 1).await.unwrap(), [first]);
    assert_eq!(store.latest_checkpoint().await.unwrap(), Some(second));
}

pub(super) async fn check_audit_prune(store: Store) {
    store
        .append_events(&(1..=10).map(event).collect::<Vec<_>>())
        .await
        .unwrap();
    let cp3 = store
        .append_checkpoint(&checkpoint_at(&head_at(&store, 3).await))
        .await
        .unwrap();
    let cp6 = store
        .append_checkpoint(&checkpoint_at(&head_at(&store, 6).await))
        .await
        .unwrap();
    let now = at(T0 + 5000);

    let out = store.prune_audit(cp6.id, now).await.unwrap();
    assert_eq!((out.entries_removed, out.checkpoints_removed), (6, 1));
    assert_eq!(out.anchor.checkpoint, cp6);
    assert_eq!(out.anchor.pruned_at, now);
    assert_eq!(
        store.audit_anchor().await.unwrap(),
        Some(out.anchor.clone())
    );
    assert_eq!(
        store.list_checkpoints(0, 10).await.unwrap(),
        std::slice::from_ref(&cp6)
    );
    let remaining = all_entries(&store).await;
    assert_eq!(remaining.first().map(|e| e.seq), Some(7));
    assert_eq!(remaining[0].prev_hash, cp6.head_hash);
    assert_eq!(verify(&store).await, Ok(4), "verifiable from the anchor");

    // Again at the anchor: nothing to do. Older: refused.
    let again = store.prune_audit(cp6.id, now).await.unwrap();
    assert_eq!((again.entries_removed, again.checkpoints_removed), (0, 0));
    let err = store.prune_audit(cp3.id, now).await.unwrap_err();
    assert!(matches!(err, StoreError::Rejected(_)), "{err:?}");
    let err = store.prune_audit(9999, now).await.unwrap_err();
    assert!(
        err.to_string().contains("no checkpoint with id 9999"),
        "{err}"
    );

    // A checkpoint at the anchor's seq is still backed by the anchor.
    store
        .append_checkpoint(&checkpoint_at(&head_at_anchor(&cp6)))
        .await
        .unwrap();

    // Pruning everything: appends still chain onto the head, the log still verifies.
    let cp10 = store
        .append_checkpoint(&checkpoint_at(&store.audit_head().await.unwrap()))
        .await
        .unwrap();
    let out = store.prune_audit(cp10.id, now).await.unwrap();
    assert_eq!(out.entries_removed, 4);
    assert!(all_entries(&store).await.is_empty());
    assert_eq!(store.append_event(&event(11)).await.unwrap(), 11);
    let tail = all_entries(&store).await;
    assert_eq!(tail[0].prev_hash, cp10.head_hash);
    assert_eq!(verify(&store).await, Ok(1));
}

fn head_at_anchor(cp: &Checkpoint) -> ChainHead {
    ChainHead {
        seq: cp.seq,
        hash: cp.head_hash.clone(),
    }
}

/// Four appenders on each of two replicas (two store handles on one database), 25
/// appends each: one gapless chain.
pub(super) async fn check_audit_concurrent_replicas(db: TestDb) {
    let replicas = [db.open().await, db.open().await];
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for t in 0..8 {
        let store = replicas[t % 2].clone();
        tasks.spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                let e = Event {
                    actor: format!("replica-{}/task-{t}", t % 2),
                    ..event(i64::try_from(t * 100 + i).unwrap())
                };
                seqs.push(store.append_event(&e).await.unwrap());
            }
            seqs
        });
    }
    let mut seqs: Vec<i64> = tasks.join_all().await.into_iter().flatten().collect();
    let elapsed = started.elapsed();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>(), "unique and gapless");
    assert_eq!(verify(&replicas[1]).await, Ok(200), "one valid chain");
    assert_eq!(replicas[0].audit_head().await.unwrap().seq, 200);
    eprintln!(
        "{}: 200 concurrent appends from 2 replicas in {elapsed:?} ({:.0}/s)",
        db.backend,
        200.0 / elapsed.as_secs_f64()
    );
}

/// A database written by schema version 1 (plain events, no hashes) is upgraded on open:
/// its events are chained in id order and new appends continue the chain.
pub(super) async fn check_audit_upgrade_from_v1(db: TestDb) {
    let legacy = [
        (1, json!({ "serial": "01", "nested": { "b": 2, "a": 1 } })),
        (2, json!({ "reason": "leaked key", "changed": true })),
        (3, json!({ "n": 2.5 })),
    ];
    let mut sql = format!("{CREATE_SCHEMA_VERSION};\n");
    let (v1, detail_cast) = match db.backend {
        "sqlite" => (SQLITE_MIGRATIONS[0].sql, ""),
        _ => (POSTGRES_MIGRATIONS[0].sql, "::jsonb"),
    };
    sql.push_str(v1);
    sql.push_str("\nINSERT INTO schema_version (version, applied_at_us) VALUES (1, 0);\n");
    for (id, detail) in &legacy {
        sql.push_str(&format!(
            "INSERT INTO events (id, at_us, kind, actor, subject, detail) VALUES \
             ({id}, {}, 'identity.issued', 'join_token', 'spiffe://wardmesh.local/ns/a/sa/{id}', \
             '{detail}'{detail_cast});\n",
            (T0 + id) * 1_000_000
        ));
    }
    sql.push_str("UPDATE counters SET value = 3 WHERE name = 'event_id';\n");
    super::raw_sql(&db, &sql).await;

    let store = db.open().await;
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    let entries = all_entries(&store).await;
    assert_eq!(entries.len(), 3);
    for ((id, detail), e) in legacy.iter().zip(&entries) {
        assert_eq!((e.seq, &e.detail), (*id, detail));
    }
    assert_eq!(verify(&store).await, Ok(3));
    assert_eq!(store.audit_head().await.unwrap(), head_at(&store, 3).await);
    assert_eq!(store.append_event(&event(4)).await.unwrap(), 4);
    assert_eq!(verify(&store).await, Ok(4));
    // Opening again migrates nothing twice.
    drop(store);
    assert_eq!(verify(&db.open().await).await, Ok(4));
}

/// Appends ten entries and returns the store.
async fn ten(db: &TestDb) -> Store {
    let store = db.open().await;
    store
        .append_events(&(1..=10).map(event).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(verify(&store).await, Ok(10));
    store
}

pub(super) async fn check_tamper_edit_detail(db: TestDb) {
    let store = ten(&db).await;
    super::raw_sql(
        &db,
        r#"UPDATE events SET detail = '{"n":4,"serial":"ffff"}' WHERE id = 4"#,
    )
    .await;
    assert!(
        matches!(
            verify(&store).await,
            Err(ChainBreak::HashMismatch { seq: 4, .. })
        ),
        "{:?}",
        verify(&store).await
    );
}

pub(super) async fn check_tamper_delete_row(db: TestDb) {
    let store = ten(&db).await;
    super::raw_sql(&db, "DELETE FROM events WHERE id = 5").await;
    assert_eq!(
        verify(&store).await,
        Err(ChainBreak::Gap {
            after_seq: 4,
            next_seq: 6
        })
    );
}

pub(super) async fn check_tamper_swap_rows(db: TestDb) {
    let store = ten(&db).await;
    super::raw_sql(
        &db,
        "UPDATE events SET id = -3 WHERE id = 3; UPDATE events SET id = 3 WHERE id = 4; \
         UPDATE events SET id = 4 WHERE id = -3;",
    )
    .await;
    assert!(matches!(
        verify(&store).await,
        Err(ChainBreak::PrevHashMismatch { seq: 3, .. })
    ));
}

/// Shifts entries 6.. up by one and inserts a forged entry 6 that links onto entry 5 and
/// carries a correctly computed hash: the break shows at the next (original) entry.
pub(super) async fn check_tamper_insert_row(db: TestDb) {
    let store = ten(&db).await;
    let five = head_at(&store, 5).await;
    let forged = AuditEntry {
        seq: 6,
        at: OffsetDateTime::from_unix_timestamp(T0 + 5).unwrap(),
        kind: "identity.issued".to_owned(),
        actor: "control-plane".to_owned(),
        subject: "spiffe://wardmesh.local/ns/a/sa/forged".to_owned(),
        detail: json!({}),
        prev_hash: five.hash.clone(),
        hash: String::new(),
    };
    let hash = crate::chain::entry_hash(&forged).unwrap();
    super::raw_sql(
        &db,
        &format!(
            "UPDATE events SET id = -id WHERE id > 5; UPDATE events SET id = 1 - id WHERE id < 0; \
             INSERT INTO events (id, at_us, kind, actor, subject, detail, prev_hash, hash) VALUES \
             (6, {}, '{}', '{}', '{}', '{{}}', '{}', '{hash}');",
            (T0 + 5) * 1_000_000,
            forged.kind,
            forged.actor,
            forged.subject,
            forged.prev_hash
        ),
    )
    .await;
    assert!(matches!(
        verify(&store).await,
        Err(ChainBreak::PrevHashMismatch { seq: 7, .. })
    ));
}
