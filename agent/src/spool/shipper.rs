//! The shipper: reads batches from the spool, `POST`s them to the control plane's
//! `/v1/flows` over the agent's mTLS identity, and acknowledges them in the spool only once
//! the control plane has stored them. A failed send is retried with bounded exponential
//! backoff and never dropped; a batch the control plane refuses as malformed (a 4xx that
//! retrying cannot fix) is moved to `<spool>/rejected/` for an operator, then acked, so
//! one bad record cannot stall every later one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wardmesh_identity::tls::control_plane_client_config;
use wardmesh_proto::flow::{IngestAck, IngestBatch, MAX_BATCH_RECORDS};
use wardmesh_proto::{ApiError, paths};

use super::{SpoolBatch, SpoolError, SpoolReader};
use crate::identity::WorkloadState;

/// How the shipper paces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipperConfig {
    /// Sent as `agent_instance` in every batch.
    pub agent_instance: String,
    /// Records per `POST` (at most [`MAX_BATCH_RECORDS`]).
    pub batch_records: usize,
    /// First retry delay; doubles per failure up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long to wait for new records before looking again anyway.
    pub idle_poll: Duration,
    /// After shipping a batch that was not full, wait this long for more records
    /// before the next one: at low rates every request would otherwise cost a POST
    /// (and an ack write) of its own. Bounds how late a record reaches the store.
    pub linger: Duration,
}

impl ShipperConfig {
    pub fn new(agent_instance: impl Into<String>) -> Self {
        Self {
            agent_instance: agent_instance.into(),
            batch_records: MAX_BATCH_RECORDS,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            idle_poll: Duration::from_secs(1),
            linger: Duration::from_millis(200),
        }
    }
}

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShipError {
    /// Try again later: no identity yet, control plane unreachable, 5xx, 401/403/429.
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
    /// The control plane refused the batch itself (400, 413, 422): retrying cannot help.
    #[error("control plane refused the batch ({status} {code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
}

/// Where batches go: the control plane in production, a fake in tests.
pub trait FlowSink: Send + Sync + 'static {
    fn send(
        &self,
        batch: &IngestBatch,
    ) -> impl Future<Output = Result<IngestAck, ShipError>> + Send;
}

/// Ships until `shutdown`; returns after finishing (or abandoning) the batch in flight.
pub async fn run<S: FlowSink>(
    reader: SpoolReader,
    sink: S,
    config: ShipperConfig,
    shutdown: CancellationToken,
) {
    let max = config.batch_records.clamp(1, MAX_BATCH_RECORDS);
    let mut backoff = config.backoff_min;
    while !shutdown.is_cancelled() {
        let batch = match reader.next_batch(max).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the flow spool");
                pause(&shutdown, config.backoff_max).await;
                continue;
            }
        };
        if batch.records.is_empty() {
            // Past damaged records only: move the ack so their segment can go.
            if let Err(e) = reader.ack(&batch).await {
                tracing::error!(error = %e, "cannot acknowledge in the flow spool");
            }
            tokio::select! {
                () = reader.wait_for_records(config.idle_poll) => {}
                () = shutdown.cancelled() => return,
            }
            continue;
        }
        let body = IngestBatch {
            agent_instance: config.agent_instance.clone(),
            records: batch.records.clone(),
        };
        let sent = tokio::select! {
            r = sink.send(&body) => r,
            () = shutdown.cancelled() => return,
        };
        match sent {
            Ok(ack) => {
                tracing::debug!(
                    accepted = ack.accepted,
                    duplicates = ack.duplicates,
                    "shipped flow records"
                );
                backoff = config.backoff_min;
                ack_or_log(&reader, &batch).await;
                if batch.records.len() < max {
                    pause(&shutdown, config.linger).await;
                }
            }
            Err(ShipError::Refused {
                status,
                code,
                message,
            }) => {
                tracing::error!(status, %code, %message, records = batch.records.len(), "the control plane refused a flow batch; keeping it under rejected/");
                match reader
                    .set_aside(&batch, &format!("{status} {code}: {message}"))
                    .await
                {
                    Ok(path) => {
                        tracing::warn!(path = %path.display(), "refused flow batch set aside");
                        ack_or_log(&reader, &batch).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot set the refused batch aside; retrying it");
                        pause(&shutdown, backoff).await;
                        backoff = (backoff * 2).min(config.backoff_max);
                    }
                }
            }
            Err(e @ ShipError::Unavailable(_)) => {
                tracing::warn!(error = %e, retry_in = ?backoff, pending = reader.pending_records(), "flow records not shipped");
                pause(&shutdown, backoff).await;
                backoff = (backoff * 2).min(config.backoff_max);
            }
        }
    }
}

