//! Flow telemetry on the request path (DESIGN.md §5): the `[telemetry]` settings, the
//! [`Telemetry`] handle the listeners write flow records through, and the shipper that
//! carries them from the spool to the control plane.
//!
//! Durability follows the route: a PHI route (`phi = true`, `--audit-mode fail-closed`)
//! is *fail-closed* — its record is on disk (fsynced) before the response leaves the
//! agent, and while the spool is full such requests are refused with 503, because there
//! is no access without audit. Other routes are *fail-open*: the record is queued for
//! the spool's next group commit (well under a millisecond later) and the response does
//! not wait; a full spool drops the record and counts it. `durable = "all"` makes every
//! route wait for the disk. Records themselves are built by pure functions in [`record`].

pub mod record;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wardmesh_proto::flow::FlowRecord;

use crate::identity::WorkloadState;
use crate::spool::shipper::{self, HttpSink, ShipperConfig};
use crate::spool::{DEFAULT_MAX_BYTES, DEFAULT_SEGMENT_BYTES, Spool, SpoolConfig, SpoolError};

/// Which records the response waits for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durable {
    /// PHI (fail-closed) routes wait for the fsync; others are queued.
    #[default]
    Phi,
    /// Every record is on disk before its response leaves.
    All,
}

/// `[telemetry]` in the agent's config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The spool directory (segment files and the ack position). In Kubernetes an
    /// `emptyDir`, so it survives container restarts.
    pub spool_dir: PathBuf,
    /// Bytes on disk beyond which fail-closed routes are refused (503).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    #[serde(default)]
    pub durable: Durable,
}

fn default_max_bytes() -> u64 {
    DEFAULT_MAX_BYTES
}

fn default_segment_bytes() -> u64 {
    DEFAULT_SEGMENT_BYTES
}

impl TelemetryConfig {
    pub fn new(spool_dir: impl Into<PathBuf>) -> Self {
        Self {
            spool_dir: spool_dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            durable: Durable::Phi,
        }
    }

    fn spool(&self) -> SpoolConfig {
        SpoolConfig {
            max_bytes: self.max_bytes,
            segment_bytes: self.segment_bytes,
            ..SpoolConfig::new(&self.spool_dir)
        }
    }

    pub fn validate(&self) -> Result<(), SpoolError> {
        self.spool().validate()
    }
}

/// What the listeners hold: cheap to clone.
#[derive(Debug, Clone)]
pub struct Telemetry {
    spool: Spool,
    durable: Durable,
}

impl Telemetry {
    /// A fail-closed request must be refused before any work upstream: the spool has no
    /// room for its record.
    pub fn refuses(&self, phi: bool) -> bool {
        phi && self.spool.is_full()
    }

    /// Whether the response for this route waits for the record's fsync.
    pub fn waits(&self, phi: bool) -> bool {
        phi || self.durable == Durable::All
    }

    /// Writes `record`: durably before returning for waiting routes, queued otherwise.
    /// An error on a waiting route means the request must not be answered with data.
    pub async fn record(&self, record: &FlowRecord, phi: bool) -> Result<(), SpoolError> {
        if self.waits(phi) {
            self.spool.append(record).await
        } else {
            self.spool.try_enqueue(record)
        }
    }
}

/// The running shipper.
#[derive(Debug)]
pub struct Started {
    pub telemetry: Telemetry,
    pub shipper: JoinHandle<()>,
}

/// Opens (and recovers) the spool, then starts the shipper towards `control_plane`.
pub async fn start(
    config: &TelemetryConfig,
    registry: &Registry,
    control_plane: &reqwest::Url,
    identity: watch::Receiver<Option<Arc<WorkloadState>>>,
    instance_id: &str,
    shutdown: CancellationToken,
) -> Result<Started, SpoolError> {
    let (spool, reader, report) = Spool::open(config.spool(), registry).await?;
    log_recovery(config, &report);
    let sink = HttpSink::new(control_plane, identity, Duration::from_secs(30));
    let shipper = tokio::spawn(shipper::run(
        reader,
        sink,
        ShipperConfig::new(instance_id),
        shutdown,
    ));
    Ok(Started {
        telemetry: Telemetry {
            spool,
            durable: config.durable,
        },
        shipper,
    })
}

fn log_recovery(config: &TelemetryConfig, report: &crate::spool::OpenReport) {
    if report.corrupt_records > 0 || report.truncated_bytes > 0 {
        warn!(
            spool = %config.spool_dir.display(),
            corrupt_records = report.corrupt_records,
            truncated_bytes = report.truncated_bytes,
            "flow spool recovered with damage: damaged records were skipped (see wardmesh_spool_corrupt_records_total)"
        );
    }
    info!(
        spool = %config.spool_dir.display(),
        pending_records = report.pending_records,
        durable = ?config.durable,
        "flow telemetry on"
    );
}
