//! [`Store::commit_issuance`]'s behaviour checks, each run on both backends (see
//! `tests.rs`): the token, the issuance and the audit entry are written together or not
//! at all, one token pays for at most one issuance under concurrency, and the committed
//! entries extend the one audit chain.

use std::sync::Arc;

use time::{Duration, OffsetDateTime};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use super::TestDb;
use super::audit_checks::verify;
use super::fixtures::{T0, at, event, issuance, join_token};
use crate::{
    AuditQuery, CommitOutcome, ConsumeOutcome, Event, Issuance, IssuanceCommit, Store, StoreError,
};

const TOKEN_ID: &str = "spiffe://wardmesh.local/ns/vm/sa/contested";

/// The commit the `i`th attester of `token` would make at `now`.
fn attest_commit(token: &str, i: i64, now: OffsetDateTime) -> IssuanceCommit {
    IssuanceCommit {
        consume_join_token: Some((token.to_owned(), now)),
        issuance: Issuance {
            attestation: "join_token".to_owned(),
            ..issuance(&format!("{i:04x}"), TOKEN_ID, T0 + i)
        },
        event: event(i),
    }
}

/// What the audit log holds (events, with their seqs as ids).
async fn logged_events(store: &Store) -> Vec<Event> {
    let q = AuditQuery {
        limit: 1000,
        ..AuditQuery::default()
    };
    let entries = store.audit_entries(&q).await.unwrap();
    entries.into_iter().map(Event::from).collect()
}

fn with_id(mut e: Event, id: i64) -> Event {
    e.id = id;
    e
}

/// 16 commits on `stores` (round robin) spend one token at once: exactly one is
/// committed, the others see the winner's use, and exactly its issuance and its audit
/// entry are stored.
async fn race_commits(stores: &[Store]) {
    const ATTESTERS: i64 = 16;
    let now = at(T0);
    stores[0]
        .insert_join_token(&join_token("contested", now + Duration::minutes(10)))
        .await
        .unwrap();
    let barrier = Arc::new(Barrier::new(ATTESTERS as usize));
    let mut tasks = JoinSet::new();
    for i in 0..ATTESTERS {
        let store = stores[i as usize % stores.len()].clone();
        let barrier = Arc::clone(&barrier);
        // Distinct `now` per attester so the winner is identifiable from used_at.
        let commit = attest_commit("contested", i, now + Duration::milliseconds(i));
        tasks.spawn(async move {
            barrier.wait().await;
            (i, store.commit_issuance(&commit).await.unwrap())
        });
    }
    let outcomes = tasks.join_all().await;
    let winners: Vec<i64> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, CommitOutcome::Committed { .. }))
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    let winner = winners[0];
    let used_at = now + Duration::milliseconds(winner);
    for (i, outcome) in &outcomes {
        let expected = if *i == winner {
            CommitOutcome::Committed { event_seq: 1 }
        } else {
            CommitOutcome::TokenRefused(ConsumeOutcome::AlreadyUsed { used_at })
        };
        assert_eq!(outcome, &expected, "attester {i}");
    }

    let store = &stores[stores.len() - 1];
    let record = store.find_join_token("contested").await.unwrap().unwrap();
    assert_eq!(record.used_at, Some(used_at));
    let winning = attest_commit("contested", winner, used_at);
    assert_eq!(
        store.list_issuances(None, 100).await.unwrap(),
        vec![winning.issuance],
        "exactly the winner's issuance"
    );
    assert_eq!(
        logged_events(store).await,
        vec![with_id(winning.event, 1)],
        "exactly the winner's audit entry"
    );
    assert_eq!(verify(store).await, Ok(1));
}

pub(super) async fn check_commit_issuance_race(store: Store) {
    race_commits(&[store]).await;
}

pub(super) async fn check_commit_issuance_race_across_replicas(db: TestDb) {
    race_commits(&[db.open().await, db.open().await]).await;
}

