//! End-user identity: `Authorization: Bearer` OIDC JWTs validated against the
//! configured issuers' JWKS (DESIGN.md §3), turned into the policy input's `user`.
//!
//! * [`OidcConfig`] (the agent's `[oidc]` TOML section) lists issuers, their audiences
//!   and where their keys come from (`jwks_url` over HTTPS, or a `jwks_file`).
//! * [`JwtValidator::validate`] is synchronous and never blocks: it reads an immutable
//!   key snapshot ([`keys::KeySet`] behind an `Arc`) and checks the token with a
//!   passed-in clock. Only RS256, ES256 and EdDSA are accepted; `none`, HMAC and anything
//!   else are refused before any key is looked at. `exp` and `aud` are required, `nbf`
//!   is honoured, and `iss` picks the issuer (and so the only keys that may verify).
//! * [`JwtValidator::spawn_refresh`] runs one refresher per issuer: it re-reads the JWKS
//!   every `refresh_seconds`, at once (rate-limited) when a token names an unknown `kid`
//!   (key rotation at the IdP), and keeps the last good keys when a fetch fails.
//! * An invalid token is a [`JwtError`], a closed set whose [`JwtError::reason`] is the
//!   stable label for the 401 body and the metric; it is never a policy input. Nothing
//!   here logs or formats a token.
//!
//! Keys named by the token itself (`jku`, `x5u`, `jwk` headers) are ignored: only keys
//! from the operator's configuration verify.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use jsonwebtoken::Algorithm;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::Notify;

mod claims;
mod config;
pub mod keys;
mod refresh;
mod token;
mod verified;

pub use claims::{MFA_AMR_VALUES, amr_means_mfa};
pub use config::{DEFAULT_LEEWAY_SECONDS, IssuerConfig, OidcConfig, OidcConfigError};
pub use refresh::RefreshTasks;
pub use token::{MAX_TOKEN_BYTES, bearer_token};

use keys::KeySet;

/// The validated end user, as policies see it in `input.user`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserClaims {
    /// `sub`: the user's identifier at the issuer.
    pub sub: String,
    /// From the issuer's `roles_claim` (default `roles`); empty when absent.
    pub roles: Vec<String>,
    /// `amr` (RFC 8176 authentication methods); empty when absent.
    pub amr: Vec<String>,
    /// Derived from `amr`: see [`amr_means_mfa`].
    pub mfa: bool,
    /// `iss`: the configured issuer that vouched for this user.
    pub iss: String,
}

/// Why a bearer token was refused. Closed: [`JwtError::reason`] is a metric label.
/// Display texts name the problem, never the token or its claim values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the bearer token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the bearer token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("the token's algorithm is not accepted (only RS256, ES256, EdDSA)")]
    AlgorithmNotAllowed,
    #[error("the token's issuer is not a configured OIDC issuer")]
    UnknownIssuer,
    #[error("the token is signed with a key the issuer's JWKS does not hold")]
    UnknownKey,
    #[error("the issuer's signing keys are not available yet")]
    KeysUnavailable,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("the token is not meant for this service (aud)")]
    WrongAudience,
    #[error("the token lacks the required claim {0:?}")]
    MissingClaim(&'static str),
    #[error("the token's claim {0:?} has the wrong type")]
    InvalidClaim(&'static str),
}

impl JwtError {
    /// A short, stable snake_case label for the 401 body, logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::TooLarge => "token_too_large",
            Self::AlgorithmNotAllowed => "alg_not_allowed",
            Self::UnknownIssuer => "unknown_issuer",
            Self::UnknownKey => "unknown_key",
            Self::KeysUnavailable => "keys_unavailable",
            Self::BadSignature => "bad_signature",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::WrongAudience => "wrong_audience",
            Self::MissingClaim(_) => "missing_claim",
            Self::InvalidClaim(_) => "invalid_claim",
        }
    }

    /// Every reason, for pre-registering metric label values.
    pub const REASONS: &'static [&'static str] = &[
        "malformed",
        "token_too_large",
        "alg_not_allowed",
        "unknown_issuer",
        "unknown_key",
        "keys_unavailable",
        "bad_signature",
        "token_expired",
        "token_not_yet_valid",
        "wrong_audience",
        "missing_claim",
        "invalid_claim",
    ];
}

/// Validates bearer tokens. Cheap to clone; clones share keys and refreshers.
#[derive(Clone)]
pub struct JwtValidator {
    inner: Arc<Inner>,
}

struct Inner {
    leeway_seconds: i64,
    issuers: Vec<IssuerState>,
}

/// One issuer: its configuration, current keys and refresh bookkeeping.
struct IssuerState {
    config: IssuerConfig,
    /// `None` until the first successful load.
    keys: RwLock<Option<Arc<KeySet>>>,
    /// Tokens seen with an unknown `kid`; the refresher compares it with the count at
    /// its last load to tell a new miss from a wake-up the last load already answered.
    kid_misses: AtomicU64,
    /// Woken when a token names an unknown `kid`.
    wake: Notify,
    status: Mutex<Status>,
    /// Built once from `ca_file` for `jwks_url` issuers.
    client: Option<reqwest::Client>,
    verified: verified::VerifiedTokens,
}

#[derive(Debug, Clone, Default)]
struct Status {
    last_success: Option<OffsetDateTime>,
    last_error: Option<String>,
    fetches: u64,
}

