//! The sidecar injector: a mutating admission webhook that adds the wardmesh agent and
//! its `init-iptables` init container to pods in namespaces labelled
//! `wardmesh.io/inject=enabled`.
//!
//! It listens on its own TLS port (`--webhook-listen`, 7444 by default in `deploy/`)
//! because the API server calls it with its own expectations (no client certificate, a
//! `caBundle` pinned in the MutatingWebhookConfiguration); the serving certificate is the
//! control plane's, issued by the wardmesh CA, so `wardctl install` pins the mesh roots.
//!
//! - `review`: AdmissionReview v1 parsing and answers.
//! - `decide`: the pure inject/skip/refuse decision and its JSON Patch.
//! - `spec`: the containers and volumes added.
//! - `annotations`: the `wardmesh.io/*` pod annotations.
//! - `jsonpatch`: the RFC 6902 `add` we emit, and an applier for offline injection.

pub mod annotations;
pub mod decide;
pub mod jsonpatch;
pub mod review;
mod server;
pub mod spec;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;

use serde::Serialize;

pub use decide::{Decision, decide};
pub use review::{Answer, Outcome, review};
pub use server::{router, serve};

/// The webhook's path: the MutatingWebhookConfiguration's `clientConfig.service.path`.
pub const WEBHOOK_PATH: &str = "/inject";
/// Where agents reach the control plane from inside the cluster.
pub const DEFAULT_CONTROL_PLANE_URL: &str =
    "https://wardmesh-control-plane.wardmesh-system.svc:7443";
/// The agent image injected unless `--agent-image` says otherwise.
pub const DEFAULT_AGENT_IMAGE: &str = concat!(
    "ghcr.io/wardmesh/wardmesh-agent:",
    env!("CARGO_PKG_VERSION")
);

/// Namespaces never injected, whatever their labels say: the control plane's own (its
/// pods must start before the webhook can answer) and the cluster's system namespaces.
pub fn default_excluded_namespaces() -> Vec<String> {
    [
        "wardmesh-system",
        "kube-system",
        "kube-public",
        "kube-node-lease",
    ]
    .map(String::from)
    .to_vec()
}

/// The injector's settings (part of the control plane's config).
#[derive(Debug, Clone, Serialize)]
pub struct InjectorConfig {
    pub listen: SocketAddr,
    pub agent_image: String,
    pub control_plane_url: String,
    pub excluded_namespaces: Vec<String>,
}

impl InjectorConfig {
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            agent_image: DEFAULT_AGENT_IMAGE.into(),
            control_plane_url: DEFAULT_CONTROL_PLANE_URL.into(),
            excluded_namespaces: default_excluded_namespaces(),
        }
    }
}

/// Everything a decision depends on, captured once per review (the trust bundle changes
/// with root rotation; new pods get the current one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectParams {
    pub agent_image: String,
    pub control_plane_url: String,
    pub trust_domain: String,
    pub trust_bundle_pem: String,
    pub excluded_namespaces: Vec<String>,
}

impl InjectParams {
    pub fn new(cfg: &InjectorConfig, trust_domain: &str, trust_bundle_pem: &str) -> Self {
        Self {
            agent_image: cfg.agent_image.clone(),
            control_plane_url: cfg.control_plane_url.clone(),
            trust_domain: trust_domain.to_owned(),
            trust_bundle_pem: trust_bundle_pem.to_owned(),
            excluded_namespaces: cfg.excluded_namespaces.clone(),
        }
    }
}
