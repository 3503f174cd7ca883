//! The store operations on PostgreSQL. Same statements and semantics as `sqlite.rs`;
//! PostgreSQL runs at READ COMMITTED, where an `UPDATE ... WHERE <condition>` re-checks the
//! condition on the latest row version after waiting for a concurrent writer, which is
//! what makes the single-use and counter updates race-free across replicas.

use time::OffsetDateTime;
use tokio_postgres::{GenericClient, Row, Transaction};

use super::PostgresBackend;
use crate::error::postgres_conflict;
use crate::schema::{classify_unconsumed, from_micros, to_micros};
use crate::{
    AgentStatus, CommitOutcome, ConsumeOutcome, Issuance, IssuanceCommit, JoinToken,
    JoinTokenRecord, OperatorToken, QuarantineEntry, StoreError,
};

const BUMP_DENY_LIST_REVISION: &str =
    "UPDATE counters SET value = value + 1 WHERE name = 'deny_list_revision'";

impl PostgresBackend {
    pub(crate) async fn insert_join_token(&self, t: &JoinToken) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO join_tokens (token_hash, spiffe_id, created_at_us, expires_at_us, \
                 created_by, used_at_us) VALUES ($1, $2, $3, $4, $5, NULL)",
                &[
                    &t.token_hash,
                    &t.spiffe_id,
                    &to_micros(t.created_at),
                    &to_micros(t.expires_at),
                    &t.created_by,
                ],
            )
            .await
            .map_err(|e| postgres_conflict(e, "a join token with this hash already exists"))?;
        Ok(())
    }

    pub(crate) async fn consume_join_token(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
    ) -> Result<ConsumeOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let outcome = consume_in(&tx, token_hash, now).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    pub(crate) async fn find_join_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<JoinTokenRecord>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT token_hash, spiffe_id, created_at_us, expires_at_us, created_by, \
                 used_at_us FROM join_tokens WHERE token_hash = $1",
                &[&token_hash],
            )
            .await?;
        row.map(|r| {
            Ok(JoinTokenRecord {
                token: JoinToken {
                    token_hash: r.try_get(0)?,
                    spiffe_id: r.try_get(1)?,
                    created_at: ts(&r, 2)?,
                    expires_at: ts(&r, 3)?,
                    created_by: r.try_get(4)?,
                },
                used_at: opt_ts(&r, 5)?,
            })
        })
        .transpose()
    }

    pub(crate) async fn quarantine(&self, e: &QuarantineEntry) -> Result<bool, StoreError> {
        let created_at = to_micros(e.created_at);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // DO NOTHING waits for a concurrent insert of the same id, then reports 0 rows:
        // exactly one of two racing quarantines bumps the revision.
        let inserted = tx
            .execute(
                "INSERT INTO quarantine (spiffe_id, reason, created_at_us, created_by) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (spiffe_id) DO NOTHING",
                &[&e.spiffe_id, &e.reason, &created_at, &e.created_by],
            )
            .await?
            == 1;
        if inserted {
            tx.execute(BUMP_DENY_LIST_REVISION, &[]).await?;
        } else {
            tx.execute(
                "UPDATE quarantine SET reason = $2, created_at_us = $3, created_by = $4 \
                 WHERE spiffe_id = $1",
                &[&e.spiffe_id, &e.reason, &created_at, &e.created_by],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    pub(crate) async fn unquarantine(&self, spiffe_id: &str) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let removed = tx
            .execute("DELETE FROM quarantine WHERE spiffe_id = $1", &[&spiffe_id])
            .await?
            > 0;
        if removed {
            tx.execute(BUMP_DENY_LIST_REVISION, &[]).await?;
        }
        tx.commit().await?;
        Ok(removed)
    }

    pub(crate) async fn is_quarantined(&self, spiffe_id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM quarantine WHERE spiffe_id = $1)",
                &[&spiffe_id],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    pub(crate) async fn list_quarantined(&self) -> Result<Vec<QuarantineEntry>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT spiffe_id, reason, created_at_us, created_by FROM quarantine \
                 ORDER BY spiffe_id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(QuarantineEntry {
                    spiffe_id: r.try_get(0)?,
                    reason: r.try_get(1)?,
                    created_at: ts(r, 2)?,
                    created_by: r.try_get(3)?,
                })
            })
            .collect()
    }

    pub(crate) async fn deny_list_revision(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT value FROM counters WHERE name = 'deny_list_revision'",
                &[],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    pub(crate) async fn record_issuance(&self, i: &Issuance) -> Result<(), StoreError> {
        let client = self.client().await?;
        insert_issuance(&*client, i).await
    }

    pub(crate) async fn commit_issuance(
        &self,
        commit: &IssuanceCommit,
    ) -> Result<CommitOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The token first: its row lock makes concurrent spenders of one token wait here,
        // and re-check, before any of them touches the audit head.
        if let Some((hash, now)) = &commit.consume_join_token {
            let outcome = consume_in(&tx, hash, *now).await?;
            if !matches!(outcome, ConsumeOutcome::Consumed { .. }) {
                tx.rollback().await?;
                return Ok(CommitOutcome::TokenRefused(outcome));
            }
        }
        insert_issuance(&tx, &commit.issuance).await?;
        let seqs = super::audit::append_in(&tx, std::slice::from_ref(&commit.event)).await?;
        let event_seq = seqs
            .first()
            .copied()
            .ok_or_else(|| StoreError::Corrupt("an append returned no seq".to_owned()))?;
        tx.commit().await?;
        Ok(CommitOutcome::Committed { event_seq })
    }

    pub(crate) async fn list_issuances(
        &self,
        spiffe_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Issuance>, StoreError> {
        const COLUMNS: &str = "SELECT serial_hex, spiffe_id, not_before_us, not_after_us, \
                               authority_id, attestation, issued_at_us FROM issuances";
        const ORDER: &str = "ORDER BY issued_at_us DESC, seq DESC LIMIT";
        let limit = i64::from(limit);
        let client = self.client().await?;
        let rows = match spiffe_id {
            Some(id) => {
                client
                    .query(
                        &format!("{COLUMNS} WHERE spiffe_id = $1 {ORDER} $2"),
                        &[&id, &limit],
                    )
                    .await?
            }
            None => {
                client
                    .query(&format!("{COLUMNS} {ORDER} $1"), &[&limit])
                    .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok(Issuance {
                    serial_hex: r.try_get(0)?,
                    spiffe_id: r.try_get(1)?,
                    not_before: ts(r, 2)?,
                    not_after: ts(r, 3)?,
                    authority_id: r.try_get(4)?,
                    attestation: r.try_get(5)?,
                    issued_at: ts(r, 6)?,
                })
            })
            .collect()
    }

    pub(crate) async fn upsert_agent(&self, a: &AgentStatus) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO agents (instance_id, spiffe_id, last_seen_us, cert_not_after_us, \
                 cert_authority_id, bundle_revision) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (instance_id) DO UPDATE SET spiffe_id = excluded.spiffe_id, \
                 last_seen_us = excluded.last_seen_us, \
                 cert_not_after_us = excluded.cert_not_after_us, \
                 cert_authority_id = excluded.cert_authority_id, \
                 bundle_revision = excluded.bundle_revision",
                &[
                    &a.instance_id,
                    &a.spiffe_id,
                    &to_micros(a.last_seen),
                    &to_micros(a.cert_not_after),
                    &a.cert_authority_id,
                    &a.bundle_revision,
                ],
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn list_agents(&self) -> Result<Vec<AgentStatus>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT spiffe_id, instance_id, last_seen_us, cert_not_after_us, \
                 cert_authority_id, bundle_revision FROM agents ORDER BY spiffe_id, instance_id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AgentStatus {
                    spiffe_id: r.try_get(0)?,
                    instance_id: r.try_get(1)?,
                    last_seen: ts(r, 2)?,
                    cert_not_after: ts(r, 3)?,
                    cert_authority_id: r.try_get(4)?,
                    bundle_revision: r.try_get(5)?,
                })
            })
            .collect()
    }

    pub(crate) async fn insert_operator_token(&self, t: &OperatorToken) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO operator_tokens (token_hash, name, role, created_at_us) \
                 VALUES ($1, $2, $3, $4)",
                &[&t.token_hash, &t.name, &t.role, &to_micros(t.created_at)],
            )
            .await
            .map_err(|e| postgres_conflict(e, "an operator token with this hash already exists"))?;
        Ok(())
    }

    pub(crate) async fn find_operator_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<OperatorToken>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT token_hash, name, role, created_at_us FROM operator_tokens \
                 WHERE token_hash = $1",
                &[&token_hash],
            )
            .await?;
        row.map(|r| {
            Ok(OperatorToken {
                token_hash: r.try_get(0)?,
                name: r.try_get(1)?,
                role: r.try_get(2)?,
                created_at: ts(&r, 3)?,
            })
        })
        .transpose()
    }

    pub(crate) async fn count_operator_tokens(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT COUNT(*) FROM operator_tokens", &[])
            .await?;
        Ok(row.try_get(0)?)
    }
}

