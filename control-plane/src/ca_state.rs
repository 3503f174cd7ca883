//! The live CA: loaded from the CA directory, validated, and published through a
//! `watch` so new TLS connections and new issuances use the current authority while
//! in-flight ones finish with the old. A directory that fails validation never replaces
//! a working CA.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use wardmesh_identity::ca::{CaDir, CaDirError, LoadedCa};
use wardmesh_identity::seal::SealKey;
use wardmesh_identity::tls::{Svid, TlsError, TrustBundle, control_plane_server_config};
use wardmesh_identity::{SpiffeId, TrustDomain};

use crate::metrics::Metrics;

/// The control plane's own serving certificate lives this long…
const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);
/// …and is reissued once this much of it has passed.
const SERVING_RENEW_FRACTION: f64 = 0.5;

#[derive(Debug, thiserror::Error)]
pub enum CaLoadError {
    #[error(transparent)]
    Dir(#[from] CaDirError),
    #[error("serving certificate: {0}")]
    Issue(#[from] wardmesh_identity::ca::IssueError),
    #[error("serving tls config: {0}")]
    Tls(#[from] TlsError),
    #[error("serving key: {0}")]
    Key(String),
}

/// One consistent view of the CA.
#[derive(Debug)]
pub struct CaSnapshot {
    pub ca: LoadedCa,
    pub bundle: TrustBundle,
    pub serving: Arc<rustls::ServerConfig>,
    pub serving_issued: OffsetDateTime,
    pub serving_not_after: OffsetDateTime,
}

impl CaSnapshot {
    pub fn revision(&self) -> u64 {
        self.ca.state.revision
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.ca.state.trust_domain
    }
}

/// The SPIFFE ID of the control plane's serving certificate.
pub fn control_plane_id(td: &TrustDomain) -> Result<SpiffeId, CaLoadError> {
    SpiffeId::workload(td, "wardmesh-system", "wardmesh-control-plane")
        .map_err(|e| CaLoadError::Key(e.to_string()))
}

fn build_snapshot(
    dir: &CaDir,
    seal: &SealKey,
    server_names: &[String],
    now: OffsetDateTime,
) -> Result<CaSnapshot, CaLoadError> {
    let ca = dir.load(seal, now)?;
    let bundle = TrustBundle {
        trust_domain: ca.state.trust_domain.clone(),
        roots: ca.bundle.clone(),
        revision: ca.state.revision,
    };
    let key = rcgen::KeyPair::generate().map_err(|e| CaLoadError::Key(e.to_string()))?;
    let id = control_plane_id(&ca.state.trust_domain)?;
    let issued = ca
        .signer
        .sign_local_key(&key, &id, SERVING_TTL, now, server_names)?;
    let chain = vec![issued.leaf.clone(), ca.signer.intermediate_der().clone()];
    let svid = Svid::new(chain, key.serialize_der())?;
    let serving = Arc::new(control_plane_server_config(&svid, &bundle)?);
    Ok(CaSnapshot {
        ca,
        bundle,
        serving,
        serving_issued: now,
        serving_not_after: issued.not_after,
    })
}

/// Owns the CA directory and the published snapshot.
#[derive(Debug)]
pub struct CaManager {
    dir: CaDir,
    seal: SealKey,
    server_names: Vec<String>,
    tx: watch::Sender<Arc<CaSnapshot>>,
    metrics: Metrics,
    /// Serialises reloads (poller and API) so two never interleave.
    reload_lock: Mutex<()>,
}

impl CaManager {
    pub fn load(
        dir: CaDir,
        seal: SealKey,
        server_names: Vec<String>,
        metrics: Metrics,
        now: OffsetDateTime,
    ) -> Result<Self, CaLoadError> {
        let snap = build_snapshot(&dir, &seal, &server_names, now)?;
        metrics.ca_revision.set(snap.revision() as i64);
        let (tx, _) = watch::channel(Arc::new(snap));
        Ok(Self {
            dir,
            seal,
            server_names,
            tx,
            metrics,
            reload_lock: Mutex::new(()),
        })
    }

    pub fn current(&self) -> Arc<CaSnapshot> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<CaSnapshot>> {
        self.tx.subscribe()
    }

    /// Decides whether a reload is due: the state revision moved, or the serving
    /// certificate is past half its life.
    fn reload_due(&self, now: OffsetDateTime) -> Result<bool, CaLoadError> {
        let cur = self.current();
        let state = self.dir.read_state()?;
        let life = (cur.serving_not_after - cur.serving_issued).as_seconds_f64();
        let age = (now - cur.serving_issued).as_seconds_f64();
        Ok(state.revision != cur.revision() || age >= life * SERVING_RENEW_FRACTION)
    }

    /// Reloads when due. Returns the revision now active. On failure the previous
    /// snapshot stays published.
    pub fn reload(&self, now: OffsetDateTime, force: bool) -> Result<u64, CaLoadError> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        if !force && !self.reload_due(now)? {
            return Ok(self.current().revision());
        }
        let snap = build_snapshot(&self.dir, &self.seal, &self.server_names, now)
            .inspect_err(|_| self.metrics.ca_reload_failures.inc())?;
        let rev = snap.revision();
        let old = self.current().revision();
        self.metrics.ca_revision.set(rev as i64);
        self.tx.send_replace(Arc::new(snap));
        if rev != old {
            tracing::info!(from = old, to = rev, "ca state reloaded");
        }
        Ok(rev)
    }

    /// Polls the directory until `shutdown` resolves.
    pub async fn poll(
        self: Arc<Self>,
        interval: Duration,
        clock: Arc<dyn Fn() -> OffsetDateTime + Send + Sync>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let this = self.clone();
            let now = clock();
            let res = tokio::task::spawn_blocking(move || this.reload(now, false)).await;
            match res {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "ca directory is invalid; keeping the previous CA")
                }
                Err(e) => tracing::error!(error = %e, "ca reload task failed"),
            }
        }
    }
}
