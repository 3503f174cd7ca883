//! The tamper-evident audit log end to end, on SQLite and on PostgreSQL: a real control
//! plane writes the chain and signs checkpoints; the tests tamper with the database
//! directly (as someone with database access would) and check that verification, done
//! from what the API serves against the pinned key, names the first bad entry and the
//! kind of damage. Also: operator calls are audited (denials included), replicas sharing
//! one PostgreSQL form one chain, pruning keeps the log verifiable, and `wardctl audit`.

mod calls;
mod cli;
mod tamper;

use std::path::PathBuf;

use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wardmesh_control_plane::audit::{
    AuditPublicKey, AuditVerifier, VerifyReport, checkpoint_from_api, entry_from_api,
};
use wardmesh_proto::audit::{AuditCheckpoints, AuditEntry, AuditKey, AuditSubjectLookup};
use wardmesh_proto::paths;
use wardmesh_tests::{TestCp, TestMesh, prereq};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where the control plane's database is, for tampering with it directly.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite(PathBuf),
    Postgres(String),
}

/// A control plane on a fresh database, and the key pinned before any tampering.
pub struct Fixture {
    pub mesh: TestMesh,
    pub cp: TestCp,
    pub db: Db,
    pub key: AuditPublicKey,
}

impl Fixture {
    /// `None` when the backend is unavailable here (PostgreSQL off a CI machine).
    pub async fn start(backend: Backend, test: &str) -> Option<Fixture> {
        let mesh = TestMesh::new();
        let (cfg, db) = match backend {
            Backend::Sqlite => {
                let cfg = mesh.config(None);
                let path = mesh.path().join("wardmesh.db");
                (cfg, Db::Sqlite(path))
            }
            Backend::Postgres => {
                let admin = prereq::postgres_url(test)?;
                let url = prereq::fresh_postgres_db(&admin).await;
                (mesh.config(Some(url.clone())), Db::Postgres(url))
            }
        };
        let cp = mesh.start_with(cfg).await;
        let key: AuditKey = get(&cp, paths::AUDIT_KEY, &[]).await;
        let key = AuditPublicKey::parse(&key.public_key, "test").unwrap();
        Some(Fixture { mesh, cp, db, key })
    }

    /// Operator traffic that leaves identity events and `operator.api` entries, with a
    /// checkpoint after the first part: returns the checkpoint's seq.
    pub async fn populate(&self) -> i64 {
        for n in 0..4 {
            self.cp
                .join_token(&format!("spiffe://wardmesh.local/ns/clinic/sa/svc{n}"))
                .await;
        }
        let cp = self.checkpoint().await;
        for _ in 0..3 {
            let _: serde_json::Value = get(&self.cp, paths::AGENTS, &[]).await;
        }
        cp
    }

    /// Writes a checkpoint now (the periodic task would, every interval).
    pub async fn checkpoint(&self) -> i64 {
        self.cp
            .cp
            .audit
            .checkpoint_if_moved()
            .await
            .unwrap()
            .expect("the head moved")
            .seq
    }

    /// Verifies the log as `wardctl audit verify` does, with the key pinned at start.
    pub async fn verify(&self) -> VerifyReport {
        verify_through_api(&self.cp, self.key).await
    }

    /// Runs SQL on the database directly, outside the control plane.
    pub async fn tamper(&self, sql: &str) {
        match &self.db {
            Db::Sqlite(path) => {
                let (path, sql) = (path.clone(), sql.to_owned());
                tokio::task::spawn_blocking(move || {
                    let conn = rusqlite::Connection::open(path).unwrap();
                    conn.busy_timeout(std::time::Duration::from_secs(5))
                        .unwrap();
                    conn.execute_batch(&sql)
                        .unwrap_or_else(|e| panic!("{sql}: {e}"));
                })
                .await
                .unwrap();
            }
            Db::Postgres(url) => {
                let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                let conn = tokio::spawn(conn);
                client
                    .batch_execute(sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                drop(client);
                let _ = conn.await;
            }
        }
    }

    /// Every entry the API serves, ascending.
    pub async fn entries(&self) -> Vec<AuditEntry> {
        all_entries(&self.cp, 0).await
    }

    pub async fn stop(self) {
        self.cp.cp.shutdown().await;
    }
}

/// `GET` with the bootstrap admin token, expecting success.
pub async fn get<T: DeserializeOwned>(cp: &TestCp, path: &str, query: &[(&str, String)]) -> T {
    get_as(cp, path, query, &cp.admin_token).await.ok()
}

pub async fn get_as(
    cp: &TestCp,
    path: &str,
    query: &[(&str, String)],
    token: &str,
) -> wardmesh_tests::cp::Answer {
    let path = if query.is_empty() {
        path.to_owned()
    } else {
        let qs: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{path}?{}", qs.join("&"))
    };
    cp.call::<()>(&cp.client(None), Method::GET, &path, Some(token), None)
        .await
}

async fn all_entries(cp: &TestCp, mut after: i64) -> Vec<AuditEntry> {
    let mut out = Vec::new();
    loop {
        let page: Vec<AuditEntry> = get(
            cp,
            paths::AUDIT_ENTRIES,
            &[("after", after.to_string()), ("limit", "1000".to_owned())],
        )
        .await;
        let short = page.len() < 1000;
        if let Some(last) = page.last() {
            after = last.seq;
        }
        out.extend(page);
        if short {
            return out;
        }
    }
}

/// Downloads checkpoints and entries (paged) and verifies them against `key`.
pub async fn verify_through_api(cp: &TestCp, key: AuditPublicKey) -> VerifyReport {
    let page: AuditCheckpoints = get(
        cp,
        paths::AUDIT_CHECKPOINTS,
        &[("limit", "1000".to_owned())],
    )
    .await;
    let anchor = page.anchor.map(|a| checkpoint_from_api(a.checkpoint));
    let after = anchor.as_ref().map_or(0, |a| a.seq);
    let checkpoints = page
        .checkpoints
        .into_iter()
        .map(checkpoint_from_api)
        .collect();
    let mut verifier = AuditVerifier::new(key, anchor, checkpoints);
    for e in all_entries(cp, after).await {
        if !verifier.push(&entry_from_api(e)) {
            break;
        }
    }
    let lookup: AuditSubjectLookup = get(cp, paths::AUDIT_SUBJECT_LOOKUP, &[]).await;
    verifier.subject_lookup(lookup.first_missing_seq);
    verifier.finish()
}

/// A JSON string literal for SQL (single quotes doubled).
pub fn sql_text<T: Serialize>(v: &T) -> String {
    let text = match serde_json::to_value(v).unwrap() {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    format!("'{}'", text.replace('\'', "''"))
}
