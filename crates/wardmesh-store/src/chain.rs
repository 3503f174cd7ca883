//! The audit log's hash chain: the canonical form of an entry, its hash, and a walker that
//! re-checks a run of entries and names the first one that does not fit.
//!
//! # Canonical form (version 1)
//!
//! An entry is hashed over the UTF-8 JSON text of the object
//!
//! ```text
//! {"actor":A,"at_us":T,"detail":D,"kind":K,"seq":S,"subject":J}
//! ```
//!
//! where `S` is the entry's sequence number (the event id), `T` its time in unix
//! microseconds (UTC, truncated towards the past), `K`/`A`/`J` its kind, actor and subject,
//! and `D` its JSON detail. The text has no insignificant whitespace; the keys of every
//! object, at every depth (including inside `D`), are sorted by their UTF-8 bytes; strings
//! are written as `serde_json` writes them (UTF-8, escaping only `"`, `\` and U+0000–U+001F,
//! as `\b \f \n \r \t` or `\u00xx` with lowercase hex); integers are plain decimal; other
//! numbers are the shortest text that reads back as the same `f64` (e.g. `2.5`, `1e20`).
//!
//! `hash = lowercase_hex(SHA-256(prev || canonical))`, where `prev` is the 32 raw bytes of
//! the previous entry's hash and, for the first entry of the log, 32 zero bytes
//! ([`GENESIS_HASH`]). After pruning, the chain starts at the anchor checkpoint instead:
//! the first kept entry's `prev_hash` is the anchor's `head_hash`.
//!
//! The store keeps the detail column as exactly the canonical text it hashed, so the hash
//! is recomputable byte for byte from what is stored (a JSONB column would renormalise
//! numbers and break that).

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::types::{AuditEntry, ChainHead};

/// The `prev_hash` of the first entry of a log that was never pruned: 32 zero bytes, hex.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `value` with the keys of every object sorted by their UTF-8 bytes. `serde_json`'s map
/// is sorted already unless some crate in the build enables `preserve_order`; sorting here
/// keeps the hash independent of that feature.
pub fn canonical_value(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            let mut sorted = Map::new();
            for (k, v) in entries {
                sorted.insert(k.clone(), canonical_value(v));
            }
            Value::Object(sorted)
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical_value).collect()),
        other => other.clone(),
    }
}

/// The canonical JSON text of a detail value (what the store keeps in its column).
pub fn canonical_detail(detail: &Value) -> String {
    // Without `preserve_order` every map is sorted already; skip the deep copy then (it
    // was most of an audit append's own CPU time in the ingest profile).
    if is_sorted(detail) {
        detail.to_string()
    } else {
        canonical_value(detail).to_string()
    }
}

/// Whether the keys of every object in `value`, at every depth, are in byte order.
fn is_sorted(value: &Value) -> bool {
    match value {
        Value::Object(map) => {
            map.keys()
                .zip(map.keys().skip(1))
                .all(|(a, b)| a.as_bytes() < b.as_bytes())
                && map.values().all(is_sorted)
        }
        Value::Array(items) => items.iter().all(is_sorted),
        _ => true,
    }
}

/// The canonical text an entry's hash covers (see the module documentation).
pub fn canonical_entry(
    seq: i64,
    at_us: i64,
    kind: &str,
    actor: &str,
    subject: &str,
    detail: &Value,
) -> String {
    canonical_entry_text(seq, at_us, kind, actor, subject, &canonical_detail(detail))
}

/// [`canonical_entry`] for a detail already in its canonical text (as the store keeps
/// it): appends make that text once for both the hash and the column.
pub fn canonical_entry_text(
    seq: i64,
    at_us: i64,
    kind: &str,
    actor: &str,
    subject: &str,
    detail: &str,
) -> String {
    // Keys in sorted order, no whitespace: the text `serde_json` writes for the object.
    format!(
        "{{\"actor\":{},\"at_us\":{at_us},\"detail\":{detail},\"kind\":{},\"seq\":{seq},\"subject\":{}}}",
        json_string(actor),
        json_string(kind),
        json_string(subject)
    )
}

/// `s` as a JSON string literal, escaped as `serde_json` escapes it.
fn json_string(s: &str) -> String {
    Value::from(s).to_string()
}

/// `hex(SHA-256(prev || canonical))`, or `None` when `prev_hash` is not 64 hex digits
/// (only a damaged row has such a value).
pub fn chain_hash(prev_hash: &str, canonical: &str) -> Option<String> {
    let prev = decode_hash(prev_hash)?;
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical.as_bytes());
    Some(hex::encode(h.finalize()))
}

