//! Verifying an audit log from what the API serves, against a pinned public key: pure,
//! streaming (entries are fed page by page, ascending), stopping at the first damage.
//!
//! Checks, in seq order: the anchor's signature (if the log was pruned); for each entry,
//! that it continues the chain (no gap, `prev_hash` links, content hashes to `hash`); for
//! each checkpoint at that seq, that the pinned key signed it and that it names the
//! entry's hash; at the end, that no checkpoint lies beyond the last entry.

use std::collections::BTreeMap;

use serde::Serialize;
use wardmesh_store::chain::{ChainBreak, ChainWalker};
use wardmesh_store::{AuditEntry, ChainHead, Checkpoint};

use super::checkpoint::message_of;
use super::key::AuditPublicKey;

/// The first thing found wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Damage {
    /// Entry `seq` does not hash to its stored hash: its content was edited.
    HashMismatch { seq: i64 },
    /// Entries between `after_seq` and `next_seq` are missing: deleted.
    Gap { after_seq: i64, next_seq: i64 },
    /// Entry `seq` does not link to the entry before it: inserted or reordered.
    PrevHashMismatch { seq: i64 },
    /// Sequence numbers go backwards or repeat.
    OutOfOrder { after_seq: i64, seq: i64 },
    /// A checkpoint (or the anchor) at `seq` is not signed by the pinned key.
    SignatureInvalid {
        seq: i64,
        checkpoint_id: i64,
        reason: String,
    },
    /// A validly signed checkpoint names another hash than the log holds at `seq`: the
    /// entries up to `seq` were rewritten (and re-hashed) after it was signed.
    CheckpointMismatch { seq: i64, checkpoint_id: i64 },
    /// A checkpoint covers `checkpoint_seq` but the log ends at `last_seq`: the tail was
    /// deleted.
    Truncated { checkpoint_seq: i64, last_seq: i64 },
    /// The chain is whole, but queries by subject (the accounting of disclosures) leave
    /// entry `seq` out: the store's by-subject lookup was edited (SQLite's sealed runs).
    SubjectLookupMissing { seq: i64 },
}

impl Damage {
    /// The seq at which verification failed.
    pub fn seq(&self) -> i64 {
        match self {
            Self::Gap { next_seq, .. } => *next_seq,
            Self::HashMismatch { seq }
            | Self::PrevHashMismatch { seq }
            | Self::OutOfOrder { seq, .. }
            | Self::SignatureInvalid { seq, .. }
            | Self::CheckpointMismatch { seq, .. }
            | Self::SubjectLookupMissing { seq } => *seq,
            Self::Truncated { last_seq, .. } => *last_seq + 1,
        }
    }
}

impl From<ChainBreak> for Damage {
    fn from(b: ChainBreak) -> Self {
        match b {
            ChainBreak::Gap {
                after_seq,
                next_seq,
            } => Self::Gap {
                after_seq,
                next_seq,
            },
            ChainBreak::OutOfOrder { after_seq, seq } => Self::OutOfOrder { after_seq, seq },
            ChainBreak::PrevHashMismatch { seq, .. } => Self::PrevHashMismatch { seq },
            ChainBreak::HashMismatch { seq, .. } => Self::HashMismatch { seq },
        }
    }
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HashMismatch { seq } => write!(
                f,
                "hash mismatch at seq {seq}: the entry's content was edited after it was written"
            ),
            Self::Gap {
                after_seq,
                next_seq,
            } => write!(
                f,
                "gap after seq {after_seq}: the log continues at seq {next_seq}; entries were deleted"
            ),
            Self::PrevHashMismatch { seq } => write!(
                f,
                "prev_hash mismatch at seq {seq}: the entry does not follow the one before it; \
                 entries were inserted or reordered"
            ),
            Self::OutOfOrder { after_seq, seq } => write!(
                f,
                "seq {seq} follows seq {after_seq}: entries were reordered or duplicated"
            ),
            Self::SignatureInvalid {
                seq,
                checkpoint_id,
                reason,
            } => write!(
                f,
                "signature invalid on checkpoint {checkpoint_id} at seq {seq}: {reason}; the \
                 checkpoint is forged"
            ),
            Self::CheckpointMismatch { seq, checkpoint_id } => write!(
                f,
                "checkpoint {checkpoint_id} signed another head hash for seq {seq} than the log \
                 holds: entries up to seq {seq} were rewritten after it was signed"
            ),
            Self::Truncated {
                checkpoint_seq,
                last_seq,
            } => write!(
                f,
                "truncated: a checkpoint covers seq {checkpoint_seq} but the log ends at seq \
                 {last_seq}; entries after seq {last_seq} were deleted"
            ),
            Self::SubjectLookupMissing { seq } => write!(
                f,
                "entry {seq} is missing from the store's by-subject lookup: the chain is whole, \
                 but the accounting of disclosures would leave it out (the lookup's tables were \
                 edited)"
            ),
        }
    }
}

/// What `wardctl audit verify` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    /// The pinned key the checkpoints were checked against.
    pub key_id: String,
    pub entries: u64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// Set when the log was pruned: verification started from this signed checkpoint.
    pub anchor_seq: Option<i64>,
    pub checkpoints_verified: u64,
    pub last_checkpoint_seq: Option<i64>,
    /// Entries after the last verified checkpoint: chained, not yet signed.
    pub unsigned_entries: u64,
    pub damage: Option<Damage>,
    /// One sentence for people.
    pub message: String,
}

