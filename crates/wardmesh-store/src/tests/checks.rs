//! The behaviour checks, each run on both backends (see `tests.rs`).

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::json;
use time::{Duration, OffsetDateTime};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use super::TestDb;
use super::fixtures::{
    ALICE, BOB, T0, agent, at, event, issuance, join_token, operator_token, quarantine_entry,
};
use crate::{
    AgentStatus, ConsumeOutcome, Event, Issuance, JoinTokenRecord, SCHEMA_VERSION, Store,
    StoreError,
};

pub(super) async fn check_migrations_idempotent(db: TestDb) {
    let first = db.open().await;
    assert_eq!(first.schema_version().await.unwrap(), SCHEMA_VERSION);
    first
        .insert_operator_token(&operator_token("h1", "viewer"))
        .await
        .unwrap();
    assert!(
        first
            .quarantine(&quarantine_entry(ALICE, "r"))
            .await
            .unwrap()
    );
    assert_eq!(first.append_event(&event(1)).await.unwrap(), 1);

    // Re-opening must neither fail nor re-seed the counters nor touch the data.
    let second = db.open().await;
    assert_eq!(second.schema_version().await.unwrap(), SCHEMA_VERSION);
    assert_eq!(second.count_operator_tokens().await.unwrap(), 1);
    assert_eq!(second.deny_list_revision().await.unwrap(), 1);
    assert_eq!(second.append_event(&event(2)).await.unwrap(), 2);

    // Replicas starting at the same time.
    let mut opens = JoinSet::new();
    for _ in 0..4 {
        let db = db.clone();
        opens.spawn(async move { db.open().await.schema_version().await.unwrap() });
    }
    while let Some(version) = opens.join_next().await {
        assert_eq!(version.unwrap(), SCHEMA_VERSION);
    }
    assert_eq!(first.count_operator_tokens().await.unwrap(), 1);
}

