//! Tests of one backend or of URL handling.

use std::time::Duration;

use super::{TestDb, admin_query_i64, postgres_admin_url, run_on_postgres, run_on_sqlite};
use crate::{Store, StoreError};

#[tokio::test]
async fn unknown_scheme_is_a_clear_error() {
    let err = Store::open("mysql://x").await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidUrl { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "invalid store url `mysql://x`: unsupported scheme `mysql`; wardmesh stores data in \
         sqlite or postgres; use `sqlite:<path>`, `sqlite::memory:` or \
         `postgres://user[:password]@host[:port]/database`"
    );
}

#[tokio::test]
async fn postgres_password_never_appears_in_errors() {
    // Port 1: nothing listens there, the connection is refused.
    let err = Store::open("postgres://alice:s3cret-pw@127.0.0.1:1/wardmesh")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PostgresConnect { .. }), "{err:?}");
    let (display, debug) = (err.to_string(), format!("{err:?}"));
    assert!(
        display.contains("postgres://alice:***@127.0.0.1:1/wardmesh"),
        "{display}"
    );
    assert!(
        display.contains("check that the server is running"),
        "{display}"
    );
    for text in [&display, &debug] {
        assert!(!text.contains("s3cret"), "password leaked: {text}");
    }

    let err = Store::open("postgresql://alice:s3cret-pw@db:notaport/wm")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidUrl { .. }), "{err:?}");
    let (display, debug) = (err.to_string(), format!("{err:?}"));
    assert!(
        display.contains("postgresql://alice:***@db:notaport/wm"),
        "{display}"
    );
    assert!(display.contains("port"), "says what is wrong: {display}");
    for text in [&display, &debug] {
        assert!(!text.contains("s3cret"), "password leaked: {text}");
    }
}

#[tokio::test]
async fn sqlite_memory_is_private_to_its_handle() {
    let store = Store::open("sqlite::memory:").await.unwrap();
    assert_eq!(store.backend_name(), "sqlite");
    let clone = store.clone();
    let token = crate::OperatorToken {
        token_hash: "h".to_owned(),
        name: "n".to_owned(),
        role: "viewer".to_owned(),
        created_at: time::OffsetDateTime::UNIX_EPOCH,
    };
    store.insert_operator_token(&token).await.unwrap();
    assert_eq!(clone.find_operator_token("h").await.unwrap(), Some(token));
    let other = Store::open("sqlite::memory:").await.unwrap();
    assert_eq!(other.count_operator_tokens().await.unwrap(), 0);
}

#[tokio::test]
async fn sqlite_file_is_created_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    assert!(!path.exists());
    let store = Store::open(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    store
        .append_event(&crate::Event {
            id: 0,
            at: time::OffsetDateTime::UNIX_EPOCH,
            kind: "k".to_owned(),
            actor: "a".to_owned(),
            subject: "s".to_owned(),
            detail: serde_json::json!({}),
        })
        .await
        .unwrap();
    assert!(path.exists());
    // An independent connection (another process would see the same) reads the schema
    // and the committed row.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let (version, events): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT MAX(version) FROM schema_version), (SELECT COUNT(*) FROM events)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((version, events), (crate::SCHEMA_VERSION, 1));
}

#[tokio::test]
async fn sqlite_in_missing_directory_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/store.db");
    let err = Store::open(&format!("sqlite:{}", path.display()))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::SqliteOpen { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("check that its directory exists"), "{msg}");
}

