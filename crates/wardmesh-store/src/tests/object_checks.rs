//! Configuration objects' behaviour, on both backends (see `tests.rs`): generations per
//! kind, all-or-nothing changes with their audit entry, create conflicts, size limits,
//! and one generation sequence shared by concurrent writers.

use std::sync::Arc;

use tokio::task::JoinSet;

use super::audit_checks::verify;
use super::fixtures::{T0, at, event};
use crate::objects::MAX_OBJECT_VALUE_BYTES;
use crate::{AuditQuery, ObjectChange, ObjectWrite, Store, StoreError};

fn put(kind: &str, name: &str, value: &str, blob: Option<&[u8]>) -> ObjectWrite {
    ObjectWrite::Put {
        kind: kind.to_owned(),
        name: name.to_owned(),
        value: value.to_owned(),
        blob: blob.map(<[u8]>::to_vec),
    }
}

fn create(kind: &str, name: &str) -> ObjectWrite {
    ObjectWrite::Create {
        kind: kind.to_owned(),
        name: name.to_owned(),
        value: "{}".to_owned(),
        blob: None,
    }
}

fn change(writes: Vec<ObjectWrite>, audit: bool) -> ObjectChange {
    ObjectChange {
        writes,
        at: at(T0),
        by: "operator:alice".to_owned(),
        audit: audit.then(|| event(1)),
    }
}

pub(crate) async fn check_objects_generations(store: Store) {
    assert_eq!(store.object_generation("policy.bundle").await.unwrap(), 0);
    let out = store
        .change_objects(&change(
            vec![
                put(
                    "policy.bundle",
                    "r1",
                    r#"{"sha256":"aa"}"#,
                    Some(b"\x1f\x8b bundle"),
                ),
                put("policy.active", "active", r#"{"revision":"r1"}"#, None),
            ],
            true,
        ))
        .await
        .unwrap();
    assert_eq!(out.generations.get("policy.bundle"), Some(&1));
    assert_eq!(out.generations.get("policy.active"), Some(&1));
    assert_eq!(out.audit_seq, Some(1));

    let got = store
        .get_object("policy.bundle", "r1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.value, r#"{"sha256":"aa"}"#);
    assert_eq!(got.blob.as_deref(), Some(&b"\x1f\x8b bundle"[..]));
    assert_eq!((got.generation, got.updated_at), (1, at(T0)));
    assert_eq!(got.updated_by, "operator:alice");

    // Replacing bumps only the touched kind; listings leave blobs out.
    store
        .change_objects(&change(
            vec![put("policy.active", "active", r#"{"revision":"r0"}"#, None)],
            false,
        ))
        .await
        .unwrap();
    assert_eq!(store.object_generation("policy.active").await.unwrap(), 2);
    assert_eq!(store.object_generation("policy.bundle").await.unwrap(), 1);
    let listed = store.list_objects("policy.bundle").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].blob, None);

    // Deleting counts as a change too; deleting twice is harmless.
    for expected in [2, 3] {
        let out = store
            .change_objects(&change(
                vec![ObjectWrite::Delete {
                    kind: "policy.bundle".to_owned(),
                    name: "r1".to_owned(),
                }],
                false,
            ))
            .await
            .unwrap();
        assert_eq!(out.generations.get("policy.bundle"), Some(&expected));
    }
    assert_eq!(store.get_object("policy.bundle", "r1").await.unwrap(), None);
}

pub(crate) async fn check_objects_all_or_nothing(store: Store) {
    store
        .change_objects(&change(vec![create("breakglass.grant", "g1")], true))
        .await
        .unwrap();
    let head = store.audit_head().await.unwrap();

    // A create that collides rolls back the whole change: the other write, the
    // generation bump and the audit entry.
    let err = store
        .change_objects(&change(
            vec![
                put("consent", "p1/TREAT", r#"{"decision":"allow"}"#, None),
                create("breakglass.grant", "g1"),
            ],
            true,
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("g1")),
        "{err:?}"
    );
    assert_eq!(store.get_object("consent", "p1/TREAT").await.unwrap(), None);
    assert_eq!(store.object_generation("consent").await.unwrap(), 0);
    assert_eq!(
        store.object_generation("breakglass.grant").await.unwrap(),
        1
    );
    assert_eq!(store.audit_head().await.unwrap(), head);

    // An oversized value is refused before anything is written.
    let big = "x".repeat(MAX_OBJECT_VALUE_BYTES + 1);
    let err = store
        .change_objects(&change(vec![put("consent", "p2/TREAT", &big, None)], true))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Rejected(_)), "{err:?}");
    assert_eq!(store.object_generation("consent").await.unwrap(), 0);
    assert_eq!(store.audit_head().await.unwrap(), head);

    let entries = store
        .audit_entries(&AuditQuery {
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    verify(&store).await.unwrap();
}

pub(crate) async fn check_objects_concurrent_generations(store: Store) {
    let store = Arc::new(store);
    let mut writers = JoinSet::new();
    for i in 0..16 {
        let store = Arc::clone(&store);
        writers.spawn(async move {
            let name = format!("p{i}/TREAT");
            let out = store
                .change_objects(&change(vec![put("consent", &name, "{}", None)], i % 2 == 0))
                .await
                .unwrap();
            out.generations["consent"]
        });
    }
    let mut seen: Vec<i64> = writers.join_all().await;
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=16).collect::<Vec<_>>(),
        "one generation per change"
    );
    assert_eq!(store.list_objects("consent").await.unwrap().len(), 16);
    verify(&store).await.unwrap();
}
