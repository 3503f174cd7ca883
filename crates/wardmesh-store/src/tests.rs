//! Behaviour tests, run against a real SQLite file and a real PostgreSQL database.
//!
//! Each behaviour is written once in `tests/checks.rs` and run on both backends:
//! `<check>::sqlite` on a fresh file in a temporary directory, `<check>::postgres` on a
//! fresh database created on the server named by `WARDMESH_TEST_POSTGRES_URL` (an admin
//! URL, e.g. from `scripts/postgres-test-server`) and dropped afterwards. Without that
//! variable the PostgreSQL half is skipped with a note on stderr, except under `CI=true`
//! where it fails.

mod audit_checks;
mod audit_subject_checks;
mod checks;
mod commit_checks;
mod fixtures;
mod flow_checks;
mod group_commit;
mod object_checks;
mod specific;

/// Every check, for the macros below.
mod all_checks {
    pub(super) use super::audit_checks::*;
    pub(super) use super::audit_subject_checks::*;
    pub(super) use super::checks::*;
    pub(super) use super::commit_checks::*;
    pub(super) use super::flow_checks::*;
    pub(super) use super::object_checks::*;
}

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio_postgres::NoTls;

use crate::Store;

/// A fresh database for one test: the URL to open (as often as the test likes).
#[derive(Debug, Clone)]
pub(crate) struct TestDb {
    pub(crate) url: String,
    pub(crate) backend: &'static str,
    /// PostgreSQL only: the admin URL and the database name, for tests that act on the
    /// server from outside the store.
    pub(crate) postgres: Option<(String, String)>,
}

impl TestDb {
    pub(crate) async fn open(&self) -> Store {
        let store = Store::open(&self.url)
            .await
            .unwrap_or_else(|e| panic!("opening {}: {e}", crate::redact_url(&self.url)));
        assert_eq!(store.backend_name(), self.backend);
        store
    }
}

/// Runs `check` on a new SQLite file.
pub(crate) async fn run_on_sqlite<F, Fut>(check: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = TestDb {
        url: format!("sqlite:{}", dir.path().join("store.db").display()),
        backend: "sqlite",
        postgres: None,
    };
    // Spawning also proves the store's futures are Send (the API server needs that).
    let result = tokio::spawn(check(db)).await;
    drop(dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// The PostgreSQL admin URL, or `None` (after saying why) if the test should be skipped.
pub(crate) fn postgres_admin_url() -> Option<String> {
    match std::env::var("WARDMESH_TEST_POSTGRES_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().to_owned()),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
            assert!(
                !ci,
                "PostgreSQL is required under CI: set WARDMESH_TEST_POSTGRES_URL to an admin \
                 URL, e.g. `export WARDMESH_TEST_POSTGRES_URL=$(scripts/postgres-test-server)`"
            );
            eprintln!(
                "skipping the PostgreSQL half of this test: WARDMESH_TEST_POSTGRES_URL is not \
                 set (run `export WARDMESH_TEST_POSTGRES_URL=$(scripts/postgres-test-server)`)"
            );
            None
        }
    }
}

/// Runs `check` on a new PostgreSQL database, dropped afterwards even if `check` panics.
pub(crate) async fn run_on_postgres<F, Fut>(check: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(admin_url) = postgres_admin_url() else {
        return;
    };
    let name = unique_database_name();
    admin_execute(&admin_url, &format!("CREATE DATABASE {name}")).await;
    let db = TestDb {
        url: with_database(&admin_url, &name),
        backend: "postgres",
        postgres: Some((admin_url.clone(), name.clone())),
    };
    let result = tokio::spawn(check(db)).await;
    // FORCE disconnects the store's pooled connections that may still be closing.
    admin_execute(
        &admin_url,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

pub(crate) async fn admin_execute(admin_url: &str, sql: &str) {
    let (client, connection) = admin_connect(admin_url).await;
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", crate::error::describe_postgres(&e)));
    drop(client);
    let _ = connection.await;
}

/// Runs a query returning one BIGINT on the admin connection.
pub(crate) async fn admin_query_i64(admin_url: &str, sql: &str) -> i64 {
    let (client, connection) = admin_connect(admin_url).await;
    let value = client
        .query_one(sql, &[])
        .await
        .and_then(|row| row.try_get(0))
        .unwrap_or_else(|e| panic!("{sql}: {}", crate::error::describe_postgres(&e)));
    drop(client);
    let _ = connection.await;
    value
}

async fn admin_connect(
    admin_url: &str,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (client, connection) = tokio_postgres::connect(admin_url, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to WARDMESH_TEST_POSTGRES_URL ({}): {}",
                crate::redact_url(admin_url),
                crate::error::describe_postgres(&e)
            )
        });
    (client, tokio::spawn(connection))
}

fn unique_database_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "wm_test_{}_{}_{}",
        std::process::id(),
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `admin_url` with its database replaced by `db` (query parameters kept).
pub(crate) fn with_database(admin_url: &str, db: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin_url, None),
    };
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[after_scheme..]
        .find('/')
        .map_or(base.len(), |i| i + after_scheme);
    let mut url = format!("{}/{db}", &base[..authority_end]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// Declares `<check>::sqlite` and `<check>::postgres` for checks taking a `Store`.
macro_rules! store_checks {
    ($($check:ident),* $(,)?) => {$(
        mod $check {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::run_on_sqlite(|db| async move {
                    super::all_checks::$check(db.open().await).await
                })
                .await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::run_on_postgres(|db| async move {
                    super::all_checks::$check(db.open().await).await
                })
                .await
            }
        }
    )*};
}

