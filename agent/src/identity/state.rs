//! What the identity manager publishes: the workload's current certificate with its
//! ready-built rustls configs, and the deny-list. Building a state validates everything
//! the control plane sent, so a bad response never replaces a good state.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use rustls::pki_types::UnixTime;
use rustls::server::danger::ClientCertVerifier;
use time::OffsetDateTime;
use wardmesh_identity::svid::certs_from_pem;
use wardmesh_identity::tls::{
    SpiffeClientVerifier, Svid, TlsError, TrustBundle, mesh_client_config, mesh_server_config,
};
use wardmesh_identity::{SpiffeId, TrustDomain};
use wardmesh_proto::identity::{SvidResponse, SyncResponse};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("control plane sent an invalid trust domain {0:?}")]
    BadTrustDomain(String),
    #[error("control plane is in trust domain {got} but this agent expects {expected}")]
    TrustDomainMismatch { expected: String, got: String },
    #[error("control plane sent an unusable trust bundle: {0}")]
    BadBundle(String),
    #[error("control plane sent an unusable certificate chain: {0}")]
    BadChain(String),
    #[error("control plane issued {issued} but the response names {named}")]
    IdMismatch { issued: String, named: String },
    #[error(
        "control plane issued {issued} but this agent is {current}; refusing to change identity on renewal"
    )]
    IdentityChanged { issued: String, current: String },
    #[error("issued certificate does not verify against the trust bundle: {0}")]
    Untrusted(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A workload's identity, ready for the data plane: connections take the configs from
/// here and never build TLS configs per request.
pub struct WorkloadState {
    pub spiffe_id: SpiffeId,
    pub svid: Arc<Svid>,
    pub bundle: Arc<TrustBundle>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// When the agent received the leaf. The CA backdates `not_before` for clock skew;
    /// renewal is scheduled from this instant so short lifetimes are not cut early.
    pub received_at: OffsetDateTime,
    /// The authority (intermediate) that signed the leaf.
    pub authority_id: String,
    /// Inbound mesh TLS: client certificate required, TLS 1.3, mesh ALPN.
    pub server_config: Arc<rustls::ServerConfig>,
    /// Outbound mesh TLS: presents the SVID, verifies the peer's SVID.
    pub client_config: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for WorkloadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadState")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("serial", &self.svid.info.serial_hex)
            .field("not_after", &self.not_after)
            .field("authority_id", &self.authority_id)
            .field("bundle_revision", &self.bundle.revision)
            .finish_non_exhaustive()
    }
}

impl WorkloadState {
    /// Builds a state from an attest or renew response and the key whose CSR it answers.
    /// `expected` pins the trust domain (from config, or the current state's on renewal).
    pub fn from_issued(
        resp: &SvidResponse,
        key_pkcs8: Vec<u8>,
        expected: Option<&TrustDomain>,
        now: OffsetDateTime,
    ) -> Result<Self, StateError> {
        let bundle = bundle_from_pem(
            &resp.trust_domain,
            &resp.trust_bundle_pem,
            resp.bundle_revision,
            expected,
        )?;
        let chain =
            certs_from_pem(&resp.chain_pem).map_err(|e| StateError::BadChain(e.to_string()))?;
        let svid = Svid::new(chain, key_pkcs8)?;
        if svid.spiffe_id().to_string() != resp.spiffe_id {
            return Err(StateError::IdMismatch {
                issued: svid.spiffe_id().to_string(),
                named: truncate(&resp.spiffe_id),
            });
        }
        if svid.spiffe_id().trust_domain() != &bundle.trust_domain {
            return Err(StateError::TrustDomainMismatch {
                expected: bundle.trust_domain.to_string(),
                got: svid.spiffe_id().trust_domain().to_string(),
            });
        }
        verify_chain(&svid, &bundle, now)?;
        Self::build(
            Arc::new(svid),
            Arc::new(bundle),
            resp.authority_id.clone(),
            now,
        )
    }

