//! Attestation: what a workload presents to prove which SPIFFE ID it may have.
//!
//! - Kubernetes projected service-account tokens (audience `wardmesh`), verified against
//!   the API server's OIDC keys (JWKS); the ID comes from the verified claims only.
//! - Single-use join tokens for hosts outside Kubernetes; only their SHA-256 is stored.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rand::RngCore;
use serde::Deserialize;
use sha2::Digest;

use crate::spiffe::{SpiffeId, TrustDomain};

/// Audience every projected token for wardmesh must carry.
pub const SA_TOKEN_AUDIENCE: &str = "wardmesh";
const JOIN_TOKEN_PREFIX: &str = "wmjt_";
/// Tokens larger than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttestError {
    #[error("service-account token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("service-account token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("service-account token uses algorithm {0:?}; only RS256, ES256 and EdDSA are accepted")]
    Algorithm(String),
    #[error("service-account token is signed by key {0:?}, which is not in the configured JWKS")]
    UnknownKey(String),
    #[error("service-account token signature does not verify")]
    Signature,
    #[error("service-account token has expired")]
    Expired,
    #[error("service-account token is not valid yet (nbf in the future)")]
    NotYetValid,
    #[error("service-account token audience is not {SA_TOKEN_AUDIENCE:?}")]
    Audience,
    #[error("service-account token issuer is not the configured issuer {0:?}")]
    Issuer(String),
    #[error("service-account token lacks the kubernetes.io namespace/serviceaccount claims")]
    MissingClaims,
    #[error("service-account token claims disagree: sub {sub:?} vs kubernetes.io claims")]
    InconsistentClaims { sub: String },
    #[error("jwks is invalid: {0}")]
    BadJwks(String),
    #[error("namespace or service account name is not a valid SPIFFE path segment")]
    BadName,
}

/// Verifies projected service-account tokens against an issuer's JWKS.
pub struct SaTokenVerifier {
    issuer: String,
    trust_domain: TrustDomain,
    keys: Vec<(Option<String>, DecodingKey, Algorithm)>,
}

impl std::fmt::Debug for SaTokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaTokenVerifier")
            .field("issuer", &self.issuer)
            .field("keys", &self.keys.len())
            .finish()
    }
}

#[derive(Debug, Deserialize)]
struct SaClaims {
    sub: String,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<K8sClaims>,
}

#[derive(Debug, Deserialize)]
struct K8sClaims {
    namespace: String,
    serviceaccount: NamedRef,
}

#[derive(Debug, Deserialize)]
struct NamedRef {
    name: String,
}

fn jwk_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Result<Algorithm, AttestError> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, KeyAlgorithm};
    if let Some(alg) = jwk.common.key_algorithm {
        return match alg {
            KeyAlgorithm::RS256 => Ok(Algorithm::RS256),
            KeyAlgorithm::ES256 => Ok(Algorithm::ES256),
            KeyAlgorithm::EdDSA => Ok(Algorithm::EdDSA),
            other => Err(AttestError::BadJwks(format!(
                "unsupported key alg {other:?}"
            ))),
        };
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Ok(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Ok(Algorithm::ES256)
        }
        AlgorithmParameters::OctetKeyPair(_) => Ok(Algorithm::EdDSA),
        _ => Err(AttestError::BadJwks("unsupported key type".into())),
    }
}

impl SaTokenVerifier {
    pub fn new(
        issuer: &str,
        jwks_json: &str,
        trust_domain: TrustDomain,
    ) -> Result<Self, AttestError> {
        let set: JwkSet =
            serde_json::from_str(jwks_json).map_err(|e| AttestError::BadJwks(e.to_string()))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let alg = jwk_algorithm(jwk)?;
            let key =
                DecodingKey::from_jwk(jwk).map_err(|e| AttestError::BadJwks(e.to_string()))?;
            keys.push((jwk.common.key_id.clone(), key, alg));
        }
        if keys.is_empty() {
            return Err(AttestError::BadJwks("no keys".into()));
        }
        Ok(Self {
            issuer: issuer.to_owned(),
            trust_domain,
            keys,
        })
    }

    /// The workload ID this token proves: `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn verify(&self, token: &str) -> Result<SpiffeId, AttestError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AttestError::TooLarge);
        }
        // jsonwebtoken fails on algorithm names it does not know ("none") while parsing
        // the header JSON, so name the algorithm from the raw header instead.
        let header = jsonwebtoken::decode_header(token).map_err(|e| match alg_name(token) {
            Some(alg) if alg.parse::<Algorithm>().is_err() => AttestError::Algorithm(alg),
            _ => AttestError::Malformed(e.to_string()),
        })?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
        ) {
            return Err(AttestError::Algorithm(format!("{:?}", header.alg)));
        }
        let candidates: Vec<_> = self
            .keys
            .iter()
            .filter(|(kid, _, alg)| {
                *alg == header.alg
                    && (header.kid.is_none() || kid.as_deref() == header.kid.as_deref())
            })
            .collect();
        if candidates.is_empty() {
            return Err(AttestError::UnknownKey(header.kid.unwrap_or_default()));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[SA_TOKEN_AUDIENCE]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        let mut last = AttestError::Signature;
        for (_, key, _) in candidates {
            match jsonwebtoken::decode::<SaClaims>(token, key, &validation) {
                Ok(data) => return self.to_id(data.claims),
                Err(e) => last = map_jwt_error(e, &self.issuer),
            }
            if last != AttestError::Signature {
                break;
            }
        }
        Err(last)
    }

    fn to_id(&self, claims: SaClaims) -> Result<SpiffeId, AttestError> {
        let k = claims.kubernetes.ok_or(AttestError::MissingClaims)?;
        let expected_sub = format!(
            "system:serviceaccount:{}:{}",
            k.namespace, k.serviceaccount.name
        );
        if claims.sub != expected_sub {
            return Err(AttestError::InconsistentClaims { sub: claims.sub });
        }
        SpiffeId::workload(&self.trust_domain, &k.namespace, &k.serviceaccount.name)
            .map_err(|_| AttestError::BadName)
    }
}

fn alg_name(token: &str) -> Option<String> {
    token
        .split('.')
        .next()
        .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("alg").and_then(|a| a.as_str()).map(str::to_owned))
}

fn map_jwt_error(e: jsonwebtoken::errors::Error, issuer: &str) -> AttestError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => AttestError::Expired,
        K::ImmatureSignature => AttestError::NotYetValid,
        K::InvalidAudience => AttestError::Audience,
        K::InvalidIssuer => AttestError::Issuer(issuer.to_owned()),
        K::InvalidSignature => AttestError::Signature,
        K::MissingRequiredClaim(_) | K::Json(_) => AttestError::MissingClaims,
        other => AttestError::Malformed(format!("{other:?}")),
    }
}

/// A new join token (shown once to the operator) and the hash to store.
pub fn new_join_token() -> (String, String) {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = format!("{JOIN_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw));
    let hash = hash_secret(&token);
    (token, hash)
}

/// SHA-256 hex of a bearer secret (join or operator token): what the store keeps.
pub fn hash_secret(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.trim().as_bytes()))
}

/// Cheap shape check before touching the store.
pub fn looks_like_join_token(token: &str) -> bool {
    token.len() < 128
        && token
            .strip_prefix(JOIN_TOKEN_PREFIX)
            .is_some_and(|rest| URL_SAFE_NO_PAD.decode(rest).is_ok_and(|b| b.len() == 32))
}

#[cfg(test)]
mod tests;
