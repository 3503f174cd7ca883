//! Flow telemetry (DESIGN.md §5): the record an agent writes for every proxied request
//! (or opaque TCP connection), the batch it ships to `POST /v1/flows`, the control
//! plane's answer, and the keyed pseudonym that stands in for a patient id.
//!
//! A record never carries a raw path, query string, body or patient id: the route is the
//! declared *template* (or [`UNMATCHED_ROUTE`]) and the patient is
//! [`subject_pseudonym`]`(mesh key, id)`. [`FlowRecord::validate`] enforces the shape
//! on both ends (the agent before spooling, the control plane on ingest).

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// At most this many records in one [`IngestBatch`].
pub const MAX_BATCH_RECORDS: usize = 500;
/// At most this many bytes of JSON per record (as serialized by serde_json).
pub const MAX_RECORD_BYTES: usize = 4096;
/// The body limit of `POST /v1/flows`: a full batch of maximal records, plus framing.
pub const MAX_BATCH_BYTES: usize = MAX_BATCH_RECORDS * MAX_RECORD_BYTES + 4096;
/// The route of a request whose path matched no declared route template.
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// Length of a record id: 128 random bits as lowercase hex.
pub const RECORD_ID_LEN: usize = 32;
/// Length of a [`subject_pseudonym`]: HMAC-SHA256 as lowercase hex.
pub const PSEUDONYM_LEN: usize = 64;
/// Bounds of the free-text fields (SPIFFE IDs, route templates, user subjects, …).
const MAX_ID_LEN: usize = 2048;
const MAX_FIELD_LEN: usize = 512;
const MAX_METHOD_LEN: usize = 32;
const MAX_REQUEST_ID_LEN: usize = 128;

/// What the authorizer decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allowed,
    Denied,
    /// The policy (in dry-run mode) would have denied; the request went through.
    DryRun,
    /// No decision could be made (policy error, upstream failure before a decision).
    Error,
}

impl Verdict {
    pub const ALL: [Self; 4] = [Self::Allowed, Self::Denied, Self::DryRun, Self::Error];

    /// The stored and serialized spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::DryRun => "dry_run",
            Self::Error => "error",
        }
    }

    /// Accepts the stored spelling and the CLI's `dry-run`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "allowed" => Some(Self::Allowed),
            "denied" => Some(Self::Denied),
            "dry_run" | "dry-run" => Some(Self::DryRun),
            "error" => Some(Self::Error),
            _ => None,
        }
    }
}

/// Whether the record describes one HTTP request or one opaque TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowKind {
    Http,
    Tcp,
}

impl FlowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "http" => Some(Self::Http),
            "tcp" => Some(Self::Tcp),
            _ => None,
        }
    }
}

/// Which of the reporting agent's listeners saw the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowDirection {
    Inbound,
    Outbound,
}

impl FlowDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "inbound" => Some(Self::Inbound),
            "outbound" => Some(Self::Outbound),
            _ => None,
        }
    }
}

/// One flow: an HTTP request or an opaque TCP connection, as one agent saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowRecord {
    /// 128 random bits, lowercase hex ([`new_record_id`]), assigned by the agent: ingest
    /// is idempotent by it, so a batch shipped twice is stored once.
    pub id: String,
    /// When the request arrived (TCP: when the connection was accepted).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The request's `x-request-id` (HTTP; set by the caller's agent when absent), so an
    /// operator can follow one request through both agents' records and the app's logs.
    #[serde(default)]
    pub request_id: Option<String>,
    pub kind: FlowKind,
    pub direction: FlowDirection,
    /// The caller's SPIFFE ID; `None` when it presented none (permissive port).
    pub source: Option<String>,
    /// The callee's SPIFFE ID.
    pub destination: String,
    /// HTTP only.
    #[serde(default)]
    pub method: Option<String>,
    /// HTTP only: the declared route template (`/patients/{patient}/notes`) or
    /// [`UNMATCHED_ROUTE`]; never a raw path.
    #[serde(default)]
    pub route: Option<String>,
    /// HTTP only: the response status sent to the caller.
    #[serde(default)]
    pub status: Option<u16>,
    pub verdict: Verdict,
    #[serde(default)]
    pub policy_revision: Option<String>,
    #[serde(default)]
    pub rule: Option<String>,
    /// Request to response headers (TCP: connection duration), microseconds.
    pub latency_us: u64,
    /// Bytes received from the caller.
    pub bytes_in: u64,
    /// Bytes sent to the caller.
    pub bytes_out: u64,
    /// The end user's `sub` from a validated JWT.
    #[serde(default)]
    pub user: Option<String>,
    /// Purpose of use (HL7 code: TREAT, ETREAT, …).
    #[serde(default)]
    pub purpose: Option<String>,
    #[serde(default)]
    pub break_glass: bool,
    /// [`subject_pseudonym`] of the patient, when the route declares a subject parameter.
    #[serde(default)]
    pub subject_pseudonym: Option<String>,
}

/// `POST /v1/flows`: one batch from one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestBatch {
    pub agent_instance: String,
    pub records: Vec<FlowRecord>,
}

/// The answer to `POST /v1/flows`: `accepted + duplicates == records.len()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestAck {
    /// Records stored by this call.
    pub accepted: u64,
    /// Records already stored (a batch resent after a lost answer or a crash).
    pub duplicates: u64,
}

/// `GET /v1/flows`: one page, ascending by `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowPage {
    pub flows: Vec<StoredFlow>,
    /// Pass as `after` for the next page (or to follow new flows); equal to the request's
    /// `after` when the page is empty.
    pub next_after: i64,
}