#[tokio::test]
async fn sqlite_database_from_a_newer_build_is_refused() {
    run_on_sqlite(|db: TestDb| async move {
        drop(db.open().await);
        let path = db.url.trim_start_matches("sqlite:").to_owned();
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO schema_version (version, applied_at_us) VALUES (?1, 0)",
            [crate::SCHEMA_VERSION + 1],
        )
        .unwrap();
        drop(conn);
        let err = Store::open(&db.url).await.unwrap_err();
        assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err:?}");
        assert!(err.to_string().contains("upgrade wardmesh"), "{err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_recovers_after_connections_are_killed() {
    run_on_postgres(|db: TestDb| async move {
        let store = db.open().await;
        // Fill every pool slot with a live connection.
        for _ in 0..8 {
            store.count_operator_tokens().await.unwrap();
        }
        store
            .insert_operator_token(&crate::OperatorToken {
                token_hash: "h".to_owned(),
                name: "n".to_owned(),
                role: "viewer".to_owned(),
                created_at: time::OffsetDateTime::UNIX_EPOCH,
            })
            .await
            .unwrap();

        // What a server restart or failover looks like to the store.
        let (admin_url, name) = db.postgres.clone().unwrap();
        let terminated = admin_query_i64(
            &admin_url,
            &format!(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            ),
        )
        .await;
        assert_eq!(terminated, 4, "one connection per pool slot");

        // A call may fail while the loss is being noticed; soon calls work again.
        let mut failures = 0;
        let recovered = loop {
            match store.count_operator_tokens().await {
                Ok(n) => break n,
                Err(e) => {
                    failures += 1;
                    assert!(failures <= 8, "store did not recover: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        assert_eq!(recovered, 1);
        // And every slot of the pool is healthy again.
        for _ in 0..8 {
            assert_eq!(store.count_operator_tokens().await.unwrap(), 1);
        }
    })
    .await;
}

#[tokio::test]
async fn postgres_server_errors_are_shown_without_the_password() {
    let Some(admin_url) = postgres_admin_url() else {
        return;
    };
    let config: tokio_postgres::Config = admin_url.parse().unwrap();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        other => panic!("the test expects a TCP admin URL, got {other:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let url = format!("postgres://postgres:s3cret-pw@{host}:{port}/wm_no_such_database");
    let err = Store::open(&url).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::PostgresConnect { .. }), "{err:?}");
    assert!(
        msg.contains("database \"wm_no_such_database\" does not exist"),
        "the server's reason is passed on: {msg}"
    );
    assert!(
        !msg.contains("s3cret") && !format!("{err:?}").contains("s3cret"),
        "{msg}"
    );
}

/// `EXPLAIN QUERY PLAN` of `sql` on a freshly migrated SQLite file.
async fn sqlite_plan(sql: &str, values: Vec<rusqlite::types::Value>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.db");
    drop(
        Store::open(&format!("sqlite:{}", path.display()))
            .await
            .unwrap(),
    );
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let plan: Vec<String> = stmt
        .query_map(rusqlite::params_from_iter(values), |r| r.get(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    plan.join("\n")
}

/// A lookup of sealed runs seeks once per run (`run=? AND <key>=?`) and ranges over the
/// unsealed tail: the only table it scans is the (small) run table.
fn assert_sealed_run_lookup(plan: &str, key: &str) {
    assert!(
        plan.contains(&format!("SEARCH p USING PRIMARY KEY (run=? AND {key}=?)")),
        "one seek per run: {plan}"
    );
    for line in plan.lines().map(str::trim) {
        if let Some(scanned) = line.strip_prefix("SCAN ") {
            assert!(
                scanned == "r" || scanned.ends_with("_runs"),
                "only the run table is scanned, not `{scanned}`: {plan}"
            );
        }
    }
}

/// The accounting of disclosures' query (one subject, a set of kinds, in seq order) on
/// SQLite: never a scan of the whole audit log or of every sealed pair. (A sort remains:
/// the kinds' index ranges are merged by id; it holds one patient's matches.)
#[tokio::test]
async fn sqlite_reads_one_subjects_entries_through_its_index() {
    let q = crate::AuditQuery {
        after: 10,
        kinds: vec!["phi.access".to_owned(), "breakglass.use".to_owned()],
        subject: Some("ab".repeat(32)),
        since: Some(time::OffsetDateTime::UNIX_EPOCH),
        limit: 100,
        ..crate::AuditQuery::default()
    };
    let (sql, params) = crate::sqlite::audit::subject_query(&q, &"ab".repeat(32));
    let values = params
        .into_iter()
        .map(|p| match p {
            crate::audit_sql::Param::Int(i) => rusqlite::types::Value::Integer(i),
            crate::audit_sql::Param::Text(t) => rusqlite::types::Value::Text(t),
        })
        .collect();
    assert_sealed_run_lookup(&sqlite_plan(&sql, values).await, "subject");
}

/// `GET /v1/flows?request_id=` on SQLite: the same shape over the flows.
#[tokio::test]
async fn sqlite_reads_one_request_ids_flows_through_its_runs() {
    let q = crate::FlowQuery {
        request_id: Some("0a".repeat(16)),
        verdict: Some(wardmesh_proto::flow::Verdict::Denied),
        limit: 100,
        ..crate::FlowQuery::default()
    };
    let (sql, params) = crate::sqlite::flows::request_id_query(&q, &"0a".repeat(16));
    let values = params
        .into_iter()
        .map(|p| match p {
            crate::flows::FlowParam::Int(i) => rusqlite::types::Value::Integer(i),
            crate::flows::FlowParam::Text(t) => rusqlite::types::Value::Text(t),
            crate::flows::FlowParam::Bool(b) => rusqlite::types::Value::Integer(i64::from(b)),
        })
        .collect();
    assert_sealed_run_lookup(&sqlite_plan(&sql, values).await, "request_id");
}

/// SQLite's by-subject lookup is derived data that plain SQL could edit without touching
/// the chain: `first_entry_missing_from_subject_lookup` (run by `wardctl audit verify`)
/// finds each edit that would hide an entry, and a forged pair cannot attribute another
/// patient's entry to the looked-up one.
#[tokio::test]
async fn sqlite_subject_lookup_tampering_is_found() {
    use crate::SubjectLookupCheck::{Complete, Missing};
    use crate::tests::raw_sql;
    run_on_sqlite(|db| async move {
        let store = db.open().await;
        // Entries 1..=14 about "p0"/"p1" alternately; runs of 4 seal 1..=12.
        let events: Vec<crate::Event> = (1..=14)
            .map(|n| crate::Event {
                kind: "phi.access".to_owned(),
                subject: format!("p{}", n % 2),
                ..super::fixtures::event(n)
            })
            .collect();
        store.append_events(&events).await.unwrap();
        let check = || async {
            store
                .first_entry_missing_from_subject_lookup()
                .await
                .unwrap()
        };
        let seqs = |p: &'static str| {
            let store = store.clone();
            async move {
                let q = crate::AuditQuery {
                    subject: Some(p.to_owned()),
                    limit: 100,
                    ..crate::AuditQuery::default()
                };
                super::audit_checks::store_seqs(&store, &q).await
            }
        };
        assert_eq!(check().await, Complete);
        assert_eq!(seqs("p1").await, [1, 3, 5, 7, 9, 11, 13]);

        // A deleted pair hides its entry from the lookup; the check names it.
        raw_sql(&db, "DELETE FROM audit_subjects WHERE id = 5").await;
        assert_eq!(seqs("p1").await, [1, 3, 7, 9, 11, 13]);
        assert_eq!(check().await, Missing { seq: 5 });
        raw_sql(
            &db,
            "INSERT INTO audit_subjects (run, subject, id) VALUES (4, 'p1', 5)",
        )
        .await;
        assert_eq!(check().await, Complete);

        // A pair moved to another subject: found.
        raw_sql(&db, "UPDATE audit_subjects SET subject = 'p9' WHERE id = 7").await;
        assert_eq!(check().await, Missing { seq: 7 });
        raw_sql(&db, "UPDATE audit_subjects SET subject = 'p1' WHERE id = 7").await;

        // A forged pair pointing at p0's entry 6: not reported as p1's.
        raw_sql(
            &db,
            "INSERT INTO audit_subjects (run, subject, id) VALUES (4, 'p1', 6)",
        )
        .await;
        assert_eq!(seqs("p1").await, [1, 3, 5, 7, 9, 11, 13]);
        assert_eq!(
            check().await,
            Complete,
            "nothing is hidden by an extra pair"
        );

        // A run removed from the run table: its entries are found missing.
        raw_sql(&db, "DELETE FROM audit_subject_runs WHERE after_id = 4").await;
        assert_eq!(check().await, Missing { seq: 5 });
        raw_sql(
            &db,
            "INSERT INTO audit_subject_runs (after_id, last_id) VALUES (4, 8)",
        )
        .await;
        assert_eq!(check().await, Complete);
    })
    .await;
}

/// An upgrade to schema v8 seals the rows already stored (not the first write after it),
/// and lookups by subject and by request id answer from the runs right away.
#[tokio::test]
async fn sqlite_upgrade_to_v8_seals_existing_rows() {
    run_on_sqlite(|db| async move {
        let store = db.open().await;
        let events: Vec<crate::Event> = (1..=10)
            .map(|n| crate::Event {
                subject: format!("p{}", n % 2),
                ..super::fixtures::event(n)
            })
            .collect();
        store.append_events(&events).await.unwrap();
        let flows: Vec<_> = (0..10).map(super::flow_checks::flow).collect();
        store.ingest_flows(&flows).await.unwrap();
        drop(store);
        // Back to what v7 left: the random-key indexes, no runs.
        crate::tests::raw_sql(
            &db,
            "DROP TABLE audit_subjects; DROP TABLE audit_subject_runs; \
             DROP TABLE flow_request_ids; DROP TABLE flow_request_id_runs; \
             CREATE INDEX events_by_subject ON events (subject, id); \
             CREATE INDEX flows_by_request_id ON flows (request_id, seq) \
             WHERE request_id IS NOT NULL; \
             DELETE FROM schema_version WHERE version = 8;",
        )
        .await;

        let store = db.open().await;
        assert_eq!(store.schema_version().await.unwrap(), crate::SCHEMA_VERSION);
        let path = db.url.trim_start_matches("sqlite:").to_owned();
        let runs = tokio::task::spawn_blocking(move || {
            let c = rusqlite::Connection::open(path).unwrap();
            let count = |t: &str| -> i64 {
                c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                    .unwrap()
            };
            (count("audit_subject_runs"), count("flow_request_id_runs"))
        })
        .await
        .unwrap();
        // Runs of 4 in unit tests: 10 entries, 10 flows -> 2 runs each.
        assert_eq!(runs, (2, 2));
        let q = crate::AuditQuery {
            subject: Some("p1".to_owned()),
            limit: 100,
            ..crate::AuditQuery::default()
        };
        assert_eq!(
            super::audit_checks::store_seqs(&store, &q).await,
            [1, 3, 5, 7, 9]
        );
        let by_request = store
            .query_flows(&crate::FlowQuery {
                request_id: flows[2].request_id.clone(),
                limit: 10,
                ..crate::FlowQuery::default()
            })
            .await
            .unwrap();
        let want: Vec<&str> = flows
            .iter()
            .filter(|f| f.request_id == flows[2].request_id)
            .map(|f| f.id.as_str())
            .collect();
        let got: Vec<&str> = by_request.iter().map(|f| f.record.id.as_str()).collect();
        assert_eq!(got, want);
        assert_eq!(
            store
                .first_entry_missing_from_subject_lookup()
                .await
                .unwrap(),
            crate::SubjectLookupCheck::Complete
        );
    })
    .await;
}
