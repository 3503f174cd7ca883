//! Bundle bytes → a running [`PolicyEngine`]: verify the signature with the configured
//! keys, check the entrypoint, compile (or map the cached native code) and instantiate.
//! Blocking and CPU-heavy: callers run it on the blocking pool.

use std::path::Path;

use sha2::{Digest, Sha256};
use wardmesh_policy::{PolicyEngine, PolicyRuntime, RuntimeConfig, VerifyingKey, verify_bundle};

use super::PolicyConfig;

/// Why a bundle was not activated. `kind()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum LoadFailure {
    #[error(
        "no policy verification key is configured ([policy] public_keys); refusing to run an unverified bundle"
    )]
    NoKeys,
    #[error("bundle signature check failed: {0}")]
    Verify(#[from] wardmesh_policy::VerifyError),
    #[error("bundle digest {got} is not the {want} the control plane announced")]
    Digest { got: String, want: String },
    #[error("bundle does not load: {0}")]
    Load(#[from] wardmesh_policy::LoadError),
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("cannot fetch the bundle: {0}")]
    Fetch(String),
}

impl LoadFailure {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoKeys => "no_keys",
            Self::Verify(_) => "signature",
            Self::Digest { .. } => "digest",
            Self::Load(_) => "load",
            Self::Read { .. } => "read",
            Self::Fetch(_) => "fetch",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PolicyLoader {
    runtime: PolicyRuntime,
    keys: Vec<VerifyingKey>,
    config: PolicyConfig,
}

impl PolicyLoader {
    pub fn new(config: &PolicyConfig) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for k in &config.public_keys {
            let pem = std::fs::read_to_string(&k.file)
                .map_err(|e| anyhow::anyhow!("cannot read policy key {}: {e}", k.file.display()))?;
            keys.push(VerifyingKey::from_spki_pem(&pem, &k.key_id).map_err(|e| {
                anyhow::anyhow!("policy key {} ({}): {e}", k.key_id, k.file.display())
            })?);
        }
        let runtime = PolicyRuntime::new(RuntimeConfig {
            module_cache_dir: config.cache_dir.clone(),
            ..RuntimeConfig::default()
        })?;
        Ok(Self {
            runtime,
            keys,
            config: config.clone(),
        })
    }

    /// Verifies and loads `bytes`; `want_sha256` (hex) is checked first when given.
    pub fn load(
        &self,
        bytes: &[u8],
        want_sha256: Option<&str>,
    ) -> Result<PolicyEngine, LoadFailure> {
        if let Some(want) = want_sha256 {
            let got = hex::encode(Sha256::digest(bytes));
            if got != want {
                return Err(LoadFailure::Digest {
                    got,
                    want: want.to_owned(),
                });
            }
        }
        if self.keys.is_empty() {
            return Err(LoadFailure::NoKeys);
        }
        let verified = verify_bundle(bytes, &self.keys)?;
        if let Some(exe) = &self.config.compiler {
            match super::precompile::in_child(exe, &self.config, bytes) {
                Ok(()) => tracing::debug!("policy module compiled by a child process"),
                Err(reason) => tracing::warn!(
                    %reason,
                    "policy module not compiled in a child process; compiling in the agent (its memory peak stays high)"
                ),
            }
        }
        let engine = self.runtime.load(&verified);
        release_freed_memory();
        Ok(engine?)
    }

    /// Verifies `bytes` and compiles its module into the cache without instantiating it
    /// (what `precompile-policy` runs); returns whether it was cached already.
    pub fn warm_cache(&self, bytes: &[u8]) -> Result<bool, LoadFailure> {
        if self.keys.is_empty() {
            return Err(LoadFailure::NoKeys);
        }
        let verified = verify_bundle(bytes, &self.keys)?;
        Ok(self.runtime.warm_cache(&verified)?)
    }

    pub fn load_file(&self, path: &Path) -> Result<(PolicyEngine, String), LoadFailure> {
        let bytes = std::fs::read(path).map_err(|e| LoadFailure::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let sha = hex::encode(Sha256::digest(&bytes));
        Ok((self.load(&bytes, None)?, sha))
    }
}

/// Compiling a module (cranelift) peaks near 90 MB of heap that is all freed right
/// after, but glibc keeps freed pages in its arenas: without this the agent's resident
/// memory stays at the compile peak for good (measured: 112 MB instead of 23 MB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_freed_memory() {
    // SAFETY: malloc_trim only hands free heap pages back to the kernel; it takes no
    // pointers and leaves every live allocation alone.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}
