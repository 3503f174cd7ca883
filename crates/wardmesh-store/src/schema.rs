//! Schema migrations and the value conversions both backends share.
//!
//! Each backend has its own SQL files under `schema/<backend>/`, one per version, holding
//! the same logical schema. A `schema_version` table records the versions applied; opening
//! a store applies the missing ones in one transaction, so opening twice (or from several
//! replicas at once) is harmless. A migration may also need Rust code over the existing
//! rows (version 2 chains the existing events, which SQL alone cannot hash); each backend
//! runs it inside the same transaction, right after the step's SQL.

use time::OffsetDateTime;

use crate::{ConsumeOutcome, StoreError};

/// One schema step.
#[derive(Debug)]
pub(crate) struct Migration {
    pub(crate) version: i64,
    pub(crate) sql: &'static str,
    /// After the SQL: hash-chain the existing events (schema version 2).
    pub(crate) chain_existing_events: bool,
}

pub(crate) const SQLITE_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: include_str!("../schema/sqlite/0001_initial.sql"),
        chain_existing_events: false,
    },
    Migration {
        version: 2,
        sql: include_str!("../schema/sqlite/0002_audit_chain.sql"),
        chain_existing_events: true,
    },
    Migration {
        version: 3,
        sql: include_str!("../schema/sqlite/0003_objects.sql"),
        chain_existing_events: false,
    },
    Migration {
        version: 4,
        sql: include_str!("../schema/sqlite/0004_flows.sql"),
        chain_existing_events: false,
    },
    Migration {
        version: 5,
        sql: include_str!("../schema/sqlite/0005_flow_request_id.sql"),
        chain_existing_events: false,
    },
    Migration {
        version: 6,
        sql: include_str!("../schema/sqlite/0006_events_by_subject.sql"),
        chain_existing_events: false,
    },
    Migration {
        version: 7,
        sql: include_str!("../schema/sqlite/0007_drop_flows_by_subject.sql"),
        chain_existing_events: false,
    },
    Migration {
        version: 8,
        sql: include_str!("../schema/sqlite/0008_sealed_runs.sql"),
        chain_existing_events: false,
    },
];

pub(crate) const POSTGRES_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: include_str!("../schema/postgres/0001_initial.sql"),
        chain_existing_events: false,
    },
    Migration {
        version: 2,
        sql: include_str!("../schema/postgres/0002_audit_chain.sql"),
        chain_existing_events: true,
    },
    Migration {
        version: 3,
        sql: include_str!("../schema/postgres/0003_objects.sql"),
        chain_existing_events: false,
    },
    Migration {
        version: 4,
        sql: include_str!("../schema/postgres/0004_flows.sql"),
        chain_existing_events: false,
    },
    Migration {
        version: 5,
        sql: include_str!("../schema/postgres/0005_flow_request_id.sql"),
        chain_existing_events: false,
    },
    Migration {
        version: 6,
        sql: include_str!("../schema/postgres/0006_events_by_subject.sql"),
        chain_existing_events: false,
    },
    Migration {
        version: 7,
        sql: include_str!("../schema/postgres/0007_drop_flows_by_subject.sql"),
        chain_existing_events: false,
    },
    Migration {
        version: 8,
        sql: include_str!("../schema/postgres/0008_sealed_runs.sql"),
        chain_existing_events: false,
    },
];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = 8;

/// The bookkeeping table, identical on both backends.
pub(crate) const CREATE_SCHEMA_VERSION: &str = "CREATE TABLE IF NOT EXISTS schema_version (\
     version BIGINT PRIMARY KEY NOT NULL, \
     applied_at_us BIGINT NOT NULL)";

/// The migrations a database at `current` still needs, or an error if it is newer than
/// this build.
pub(crate) fn pending(
    migrations: &'static [Migration],
    current: i64,
) -> Result<impl Iterator<Item = &'static Migration>, StoreError> {
    if current > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(migrations.iter().filter(move |m| m.version > current))
}

/// Unix microseconds, rounded towards the past. Every `OffsetDateTime` fits.
pub(crate) fn to_micros(t: OffsetDateTime) -> i64 {
    let micros = t.unix_timestamp_nanos().div_euclid(1_000);
    i64::try_from(micros).unwrap_or(if micros < 0 { i64::MIN } else { i64::MAX })
}

pub(crate) fn from_micros(micros: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .map_err(|e| StoreError::Corrupt(format!("timestamp {micros}us is out of range: {e}")))
}

/// Classifies a join token the atomic update did not consume, from its stored row.
/// `None` if it looks consumable after all (it appeared between the two statements):
/// the caller reports it as not found, the bearer retries.
pub(crate) fn classify_unconsumed(
    used_at_us: Option<i64>,
    expires_at_us: i64,
    now_us: i64,
) -> Result<Option<ConsumeOutcome>, StoreError> {
    Ok(match used_at_us {
        Some(used) => Some(ConsumeOutcome::AlreadyUsed {
            used_at: from_micros(used)?,
        }),
        None if expires_at_us <= now_us => Some(ConsumeOutcome::Expired {
            expired_at: from_micros(expires_at_us)?,
        }),
        None => None,
    })
}

pub(crate) fn detail_from_text(text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("event detail is not valid json: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_round_trip_and_truncate_towards_the_past() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        assert_eq!(to_micros(t), 1_700_000_000_123_456);
        assert_eq!(
            from_micros(to_micros(t)).unwrap().unix_timestamp_nanos(),
            1_700_000_000_123_456_000
        );
        let before_epoch = OffsetDateTime::from_unix_timestamp_nanos(-1_500).unwrap();
        assert_eq!(to_micros(before_epoch), -2);
        for t in [
            OffsetDateTime::UNIX_EPOCH,
            time::macros::datetime!(9999-12-31 23:59:59.999999 UTC),
        ] {
            assert_eq!(from_micros(to_micros(t)).unwrap(), t);
        }
    }

    #[test]
    fn out_of_range_micros_are_corrupt_not_panics() {
        assert!(matches!(from_micros(i64::MAX), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn newer_databases_are_refused() {
        assert!(matches!(
            pending(SQLITE_MIGRATIONS, SCHEMA_VERSION + 1).map(|i| i.count()),
            Err(StoreError::SchemaTooNew { found, supported }) if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION
        ));
        let all = POSTGRES_MIGRATIONS.len();
        assert_eq!(pending(POSTGRES_MIGRATIONS, 0).unwrap().count(), all);
        assert_eq!(pending(POSTGRES_MIGRATIONS, 1).unwrap().count(), all - 1);
        assert_eq!(
            pending(POSTGRES_MIGRATIONS, SCHEMA_VERSION)
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn both_backends_know_the_same_versions() {
        let versions = |m: &[Migration]| m.iter().map(|m| m.version).collect::<Vec<_>>();
        assert_eq!(versions(SQLITE_MIGRATIONS), versions(POSTGRES_MIGRATIONS));
        assert_eq!(versions(SQLITE_MIGRATIONS).last(), Some(&SCHEMA_VERSION));
    }
}