/// An issuer's key state, for `/config_dump` and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssuerStatus {
    pub issuer: String,
    /// Key ids currently trusted (`""` for a key without one).
    pub key_ids: Vec<String>,
    /// RFC 3339 time of the last successful (re)load.
    pub last_refresh: Option<String>,
    /// The last failed load's error, cleared by a success.
    pub last_error: Option<String>,
    /// Load attempts so far (successful or not).
    pub fetches: u64,
}

impl std::fmt::Debug for JwtValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let issuers: Vec<&str> = self
            .inner
            .issuers
            .iter()
            .map(|i| i.config.issuer.as_str())
            .collect();
        f.debug_struct("JwtValidator")
            .field("issuers", &issuers)
            .finish_non_exhaustive()
    }
}

impl JwtValidator {
    /// Validates `config`, reads every `jwks_file` and every `ca_file` (startup I/O,
    /// blocking), and builds the HTTPS clients. `jwks_url` issuers have no keys until
    /// [`JwtValidator::spawn_refresh`] fetches them; their tokens fail with
    /// [`JwtError::KeysUnavailable`] meanwhile.
    pub fn new(config: &OidcConfig) -> Result<Self, OidcConfigError> {
        config.validate()?;
        let mut issuers = Vec::with_capacity(config.issuers.len());
        for ic in &config.issuers {
            let keys = match &ic.jwks_file {
                Some(path) => {
                    let bytes =
                        refresh::read_jwks_file(path).map_err(|reason| OidcConfigError::Jwks {
                            issuer: ic.issuer.clone(),
                            reason,
                        })?;
                    let set = KeySet::from_jwks(&bytes).map_err(|e| OidcConfigError::Jwks {
                        issuer: ic.issuer.clone(),
                        reason: format!("{}: {e}", path.display()),
                    })?;
                    Some(Arc::new(set))
                }
                None => None,
            };
            let client = match &ic.jwks_url {
                Some(_) => Some(refresh::https_client(ic)?),
                None => None,
            };
            let status = Status {
                last_success: keys.as_ref().map(|_| OffsetDateTime::now_utc()),
                ..Status::default()
            };
            issuers.push(IssuerState {
                config: ic.clone(),
                keys: RwLock::new(keys),
                kid_misses: AtomicU64::new(0),
                wake: Notify::new(),
                status: Mutex::new(status),
                client,
                verified: verified::VerifiedTokens::default(),
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                leeway_seconds: i64::try_from(config.leeway_seconds).unwrap_or(i64::MAX),
                issuers,
            }),
        })
    }

    /// Validates the value of an `Authorization` header (`Bearer <jwt>`) at `now`.
    /// Pure CPU work on a key snapshot: safe on the request path. An unknown `kid` also
    /// wakes the issuer's refresher (rate-limited), so a key the IdP just rotated in is
    /// picked up without waiting for the next periodic refresh.
    pub fn validate(
        &self,
        authorization: &str,
        now: OffsetDateTime,
    ) -> Result<UserClaims, JwtError> {
        let raw = bearer_token(authorization)?;
        let token = token::parse(raw)?;
        let iss = claims::issuer(&token.claims)?;
        let issuer = self
            .inner
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or(JwtError::UnknownIssuer)?;
        let keys = issuer.snapshot().ok_or(JwtError::KeysUnavailable)?;
        let digest = verified::digest(raw);
        let known = issuer.verified.contains(&keys, &digest);
        match if known { Ok(()) } else { keys.verify(&token) } {
            Ok(()) if !known => issuer.verified.insert(&keys, digest),
            Ok(()) => {}
            Err(JwtError::UnknownKey) => {
                // notify_one keeps a single permit: a flood of unknown kids costs at
                // most one extra fetch per `min_refresh_seconds`.
                issuer.kid_misses.fetch_add(1, Ordering::Relaxed);
                issuer.wake.notify_one();
                return Err(JwtError::UnknownKey);
            }
            Err(e) => return Err(e),
        }
        claims::check(
            &token.claims,
            &issuer.config,
            now.unix_timestamp(),
            self.inner.leeway_seconds,
        )
    }

    /// The configured issuers' key state.
    pub fn status(&self) -> Vec<IssuerStatus> {
        self.inner
            .issuers
            .iter()
            .map(|i| {
                let st = i.status.lock().map(|s| s.clone()).unwrap_or_default();
                IssuerStatus {
                    issuer: i.config.issuer.clone(),
                    key_ids: i.snapshot().map(|k| k.key_ids()).unwrap_or_default(),
                    last_refresh: st.last_success.map(crate::identity::rfc3339),
                    last_error: st.last_error,
                    fetches: st.fetches,
                }
            })
            .collect()
    }

    /// Starts one refresher task per issuer (see the module docs); they stop when
    /// `shutdown` is cancelled. `clock` stamps [`IssuerStatus::last_refresh`]. Call inside
    /// a tokio runtime.
    pub fn spawn_refresh(
        &self,
        clock: Arc<dyn crate::clock::Clock>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> RefreshTasks {
        refresh::spawn(self, clock, shutdown)
    }
}

impl IssuerState {
    fn snapshot(&self) -> Option<Arc<KeySet>> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(Arc::clone)
    }

    fn install(&self, keys: KeySet) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(keys));
    }
}

/// The algorithms a token may use, by JWS `alg` name.
fn allowed_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
