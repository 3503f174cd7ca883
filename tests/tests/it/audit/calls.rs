//! Operator calls in the audit log (denials included, nothing secret recorded), replicas
//! sharing one PostgreSQL writing one chain, and pruning.

use std::time::Duration;

use tokio::task::JoinSet;
use wardmesh_control_plane::audit::Damage;
use wardmesh_identity::attest::hash_secret;
use wardmesh_proto::audit::{AuditEntry, AuditKey};
use wardmesh_proto::paths;
use wardmesh_store::OperatorToken;
use wardmesh_tests::{TestMesh, prereq};

use super::{Backend, Fixture, get, get_as, verify_through_api};

const VIEWER: &str = "wmop_viewer-token-for-audit-tests";
/// A query value that could be a patient id: must never reach the log.
const PATIENT: &str = "patient-4711";

fn api_calls(entries: &[AuditEntry]) -> Vec<&AuditEntry> {
    entries
        .iter()
        .filter(|e| e.kind == "operator.api")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_is_refused_audit_data_and_the_refusal_is_audited() {
    let f = Fixture::start(Backend::Sqlite, "viewer").await.unwrap();
    f.cp.cp
        .store
        .insert_operator_token(&OperatorToken {
            token_hash: hash_secret(VIEWER),
            name: "ward-clerk".into(),
            role: "viewer".into(),
            created_at: time::OffsetDateTime::now_utc(),
        })
        .await
        .unwrap();

    let denied = get_as(
        &f.cp,
        paths::AUDIT_ENTRIES,
        &[
            ("kind", "phi.access".into()),
            ("since", "2025-01-01T00:00:00Z".into()),
        ],
        VIEWER,
    )
    .await;
    assert_eq!(
        (denied.status, denied.code().as_str()),
        (403, "insufficient_role")
    );
    let denied = get_as(&f.cp, paths::AUDIT_CHECKPOINTS, &[], VIEWER).await;
    assert_eq!(denied.status, 403);
    // The public key is for everyone who may pin it.
    let key: AuditKey = get_as(&f.cp, paths::AUDIT_KEY, &[], VIEWER).await.ok();
    let published = std::fs::read_to_string(f.mesh.path().join("audit-signing.pub")).unwrap();
    assert_eq!(published.trim(), format!("ed25519:{}", key.public_key));
    assert_eq!(key.key_id, f.key.key_id());
    // Nobody at all, and a patient id in the path of a read.
    let anonymous =
        f.cp.call::<()>(
            &f.cp.client(None),
            reqwest::Method::GET,
            paths::AGENTS,
            None,
            None,
        )
        .await;
    assert_eq!(anonymous.status, 401);
    let _ = get_as(
        &f.cp,
        paths::QUARANTINE,
        &[("spiffe_id", PATIENT.into())],
        VIEWER,
    )
    .await;

    let entries = f.entries().await;
    let calls = api_calls(&entries);
    let find = |actor: &str, path: &str, status: u64| {
        calls
            .iter()
            .find(|e| {
                e.actor == actor && e.subject == path && e.detail["status"].as_u64() == Some(status)
            })
            .unwrap_or_else(|| panic!("no {actor} {path} {status} in {calls:#?}"))
    };
    let refusal = find("operator:ward-clerk", paths::AUDIT_ENTRIES, 403);
    assert_eq!(
        refusal.detail,
        serde_json::json!({
            "method": "GET",
            "path": "/v1/audit/entries",
            "role": "viewer",
            "outcome": "denied",
            "status": 403,
        })
    );
    find("operator:ward-clerk", paths::AUDIT_CHECKPOINTS, 403);
    assert_eq!(
        find("operator:ward-clerk", paths::AUDIT_KEY, 200).detail["outcome"],
        "allowed"
    );
    let anon = find("anonymous", paths::AGENTS, 401);
    assert_eq!(
        (
            anon.detail["role"].is_null(),
            anon.detail["outcome"].as_str()
        ),
        (true, Some("unauthenticated"))
    );
    // Our own read of the log is itself in the log (as the admin's call).
    let admin_reads = calls
        .iter()
        .filter(|e| e.actor == "operator:bootstrap-admin" && e.subject == paths::AUDIT_KEY)
        .count();
    assert_eq!(admin_reads, 1, "the fixture's key fetch");

    let text = serde_json::to_string(&entries).unwrap();
    for secret in [
        VIEWER,
        f.cp.admin_token.as_str(),
        PATIENT,
        "phi.access",
        "2025-01-01",
    ] {
        assert!(
            !text.contains(secret),
            "{secret:?} leaked into the audit log"
        );
    }
    // The legacy event view keeps to state changes.
    let events: Vec<serde_json::Value> = get(&f.cp, paths::EVENTS, &[]).await;
    assert!(
        events.iter().all(|e| e["kind"] != "operator.api"),
        "{events:?}"
    );
    assert!(f.verify().await.ok);
    f.stop().await;
}

/// Two control planes (one home, so one signing key) share a PostgreSQL database; four
/// clients make 50 operator calls each, alternating between them, while both write
/// checkpoints every 100 ms: the result is one gapless chain with valid checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_sharing_postgres_write_one_chain() {
    let Some(admin) = prereq::postgres_url("replicas_sharing_postgres_write_one_chain") else {
        return;
    };
    let url = prereq::fresh_postgres_db(&admin).await;
    let mesh = TestMesh::new();
    let mut cfg = mesh.config(Some(url));
    cfg.audit_checkpoint_interval = Duration::from_millis(100);
    let a = mesh.start_with(cfg.clone()).await;
    let b = mesh.start_with(cfg).await;
    let key: AuditKey = get(&a, paths::AUDIT_KEY, &[]).await;
    let key = wardmesh_control_plane::audit::AuditPublicKey::parse(&key.public_key, "a").unwrap();
    assert_eq!(
        b.cp.audit.public_key(),
        &key,
        "replicas on one home share the key"
    );

    let (a, b) = (std::sync::Arc::new(a), std::sync::Arc::new(b));
    let mut clients = JoinSet::new();
    for c in 0..4 {
        let (a, b) = (a.clone(), b.clone());
        clients.spawn(async move {
            for i in 0..50 {
                let cp = if (c + i) % 2 == 0 { &a } else { &b };
                let _: serde_json::Value = get(cp, paths::AGENTS, &[]).await;
            }
        });
    }
    clients.join_all().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let r = verify_through_api(&a, key).await;
    assert!(r.ok, "{r:?}");
    assert!(r.entries >= 201, "{r:?}");
    assert!(r.checkpoints_verified >= 2, "{r:?}");
    let entries = super::all_entries(&b, 0).await;
    let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "gapless");
    let agents_calls = entries
        .iter()
        .filter(|e| e.subject == paths::AGENTS)
        .count();
    assert_eq!(agents_calls, 200);

    let (Ok(a), Ok(b)) = (std::sync::Arc::try_unwrap(a), std::sync::Arc::try_unwrap(b)) else {
        panic!("clients still hold the control planes");
    };
    a.cp.shutdown().await;
    b.cp.shutdown().await;
}

