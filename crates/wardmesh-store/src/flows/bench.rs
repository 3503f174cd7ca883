//! The ingest micro-benchmark behind issue 5's target (≥ 50,000 flow records/s into
//! SQLite): synthetic but realistic records, shipped in agent-sized batches. The bench
//! harness (`bench/`) calls [`ingest_benchmark`]; `cargo test -p wardmesh-store --release
//! flow_ingest_rate -- --ignored --nocapture` prints it for both backends.

use std::time::{Duration, Instant};

use time::OffsetDateTime;
use wardmesh_proto::flow::{
    FlowDirection, FlowKind, FlowRecord, MAX_BATCH_RECORDS, Verdict, new_record_id,
    subject_pseudonym,
};

use crate::{Store, StoreError};

/// What one run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IngestRate {
    pub records: u64,
    pub batch_size: usize,
    pub elapsed: Duration,
    pub per_second: f64,
}

/// Ingests `total` fresh records in batches of `batch_size` (capped at
/// [`MAX_BATCH_RECORDS`]), one after another as one control-plane replica would, and
/// reports the rate. Record ids come from `seed`, so runs on one store must differ in it.
pub async fn ingest_benchmark(
    store: &Store,
    total: usize,
    batch_size: usize,
    seed: u64,
) -> Result<IngestRate, StoreError> {
    let batch_size = batch_size.clamp(1, MAX_BATCH_RECORDS);
    let now = OffsetDateTime::now_utc();
    let records: Vec<FlowRecord> = (0..total as u64).map(|n| synthetic(seed, n, now)).collect();
    let start = Instant::now();
    let mut stored = 0;
    for batch in records.chunks(batch_size) {
        stored += store.ingest_flows(batch).await?.inserted;
    }
    let elapsed = start.elapsed();
    Ok(IngestRate {
        records: stored,
        batch_size,
        elapsed,
        per_second: stored as f64 / elapsed.as_secs_f64().max(1e-9),
    })
}

fn synthetic(seed: u64, n: u64, now: OffsetDateTime) -> FlowRecord {
    let phi = n.is_multiple_of(4);
    FlowRecord {
        id: new_record_id(
            (u128::from(seed) << 64) | u128::from(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        ),
        at: now,
        // Every HTTP record carries one (the caller's agent sets it when absent), so the
        // bench pays for the request-id index on every row.
        request_id: Some(format!("{seed:x}-{n:016x}")),
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
            .then(|| subject_pseudonym(b"bench", &format!("patient-{}", n % 5000))),
    }
}