/// The hash an entry should carry given its own `prev_hash`, or `None` if that is malformed.
pub fn entry_hash(entry: &AuditEntry) -> Option<String> {
    let canonical = canonical_entry(
        entry.seq,
        at_us(entry.at),
        &entry.kind,
        &entry.actor,
        &entry.subject,
        &entry.detail,
    );
    chain_hash(&entry.prev_hash, &canonical)
}

/// Unix microseconds of `at`, truncated towards the past (what the store keeps).
pub fn at_us(at: OffsetDateTime) -> i64 {
    crate::schema::to_micros(at)
}

fn decode_hash(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    // Upper-case hex would decode too, but hashes are written lower-case; a different
    // spelling of the same bytes is a different row.
    (text.bytes().all(|b| !b.is_ascii_uppercase())).then_some(out)
}

/// Where and how a run of entries stops being one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChainBreak {
    /// Sequence numbers skip: the entries between were deleted.
    Gap { after_seq: i64, next_seq: i64 },
    /// A sequence number repeats or goes backwards.
    OutOfOrder { after_seq: i64, seq: i64 },
    /// The entry's `prev_hash` is not the hash of the entry before it: an entry was
    /// inserted, entries were reordered, or the previous entry was rewritten with a new hash.
    PrevHashMismatch {
        seq: i64,
        expected: String,
        found: String,
    },
    /// The entry's content does not hash to its stored hash: it was edited.
    HashMismatch {
        seq: i64,
        stored: String,
        computed: String,
    },
}

impl ChainBreak {
    /// The sequence number of the first entry that does not fit.
    pub fn seq(&self) -> i64 {
        match self {
            Self::Gap { next_seq, .. } => *next_seq,
            Self::OutOfOrder { seq, .. }
            | Self::PrevHashMismatch { seq, .. }
            | Self::HashMismatch { seq, .. } => *seq,
        }
    }
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gap {
                after_seq,
                next_seq,
            } if *next_seq == after_seq + 2 => write!(
                f,
                "entries deleted: after seq {after_seq} the log continues at seq {next_seq} \
                 (seq {} is missing)",
                after_seq + 1
            ),
            Self::Gap {
                after_seq,
                next_seq,
            } => write!(
                f,
                "entries deleted: after seq {after_seq} the log continues at seq {next_seq} \
                 (seq {} to {} are missing)",
                after_seq + 1,
                next_seq - 1
            ),
            Self::OutOfOrder { after_seq, seq } => {
                write!(f, "entries reordered: seq {seq} follows seq {after_seq}")
            }
            Self::PrevHashMismatch { seq, .. } => write!(
                f,
                "chain broken at seq {seq}: its prev_hash is not the hash of the entry before \
                 it (an entry was inserted or reordered, or the previous one rewritten)"
            ),
            Self::HashMismatch { seq, .. } => {
                write!(f, "content edited: entry seq {seq} does not match its hash")
            }
        }
    }
}

/// Walks entries in ascending order from a starting point (the genesis, or an anchor
/// checkpoint after pruning) and reports the first break.
#[derive(Debug, Clone)]
pub struct ChainWalker {
    last: ChainHead,
    checked: u64,
}

impl ChainWalker {
    /// Starts after `start`: `None` for a log that begins at seq 1 with [`GENESIS_HASH`].
    pub fn new(start: Option<ChainHead>) -> Self {
        Self {
            last: start.unwrap_or_else(ChainHead::genesis),
            checked: 0,
        }
    }

    /// Checks that `entry` continues the chain, then makes it the new tail.
    pub fn push(&mut self, entry: &AuditEntry) -> Result<(), ChainBreak> {
        let after_seq = self.last.seq;
        if entry.seq <= after_seq {
            return Err(ChainBreak::OutOfOrder {
                after_seq,
                seq: entry.seq,
            });
        }
        if entry.seq != after_seq + 1 {
            return Err(ChainBreak::Gap {
                after_seq,
                next_seq: entry.seq,
            });
        }
        if entry.prev_hash != self.last.hash {
            return Err(ChainBreak::PrevHashMismatch {
                seq: entry.seq,
                expected: self.last.hash.clone(),
                found: entry.prev_hash.clone(),
            });
        }
        let computed = entry_hash(entry).unwrap_or_default();
        if computed != entry.hash {
            return Err(ChainBreak::HashMismatch {
                seq: entry.seq,
                stored: entry.hash.clone(),
                computed,
            });
        }
        self.last = ChainHead {
            seq: entry.seq,
            hash: entry.hash.clone(),
        };
        self.checked += 1;
        Ok(())
    }

    /// The last entry accepted (or the starting point).
    pub fn head(&self) -> &ChainHead {
        &self.last
    }

    /// How many entries were accepted.
    pub fn checked(&self) -> u64 {
        self.checked
    }
}

#[cfg(test)]
mod tests;
