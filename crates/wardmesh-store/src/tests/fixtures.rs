//! Records for the checks: whole-second timestamps (they survive the store's microsecond
//! precision unchanged) and fixed SPIFFE IDs.

use serde_json::json;
use time::OffsetDateTime;

use crate::{AgentStatus, Event, Issuance, JoinToken, OperatorToken, QuarantineEntry};

/// A whole-second instant: survives the store's microsecond precision unchanged.
pub(super) fn at(unix_seconds: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix_seconds).unwrap()
}

pub(super) const T0: i64 = 1_750_000_000;

pub(super) fn join_token(hash: &str, expires_at: OffsetDateTime) -> JoinToken {
    JoinToken {
        token_hash: hash.to_owned(),
        spiffe_id: format!("spiffe://wardmesh.local/ns/vm/sa/{hash}"),
        created_at: at(T0),
        expires_at,
        created_by: "operator:alice".to_owned(),
    }
}

pub(super) fn quarantine_entry(id: &str, reason: &str) -> QuarantineEntry {
    QuarantineEntry {
        spiffe_id: id.to_owned(),
        reason: reason.to_owned(),
        created_at: at(T0),
        created_by: "operator:alice".to_owned(),
    }
}

pub(super) fn issuance(serial: &str, id: &str, issued_at: i64) -> Issuance {
    Issuance {
        serial_hex: serial.to_owned(),
        spiffe_id: id.to_owned(),
        not_before: at(issued_at - 60),
        not_after: at(issued_at + 3600),
        authority_id: "ab12".to_owned(),
        attestation: "k8s_sa_token".to_owned(),
        issued_at: at(issued_at),
    }
}

pub(super) fn agent(instance: &str, id: &str, last_seen: i64, revision: i64) -> AgentStatus {
    AgentStatus {
        spiffe_id: id.to_owned(),
        instance_id: instance.to_owned(),
        last_seen: at(last_seen),
        cert_not_after: at(last_seen + 3600),
        cert_authority_id: "ab12".to_owned(),
        bundle_revision: revision,
    }
}

pub(super) fn event(n: i64) -> Event {
    Event {
        id: 999, // ignored by the store
        at: at(T0 + n),
        kind: "identity.issued".to_owned(),
        actor: "control-plane".to_owned(),
        subject: format!("spiffe://wardmesh.local/ns/a/sa/s{n}"),
        detail: json!({ "n": n, "serial": format!("{n:04x}"), "nested": { "ok": true } }),
    }
}

pub(super) fn operator_token(hash: &str, role: &str) -> OperatorToken {
    OperatorToken {
        token_hash: hash.to_owned(),
        name: format!("{role}-token"),
        role: role.to_owned(),
        created_at: at(T0),
    }
}

pub(super) const ALICE: &str = "spiffe://wardmesh.local/ns/clinic/sa/alice";
pub(super) const BOB: &str = "spiffe://wardmesh.local/ns/clinic/sa/bob";
