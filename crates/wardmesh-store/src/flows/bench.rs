//! The ingest micro-benchmark behind issue 5's target (≥ 50,000 flow records/s into
//! SQLite): synthetic but realistic records, shipped in agent-sized batches, with the audit
//! entries the control plane writes for them. `cargo test -p wardmesh-store --release
//! flow_ingest_rate -- --ignored --nocapture` prints it for both backends; the bench
//! harness (`wardmesh-bench ingest`) measures the control plane's own ingest path.
//!
//! Realistic means random keys where the agent's are random: record ids and request ids
//! are 128 random bits, and half the records (PHI routes) carry a patient pseudonym, each
//! with a `phi.access` audit entry. Sequential keys would make every index append-only
//! and the numbers flattering.

use std::time::{Duration, Instant};

use time::OffsetDateTime;
use wardmesh_proto::flow::{
    FlowDirection, FlowKind, FlowRecord, MAX_BATCH_RECORDS, Verdict, new_record_id,
    subject_pseudonym,
};

use crate::{Event, FlowAudit, Store, StoreError};

/// What one run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IngestRate {
    pub records: u64,
    pub batch_size: usize,
    pub elapsed: Duration,
    pub per_second: f64,
}

/// Ingests `total` fresh records, with their audit entries, in batches of `batch_size`
/// (capped at [`MAX_BATCH_RECORDS`]), one after another as one control-plane replica
/// would, and reports the rate. Record ids come from `seed`, so runs on one store must differ in it.
pub async fn ingest_benchmark(
    store: &Store,
    total: usize,
    batch_size: usize,
    seed: u64,
) -> Result<IngestRate, StoreError> {
    let batch_size = batch_size.clamp(1, MAX_BATCH_RECORDS);
    let now = OffsetDateTime::now_utc();
    let records: Vec<FlowRecord> = (0..total as u64).map(|n| synthetic(seed, n, now)).collect();
    let audits: Vec<Vec<FlowAudit>> = records.chunks(batch_size).map(audit_for).collect();
    let start = Instant::now();
    let mut stored = 0;
    for (batch, audit) in records.chunks(batch_size).zip(&audits) {
        stored += store.ingest_flows_audited(batch, audit).await?.inserted;
    }
    let elapsed = start.elapsed();
    Ok(IngestRate {
        records: stored,
        batch_size,
        elapsed,
        per_second: stored as f64 / elapsed.as_secs_f64().max(1e-9),
    })
}

/// A PHI access entry per record with a pseudonym, shaped like the control plane's
/// (`control-plane/src/flows.rs`, `audit_for`): restated here because the store cannot
/// depend on the control plane (`wardmesh-bench ingest` uses the real one).
fn audit_for(records: &[FlowRecord]) -> Vec<FlowAudit> {
    records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let subject = r.subject_pseudonym.clone()?;
            Some(FlowAudit {
                record: i,
                event: Event {
                    id: 0,
                    at: r.at,
                    kind: "phi.access".to_owned(),
                    actor: format!("user:{}", r.user.as_deref().unwrap_or("-")),
                    subject,
                    detail: serde_json::json!({
                        "flow_id": r.id,
                        "request_id": r.request_id,
                        "source": r.source,
                        "destination": r.destination,
                        "method": r.method,
                        "route": r.route,
                        "status": r.status,
                        "verdict": r.verdict.as_str(),
                        "policy_revision": r.policy_revision,
                        "rule": r.rule,
                        "user": r.user,
                        "purpose": r.purpose,
                        "break_glass": r.break_glass,
                        "subject_pseudonym": r.subject_pseudonym,
                        "reported_by": r.destination,
                    }),
                },
            })
        })
        .collect()
}

/// 64 well-mixed bits from `(seed, n, salt)` (splitmix64's finaliser).
fn mix(seed: u64, n: u64, salt: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(n)
        .wrapping_mul(0xbf58_476d_1ce4_e5b9)
        ^ salt;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn random128(seed: u64, n: u64, salt: u64) -> u128 {
    (u128::from(mix(seed, n, salt)) << 64) | u128::from(mix(seed, n, salt ^ 0x5555))
}

fn synthetic(seed: u64, n: u64, now: OffsetDateTime) -> FlowRecord {
    let phi = n.is_multiple_of(2);
    FlowRecord {
        id: new_record_id(random128(seed, n, 1)),
        at: now,
        // Every HTTP record carries one, random when the agent makes it up.
        request_id: Some(format!("{:032x}", random128(seed, n, 2))),
        kind: FlowKind::Http,
        direction: FlowDirection::Inbound,
        source: Some(format!(
            "spiffe://wardmesh.local/ns/clinic/sa/svc-{}",
            n % 20
        )),
        destination: "spiffe://wardmesh.local/ns/records/sa/notes".to_owned(),
        method: Some("GET".to_owned()),
        route: Some("/patients/{patient}/notes".to_owned()),
        status: Some(200),
        verdict: if n.is_multiple_of(50) {
            Verdict::Denied
        } else {
            Verdict::Allowed
        },
        policy_revision: Some("rev-42".to_owned()),
        rule: Some("treating_clinician".to_owned()),
        latency_us: 800 + n % 1000,
        bytes_in: 350,
        bytes_out: 4_096,
        user: Some(format!("dr-{}", n % 100)),
        purpose: Some("TREAT".to_owned()),
        break_glass: false,
        subject_pseudonym: phi
            .then(|| subject_pseudonym(b"bench", &format!("patient-{}", mix(seed, n, 3) % 50_000))),
    }
}
