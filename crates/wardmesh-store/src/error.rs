//! The one error type of the store. Messages are lowercase, say what to do, and never
//! contain a password from a PostgreSQL URL.

use std::fmt::Write as _;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store URL is not one we understand. `url_redacted` has any password replaced.
    #[error(
        "invalid store url `{url_redacted}`: {reason}; use `sqlite:<path>`, `sqlite::memory:` \
         or `postgres://user[:password]@host[:port]/database`"
    )]
    InvalidUrl {
        url_redacted: String,
        reason: String,
    },

    /// The write would duplicate a unique key (e.g. the same token hash twice).
    #[error("conflict: {0}")]
    Conflict(String),

    /// The SQLite database file could not be opened or created.
    #[error(
        "cannot open sqlite database `{path}`: {source}; check that its directory exists and is \
         writable"
    )]
    SqliteOpen {
        path: String,
        #[source]
        source: rusqlite::Error,
    },

    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),

    /// No connection to the PostgreSQL server could be made.
    #[error(
        "cannot connect to postgres at `{url_redacted}`: {}; check that the server is running and \
         accepts this user and database",
        describe_postgres(source)
    )]
    PostgresConnect {
        url_redacted: String,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("postgres: {}", describe_postgres(.0))]
    Postgres(#[from] tokio_postgres::Error),

    /// A schema migration failed; the database was left at the previous version.
    #[error("schema migration to version {version} failed: {reason}")]
    Migration { version: i64, reason: String },

    /// The database was migrated by a newer wardmesh than this one.
    #[error(
        "the database schema is at version {found} but this build supports up to {supported}; \
         upgrade wardmesh before pointing it at this database"
    )]
    SchemaTooNew { found: i64, supported: i64 },

    /// The request contradicts what is stored (e.g. a checkpoint whose head hash is not the
    /// hash of the entry it names). Nothing was changed.
    #[error("refused: {0}")]
    Rejected(String),

    /// A stored value cannot be decoded (e.g. a timestamp out of range, invalid JSON).
    #[error("stored data is invalid: {0}")]
    Corrupt(String),

    /// A write transaction could not be committed; nothing of it was stored, so the
    /// caller may retry.
    #[error("the write could not be committed and nothing of it was stored: {reason}; retry")]
    CommitFailed { reason: String },

    /// The blocking task that ran a SQLite statement panicked or was cancelled.
    #[error("a storage task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// `tokio_postgres::Error`'s Display is only its kind ("db error"); add the server's
/// message or the underlying I/O error so the operator can act on it.
pub(crate) fn describe_postgres(err: &tokio_postgres::Error) -> String {
    let mut out = err.to_string();
    if let Some(db) = err.as_db_error() {
        let _ = write!(
            out,
            ": {} {}: {}",
            db.severity(),
            db.code().code(),
            db.message()
        );
        if let Some(detail) = db.detail() {
            let _ = write!(out, " ({detail})");
        }
        if let Some(hint) = db.hint() {
            let _ = write!(out, "; hint: {hint}");
        }
    } else if let Some(source) = std::error::Error::source(err) {
        let _ = write!(out, ": {source}");
    }
    out
}

/// Maps a unique-key violation to [`StoreError::Conflict`] with `what`, anything else
/// to the backend error.
pub(crate) fn sqlite_conflict(err: rusqlite::Error, what: &str) -> StoreError {
    match &err {
        rusqlite::Error::SqliteFailure(e, _)
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(what.to_owned())
        }
        _ => StoreError::Sqlite(err),
    }
}

pub(crate) fn postgres_conflict(err: tokio_postgres::Error, what: &str) -> StoreError {
    if err.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
        StoreError::Conflict(what.to_owned())
    } else {
        StoreError::Postgres(err)
    }
}
