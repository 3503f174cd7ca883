//! SQLite group commit (`sqlite/group.rs`): batches that queue up behind a busy writer
//! are committed together, yet each stays all-or-nothing on its own.

use std::time::Duration;

use tokio::task::JoinSet;
use wardmesh_proto::flow::FlowRecord;

use super::audit_checks::verify;
use super::flow_checks::{audit_for, flow};
use super::run_on_sqlite;
use crate::{FlowQuery, StoreError};

const BATCHES: u64 = 8;
const PER_BATCH: u64 = 40;
/// The batch with the record the trigger refuses.
const POISONED: u64 = 3;

#[tokio::test]
async fn a_failing_batch_in_a_group_is_rolled_back_alone() {
    run_on_sqlite(|db| async move {
        let store = db.open().await;
        // A stand-in for any per-batch failure: one record of one batch is refused.
        super::raw_sql(
            &db,
            "CREATE TRIGGER poison BEFORE INSERT ON flows WHEN NEW.route = '/poison' \
             BEGIN SELECT RAISE(ABORT, 'poisoned record'); END;",
        )
        .await;
        let batches: Vec<Vec<FlowRecord>> = (0..BATCHES)
            .map(|b| {
                let mut batch: Vec<FlowRecord> = (0..PER_BATCH)
                    .map(|i| flow(1000 + b * PER_BATCH + i))
                    .collect();
                if b == POISONED {
                    batch[PER_BATCH as usize / 2].route = Some("/poison".into());
                }
                batch
            })
            .collect();

        // Another process holds the write lock, so the batches queue up behind the
        // first one and the next commit takes the rest together.
        let path = db.url.trim_start_matches("sqlite:").to_owned();
        let (locked_tx, locked) = tokio::sync::oneshot::channel();
        let holder = tokio::task::spawn_blocking(move || {
            let conn = rusqlite::Connection::open(path).unwrap();
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            locked_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            conn.execute_batch("COMMIT").unwrap();
        });
        locked.await.unwrap();
        let mut set = JoinSet::new();
        for (b, batch) in batches.iter().enumerate() {
            let (store, batch) = (store.clone(), batch.clone());
            set.spawn(async move {
                let audit = audit_for(&batch);
                (b as u64, store.ingest_flows_audited(&batch, &audit).await)
            });
        }
        let mut outcomes = Vec::new();
        while let Some(r) = set.join_next().await {
            outcomes.push(r.unwrap());
        }
        holder.await.unwrap();
        outcomes.sort_by_key(|(b, _)| *b);

        let mut audited = 0;
        for (b, outcome) in &outcomes {
            if *b == POISONED {
                let err = outcome.as_ref().unwrap_err();
                assert!(matches!(err, StoreError::Sqlite(_)), "{err:?}");
                assert!(err.to_string().contains("poisoned record"), "{err}");
            } else {
                let o = outcome.as_ref().unwrap();
                assert_eq!((o.inserted, o.duplicates), (PER_BATCH, 0), "batch {b}");
                audited += o.audited;
            }
        }
        let stored = store
            .query_flows(&FlowQuery {
                limit: 1000,
                ..FlowQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(stored.len() as u64, (BATCHES - 1) * PER_BATCH);
        let poisoned_ids: Vec<&str> = batches[POISONED as usize]
            .iter()
            .map(|r| r.id.as_str())
            .collect();
        assert!(
            stored
                .iter()
                .all(|f| !poisoned_ids.contains(&f.record.id.as_str())),
            "nothing of the failed batch is stored"
        );
        // Seqs are unique and the audit chain holds exactly the stored batches' entries.
        let mut seqs: Vec<i64> = stored.iter().map(|f| f.seq).collect();
        seqs.dedup();
        assert_eq!(seqs.len(), stored.len());
        assert!(audited > 0);
        assert_eq!(verify(&store).await, Ok(audited));

        // Alone, the failed batch gets its own error too, not a commit failure.
        let poisoned = &batches[POISONED as usize];
        let err = store
            .ingest_flows_audited(poisoned, &audit_for(poisoned))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("poisoned record"), "{err}");
        assert!(matches!(err, StoreError::Sqlite(_)), "{err:?}");

        // The failed batch, resent without its bad record, is stored whole.
        let mut fixed = batches[POISONED as usize].clone();
        fixed[PER_BATCH as usize / 2].route = None;
        let o = store
            .ingest_flows_audited(&fixed, &audit_for(&fixed))
            .await
            .unwrap();
        assert_eq!(o.inserted, PER_BATCH);
    })
    .await;
}
