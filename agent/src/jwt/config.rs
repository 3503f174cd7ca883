//! The `[oidc]` configuration: which issuers' tokens the agent accepts, for which
//! audiences, and where their keys come from. TOML-friendly (`[[oidc.issuers]]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Clock skew tolerated on `exp` and `nbf`, by default.
pub const DEFAULT_LEEWAY_SECONDS: u64 = 60;
const MAX_LEEWAY_SECONDS: u64 = 300;
const DEFAULT_REFRESH_SECONDS: u64 = 300;
const DEFAULT_MIN_REFRESH_SECONDS: u64 = 10;
const MAX_REFRESH_SECONDS: u64 = 24 * 3600;

/// End-user token validation. An empty `issuers` list accepts no token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Clock skew tolerated on `exp` and `nbf` (at most 300).
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            issuers: Vec::new(),
            leeway_seconds: DEFAULT_LEEWAY_SECONDS,
        }
    }
}

/// One OIDC issuer. Exactly one of `jwks_url` and `jwks_file` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The `iss` value, exactly as the IdP writes it (e.g. `https://idp.clinic.example`).
    pub issuer: String,
    /// Accepted `aud` values (at least one): tokens minted for other apps are refused.
    pub audiences: Vec<String>,
    /// A JWKS document on disk (re-read every `refresh_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// The issuer's `jwks_uri` (https only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// PEM roots that verify the JWKS server; default: the system bundle
    /// (`SSL_CERT_FILE`, `/etc/ssl/certs/ca-certificates.crt`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Claim holding the user's roles; a dotted path reaches into objects
    /// (`realm_access.roles`).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// How often the keys are reloaded.
    #[serde(default = "default_refresh")]
    pub refresh_seconds: u64,
    /// Shortest gap between two loads: bounds the reloads an unknown `kid` (or a failing
    /// IdP) can cause.
    #[serde(default = "default_min_refresh")]
    pub min_refresh_seconds: u64,
}

impl IssuerConfig {
    /// An issuer with keys at `jwks_url` and the defaults.
    pub fn with_url(issuer: &str, audience: &str, jwks_url: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audiences: vec![audience.to_owned()],
            jwks_file: None,
            jwks_url: Some(jwks_url.to_owned()),
            ca_file: None,
            roles_claim: default_roles_claim(),
            refresh_seconds: DEFAULT_REFRESH_SECONDS,
            min_refresh_seconds: DEFAULT_MIN_REFRESH_SECONDS,
        }
    }

    /// An issuer with keys in a JWKS file and the defaults.
    pub fn with_file(issuer: &str, audience: &str, jwks_file: impl Into<PathBuf>) -> Self {
        Self {
            jwks_file: Some(jwks_file.into()),
            jwks_url: None,
            ..Self::with_url(issuer, audience, "")
        }
    }
}

fn default_leeway() -> u64 {
    DEFAULT_LEEWAY_SECONDS
}
fn default_roles_claim() -> String {
    "roles".to_owned()
}
fn default_refresh() -> u64 {
    DEFAULT_REFRESH_SECONDS
}
fn default_min_refresh() -> u64 {
    DEFAULT_MIN_REFRESH_SECONDS
}

/// A configuration problem, naming the issuer and the field to fix.
#[derive(Debug, thiserror::Error)]
pub enum OidcConfigError {
    #[error("oidc.leeway_seconds must be at most {MAX_LEEWAY_SECONDS} (got {0})")]
    Leeway(u64),
    #[error("oidc issuer {issuer:?}: {reason}")]
    Issuer { issuer: String, reason: String },
    #[error("oidc issuer {issuer:?}: jwks: {reason}")]
    Jwks { issuer: String, reason: String },
}

impl OidcConfig {
    /// Checks everything that can be checked without I/O.
    pub fn validate(&self) -> Result<(), OidcConfigError> {
        if self.leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(OidcConfigError::Leeway(self.leeway_seconds));
        }
        for (i, ic) in self.issuers.iter().enumerate() {
            let bad = |reason: &str| OidcConfigError::Issuer {
                issuer: ic.issuer.clone(),
                reason: reason.to_owned(),
            };
            if ic.issuer.trim().is_empty() {
                return Err(bad("issuer is empty"));
            }
            if self.issuers[..i].iter().any(|o| o.issuer == ic.issuer) {
                return Err(bad("configured twice"));
            }
            if ic.audiences.is_empty() || ic.audiences.iter().any(|a| a.trim().is_empty()) {
                return Err(bad(
                    "audiences must list at least one non-empty value (this service's client id)",
                ));
            }
            match (&ic.jwks_url, &ic.jwks_file) {
                (Some(_), Some(_)) => return Err(bad("set jwks_url or jwks_file, not both")),
                (None, None) => return Err(bad("set jwks_url or jwks_file")),
                (Some(url), None) => check_url(url).map_err(|r| bad(&r))?,
                (None, Some(_)) if ic.ca_file.is_some() => {
                    return Err(bad("ca_file applies to jwks_url only"));
                }
                (None, Some(_)) => {}
            }
            if ic.roles_claim.trim().is_empty() {
                return Err(bad("roles_claim is empty"));
            }
            if !(1..=MAX_REFRESH_SECONDS).contains(&ic.refresh_seconds) {
                return Err(bad("refresh_seconds must be between 1 and 86400"));
            }
            if !(1..=ic.refresh_seconds).contains(&ic.min_refresh_seconds) {
                return Err(bad(
                    "min_refresh_seconds must be at least 1 and at most refresh_seconds",
                ));
            }
        }
        Ok(())
    }
}

fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("jwks_url {url:?}: {e}"))?;
    if parsed.scheme() != "https" {
        return Err(format!("jwks_url {url:?} must be https"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("jwks_url {url:?} has no host"));
    }
    Ok(())
}
