//! The agent's policy: which bundle runs (from the control plane, or a local file), the
//! policy *context* the request path reads (consent records, break-glass grants, the
//! pseudonym key), and the worker that keeps both current.
//!
//! A bundle is activated only after its signature verifies with a configured key and
//! it compiles and instantiates — all off the request path (`spawn_blocking`); then the
//! [`crate::authz::AuthzHandle`] swaps to it atomically. A bad bundle changes nothing:
//! the last good policy keeps deciding, the failure is logged, counted and shown on
//! `/config_dump`. Until the first bundle loads, the allow-list decides (default deny).

mod context;
mod loader;
pub mod precompile;
mod source;
pub(crate) mod worker;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use wardmesh_proto::policy::PolicyMode;

pub use context::ContextSnapshot;
pub use loader::{LoadFailure, PolicyLoader};
pub use source::PolicySource;
pub use worker::{PolicyMetrics, WorkerParts, spawn};

/// `[policy]` in the agent's TOML.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Keys a bundle's signature must verify with (OPA bundle signing, ES256/EdDSA).
    #[serde(default)]
    pub public_keys: Vec<PolicyKeyConfig>,
    /// Precompiled wasm modules, so restarts do not recompile (private directory).
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Run this signed bundle instead of the control plane's active policy.
    #[serde(default)]
    pub bundle: Option<PathBuf>,
    /// Mode of the local `bundle` (the control plane's policy carries its own).
    #[serde(default)]
    pub mode: PolicyMode,
    /// The agent executable whose `precompile-policy` compiles modules into `cache_dir`
    /// in a child process (see `policy/precompile.rs`); `None` compiles in process. Set
    /// by `wardmesh-agent run`, not by the TOML.
    #[serde(skip)]
    pub compiler: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyKeyConfig {
    pub key_id: String,
    /// SubjectPublicKeyInfo PEM.
    pub file: PathBuf,
}

/// What `/config_dump` reports about the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PolicyStatus {
    /// `control-plane` or `file`.
    pub source: &'static str,
    /// The running revision; `None` while the allow-list decides.
    pub revision: Option<String>,
    pub mode: Option<PolicyMode>,
    pub sha256: Option<String>,
    /// The last failed activation (revision and reason), cleared by the next success.
    pub last_error: Option<String>,
    /// Generation of the policy context (consents, grants) in force.
    pub context_generation: String,
}

/// Shared by the worker (writes) and the request path and admin server (read).
#[derive(Debug, Clone)]
pub struct PolicyHandle {
    context: Arc<RwLock<Arc<ContextSnapshot>>>,
    status: Arc<RwLock<PolicyStatus>>,
}

impl PolicyHandle {
    pub fn new(source: &'static str) -> Self {
        Self {
            context: Arc::new(RwLock::new(Arc::new(ContextSnapshot::default()))),
            status: Arc::new(RwLock::new(PolicyStatus {
                source,
                ..PolicyStatus::default()
            })),
        }
    }

    /// The context for one request: one `Arc` clone under a read lock.
    pub fn context(&self) -> Arc<ContextSnapshot> {
        Arc::clone(&self.context.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn status(&self) -> PolicyStatus {
        self.status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_context(&self, ctx: ContextSnapshot) {
        if let Ok(mut s) = self.status.write() {
            s.context_generation = ctx.generation.clone();
        }
        *self.context.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ctx);
    }

    pub(crate) fn update_status(&self, f: impl FnOnce(&mut PolicyStatus)) {
        f(&mut self.status.write().unwrap_or_else(|p| p.into_inner()));
    }
}
