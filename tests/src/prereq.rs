//! Prerequisites that some tests need. On a developer laptop a missing one skips the
//! test with a printed reason; under `CI=true` it is a failure.

/// Returns the PostgreSQL admin URL, or `None` (after printing why) when the test should
/// skip. Panics under CI.
pub fn postgres_url(test: &str) -> Option<String> {
    match std::env::var("WARDMESH_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => missing(
            test,
            "WARDMESH_TEST_POSTGRES_URL is not set (scripts/test starts PostgreSQL)",
        ),
    }
}

/// Checks that a command exists on PATH.
pub fn command(test: &str, cmd: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success());
    found || missing::<()>(test, &format!("`{cmd}` is not installed")).is_some()
}

fn missing<T>(test: &str, why: &str) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {why}; under CI=true this prerequisite is required");
    }
    eprintln!("SKIPPING {test}: {why}");
    None
}

/// Creates a fresh PostgreSQL database for one test; returns its URL.
pub async fn fresh_postgres_db(admin_url: &str) -> String {
    let (client, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
        .await
        .expect("connect to the PostgreSQL admin URL");
    tokio::spawn(conn);
    let name = format!("wm_it_{}", rand_suffix());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .unwrap_or(admin_url);
    format!("{base}/{name}")
}

fn rand_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", n, std::process::id())
}
