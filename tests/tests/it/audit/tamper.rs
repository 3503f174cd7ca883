//! Tampering done directly in the database, each kind on SQLite and on PostgreSQL.
//!
//! `populate` leaves (seq: kind): 1 operator.api (the key fetch), then four join tokens as
//! 2/4/6/8 `operator.join_token.created` and 3/5/7/9 `operator.api`, a signed checkpoint
//! at 9, then 10–12 `operator.api`. Every verification adds entries of its own at the end.

use wardmesh_control_plane::audit::Damage;
use wardmesh_proto::audit::AuditEntry;
use wardmesh_store::chain::{at_us, entry_hash};

use super::{Backend, Fixture, sql_text};

/// The checkpoint `populate` writes.
const CHECKPOINT_SEQ: i64 = 9;

async fn setup(b: Backend, test: &str) -> Option<Fixture> {
    let f = Fixture::start(b, test).await?;
    assert_eq!(f.populate().await, CHECKPOINT_SEQ);
    let clean = f.verify().await;
    assert!(clean.ok, "{clean:?}");
    Some(f)
}

fn entry(entries: &[AuditEntry], seq: i64) -> AuditEntry {
    entries.iter().find(|e| e.seq == seq).unwrap().clone()
}

/// A row as SQL values, in `INSERT INTO events (id, at_us, kind, actor, subject, detail,
/// prev_hash, hash)` order.
fn row_values(e: &AuditEntry) -> String {
    format!(
        "({}, {}, {}, {}, {}, {}, {}, {})",
        e.seq,
        at_us(e.at),
        sql_text(&e.kind),
        sql_text(&e.actor),
        sql_text(&e.subject),
        sql_text(&wardmesh_store::chain::canonical_detail(&e.detail)),
        sql_text(&e.prev_hash),
        sql_text(&e.hash)
    )
}

async fn clean_log_verifies(b: Backend) {
    let Some(f) = setup(b, "audit::tamper::clean_log_verifies").await else {
        return;
    };
    f.checkpoint().await;
    let r = f.verify().await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.first_seq, Some(1));
    assert!(r.entries >= 13, "{r:?}");
    assert_eq!(r.checkpoints_verified, 2);
    assert!(r.message.starts_with("audit log OK"), "{}", r.message);
    f.stop().await;
}