pub(super) async fn check_join_token_outcomes(store: Store) {
    let now = at(T0 + 100);
    store
        .insert_join_token(&join_token("fresh", now + Duration::hours(1)))
        .await
        .unwrap();
    store
        .insert_join_token(&join_token("stale", now - Duration::seconds(1)))
        .await
        .unwrap();
    store
        .insert_join_token(&join_token("boundary", now))
        .await
        .unwrap();

    assert_eq!(
        store.consume_join_token("fresh", now).await.unwrap(),
        ConsumeOutcome::Consumed {
            spiffe_id: "spiffe://wardmesh.local/ns/vm/sa/fresh".to_owned()
        }
    );
    let later = now + Duration::seconds(5);
    assert_eq!(
        store.consume_join_token("fresh", later).await.unwrap(),
        ConsumeOutcome::AlreadyUsed { used_at: now }
    );
    // Used wins over expired: the operator learns the token was used, not that it lapsed.
    assert_eq!(
        store
            .consume_join_token("fresh", now + Duration::days(2))
            .await
            .unwrap(),
        ConsumeOutcome::AlreadyUsed { used_at: now }
    );
    assert_eq!(
        store.consume_join_token("stale", now).await.unwrap(),
        ConsumeOutcome::Expired {
            expired_at: now - Duration::seconds(1)
        }
    );
    // Valid strictly before expires_at.
    assert_eq!(
        store.consume_join_token("boundary", now).await.unwrap(),
        ConsumeOutcome::Expired { expired_at: now }
    );
    // A failed attempt does not use the token up.
    assert_eq!(
        store
            .consume_join_token("boundary", now - Duration::seconds(1))
            .await
            .unwrap(),
        ConsumeOutcome::Consumed {
            spiffe_id: "spiffe://wardmesh.local/ns/vm/sa/boundary".to_owned()
        }
    );
    assert_eq!(
        store.consume_join_token("missing", now).await.unwrap(),
        ConsumeOutcome::NotFound
    );

    let err = store
        .insert_join_token(&join_token("fresh", now + Duration::hours(2)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(err.to_string().contains("join token"), "{err}");
    // The rejected duplicate did not reset the used token.
    assert_eq!(
        store.consume_join_token("fresh", later).await.unwrap(),
        ConsumeOutcome::AlreadyUsed { used_at: now }
    );
}

pub(super) async fn check_join_token_lookup(store: Store) {
    assert_eq!(store.find_join_token("missing").await.unwrap(), None);

    // A `now` finer than a microsecond: the recorded use is truncated towards the past.
    let now = OffsetDateTime::from_unix_timestamp_nanos(1_750_000_100_123_456_789).unwrap();
    let now_micros = OffsetDateTime::from_unix_timestamp_nanos(1_750_000_100_123_456_000).unwrap();
    let token = join_token("looked-up", at(T0 + 3600));
    store.insert_join_token(&token).await.unwrap();
    let unused = JoinTokenRecord {
        token: token.clone(),
        used_at: None,
    };
    assert_eq!(
        store.find_join_token("looked-up").await.unwrap(),
        Some(unused.clone())
    );
    // Looking a token up does not use it up.
    assert_eq!(
        store.find_join_token("looked-up").await.unwrap(),
        Some(unused)
    );

    assert_eq!(
        store.consume_join_token("looked-up", now).await.unwrap(),
        ConsumeOutcome::Consumed {
            spiffe_id: token.spiffe_id.clone()
        }
    );
    assert_eq!(
        store.find_join_token("looked-up").await.unwrap(),
        Some(JoinTokenRecord {
            token,
            used_at: Some(now_micros),
        })
    );
    assert_eq!(store.find_join_token("missing").await.unwrap(), None);
}

/// `consumers` tasks on `stores` (round robin) race for one token; returns the outcomes.
async fn race_for_token(stores: &[Store], consumers: usize) -> Vec<ConsumeOutcome> {
    let now = at(T0);
    stores[0]
        .insert_join_token(&join_token("contested", now + Duration::minutes(10)))
        .await
        .unwrap();
    let barrier = Arc::new(Barrier::new(consumers));
    let mut tasks = JoinSet::new();
    for i in 0..consumers {
        let store = stores[i % stores.len()].clone();
        let barrier = Arc::clone(&barrier);
        // Distinct `now` per consumer so the winner is identifiable from used_at.
        let now = now + Duration::milliseconds(i as i64);
        tasks.spawn(async move {
            barrier.wait().await;
            store.consume_join_token("contested", now).await.unwrap()
        });
    }
    tasks.join_all().await
}

fn assert_exactly_one_winner(outcomes: &[ConsumeOutcome]) {
    let winners = outcomes
        .iter()
        .filter(|o| matches!(o, ConsumeOutcome::Consumed { .. }))
        .count();
    assert_eq!(winners, 1, "{outcomes:?}");
    let used_at: BTreeSet<_> = outcomes
        .iter()
        .filter_map(|o| match o {
            ConsumeOutcome::AlreadyUsed { used_at } => Some(*used_at),
            ConsumeOutcome::Consumed { .. } => None,
            other => panic!("unexpected outcome {other:?}"),
        })
        .collect();
    // Every loser saw the winner's single timestamp.
    assert_eq!(used_at.len(), 1, "{outcomes:?}");
}

pub(super) async fn check_join_token_race(store: Store) {
    let outcomes = race_for_token(&[store], 16).await;
    assert_eq!(outcomes.len(), 16);
    assert_exactly_one_winner(&outcomes);
}

pub(super) async fn check_join_token_race_across_replicas(db: TestDb) {
    let replicas = [db.open().await, db.open().await];
    let outcomes = race_for_token(&replicas, 16).await;
    assert_eq!(outcomes.len(), 16);
    assert_exactly_one_winner(&outcomes);
}

pub(super) async fn check_quarantine_and_revision(store: Store) {
    assert_eq!(store.deny_list_revision().await.unwrap(), 0);
    assert!(store.list_quarantined().await.unwrap().is_empty());
    assert!(!store.is_quarantined(BOB).await.unwrap());

    assert!(
        store
            .quarantine(&quarantine_entry(BOB, "leaked key"))
            .await
            .unwrap()
    );
    assert_eq!(store.deny_list_revision().await.unwrap(), 1);
    assert!(store.is_quarantined(BOB).await.unwrap());

    // Again: not new, no revision bump, but the details are replaced.
    let mut updated = quarantine_entry(BOB, "leaked key, confirmed");
    updated.created_by = "operator:carol".to_owned();
    assert!(!store.quarantine(&updated).await.unwrap());
    assert_eq!(store.deny_list_revision().await.unwrap(), 1);

    assert!(
        store
            .quarantine(&quarantine_entry(ALICE, "audit"))
            .await
            .unwrap()
    );
    assert_eq!(store.deny_list_revision().await.unwrap(), 2);
    assert_eq!(
        store.list_quarantined().await.unwrap(),
        vec![quarantine_entry(ALICE, "audit"), updated.clone()],
        "sorted by SPIFFE ID, with the replaced details"
    );

    assert!(store.unquarantine(ALICE).await.unwrap());
    assert_eq!(store.deny_list_revision().await.unwrap(), 3);
    assert!(!store.is_quarantined(ALICE).await.unwrap());
    // Nothing to remove: no change, no bump.
    assert!(!store.unquarantine(ALICE).await.unwrap());
    assert!(
        !store
            .unquarantine("spiffe://wardmesh.local/ns/x/sa/never")
            .await
            .unwrap()
    );
    assert_eq!(store.deny_list_revision().await.unwrap(), 3);
    assert_eq!(store.list_quarantined().await.unwrap(), vec![updated]);

    // Re-adding a lifted ID is a change again.
    assert!(
        store
            .quarantine(&quarantine_entry(ALICE, "again"))
            .await
            .unwrap()
    );
    assert_eq!(store.deny_list_revision().await.unwrap(), 4);
}

pub(super) async fn check_revision_shared_across_replicas(db: TestDb) {
    let (a, b) = (db.open().await, db.open().await);
    assert!(a.quarantine(&quarantine_entry(ALICE, "r")).await.unwrap());
    assert_eq!(b.deny_list_revision().await.unwrap(), 1);
    assert!(b.is_quarantined(ALICE).await.unwrap());

    // Both replicas quarantine the same ID at once: one adds it, one bump in total.
    let mut tasks = JoinSet::new();
    for store in [a.clone(), b.clone(), a.clone(), b.clone()] {
        tasks.spawn(async move {
            store
                .quarantine(&quarantine_entry(BOB, "race"))
                .await
                .unwrap()
        });
    }
    let added = tasks.join_all().await;
    assert_eq!(added.iter().filter(|added| **added).count(), 1, "{added:?}");
    assert_eq!(a.deny_list_revision().await.unwrap(), 2);

    assert!(b.unquarantine(ALICE).await.unwrap());
    assert!(!a.unquarantine(ALICE).await.unwrap());
    assert_eq!(a.deny_list_revision().await.unwrap(), 3);
    assert_eq!(b.deny_list_revision().await.unwrap(), 3);
}

pub(super) async fn check_issuances_newest_first(store: Store) {
    let records = [
        issuance("01", ALICE, T0),
        issuance("02", BOB, T0 + 10),
        issuance("03", ALICE, T0 + 20),
        issuance("04", ALICE, T0 + 30),
        issuance("05", BOB, T0 + 30), // same instant as 04, recorded later
    ];
    for r in &records {
        store.record_issuance(r).await.unwrap();
    }
    let serials = |list: Vec<Issuance>| list.into_iter().map(|i| i.serial_hex).collect::<Vec<_>>();

    assert_eq!(
        serials(store.list_issuances(None, 100).await.unwrap()),
        ["05", "04", "03", "02", "01"]
    );
    assert_eq!(
        store.list_issuances(Some(ALICE), 100).await.unwrap(),
        vec![records[3].clone(), records[2].clone(), records[0].clone()]
    );
    assert_eq!(
        serials(store.list_issuances(Some(BOB), 1).await.unwrap()),
        ["05"]
    );
    assert_eq!(
        serials(store.list_issuances(None, 2).await.unwrap()),
        ["05", "04"]
    );
    assert!(store.list_issuances(None, 0).await.unwrap().is_empty());
    assert!(
        store
            .list_issuances(Some("spiffe://other"), 10)
            .await
            .unwrap()
            .is_empty()
    );

    let err = store
        .record_issuance(&issuance("03", BOB, T0 + 40))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // The same serial from another authority (e.g. after a CA rotation) is a new record.
    let mut other_ca = issuance("03", BOB, T0 + 40);
    other_ca.authority_id = "cd34".to_owned();
    other_ca.attestation = "renewal".to_owned();
    store.record_issuance(&other_ca).await.unwrap();
    assert_eq!(store.list_issuances(None, 1).await.unwrap(), vec![other_ca]);
}

pub(super) async fn check_timestamps_keep_microseconds(store: Store) {
    let micros =
        |us: i64| OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000).unwrap();
    let mut record = issuance("aa", ALICE, T0);
    record.not_before = micros(-1); // just before the epoch
    record.not_after = time::macros::datetime!(9999-12-31 23:59:59.999999 UTC);
    record.issued_at = micros(1_750_000_000_123_456);
    store.record_issuance(&record).await.unwrap();
    assert_eq!(
        store.list_issuances(None, 1).await.unwrap(),
        vec![record.clone()]
    );

    // Sub-microsecond precision is truncated towards the past.
    let mut fine = issuance("bb", ALICE, T0);
    fine.issued_at = OffsetDateTime::from_unix_timestamp_nanos(1_760_000_000_000_000_999).unwrap();
    store.record_issuance(&fine).await.unwrap();
    let stored = store.list_issuances(None, 1).await.unwrap();
    assert_eq!(stored[0].serial_hex, "bb");
    assert_eq!(stored[0].issued_at, micros(1_760_000_000_000_000));
}

pub(super) async fn check_agent_upsert(store: Store) {
    assert!(store.list_agents().await.unwrap().is_empty());
    let bob_1 = agent("pod-b1", BOB, T0, 1);
    let alice_2 = agent("pod-a2", ALICE, T0, 1);
    let alice_1 = agent("pod-a1", ALICE, T0, 1);
    for a in [&bob_1, &alice_2, &alice_1] {
        store.upsert_agent(a).await.unwrap();
    }
    assert_eq!(
        store.list_agents().await.unwrap(),
        vec![alice_1.clone(), alice_2.clone(), bob_1.clone()]
    );

    // A newer report from the same instance replaces the old one.
    let bob_1_later = AgentStatus {
        cert_authority_id: "cd34".to_owned(),
        ..agent("pod-b1", BOB, T0 + 300, 7)
    };
    store.upsert_agent(&bob_1_later).await.unwrap();
    assert_eq!(
        store.list_agents().await.unwrap(),
        vec![alice_1, alice_2, bob_1_later]
    );
}

pub(super) async fn check_events_paging(store: Store) {
    assert!(store.list_events(0, 10).await.unwrap().is_empty());
    let mut ids = Vec::new();
    for n in 1..=7 {
        ids.push(store.append_event(&event(n)).await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(ids, (1..=7).collect::<Vec<_>>());

    let all = store.list_events(0, 100).await.unwrap();
    let expected: Vec<Event> = (1..=7).map(|n| Event { id: n, ..event(n) }).collect();
    assert_eq!(
        all, expected,
        "ascending, with assigned ids and the same json detail"
    );

    let page = store.list_events(ids[1], 2).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.id).collect::<Vec<_>>(),
        [ids[2], ids[3]]
    );
    assert!(store.list_events(ids[6], 10).await.unwrap().is_empty());
    assert!(store.list_events(0, 0).await.unwrap().is_empty());

    // Paging by the last id seen returns everything exactly once.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = store.list_events(after, 3).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.id;
        seen.extend(page);
    }
    assert_eq!(seen, expected);

    let odd = Event {
        detail: json!({ "text": "naïve \"quoted\" \u{1F512}", "list": [1, 2.5, null], "big": i64::MAX }),
        ..event(8)
    };
    let id = store.append_event(&odd).await.unwrap();
    assert_eq!(
        store.list_events(id - 1, 1).await.unwrap(),
        vec![Event { id, ..odd }]
    );
}