async fn ack_or_log(reader: &SpoolReader, batch: &SpoolBatch) {
    if let Err(e) = reader.ack(batch).await {
        // The batch will be sent again; ingest drops the duplicates.
        tracing::error!(error = %e, "cannot acknowledge shipped flow records");
    }
}

async fn pause(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = shutdown.cancelled() => {}
    }
}

/// The production sink: `POST /v1/flows` with the agent's current SVID as client
/// certificate (the client is rebuilt when the SVID or the trust bundle changes, like the
/// identity client's).
pub struct HttpSink {
    base: String,
    identity: watch::Receiver<Option<Arc<WorkloadState>>>,
    timeout: Duration,
    cached: Mutex<Option<(String, u64, reqwest::Client)>>,
}

impl std::fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSink")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl HttpSink {
    pub fn new(
        base: &reqwest::Url,
        identity: watch::Receiver<Option<Arc<WorkloadState>>>,
        timeout: Duration,
    ) -> Self {
        Self {
            base: base.as_str().trim_end_matches('/').to_owned(),
            identity,
            timeout,
            cached: Mutex::new(None),
        }
    }

    fn client(&self) -> Result<reqwest::Client, ShipError> {
        let state = self
            .identity
            .borrow()
            .clone()
            .ok_or_else(|| ShipError::Unavailable("no workload certificate yet".into()))?;
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((serial, rev, client)) = cached.as_ref()
            && serial == state.serial_hex()
            && *rev == state.bundle.revision
        {
            return Ok(client.clone());
        }
        let tls = control_plane_client_config(&state.bundle, Some(&state.svid))
            .map_err(|e| ShipError::Unavailable(format!("tls client: {e}")))?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ShipError::Unavailable(format!("http client: {e}")))?;
        *cached = Some((
            state.serial_hex().to_owned(),
            state.bundle.revision,
            client.clone(),
        ));
        Ok(client)
    }
}

impl FlowSink for HttpSink {
    async fn send(&self, batch: &IngestBatch) -> Result<IngestAck, ShipError> {
        let client = self.client()?;
        let resp = client
            .post(format!("{}{}", self.base, paths::FLOWS))
            .timeout(self.timeout)
            .json(batch)
            .send()
            .await
            .map_err(|e| ShipError::Unavailable(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ShipError::Unavailable(e.to_string()))?;
        classify(status, &bytes)
    }
}

/// Decides what an answer means for the batch.
pub(crate) fn classify(status: u16, body: &[u8]) -> Result<IngestAck, ShipError> {
    if (200..300).contains(&status) {
        return serde_json::from_slice(body)
            .map_err(|e| ShipError::Unavailable(format!("unexpected answer: {e}")));
    }
    let (code, message) = match serde_json::from_slice::<ApiError>(body) {
        Ok(api) => (api.error, api.message),
        Err(_) => (
            format!("http_{status}"),
            String::from_utf8_lossy(body).chars().take(300).collect(),
        ),
    };
    match status {
        400 | 413 | 422 => Err(ShipError::Refused {
            status,
            code,
            message,
        }),
        _ => Err(ShipError::Unavailable(format!(
            "{status} {code}: {message}"
        ))),
    }
}

impl SpoolReader {
    /// Writes a refused batch to `<spool>/rejected/<segment>-<offset>.json` (fsynced) so
    /// an operator can inspect or resend it; returns the path.
    pub async fn set_aside(
        &self,
        batch: &SpoolBatch,
        reason: &str,
    ) -> Result<std::path::PathBuf, SpoolError> {
        let dir = self.dir().join("rejected");
        let path = dir.join(format!(
            "{:020}-{:020}.json",
            batch.cursor.segment, batch.cursor.offset
        ));
        let body = serde_json::json!({ "reason": reason, "records": batch.records });
        let text = serde_json::to_vec_pretty(&body).unwrap_or_default();
        let target = path.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            std::fs::create_dir_all(&dir).map_err(|e| SpoolError::io(&dir, &e))?;
            let mut f = std::fs::File::create(&target).map_err(|e| SpoolError::io(&target, &e))?;
            f.write_all(&text)
                .and_then(|()| f.sync_all())
                .map_err(|e| SpoolError::io(&target, &e))?;
            super::recovery::sync_dir(&dir)
        })
        .await
        .map_err(|_| SpoolError::Closed)??;
        Ok(path)
    }
}
