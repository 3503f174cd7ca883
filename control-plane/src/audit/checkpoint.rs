//! Signed checkpoints over the chain head, and the task that writes them.
//!
//! # What is signed (version 1)
//!
//! Ed25519 over the bytes `wardmesh-audit-checkpoint-v1\n` followed by the compact JSON
//! object `{"at_us":T,"head_hash":H,"key_id":K,"seq":S}` (keys in this order, no
//! whitespace): the checkpoint's time in unix microseconds, the hash of entry `S`, the
//! signing key's id and the seq. The signature is stored and served as base64.
//!
//! Before signing, the entries since the previous checkpoint are re-checked: a signature
//! must never launder entries rewritten (and re-hashed) while they were not yet covered.

use std::time::Duration;

use serde::Serialize;
use wardmesh_store::chain::{ChainBreak, ChainWalker};
use wardmesh_store::{AuditQuery, ChainHead, Checkpoint, StoreError};

use super::AuditLog;

/// Why no checkpoint was written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "refusing to sign the audit log: since the last checkpoint, {0}; run `wardctl audit \
         verify` and investigate before anything else"
    )]
    ChainBroken(ChainBreak),
    #[error(
        "refusing to sign the audit log: the chain head says seq {seq} but the entries end \
         elsewhere or with another hash; run `wardctl audit verify`"
    )]
    HeadMismatch { seq: i64 },
}

const MESSAGE_PREFIX: &[u8] = b"wardmesh-audit-checkpoint-v1\n";

/// The bytes a checkpoint's signature covers.
pub fn checkpoint_message(seq: i64, head_hash: &str, at_us: i64, key_id: &str) -> Vec<u8> {
    // Declared in sorted key order; serialised as declared.
    #[derive(Serialize)]
    struct Signed<'a> {
        at_us: i64,
        head_hash: &'a str,
        key_id: &'a str,
        seq: i64,
    }
    let body = serde_json::to_vec(&Signed {
        at_us,
        head_hash,
        key_id,
        seq,
    })
    .unwrap_or_default();
    [MESSAGE_PREFIX, &body].concat()
}

/// The message for a stored checkpoint.
pub fn message_of(cp: &Checkpoint) -> Vec<u8> {
    checkpoint_message(
        cp.seq,
        &cp.head_hash,
        wardmesh_store::chain::at_us(cp.at),
        &cp.key_id,
    )
}

impl AuditLog {
    /// Signs and stores a checkpoint over the current head if the head is past the newest
    /// checkpoint (this replica's or another's); returns it, or `None` if nothing moved.
    /// Refuses (and writes nothing) if the entries since the previous checkpoint no longer
    /// form a chain.
    pub async fn checkpoint_if_moved(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let head = self.store.audit_head().await?;
        let latest = self.store.latest_checkpoint().await?.map(|c| ChainHead {
            seq: c.seq,
            hash: c.head_hash,
        });
        let anchor = self.store.audit_anchor().await?.map(|a| ChainHead {
            seq: a.checkpoint.seq,
            hash: a.checkpoint.head_hash,
        });
        let start = match (latest, anchor) {
            (Some(l), Some(a)) => Some(if l.seq >= a.seq { l } else { a }),
            (l, a) => l.or(a),
        };
        if head.seq <= start.as_ref().map_or(0, |s| s.seq) {
            return Ok(None);
        }
        self.check_since(start, &head).await?;
        // Microsecond time, as stored, so the signed at_us is what verifiers read back.
        let at = wardmesh_store::chain::at_us((self.clock)());
        let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1_000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let key_id = self.signer.public().key_id();
        let message = checkpoint_message(
            head.seq,
            &head.hash,
            wardmesh_store::chain::at_us(at),
            &key_id,
        );
        let cp = Checkpoint {
            id: 0,
            seq: head.seq,
            head_hash: head.hash,
            at,
            key_id,
            signature: self.signer.sign(&message),
        };
        let stored = self.store.append_checkpoint(&cp).await?;
        tracing::debug!(seq = stored.seq, id = stored.id, "wrote audit checkpoint");
        Ok(Some(stored))
    }

    /// Walks the entries after `start` up to `head` (inclusive).
    async fn check_since(
        &self,
        start: Option<ChainHead>,
        head: &ChainHead,
    ) -> Result<(), CheckpointError> {
        let mut walker = ChainWalker::new(start);
        loop {
            let q = AuditQuery {
                after: walker.head().seq,
                before: Some(head.seq + 1),
                limit: super::MAX_PAGE,
                ..AuditQuery::default()
            };
            let page = self.store.audit_entries(&q).await?;
            if page.is_empty() {
                break;
            }
            for e in &page {
                walker.push(e).map_err(CheckpointError::ChainBroken)?;
            }
        }
        if walker.head() != head {
            return Err(CheckpointError::HeadMismatch { seq: head.seq });
        }
        Ok(())
    }

    /// Writes a checkpoint every `every` when the head moved. Runs until aborted; the
    /// control plane writes a last one on shutdown.
    pub async fn run_checkpoints(self, every: Duration) {
        // `interval` panics on zero; a zero setting means "as often as sensible".
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate; the log was just opened
        loop {
            tick.tick().await;
            match self.checkpoint_if_moved().await {
                Ok(_) => {}
                Err(e @ CheckpointError::Store(_)) => {
                    tracing::warn!(error = %e, "could not write an audit checkpoint; retrying next interval");
                }
                Err(e) => tracing::error!(error = %e, "audit log integrity"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;
    use wardmesh_store::Store;

    use super::*;
    use crate::audit::{AuditRecord, AuditSigner};

    async fn log() -> AuditLog {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let signer = Arc::new(AuditSigner::generate().unwrap());
        AuditLog::new(store, signer, crate::identity::system_clock())
    }

    fn record(n: i64) -> AuditRecord {
        AuditRecord::new(
            "identity.issued",
            "test",
            "spiffe://wardmesh.local/ns/a/sa/b",
        )
        .detail(json!({ "n": n }))
    }

    #[test]
    fn signed_message_is_fixed() {
        assert_eq!(
            String::from_utf8(checkpoint_message(7, "ab", 1_750_000_000_000_001, "k1")).unwrap(),
            "wardmesh-audit-checkpoint-v1\n{\"at_us\":1750000000000001,\"head_hash\":\"ab\",\
             \"key_id\":\"k1\",\"seq\":7}"
        );
    }

    #[tokio::test]
    async fn checkpoints_only_when_the_head_moved_and_verify() {
        let log = log().await;
        assert_eq!(log.checkpoint_if_moved().await.unwrap(), None, "empty log");
        log.append(record(1)).await.unwrap();
        log.append(record(2)).await.unwrap();
        let cp = log.checkpoint_if_moved().await.unwrap().unwrap();
        assert_eq!(cp.seq, 2);
        assert_eq!(cp.head_hash, log.store.audit_head().await.unwrap().hash);
        assert_eq!(cp.key_id, log.signer.public().key_id());
        assert!(
            log.signer
                .public()
                .verifies(&message_of(&cp), &cp.signature)
        );
        assert_eq!(log.checkpoint_if_moved().await.unwrap(), None, "unchanged");
        log.append(record(3)).await.unwrap();
        assert_eq!(
            log.checkpoint_if_moved().await.unwrap().map(|c| c.seq),
            Some(3)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_checkpoints_every_interval_when_the_head_moved() {
        let log = log().await;
        let every = Duration::from_secs(60);
        let task = tokio::spawn(log.clone().run_checkpoints(every));
        let count = || async { log.store.list_checkpoints(0, 100).await.unwrap().len() };

        log.append(record(1)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(count().await, 0, "not before the interval");
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(count().await, 1);
        tokio::time::sleep(every * 3).await;
        assert_eq!(
            count().await,
            1,
            "the head did not move: no new checkpoints"
        );
        log.append(record(2)).await.unwrap();
        tokio::time::sleep(every).await;
        assert_eq!(count().await, 2);
        task.abort();
    }
}