pub(super) async fn check_events_concurrent_appends(store: Store) {
    let mut tasks = JoinSet::new();
    for n in 0..32 {
        let store = store.clone();
        tasks.spawn(async move { store.append_event(&event(n)).await.unwrap() });
    }
    let ids: BTreeSet<i64> = tasks.join_all().await.into_iter().collect();
    assert_eq!(ids, (1..=32).collect(), "unique and gapless");
    let listed: Vec<i64> = store
        .list_events(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(listed, (1..=32).collect::<Vec<_>>());
}

pub(super) async fn check_operator_tokens(store: Store) {
    assert_eq!(store.count_operator_tokens().await.unwrap(), 0);
    assert_eq!(store.find_operator_token("h-admin").await.unwrap(), None);
    let admin = operator_token("h-admin", "security-admin");
    store.insert_operator_token(&admin).await.unwrap();
    store
        .insert_operator_token(&operator_token("h-viewer", "viewer"))
        .await
        .unwrap();
    assert_eq!(
        store.find_operator_token("h-admin").await.unwrap(),
        Some(admin)
    );
    assert_eq!(store.find_operator_token("h-unknown").await.unwrap(), None);
    assert_eq!(store.count_operator_tokens().await.unwrap(), 2);

    let err = store
        .insert_operator_token(&operator_token("h-admin", "viewer"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.count_operator_tokens().await.unwrap(), 2);
    assert_eq!(
        store
            .find_operator_token("h-admin")
            .await
            .unwrap()
            .map(|t| t.role),
        Some("security-admin".to_owned()),
        "the duplicate did not overwrite the original"
    );
}

pub(super) async fn check_persists_across_reopen(db: TestDb) {
    let now = at(T0);
    {
        let store = db.open().await;
        store
            .insert_join_token(&join_token("kept", now + Duration::hours(1)))
            .await
            .unwrap();
        store
            .insert_join_token(&join_token("spent", now + Duration::hours(1)))
            .await
            .unwrap();
        assert!(matches!(
            store.consume_join_token("spent", now).await.unwrap(),
            ConsumeOutcome::Consumed { .. }
        ));
        store.quarantine(&quarantine_entry(BOB, "r")).await.unwrap();
        store
            .record_issuance(&issuance("01", ALICE, T0))
            .await
            .unwrap();
        store
            .upsert_agent(&agent("pod-a1", ALICE, T0, 3))
            .await
            .unwrap();
        store.append_event(&event(1)).await.unwrap();
        store
            .insert_operator_token(&operator_token("h", "auditor"))
            .await
            .unwrap();
    }
    let store = db.open().await;
    assert_eq!(
        store.list_quarantined().await.unwrap(),
        vec![quarantine_entry(BOB, "r")]
    );
    assert_eq!(store.deny_list_revision().await.unwrap(), 1);
    assert_eq!(
        store.list_issuances(None, 10).await.unwrap(),
        vec![issuance("01", ALICE, T0)]
    );
    assert_eq!(
        store.list_agents().await.unwrap(),
        vec![agent("pod-a1", ALICE, T0, 3)]
    );
    assert_eq!(
        store.list_events(0, 10).await.unwrap(),
        vec![Event { id: 1, ..event(1) }]
    );
    assert_eq!(
        store.append_event(&event(2)).await.unwrap(),
        2,
        "ids continue"
    );
    assert_eq!(store.count_operator_tokens().await.unwrap(), 1);
    assert_eq!(
        store.consume_join_token("spent", now).await.unwrap(),
        ConsumeOutcome::AlreadyUsed { used_at: now }
    );
    assert!(matches!(
        store.consume_join_token("kept", now).await.unwrap(),
        ConsumeOutcome::Consumed { .. }
    ));
}