/// Declares `<check>::sqlite` and `<check>::postgres` for checks taking a `TestDb`
/// (they open the database themselves, several times or as several replicas).
macro_rules! db_checks {
    ($($check:ident),* $(,)?) => {$(
        mod $check {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::run_on_sqlite(super::all_checks::$check).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::run_on_postgres(super::all_checks::$check).await
            }
        }
    )*};
}

store_checks!(
    check_join_token_outcomes,
    check_join_token_lookup,
    check_join_token_race,
    check_quarantine_and_revision,
    check_issuances_newest_first,
    check_timestamps_keep_microseconds,
    check_agent_upsert,
    check_events_paging,
    check_events_concurrent_appends,
    check_operator_tokens,
    check_audit_chain_appends,
    check_audit_queries,
    check_audit_by_subject,
    check_audit_by_subject_across_appends_and_prune,
    check_audit_checkpoints,
    check_audit_prune,
    check_commit_issuance_race,
    check_commit_issuance_all_or_nothing,
    check_objects_generations,
    check_objects_all_or_nothing,
    check_objects_concurrent_generations,
);

db_checks!(
    check_migrations_idempotent,
    check_join_token_race_across_replicas,
    check_revision_shared_across_replicas,
    check_persists_across_reopen,
    check_audit_concurrent_replicas,
    check_audit_upgrade_from_v1,
    check_tamper_edit_detail,
    check_tamper_delete_row,
    check_tamper_swap_rows,
    check_tamper_insert_row,
    check_commit_issuance_race_across_replicas,
    check_commit_issuance_concurrent_replicas,
);

// Flow telemetry (tests/flow_checks.rs).
store_checks!(
    check_flows_ingest_idempotent,
    check_flows_ingest_audited,
    check_flows_query_filters,
    check_flows_prune,
    check_flows_by_request_id_across_batches_and_prune,
);
db_checks!(
    check_flows_follow_concurrent_replicas,
    check_flows_upgrade_from_v4
);

/// The ingest benchmark, on both backends; ignored by default (slow in debug builds).
mod check_flow_ingest_rate {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark: cargo test -p wardmesh-store --release flow_ingest_rate -- --ignored --nocapture"]
    async fn sqlite() {
        super::run_on_sqlite(|db| async move {
            super::all_checks::check_flow_ingest_rate(db.open().await).await
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark: cargo test -p wardmesh-store --release flow_ingest_rate -- --ignored --nocapture"]
    async fn postgres() {
        super::run_on_postgres(|db| async move {
            super::all_checks::check_flow_ingest_rate(db.open().await).await
        })
        .await
    }
}

/// Runs `sql` (several statements allowed) on the test database directly, outside the
/// store: what an attacker with database access, or an old build, would do.
pub(crate) async fn raw_sql(db: &TestDb, sql: &str) {
    match &db.postgres {
        Some(_) => admin_execute(&db.url, sql).await,
        None => {
            let path = db.url.trim_start_matches("sqlite:").to_owned();
            let sql = sql.to_owned();
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
    }
}

#[test]
fn with_database_replaces_only_the_path() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:55432/postgres", "wm_x"),
        "postgres://postgres@127.0.0.1:55432/wm_x"
    );
    assert_eq!(
        with_database("postgresql://u:p@h/postgres?sslmode=disable", "wm_x"),
        "postgresql://u:p@h/wm_x?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://h:1", "wm_x"),
        "postgres://h:1/wm_x"
    );
}