/// A stored record with its ingest sequence number (the paging cursor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredFlow {
    pub seq: i64,
    #[serde(flatten)]
    pub record: FlowRecord,
}

/// Why a record is refused. `field` names what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRecord {
    pub field: &'static str,
    pub reason: String,
}

impl fmt::Display for InvalidRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for InvalidRecord {}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidRecord {
    InvalidRecord {
        field,
        reason: reason.into(),
    }
}

impl FlowRecord {
    /// Checks the shape both ends rely on: id format, bounded printable fields, a route
    /// template (no query string), a pseudonym (not a raw id), the size limit.
    pub fn validate(&self) -> Result<(), InvalidRecord> {
        if !is_lower_hex(&self.id, RECORD_ID_LEN) {
            return Err(invalid(
                "id",
                format!("must be {RECORD_ID_LEN} lowercase hex digits"),
            ));
        }
        if let Some(source) = &self.source {
            check_id("source", source)?;
        }
        check_id("destination", &self.destination)?;
        check_text("request_id", self.request_id.as_deref(), MAX_REQUEST_ID_LEN)?;
        check_text("method", self.method.as_deref(), MAX_METHOD_LEN)?;
        if let Some(m) = &self.method
            && !m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-')
        {
            return Err(invalid("method", "must be an upper-case HTTP method"));
        }
        check_text("route", self.route.as_deref(), MAX_FIELD_LEN)?;
        if let Some(route) = &self.route
            && route != UNMATCHED_ROUTE
            && (!route.starts_with('/') || route.contains(['?', '#']))
        {
            return Err(invalid(
                "route",
                format!("must be a route template starting with '/' or {UNMATCHED_ROUTE:?}"),
            ));
        }
        if self.kind == FlowKind::Tcp
            && (self.method.is_some()
                || self.route.is_some()
                || self.status.is_some()
                || self.request_id.is_some())
        {
            return Err(invalid(
                "kind",
                "a tcp record has no method, route, status or request id",
            ));
        }
        if let Some(status) = self.status
            && !(100..=599).contains(&status)
        {
            return Err(invalid("status", "must be an HTTP status, 100 to 599"));
        }
        check_text(
            "policy_revision",
            self.policy_revision.as_deref(),
            MAX_FIELD_LEN,
        )?;
        check_text("rule", self.rule.as_deref(), MAX_FIELD_LEN)?;
        check_text("user", self.user.as_deref(), MAX_FIELD_LEN)?;
        check_text("purpose", self.purpose.as_deref(), MAX_FIELD_LEN)?;
        if let Some(p) = &self.subject_pseudonym
            && !is_lower_hex(p, PSEUDONYM_LEN)
        {
            return Err(invalid(
                "subject_pseudonym",
                format!("must be {PSEUDONYM_LEN} lowercase hex digits (HMAC-SHA256), never the id"),
            ));
        }
        for (field, v) in [
            ("latency_us", self.latency_us),
            ("bytes_in", self.bytes_in),
            ("bytes_out", self.bytes_out),
        ] {
            // Both backends store a signed 64-bit integer.
            if v > i64::MAX as u64 {
                return Err(invalid(field, "is out of range"));
            }
        }
        let size = serde_json::to_vec(self).map_or(usize::MAX, |v| v.len());
        if size > MAX_RECORD_BYTES {
            return Err(invalid(
                "record",
                format!("is {size} bytes of JSON; at most {MAX_RECORD_BYTES}"),
            ));
        }
        Ok(())
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_id(field: &'static str, id: &str) -> Result<(), InvalidRecord> {
    if !id.starts_with("spiffe://") {
        return Err(invalid(field, "must be a SPIFFE ID (spiffe://…)"));
    }
    check_text(field, Some(id), MAX_ID_LEN)
}

fn check_text(field: &'static str, v: Option<&str>, max: usize) -> Result<(), InvalidRecord> {
    match v {
        Some(s) if s.is_empty() || s.len() > max => Err(invalid(
            field,
            format!("must be 1 to {max} bytes when present"),
        )),
        Some(s) if s.chars().any(char::is_control) => {
            Err(invalid(field, "must not contain control characters"))
        }
        _ => Ok(()),
    }
}

/// A fresh record id: 128 bits from the caller's random source, lowercase hex.
pub fn new_record_id(random: u128) -> String {
    format!("{random:032x}")
}

/// 128 id bits ordered by time, as UUIDv7 lays them out: the millisecond Unix time in
/// the top 48 bits, 80 random bits below. Unique like a random id (80 bits per
/// millisecond), but consecutive records land next to each other in the store's
/// unique index instead of on random pages.
pub fn time_ordered_bits(at: OffsetDateTime, random: u128) -> u128 {
    let ms = u128::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    ((ms & 0xFFFF_FFFF_FFFF) << 80) | (random & ((1u128 << 80) - 1))
}

/// The keyed pseudonym of a patient (or other data subject) id: lowercase hex
/// HMAC-SHA256(`key`, `subject`) over the id's exact bytes (callers trim). Agents put it
/// in flow records; the control plane computes it again to answer "who accessed this
/// patient" without ever storing the id. Without the mesh key it cannot be reversed by
/// hashing candidate ids.
pub fn subject_pseudonym(key: &[u8], subject: &str) -> String {
    hex_lower(&hmac_sha256(key, subject.as_bytes()))
}

/// HMAC (RFC 2104) over SHA-256.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

fn hex_lower(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests;