/// Uses up the token with this hash if it is unused and `now < expires_at`, inside the
/// caller's transaction; otherwise says why not and changes nothing.
async fn consume_in(
    tx: &Transaction<'_>,
    token_hash: &str,
    now: OffsetDateTime,
) -> Result<ConsumeOutcome, StoreError> {
    let now_us = to_micros(now);
    let consumed = tx
        .query_opt(
            "UPDATE join_tokens SET used_at_us = $1 WHERE token_hash = $2 \
             AND used_at_us IS NULL AND expires_at_us > $1 RETURNING spiffe_id",
            &[&now_us, &token_hash],
        )
        .await?;
    if let Some(row) = consumed {
        return Ok(ConsumeOutcome::Consumed {
            spiffe_id: row.try_get(0)?,
        });
    }
    let row = tx
        .query_opt(
            "SELECT used_at_us, expires_at_us FROM join_tokens WHERE token_hash = $1",
            &[&token_hash],
        )
        .await?;
    Ok(match row {
        Some(row) => classify_unconsumed(row.try_get(0)?, row.try_get(1)?, now_us)?
            .unwrap_or(ConsumeOutcome::NotFound),
        None => ConsumeOutcome::NotFound,
    })
}

async fn insert_issuance(client: &impl GenericClient, i: &Issuance) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO issuances (serial_hex, spiffe_id, not_before_us, not_after_us, \
             authority_id, attestation, issued_at_us) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &i.serial_hex,
                &i.spiffe_id,
                &to_micros(i.not_before),
                &to_micros(i.not_after),
                &i.authority_id,
                &i.attestation,
                &to_micros(i.issued_at),
            ],
        )
        .await
        .map_err(|e| {
            postgres_conflict(
                e,
                "this authority already recorded a certificate with this serial",
            )
        })?;
    Ok(())
}

/// Reads a microsecond timestamp column.
pub(super) fn ts(row: &Row, idx: usize) -> Result<OffsetDateTime, StoreError> {
    from_micros(row.try_get(idx)?)
}

/// Reads a nullable microsecond timestamp column.
fn opt_ts(row: &Row, idx: usize) -> Result<Option<OffsetDateTime>, StoreError> {
    row.try_get::<_, Option<i64>>(idx)?
        .map(from_micros)
        .transpose()
}
