//! Control-plane metrics, registered on a registry the caller owns.

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

#[derive(Debug, Clone)]
pub struct Metrics {
    /// Labels: `attestation` (join_token|k8s_sa_token|renewal), `outcome` (issued or the
    /// failure code) — both closed sets.
    pub issuances: IntCounterVec,
    pub ca_revision: IntGauge,
    pub ca_reload_failures: prometheus::IntCounter,
    pub deny_list_revision: IntGauge,
}

impl Metrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let issuances = IntCounterVec::new(
            Opts::new(
                "wardmesh_cp_svid_requests_total",
                "SVID issuance requests by attestation kind and outcome",
            ),
            &["attestation", "outcome"],
        )?;
        let ca_revision = IntGauge::new("wardmesh_cp_ca_revision", "Loaded CA state revision")?;
        let ca_reload_failures = prometheus::IntCounter::new(
            "wardmesh_cp_ca_reload_failures_total",
            "CA directory reloads that failed validation (the previous CA stays active)",
        )?;
        let deny_list_revision = IntGauge::new(
            "wardmesh_cp_deny_list_revision",
            "Quarantine deny-list revision",
        )?;
        registry.register(Box::new(issuances.clone()))?;
        registry.register(Box::new(ca_revision.clone()))?;
        registry.register(Box::new(ca_reload_failures.clone()))?;
        registry.register(Box::new(deny_list_revision.clone()))?;
        Ok(Self {
            issuances,
            ca_revision,
            ca_reload_failures,
            deny_list_revision,
        })
    }
}
