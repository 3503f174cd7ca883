//! Taking a compact JWS apart, before any key is involved: the `Bearer` scheme, the size
//! cap, the three base64url parts, the header's `alg` (refused unless allowed, so
//! `alg: none` and HMAC never reach a key) and the claims object. Pure.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::{JwtError, allowed_algorithm};

/// Largest accepted token. IdP tokens with a few dozen roles stay well below; the cap
/// bounds the decoding work an unauthenticated caller can cause.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// A token whose shape and algorithm are acceptable; the signature is not checked yet.
#[derive(Debug)]
pub(crate) struct Parsed<'a> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// `header.payload`: what the signature covers.
    pub signing_input: &'a str,
    /// The base64url signature part.
    pub signature: &'a str,
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
    /// Extensions the sender says must be understood; we understand none.
    crit: Option<serde_json::Value>,
}

/// The token of an `Authorization` header value: `Bearer <token>` (scheme
/// case-insensitive, RFC 6750).
pub fn bearer_token(authorization: &str) -> Result<&str, JwtError> {
    if authorization.len() > MAX_TOKEN_BYTES + 64 {
        return Err(JwtError::TooLarge);
    }
    let value = authorization.trim();
    let (scheme, rest) = value.split_once(' ').ok_or(JwtError::Malformed(
        "the Authorization header is not `Bearer <token>`",
    ))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(JwtError::Malformed(
            "the Authorization header is not `Bearer <token>`",
        ));
    }
    let token = rest.trim_start();
    if token.is_empty() {
        return Err(JwtError::Malformed("the bearer token is empty"));
    }
    Ok(token)
}

pub(crate) fn parse(token: &str) -> Result<Parsed<'_>, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed(
            "not a compact JWS (header.payload.signature)",
        ));
    };
    let header: Header = decode_json(h).ok_or(JwtError::Malformed(
        "the JWT header is not base64url-encoded JSON",
    ))?;
    // The algorithm decides before anything else, so `none` is refused as such (and not
    // as "malformed" because its signature part is empty).
    let alg = header
        .alg
        .as_deref()
        .and_then(allowed_algorithm)
        .ok_or(JwtError::AlgorithmNotAllowed)?;
    if header.crit.is_some() {
        return Err(JwtError::Malformed(
            "the JWT header has `crit` extensions, which are not supported",
        ));
    }
    let claims: serde_json::Value = decode_json(p).ok_or(JwtError::Malformed(
        "the JWT payload is not base64url-encoded JSON",
    ))?;
    let serde_json::Value::Object(claims) = claims else {
        return Err(JwtError::Malformed("the JWT payload is not a JSON object"));
    };
    if s.is_empty() || B64.decode(s).is_err() {
        return Err(JwtError::Malformed("the JWT signature is not base64url"));
    }
    Ok(Parsed {
        alg,
        kid: header.kid,
        claims,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature: s,
    })
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    let bytes = B64.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}