/// Feeds entries in ascending order; stops at the first damage.
#[derive(Debug)]
pub struct AuditVerifier {
    key: AuditPublicKey,
    walker: ChainWalker,
    anchor_seq: Option<i64>,
    /// Checkpoints not yet reached, by seq.
    pending: BTreeMap<i64, Vec<Checkpoint>>,
    first_seq: Option<i64>,
    checkpoints_verified: u64,
    last_checkpoint_seq: Option<i64>,
    damage: Option<Damage>,
}

impl AuditVerifier {
    /// `anchor`: where a pruned log starts (checked now); `checkpoints`: every checkpoint
    /// served (those older than the anchor are skipped: their entries are gone).
    pub fn new(
        key: AuditPublicKey,
        anchor: Option<Checkpoint>,
        checkpoints: Vec<Checkpoint>,
    ) -> Self {
        let mut v = Self {
            key,
            walker: ChainWalker::new(anchor.as_ref().map(|a| ChainHead {
                seq: a.seq,
                hash: a.head_hash.clone(),
            })),
            anchor_seq: anchor.as_ref().map(|a| a.seq),
            pending: BTreeMap::new(),
            first_seq: None,
            checkpoints_verified: 0,
            last_checkpoint_seq: None,
            damage: None,
        };
        let start = v.anchor_seq.unwrap_or(0);
        for cp in checkpoints.into_iter().filter(|c| c.seq >= start) {
            v.pending.entry(cp.seq).or_default().push(cp);
        }
        if let Some(anchor) = anchor {
            // The anchor is where checking starts, not a checkpoint the entries confirm.
            v.damage = v.check_checkpoint(&anchor, &anchor.head_hash);
            v.last_checkpoint_seq = Some(anchor.seq);
            let head = v.walker.head().clone();
            v.reach(&head);
        }
        v
    }

    /// Checks the next entry. Returns `false` once damage was found (feed no more).
    pub fn push(&mut self, entry: &AuditEntry) -> bool {
        if self.damage.is_some() {
            return false;
        }
        if let Err(b) = self.walker.push(entry) {
            self.damage = Some(b.into());
            return false;
        }
        self.first_seq.get_or_insert(entry.seq);
        let head = self.walker.head().clone();
        self.reach(&head);
        self.damage.is_none()
    }

    /// The damage found so far, if any.
    pub fn damage(&self) -> Option<&Damage> {
        self.damage.as_ref()
    }

    /// The control plane's answer on the by-subject lookup
    /// (`GET /v1/audit/subject-lookup`), asked after the entries: a missing entry is
    /// damage unless the chain was damaged first.
    pub fn subject_lookup(&mut self, first_missing_seq: Option<i64>) {
        if self.damage.is_none()
            && let Some(seq) = first_missing_seq
        {
            self.damage = Some(Damage::SubjectLookupMissing { seq });
        }
    }

    pub fn finish(mut self) -> VerifyReport {
        let last = self.walker.head().seq;
        if self.damage.is_none()
            && let Some((&checkpoint_seq, _)) = self.pending.iter().next()
        {
            self.damage = Some(Damage::Truncated {
                checkpoint_seq,
                last_seq: last,
            });
        }
        let entries = self.walker.checked();
        let unsigned = u64::try_from(last - self.last_checkpoint_seq.unwrap_or(0)).unwrap_or(0);
        let message = match &self.damage {
            Some(d) => format!("audit log is damaged: {d}"),
            None => format!(
                "audit log OK: {entries} entries{}, {} checkpoints verified with key {}{}",
                match (self.first_seq, entries) {
                    (Some(first), 1..) => format!(" (seq {first}..{last})"),
                    _ => String::new(),
                },
                self.checkpoints_verified,
                self.key.key_id(),
                if unsigned > 0 {
                    format!("; the newest {unsigned} entries are chained but not yet signed")
                } else {
                    String::new()
                }
            ),
        };
        VerifyReport {
            ok: self.damage.is_none(),
            key_id: self.key.key_id(),
            entries,
            first_seq: self.first_seq,
            last_seq: (entries > 0 || self.anchor_seq.is_some()).then_some(last),
            anchor_seq: self.anchor_seq,
            checkpoints_verified: self.checkpoints_verified,
            last_checkpoint_seq: self.last_checkpoint_seq,
            unsigned_entries: unsigned,
            damage: self.damage,
            message,
        }
    }

    /// Checks every checkpoint at the head's seq (and drops any left below it).
    fn reach(&mut self, head: &ChainHead) {
        let due: Vec<Checkpoint> = {
            let later = self.pending.split_off(&(head.seq + 1));
            std::mem::replace(&mut self.pending, later)
                .into_values()
                .flatten()
                .collect()
        };
        for cp in due {
            if self.damage.is_some() {
                return;
            }
            self.damage = self.check_checkpoint(&cp, &head.hash);
            if self.damage.is_none() {
                self.checkpoints_verified += 1;
                self.last_checkpoint_seq = Some(cp.seq);
            }
        }
    }

    fn check_checkpoint(&self, cp: &Checkpoint, log_hash: &str) -> Option<Damage> {
        let pinned = self.key.key_id();
        let reason = if cp.key_id != pinned {
            Some(format!(
                "signed by key {}, not the pinned key {pinned}",
                cp.key_id
            ))
        } else if !self.key.verifies(&message_of(cp), &cp.signature) {
            Some(format!(
                "the signature does not verify with the pinned key {pinned}"
            ))
        } else {
            None
        };
        match reason {
            Some(reason) => Some(Damage::SignatureInvalid {
                seq: cp.seq,
                checkpoint_id: cp.id,
                reason,
            }),
            None if cp.head_hash != log_hash => Some(Damage::CheckpointMismatch {
                seq: cp.seq,
                checkpoint_id: cp.id,
            }),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests;
