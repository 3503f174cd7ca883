//! The spool's collectors (`wardmesh_spool_*`), on the registry the caller passes in.
//! No labels: one spool per agent.

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

#[derive(Debug, Clone)]
pub struct SpoolMetrics {
    depth_bytes: IntGauge,
    depth_records: IntGauge,
    full: IntGauge,
    fsync: Histogram,
    corrupt: IntCounter,
    refused_full: IntCounter,
    dropped: IntCounter,
}

impl SpoolMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            depth_bytes: IntGauge::new(
                "wardmesh_spool_depth_bytes",
                "Bytes of flow records spooled and not yet acknowledged by the control plane.",
            )?,
            depth_records: IntGauge::new(
                "wardmesh_spool_depth_records",
                "Flow records spooled and not yet acknowledged by the control plane.",
            )?,
            full: IntGauge::new(
                "wardmesh_spool_full",
                "1 while the spool has no room: fail-closed routes are refused (alert on this).",
            )?,
            fsync: Histogram::with_opts(
                HistogramOpts::new(
                    "wardmesh_spool_commit_seconds",
                    "Time to write and fsync one group commit of flow records.",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
                ]),
            )?,
            corrupt: IntCounter::new(
                "wardmesh_spool_corrupt_records_total",
                "Damaged flow records skipped in the spool (CRC or length mismatch).",
            )?,
            refused_full: IntCounter::new(
                "wardmesh_spool_full_refusals_total",
                "Durable appends refused because the spool was full.",
            )?,
            dropped: IntCounter::new(
                "wardmesh_spool_dropped_records_total",
                "Fail-open flow records dropped because the spool or its queue was full.",
            )?,
        };
        registry.register(Box::new(m.depth_bytes.clone()))?;
        registry.register(Box::new(m.depth_records.clone()))?;
        registry.register(Box::new(m.full.clone()))?;
        registry.register(Box::new(m.fsync.clone()))?;
        registry.register(Box::new(m.corrupt.clone()))?;
        registry.register(Box::new(m.refused_full.clone()))?;
        registry.register(Box::new(m.dropped.clone()))?;
        Ok(m)
    }

    pub(crate) fn set_depth(&self, bytes: u64, records: u64, full: bool) {
        self.depth_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.depth_records
            .set(i64::try_from(records).unwrap_or(i64::MAX));
        self.full.set(i64::from(full));
    }

    pub(crate) fn fsync(&self, elapsed: Duration) {
        self.fsync.observe(elapsed.as_secs_f64());
    }

    pub(crate) fn corrupt(&self, n: u64) {
        self.corrupt.inc_by(n);
    }

    pub(crate) fn refused_full(&self) {
        self.refused_full.inc();
    }

    pub(crate) fn dropped(&self) {
        self.dropped.inc();
    }
}
