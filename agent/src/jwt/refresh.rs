//! Keeping issuers' keys fresh: one task per issuer reloads its JWKS (HTTPS or file)
//! every `refresh_seconds`, sooner when a token names an unknown `kid`, and backs off
//! after failures. A failed or unusable load never replaces the keys in force.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::keys::{KeySet, MAX_JWKS_BYTES};
use super::{IssuerConfig, JwtValidator, OidcConfigError};
use crate::clock::Clock;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Where the system CA bundle usually is, when `ca_file` is not set.
const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The running refreshers.
#[derive(Debug)]
pub struct RefreshTasks {
    tasks: Vec<JoinHandle<()>>,
}

impl RefreshTasks {
    /// Waits for every refresher (they end when the shutdown token is cancelled).
    pub async fn join(self) {
        for t in self.tasks {
            if let Err(e) = t.await
                && e.is_panic()
            {
                tracing::error!("jwks refresher panicked");
            }
        }
    }
}

pub(super) fn spawn(
    validator: &JwtValidator,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> RefreshTasks {
    let tasks = (0..validator.inner.issuers.len())
        .map(|i| {
            tokio::spawn(run(
                validator.clone(),
                i,
                Arc::clone(&clock),
                shutdown.clone(),
            ))
        })
        .collect();
    RefreshTasks { tasks }
}

/// How long to wait after a load attempt before the next periodic one: the refresh
/// interval after a success; after `failures` consecutive failures, `min_refresh`
/// doubling per failure up to the refresh interval. Pure.
pub(crate) fn retry_delay(failures: u32, config: &IssuerConfig) -> Duration {
    let refresh = Duration::from_secs(config.refresh_seconds);
    if failures == 0 {
        return refresh;
    }
    let min = Duration::from_secs(config.min_refresh_seconds);
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    min.saturating_mul(factor).min(refresh)
}

async fn run(
    validator: JwtValidator,
    index: usize,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    let Some(issuer) = validator.inner.issuers.get(index) else {
        return;
    };
    let config = &issuer.config;
    let min_gap = Duration::from_secs(config.min_refresh_seconds);
    // A file issuer's keys were loaded by `JwtValidator::new`: its first reload is due
    // after a full interval. A URL issuer has none yet: load at once.
    let mut last_attempt: Option<Instant> = issuer.config.jwks_file.is_some().then(Instant::now);
    let mut failures = 0u32;
    let mut misses_at_load = 0u64;
    loop {
        let wait = match last_attempt {
            None => Duration::ZERO,
            Some(at) => retry_delay(failures, config).saturating_sub(at.elapsed()),
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            () = issuer.wake.notified() => {
                // A permit left by misses the last load already covered: nothing new.
                if issuer.kid_misses.load(Ordering::Relaxed) == misses_at_load {
                    continue;
                }
                // An unknown kid: reload, but no sooner than min_refresh after the last.
                let hold = last_attempt.map_or(Duration::ZERO, |at| min_gap.saturating_sub(at.elapsed()));
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(hold) => {}
                }
            }
        }
        last_attempt = Some(Instant::now());
        misses_at_load = issuer.kid_misses.load(Ordering::Relaxed);
        let result = load(issuer.client.as_ref(), config).await;
        let mut status = issuer.status.lock().unwrap_or_else(|p| p.into_inner());
        status.fetches += 1;
        match result {
            Ok(keys) => {
                let ids = keys.key_ids();
                let changed = issuer.snapshot().is_none_or(|old| old.key_ids() != ids);
                issuer.install(keys);
                status.last_success = Some(clock.now());
                status.last_error = None;
                failures = 0;
                if changed {
                    tracing::info!(issuer = %config.issuer, key_ids = ?ids, "oidc signing keys loaded");
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(
                    issuer = %config.issuer,
                    error = %e,
                    retry_in_s = retry_delay(failures, config).as_secs(),
                    "oidc signing keys could not be reloaded; keeping the previous keys"
                );
                status.last_error = Some(e);
            }
        }
    }
}

/// Loads and parses the issuer's JWKS once.
async fn load(client: Option<&reqwest::Client>, config: &IssuerConfig) -> Result<KeySet, String> {
    let bytes = match (&config.jwks_url, &config.jwks_file, client) {
        (Some(url), _, Some(client)) => fetch(client, url).await?,
        (_, Some(path), _) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || read_jwks_file(&path))
                .await
                .map_err(|e| e.to_string())??
        }
        _ => return Err("no jwks source configured".to_owned()),
    };
    KeySet::from_jwks(&bytes).map_err(|e| e.to_string())
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let mut resp = client
        .get(url)
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", chain(&e)))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("GET {url}: HTTP {status}"));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(format!(
            "GET {url}: the JWKS exceeds {MAX_JWKS_BYTES} bytes"
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("GET {url}: {}", chain(&e)))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!(
                "GET {url}: the JWKS exceeds {MAX_JWKS_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads a JWKS file, refusing oversized ones before reading them.
pub(super) fn read_jwks_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let len = std::fs::metadata(path).map_err(err)?.len();
    if len > MAX_JWKS_BYTES as u64 {
        return Err(format!(
            "{}: the JWKS exceeds {MAX_JWKS_BYTES} bytes",
            path.display()
        ));
    }
    std::fs::read(path).map_err(err)
}

/// The HTTPS client for an issuer's `jwks_url`, trusting `ca_file` (or the system
/// bundle). No redirects to plain http, short timeouts.
pub(super) fn https_client(config: &IssuerConfig) -> Result<reqwest::Client, OidcConfigError> {
    let bad = |reason: String| OidcConfigError::Issuer {
        issuer: config.issuer.clone(),
        reason,
    };
    let ca_path = match &config.ca_file {
        Some(p) => p.clone(),
        None => system_ca_file().ok_or_else(|| {
            bad("no ca_file is set and no system CA bundle was found; set ca_file".to_owned())
        })?,
    };
    let pem =
        std::fs::read(&ca_path).map_err(|e| bad(format!("ca_file {}: {e}", ca_path.display())))?;
    let roots = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| bad(format!("ca_file {}: {e}", ca_path.display())))?;
    if roots.is_empty() {
        return Err(bad(format!(
            "ca_file {} holds no PEM certificate",
            ca_path.display()
        )));
    }
    let mut builder = reqwest::Client::builder()
        .https_only(true)
        .tls_built_in_root_certs(false)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(3));
    for root in roots {
        builder = builder.add_root_certificate(root);
    }
    builder
        .build()
        .map_err(|e| bad(format!("building the https client: {}", chain(&e))))
}

fn system_ca_file() -> Option<std::path::PathBuf> {
    let from_env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
    from_env
        .into_iter()
        .chain(SYSTEM_CA_FILES.iter().map(std::path::PathBuf::from))
        .find(|p| p.is_file())
}

/// An error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}