/// A token that cannot be spent, or a write that fails, leaves everything as it was; a
/// commit without a token (renewal) and plain appends share the one chain.
pub(super) async fn check_commit_issuance_all_or_nothing(store: Store) {
    let now = at(T0 + 100);
    assert_eq!(store.append_event(&event(1)).await.unwrap(), 1);
    let head = store.audit_head().await.unwrap();
    store
        .insert_join_token(&join_token("stale", now - Duration::seconds(1)))
        .await
        .unwrap();
    store
        .insert_join_token(&join_token("fresh", now + Duration::hours(1)))
        .await
        .unwrap();

    let refused = |token: &str| attest_commit(token, 2, now);
    assert_eq!(
        store.commit_issuance(&refused("missing")).await.unwrap(),
        CommitOutcome::TokenRefused(ConsumeOutcome::NotFound)
    );
    assert_eq!(
        store.commit_issuance(&refused("stale")).await.unwrap(),
        CommitOutcome::TokenRefused(ConsumeOutcome::Expired {
            expired_at: now - Duration::seconds(1)
        })
    );

    // The issuance row conflicts (same authority, same serial): the token is not spent
    // and no audit entry is written either.
    store
        .record_issuance(&issuance("dup", TOKEN_ID, T0))
        .await
        .unwrap();
    let mut conflicting = attest_commit("fresh", 2, now);
    conflicting.issuance.serial_hex = "dup".to_owned();
    assert!(
        matches!(
            store.commit_issuance(&conflicting).await,
            Err(StoreError::Conflict(_))
        ),
        "a duplicate serial is a conflict"
    );

    assert_eq!(store.audit_head().await.unwrap(), head, "no entry appended");
    assert_eq!(
        store.list_issuances(None, 100).await.unwrap(),
        vec![issuance("dup", TOKEN_ID, T0)],
        "no issuance recorded"
    );
    for token in ["stale", "fresh"] {
        let record = store.find_join_token(token).await.unwrap().unwrap();
        assert_eq!(record.used_at, None, "{token} is not spent");
    }

    // The same token now pays for one issuance, once.
    let attest = attest_commit("fresh", 2, now);
    assert_eq!(
        store.commit_issuance(&attest).await.unwrap(),
        CommitOutcome::Committed { event_seq: 2 }
    );
    assert_eq!(
        store
            .commit_issuance(&attest_commit("fresh", 3, now))
            .await
            .unwrap(),
        CommitOutcome::TokenRefused(ConsumeOutcome::AlreadyUsed { used_at: now })
    );
    // A renewal spends nothing; appends before and after chain on the same head.
    let renewal = IssuanceCommit {
        consume_join_token: None,
        issuance: Issuance {
            attestation: "renewal".to_owned(),
            ..issuance("0004", TOKEN_ID, T0 + 4)
        },
        event: event(4),
    };
    assert_eq!(
        store.commit_issuance(&renewal).await.unwrap(),
        CommitOutcome::Committed { event_seq: 3 }
    );
    assert_eq!(store.append_event(&event(5)).await.unwrap(), 4);

    assert_eq!(
        logged_events(&store).await,
        vec![
            with_id(event(1), 1),
            with_id(attest.event, 2),
            with_id(renewal.event.clone(), 3),
            with_id(event(5), 4),
        ]
    );
    assert_eq!(
        store.list_issuances(None, 100).await.unwrap(),
        vec![
            renewal.issuance,
            attest.issuance,
            issuance("dup", TOKEN_ID, T0)
        ],
        "newest first"
    );
    assert_eq!(verify(&store).await, Ok(4), "one valid chain");
}

/// Concurrent renewals and plain appends on two replicas: every commit lands, with one
/// issuance and one entry each, and the log is one valid chain.
pub(super) async fn check_commit_issuance_concurrent_replicas(db: TestDb) {
    const PER_TASK: i64 = 10;
    let replicas = [db.open().await, db.open().await];
    let mut tasks = JoinSet::new();
    for t in 0..8_i64 {
        let store = replicas[t as usize % 2].clone();
        tasks.spawn(async move {
            for k in 0..PER_TASK {
                let n = t * PER_TASK + k;
                if t % 4 == 3 {
                    store.append_event(&event(n)).await.unwrap();
                    continue;
                }
                let commit = IssuanceCommit {
                    consume_join_token: None,
                    issuance: issuance(&format!("{n:04x}"), TOKEN_ID, T0 + n),
                    event: event(n),
                };
                let outcome = store.commit_issuance(&commit).await.unwrap();
                assert!(matches!(outcome, CommitOutcome::Committed { .. }));
            }
        });
    }
    tasks.join_all().await;
    let total = 8 * PER_TASK;
    assert_eq!(
        replicas[0].list_issuances(None, 1000).await.unwrap().len(),
        6 * PER_TASK as usize
    );
    let seqs: Vec<i64> = logged_events(&replicas[1])
        .await
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "gapless");
    assert_eq!(verify(&replicas[1]).await, Ok(total as u64));
}