async fn edited_detail(b: Backend) {
    let Some(f) = setup(b, "audit::tamper::edited_detail").await else {
        return;
    };
    // Someone makes a join token look short-lived.
    f.tamper(r#"UPDATE events SET detail = '{"ttl_seconds":60}' WHERE id = 4"#)
        .await;
    let r = f.verify().await;
    assert_eq!(r.damage, Some(Damage::HashMismatch { seq: 4 }), "{r:?}");
    assert!(
        !r.ok && r.message.contains("hash mismatch at seq 4"),
        "{}",
        r.message
    );
    f.stop().await;
}

async fn deleted_row(b: Backend) {
    let Some(f) = setup(b, "audit::tamper::deleted_row").await else {
        return;
    };
    f.tamper("DELETE FROM events WHERE id = 5").await;
    let r = f.verify().await;
    assert_eq!(
        r.damage,
        Some(Damage::Gap {
            after_seq: 4,
            next_seq: 6
        }),
        "{r:?}"
    );
    assert!(r.message.contains("gap after seq 4"), "{}", r.message);
    f.stop().await;
}

/// A forged entry slipped in after seq 5, with plausible fields, linked to seq 5 and with
/// a correctly computed hash; later entries renumbered and the head bumped to match.
async fn inserted_row(b: Backend) {
    let Some(f) = setup(b, "audit::tamper::inserted_row").await else {
        return;
    };
    let entries = f.entries().await;
    let five = entry(&entries, 5);
    let mut forged = AuditEntry {
        seq: 6,
        kind: "operator.join_token.created".to_owned(),
        actor: "operator:bootstrap-admin".to_owned(),
        subject: "spiffe://wardmesh.local/ns/clinic/sa/backdoor".to_owned(),
        detail: serde_json::json!({ "ttl_seconds": 600 }),
        prev_hash: five.hash.clone(),
        ..five
    };
    forged.hash = entry_hash(&entry_from_api(&forged)).unwrap();
    f.tamper(&format!(
        "UPDATE events SET id = -id WHERE id > 5; UPDATE events SET id = 1 - id WHERE id < 0; \
         INSERT INTO events (id, at_us, kind, actor, subject, detail, prev_hash, hash) \
         VALUES {}; UPDATE audit_head SET seq = seq + 1;",
        row_values(&forged)
    ))
    .await;
    let r = f.verify().await;
    assert_eq!(r.damage, Some(Damage::PrevHashMismatch { seq: 7 }), "{r:?}");
    assert!(
        r.message.contains("prev_hash mismatch at seq 7"),
        "{}",
        r.message
    );
    f.stop().await;
}

async fn swapped_rows(b: Backend) {
    let Some(f) = setup(b, "audit::tamper::swapped_rows").await else {
        return;
    };
    f.tamper(
        "UPDATE events SET id = -3 WHERE id = 3; UPDATE events SET id = 3 WHERE id = 4; \
         UPDATE events SET id = 4 WHERE id = -3;",
    )
    .await;
    let r = f.verify().await;
    assert_eq!(r.damage, Some(Damage::PrevHashMismatch { seq: 3 }), "{r:?}");
    f.stop().await;
}

async fn forged_checkpoint_signature(b: Backend) {
    let Some(f) = setup(b, "audit::tamper::forged_checkpoint_signature").await else {
        return;
    };
    // 64 bytes, base64: looks like an Ed25519 signature.
    let fake = "QUFB".repeat(21) + "QQ==";
    f.tamper(&format!(
        "UPDATE audit_checkpoints SET signature = '{fake}' WHERE seq = {CHECKPOINT_SEQ}"
    ))
    .await;
    let r = f.verify().await;
    assert!(
        matches!(
            &r.damage,
            Some(Damage::SignatureInvalid {
                seq: CHECKPOINT_SEQ,
                ..
            })
        ),
        "{r:?}"
    );
    assert!(r.message.contains("signature invalid"), "{}", r.message);
    f.stop().await;
}

/// Someone who knows the hash function edits an entry and re-hashes everything after it:
/// the chain holds, the signed checkpoint does not. Re-pointing the checkpoint at the new
/// hash breaks its signature instead.
async fn rewritten_and_rehashed(b: Backend) {
    let Some(f) = setup(b, "audit::tamper::rewritten_and_rehashed").await else {
        return;
    };
    let mut entries = f.entries().await;
    entries.retain(|e| e.seq >= 4);
    let mut prev = entries[0].prev_hash.clone();
    let mut sql = String::new();
    for e in &mut entries {
        if e.seq == 4 {
            e.detail = serde_json::json!({ "ttl_seconds": 60 });
        }
        e.prev_hash = prev;
        e.hash = entry_hash(&entry_from_api(e)).unwrap();
        prev = e.hash.clone();
        sql.push_str(&format!(
            "UPDATE events SET detail = {}, prev_hash = '{}', hash = '{}' WHERE id = {};\n",
            sql_text(&wardmesh_store::chain::canonical_detail(&e.detail)),
            e.prev_hash,
            e.hash,
            e.seq
        ));
    }
    sql.push_str(&format!("UPDATE audit_head SET hash = '{prev}';\n"));
    f.tamper(&sql).await;
    let r = f.verify().await;
    assert!(
        matches!(
            r.damage,
            Some(Damage::CheckpointMismatch {
                seq: CHECKPOINT_SEQ,
                ..
            })
        ),
        "{r:?}"
    );
    assert!(r.message.contains("were rewritten"), "{}", r.message);

    let new_nine = entry(&entries, CHECKPOINT_SEQ).hash;
    f.tamper(&format!(
        "UPDATE audit_checkpoints SET head_hash = '{new_nine}' WHERE seq = {CHECKPOINT_SEQ}"
    ))
    .await;
    let r = f.verify().await;
    assert!(
        matches!(
            r.damage,
            Some(Damage::SignatureInvalid {
                seq: CHECKPOINT_SEQ,
                ..
            })
        ),
        "{r:?}"
    );
    f.stop().await;
}

/// An entry not yet covered by a checkpoint, rewritten with its own hash recomputed: the
/// checkpointer re-checks the unsigned tail before signing and refuses, so no signature
/// launders the edit. (Re-hashing every later entry and the head too would pass: until
/// the next checkpoint the tail is as safe as the database, which is why the interval is
/// short and `verify` reports how many entries are not yet signed.)
async fn unsigned_tail_is_never_signed_over(b: Backend) {
    let Some(f) = setup(b, "audit::tamper::unsigned_tail_is_never_signed_over").await else {
        return;
    };
    let entries = f.entries().await;
    let mut eleven = entry(&entries, 11);
    eleven.actor = "operator:someone-else".to_owned();
    eleven.hash = entry_hash(&entry_from_api(&eleven)).unwrap();
    f.tamper(&format!(
        "UPDATE events SET actor = {}, hash = '{}' WHERE id = 11",
        sql_text(&eleven.actor),
        eleven.hash
    ))
    .await;
    let before = f.cp.cp.store.list_checkpoints(0, 100).await.unwrap();
    let err = f.cp.cp.audit.checkpoint_if_moved().await.unwrap_err();
    assert!(
        matches!(
            err,
            wardmesh_control_plane::audit::CheckpointError::ChainBroken(
                wardmesh_store::chain::ChainBreak::PrevHashMismatch { seq: 12, .. }
            )
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("refusing to sign"), "{err}");
    assert_eq!(
        f.cp.cp.store.list_checkpoints(0, 100).await.unwrap(),
        before
    );
    let r = f.verify().await;
    assert_eq!(
        r.damage,
        Some(Damage::PrevHashMismatch { seq: 12 }),
        "{r:?}"
    );
    f.stop().await;
}

/// The by-subject lookup that the accounting of disclosures reads: on SQLite derived
/// data (sealed runs of 16,384 entries), so an edit there hides entries without breaking
/// the chain, and verify must say so; on PostgreSQL an index of the database.
async fn edited_subject_lookup(b: Backend) {
    let Some(f) = setup(b, "audit::tamper::edited_subject_lookup").await else {
        return;
    };
    // Enough PHI-access entries for a sealed run, appended by a second store handle on the
    // same database (as a second replica would).
    let url = match &f.db {
        super::Db::Sqlite(path) => format!("sqlite:{}", path.display()),
        super::Db::Postgres(url) => url.clone(),
    };
    let store = wardmesh_store::Store::open(&url).await.unwrap();
    let patient = "ab".repeat(32);
    let events: Vec<wardmesh_store::Event> = (0..16_400)
        .map(|n| wardmesh_store::Event {
            id: 0,
            at: time::OffsetDateTime::now_utc(),
            kind: "phi.access".to_owned(),
            actor: "spiffe://wardmesh.local/ns/clinic/sa/notes".to_owned(),
            subject: if n % 2 == 0 {
                patient.clone()
            } else {
                "cd".repeat(32)
            },
            detail: serde_json::json!({ "n": n }),
        })
        .collect();
    store.append_events(&events).await.unwrap();
    let first = store
        .audit_entries(&wardmesh_store::AuditQuery {
            subject: Some(patient.clone()),
            limit: 1,
            ..wardmesh_store::AuditQuery::default()
        })
        .await
        .unwrap()
        .remove(0)
        .seq;
    let clean = f.verify().await;
    assert!(clean.ok, "{clean:?}");
    match b {
        Backend::Sqlite => {
            f.tamper(&format!("DELETE FROM audit_subjects WHERE id = {first}"))
                .await;
            let r = f.verify().await;
            assert_eq!(
                r.damage,
                Some(Damage::SubjectLookupMissing { seq: first }),
                "{r:?}"
            );
            assert!(
                r.message.contains("accounting of disclosures"),
                "{}",
                r.message
            );
        }
        Backend::Postgres => {
            let lookup: wardmesh_proto::audit::AuditSubjectLookup =
                super::get(&f.cp, wardmesh_proto::paths::AUDIT_SUBJECT_LOOKUP, &[]).await;
            assert_eq!(lookup.result, "database_index");
        }
    }
    f.stop().await;
}

fn entry_from_api(e: &AuditEntry) -> wardmesh_store::AuditEntry {
    wardmesh_control_plane::audit::entry_from_api(e.clone())
}

/// `<scenario>::sqlite` and `<scenario>::postgres`.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$scenario(super::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$scenario(super::Backend::Postgres).await
            }
        }
    )*};
}

on_both_backends!(
    clean_log_verifies,
    edited_detail,
    deleted_row,
    inserted_row,
    swapped_rows,
    forged_checkpoint_signature,
    rewritten_and_rehashed,
    unsigned_tail_is_never_signed_over,
    edited_subject_lookup,
);
