//! An issuer's verification keys, from a JWKS document (RFC 7517). Keys this agent
//! cannot use for signatures (encryption keys, HMAC secrets, RSA under 2048 bits, other
//! curves or algorithms) are skipped, so one odd key at the IdP does not discard the
//! rest; a set with no usable key is an error and the previous keys stay in force.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::JwtError;
use super::token::Parsed;

/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// RSA keys shorter than this are not used.
const MIN_RSA_BITS: usize = 2048;
/// Keys tried for a token without `kid` (each is a signature check).
const MAX_CANDIDATES: usize = 4;

/// Why a JWKS document gave no keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("the document is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("not a JWKS document ({{\"keys\": [...]}}): {0}")]
    Malformed(String),
    #[error("no usable signing key (RS256 ≥ 2048 bits, ES256 P-256, EdDSA Ed25519) among {0}")]
    NoUsableKey(usize),
}

/// Verification keys of one issuer. Immutable: a refresh builds a new set.
pub struct KeySet {
    keys: Vec<Key>,
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

/// The members of a JWK that matter here; anything else is ignored.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

impl KeySet {
    /// Parses a JWKS document.
    pub fn from_jwks(bytes: &[u8]) -> Result<Self, JwksError> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        let doc: Document =
            serde_json::from_slice(bytes).map_err(|e| JwksError::Malformed(e.to_string()))?;
        let total = doc.keys.len();
        let keys: Vec<Key> = doc
            .keys
            .into_iter()
            .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
            .filter_map(usable)
            .collect();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey(total));
        }
        Ok(Self { keys })
    }

    /// Key ids in document order (`""` for a key without one).
    pub fn key_ids(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| k.kid.clone().unwrap_or_default())
            .collect()
    }

    /// Verifies the token's signature with the key it names (`kid`), or without `kid`
    /// with each key of its algorithm.
    pub(crate) fn verify(&self, token: &Parsed<'_>) -> Result<(), JwtError> {
        let candidates: Vec<&Key> = match &token.kid {
            Some(kid) => {
                let named: Vec<&Key> = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
                    .collect();
                if named.is_empty() {
                    return Err(JwtError::UnknownKey);
                }
                // The key decides the algorithm, never the token: an RS256 header
                // naming an EC key is refused, not tried.
                let matching: Vec<&Key> =
                    named.into_iter().filter(|k| k.alg == token.alg).collect();
                if matching.is_empty() {
                    return Err(JwtError::AlgorithmNotAllowed);
                }
                matching
            }
            None => self
                .keys
                .iter()
                .filter(|k| k.alg == token.alg)
                .take(MAX_CANDIDATES)
                .collect(),
        };
        if candidates.is_empty() {
            return Err(JwtError::UnknownKey);
        }
        let ok = candidates.iter().any(|k| {
            jsonwebtoken::crypto::verify(
                token.signature,
                token.signing_input.as_bytes(),
                &k.key,
                k.alg,
            )
            .unwrap_or(false)
        });
        if ok {
            Ok(())
        } else {
            Err(JwtError::BadSignature)
        }
    }
}

/// The key and its algorithm, when this JWK is a usable signature key.
fn usable(jwk: Jwk) -> Option<Key> {
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let (alg, key) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => {
            let (n, e) = (jwk.n.as_deref()?, jwk.e.as_deref()?);
            let modulus = B64.decode(n).ok()?;
            let bits = modulus.iter().skip_while(|b| **b == 0).count() * 8;
            if bits < MIN_RSA_BITS {
                return None;
            }
            (
                Algorithm::RS256,
                DecodingKey::from_rsa_components(n, e).ok()?,
            )
        }
        ("EC", Some("P-256")) => {
            let (x, y) = (jwk.x.as_deref()?, jwk.y.as_deref()?);
            let ok_len = |c: &str| B64.decode(c).is_ok_and(|b| b.len() == 32);
            if !ok_len(x) || !ok_len(y) {
                return None;
            }
            (
                Algorithm::ES256,
                DecodingKey::from_ec_components(x, y).ok()?,
            )
        }
        ("OKP", Some("Ed25519")) => {
            let x = jwk.x.as_deref()?;
            if !B64.decode(x).is_ok_and(|b| b.len() == 32) {
                return None;
            }
            (Algorithm::EdDSA, DecodingKey::from_ed_components(x).ok()?)
        }
        _ => return None,
    };
    // A key that declares another algorithm (RS512, PS256, RSA-OAEP, …) is not used
    // for this one.
    let declared_ok = match jwk.alg.as_deref() {
        None => true,
        Some("RS256") => alg == Algorithm::RS256,
        Some("ES256") => alg == Algorithm::ES256,
        Some("EdDSA") | Some("Ed25519") => alg == Algorithm::EdDSA,
        Some(_) => false,
    };
    declared_ok.then_some(Key {
        kid: jwk.kid,
        alg,
        key,
    })
}
