//! Configuration objects: what the control plane distributes to agents besides
//! certificates — policy bundles and the active-policy pointer, consent records,
//! break-glass grants and their uses.
//!
//! The store keeps them generically, as `(kind, name) → JSON value [+ blob]`, and leaves
//! their meaning to the control plane. Every write bumps its kind's *generation* in the
//! same transaction, so "has anything of kind K changed since G?" is one read — the
//! primitive the control plane's watches and agents' syncs are built on, and one that
//! works the same across replicas sharing a PostgreSQL database. A write may carry an
//! audit event that commits with it: a policy push or a break-glass grant is never
//! applied without its audit entry, nor audited without being applied.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use crate::Event;

/// Largest JSON value accepted for one object.
pub const MAX_OBJECT_VALUE_BYTES: usize = 256 * 1024;
/// Largest blob accepted for one object (a policy bundle's tar.gz).
pub const MAX_OBJECT_BLOB_BYTES: usize = 16 * 1024 * 1024;

/// One stored object. `blob` is `None` in listings ([`crate::Store::list_objects`]) and
/// holds the payload (if any) when fetched one by one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub kind: String,
    pub name: String,
    /// JSON text, exactly as written.
    pub value: String,
    pub blob: Option<Vec<u8>>,
    /// The kind's generation this object was last written at.
    pub generation: i64,
    pub updated_at: OffsetDateTime,
    pub updated_by: String,
}

/// One change in an [`ObjectChange`] batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectWrite {
    /// Insert or replace `(kind, name)`.
    Put {
        kind: String,
        name: String,
        value: String,
        blob: Option<Vec<u8>>,
    },
    /// Insert `(kind, name)`; the whole change fails with [`crate::StoreError::Conflict`]
    /// if it exists (revisions, grant ids: never silently replaced).
    Create {
        kind: String,
        name: String,
        value: String,
        blob: Option<Vec<u8>>,
    },
    /// Remove `(kind, name)`; removing a missing object is not an error.
    Delete { kind: String, name: String },
}

impl ObjectWrite {
    pub fn kind(&self) -> &str {
        match self {
            ObjectWrite::Put { kind, .. }
            | ObjectWrite::Create { kind, .. }
            | ObjectWrite::Delete { kind, .. } => kind,
        }
    }

    pub(crate) fn check_size(&self) -> Result<(), crate::StoreError> {
        let (value, blob) = match self {
            ObjectWrite::Put { value, blob, .. } | ObjectWrite::Create { value, blob, .. } => {
                (value, blob)
            }
            ObjectWrite::Delete { .. } => return Ok(()),
        };
        if value.len() > MAX_OBJECT_VALUE_BYTES {
            return Err(crate::StoreError::Rejected(format!(
                "object value is {} bytes; the limit is {MAX_OBJECT_VALUE_BYTES}",
                value.len()
            )));
        }
        if blob
            .as_ref()
            .is_some_and(|b| b.len() > MAX_OBJECT_BLOB_BYTES)
        {
            return Err(crate::StoreError::Rejected(format!(
                "object payload is larger than the {MAX_OBJECT_BLOB_BYTES}-byte limit"
            )));
        }
        Ok(())
    }
}

/// Writes committed together, with an optional audit entry, all or nothing.
#[derive(Debug, Clone)]
pub struct ObjectChange {
    pub writes: Vec<ObjectWrite>,
    pub at: OffsetDateTime,
    pub by: String,
    /// Appended to the audit chain in the same transaction.
    pub audit: Option<Event>,
}

/// What a committed [`ObjectChange`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectChangeOutcome {
    /// The new generation of every kind the change touched.
    pub generations: BTreeMap<String, i64>,
    /// The audit entry's seq, if the change carried one.
    pub audit_seq: Option<i64>,
}

/// The kinds a change touches, each once, in a stable order (the order generations are
/// bumped in, so two concurrent changes lock counters in the same order).
pub(crate) fn touched_kinds(writes: &[ObjectWrite]) -> Vec<String> {
    let mut kinds: Vec<String> = writes.iter().map(|w| w.kind().to_owned()).collect();
    kinds.sort();
    kinds.dedup();
    kinds
}