async fn pruning_keeps_the_log_verifiable(b: Backend) {
    let Some(f) = Fixture::start(b, "pruning_keeps_the_log_verifiable").await else {
        return;
    };
    let cut = f.populate().await;
    let id =
        f.cp.cp
            .store
            .latest_checkpoint()
            .await
            .unwrap()
            .filter(|c| c.seq == cut)
            .unwrap()
            .id;
    let out = f.cp.cp.audit.prune_to(id, "retention").await.unwrap();
    assert_eq!(out.entries_removed, cut as u64);
    f.checkpoint().await;

    let r = f.verify().await;
    assert!(r.ok, "{r:?}");
    assert_eq!((r.anchor_seq, r.first_seq), (Some(cut), Some(cut + 1)));
    let entries = f.entries().await;
    assert!(
        entries
            .iter()
            .any(|e| e.kind == "audit.pruned" && e.actor == "retention")
    );

    // Tampering after the cut is still found; so is dropping the anchor.
    f.tamper(&format!(
        "UPDATE events SET subject = 'spiffe://x' WHERE id = {}",
        cut + 2
    ))
    .await;
    assert_eq!(
        f.verify().await.damage,
        Some(Damage::HashMismatch { seq: cut + 2 })
    );
    f.tamper("DELETE FROM audit_anchor").await;
    assert_eq!(
        f.verify().await.damage,
        Some(Damage::Gap {
            after_seq: 0,
            next_seq: cut + 1
        })
    );
    f.stop().await;
}

mod pruning_keeps_the_log_verifiable {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::pruning_keeps_the_log_verifiable(super::Backend::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::pruning_keeps_the_log_verifiable(super::Backend::Postgres).await
    }
}

/// Shutting down signs the head once more, so the last calls served are covered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_signs_the_last_calls() {
    let f = Fixture::start(Backend::Sqlite, "shutdown_signs_the_last_calls")
        .await
        .unwrap();
    let _: serde_json::Value = get(&f.cp, paths::AGENTS, &[]).await;
    let store = f.cp.cp.store.clone();
    assert_eq!(
        store.latest_checkpoint().await.unwrap(),
        None,
        "interval is 60 s"
    );
    f.stop().await;
    let head = store.audit_head().await.unwrap();
    let last = store.latest_checkpoint().await.unwrap().unwrap();
    assert_eq!((last.seq, last.head_hash), (head.seq, head.hash));
}