    /// The same SVID with a new trust bundle (a sync brought a new revision).
    pub fn with_bundle(&self, bundle: TrustBundle) -> Result<Self, StateError> {
        if bundle.trust_domain != self.bundle.trust_domain {
            return Err(StateError::TrustDomainMismatch {
                expected: self.bundle.trust_domain.to_string(),
                got: bundle.trust_domain.to_string(),
            });
        }
        Self::build(
            Arc::clone(&self.svid),
            Arc::new(bundle),
            self.authority_id.clone(),
            self.received_at,
        )
    }

    fn build(
        svid: Arc<Svid>,
        bundle: Arc<TrustBundle>,
        authority_id: String,
        received_at: OffsetDateTime,
    ) -> Result<Self, StateError> {
        let server_config = Arc::new(mesh_server_config(&svid, &bundle)?);
        let client_config = Arc::new(mesh_client_config(&svid, &bundle)?);
        Ok(Self {
            spiffe_id: svid.spiffe_id().clone(),
            not_before: svid.info.not_before,
            not_after: svid.info.not_after,
            received_at,
            svid,
            bundle,
            authority_id,
            server_config,
            client_config,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        self.spiffe_id.trust_domain()
    }

    pub fn serial_hex(&self) -> &str {
        &self.svid.info.serial_hex
    }

    /// True while `now` is inside the leaf's validity.
    pub fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// Parses a bundle the control plane sent.
pub fn bundle_from_pem(
    trust_domain: &str,
    pem: &str,
    revision: u64,
    expected: Option<&TrustDomain>,
) -> Result<TrustBundle, StateError> {
    let td = TrustDomain::new(trust_domain)
        .map_err(|_| StateError::BadTrustDomain(truncate(trust_domain)))?;
    if let Some(expected) = expected
        && expected != &td
    {
        return Err(StateError::TrustDomainMismatch {
            expected: expected.to_string(),
            got: td.to_string(),
        });
    }
    let roots = certs_from_pem(pem).map_err(|e| StateError::BadBundle(e.to_string()))?;
    let bundle = TrustBundle {
        trust_domain: td,
        roots,
        revision,
    };
    bundle
        .root_store()
        .map_err(|e| StateError::BadBundle(e.to_string()))?;
    Ok(bundle)
}

/// The issued chain must verify against the bundle it came with, as a peer would check
/// it; otherwise every mesh connection would fail with it.
fn verify_chain(svid: &Svid, bundle: &TrustBundle, now: OffsetDateTime) -> Result<(), StateError> {
    let verifier = SpiffeClientVerifier::new(bundle, false)?;
    let (leaf, intermediates) = svid
        .chain
        .split_first()
        .ok_or_else(|| StateError::BadChain("empty chain".into()))?;
    let secs = u64::try_from(now.unix_timestamp()).unwrap_or(0);
    verifier
        .verify_client_cert(
            leaf,
            intermediates,
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs)),
        )
        .map_err(|e| StateError::Untrusted(e.to_string()))?;
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(256).collect()
}

/// Quarantined SPIFFE IDs: inbound connections from them are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyList {
    /// `None` until the first sync delivered a list.
    pub revision: Option<i64>,
    pub ids: HashSet<SpiffeId>,
}

impl DenyList {
    /// The list from a sync response. Entries that are not SPIFFE IDs cannot match any
    /// peer; they are returned separately so the caller can log them.
    pub fn from_sync(resp: &SyncResponse) -> (Self, Vec<String>) {
        let mut ids = HashSet::with_capacity(resp.deny_list.len());
        let mut invalid = Vec::new();
        for entry in &resp.deny_list {
            match SpiffeId::parse(entry) {
                Ok(id) => {
                    ids.insert(id);
                }
                Err(_) => invalid.push(truncate(entry)),
            }
        }
        (
            Self {
                revision: Some(resp.deny_list_revision),
                ids,
            },
            invalid,
        )
    }

    pub fn contains(&self, id: &SpiffeId) -> bool {
        self.ids.contains(id)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}
