//! Claim checks on a token whose signature verified: `exp` (required), `nbf`, `aud`
//! (required, one of the issuer's audiences), `sub` (required), then the policy-facing
//! `roles` and `amr`. Pure: the time is an argument, so every boundary is testable.

use serde_json::{Map, Value};

use super::{IssuerConfig, JwtError, UserClaims};

/// `amr` values (RFC 8176) that mean a second factor was used: `mfa` itself, or a
/// possession factor (`otp`, `hwk`, `swk`, `sc`, `sms`, `tel`), which IdPs report when
/// it was used on top of, or as a phishing-resistant replacement for, a password.
/// Knowledge (`pwd`, `pin`, `kba`) and biometrics alone (`fpt`, `face`, …) are not MFA.
pub const MFA_AMR_VALUES: &[&str] = &["mfa", "otp", "hwk", "swk", "sc", "sms", "tel"];

/// Whether `amr` shows multi-factor authentication (see [`MFA_AMR_VALUES`]).
pub fn amr_means_mfa(amr: &[String]) -> bool {
    amr.iter().any(|m| MFA_AMR_VALUES.contains(&m.as_str()))
}

/// The unverified `iss`, to pick the issuer whose keys must verify the token.
pub(crate) fn issuer(claims: &Map<String, Value>) -> Result<&str, JwtError> {
    match claims.get("iss") {
        None | Some(Value::Null) => Err(JwtError::MissingClaim("iss")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(JwtError::InvalidClaim("iss")),
    }
}

/// Checks the claims of a verified token from `issuer` at unix time `now`, allowing
/// `leeway` seconds of clock skew, and extracts the user.
pub(crate) fn check(
    claims: &Map<String, Value>,
    issuer: &IssuerConfig,
    now: i64,
    leeway: i64,
) -> Result<UserClaims, JwtError> {
    let iss = self::issuer(claims)?;
    if iss != issuer.issuer {
        return Err(JwtError::UnknownIssuer);
    }
    // A token without `exp` would be valid forever: refuse it.
    let exp = numeric_date(claims, "exp")?.ok_or(JwtError::MissingClaim("exp"))?;
    if now >= exp.saturating_add(leeway) {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && now.saturating_add(leeway) < nbf
    {
        return Err(JwtError::NotYetValid);
    }
    let audiences = string_or_list(claims.get("aud"), "aud")?;
    if audiences.is_empty() {
        return Err(JwtError::MissingClaim("aud"));
    }
    if !audiences.iter().any(|a| issuer.audiences.contains(a)) {
        return Err(JwtError::WrongAudience);
    }
    let sub = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            return Err(JwtError::MissingClaim("sub"));
        }
        Some(_) => return Err(JwtError::InvalidClaim("sub")),
    };
    let roles = string_or_list(lookup(claims, &issuer.roles_claim), "roles")?;
    let amr = string_or_list(claims.get("amr"), "amr")?;
    Ok(UserClaims {
        sub,
        mfa: amr_means_mfa(&amr),
        roles,
        amr,
        iss: iss.to_owned(),
    })
}

/// A NumericDate claim (seconds since the epoch; fractions are truncated).
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or(JwtError::InvalidClaim(name)),
        Some(_) => Err(JwtError::InvalidClaim(name)),
    }
}

/// A claim that is absent (empty), a string (one value; `roles` given as a
/// space-separated string is split, as some IdPs do for scopes), or a list of strings.
fn string_or_list(value: Option<&Value>, name: &'static str) -> Result<Vec<String>, JwtError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if name == "aud" => Ok(vec![s.clone()]),
        Some(Value::String(s)) => Ok(s.split_whitespace().map(str::to_owned).collect()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(JwtError::InvalidClaim(name)),
        Some(_) => Err(JwtError::InvalidClaim(name)),
    }
}

/// `roles_claim` may be a dotted path into nested objects (Keycloak's
/// `realm_access.roles`); a top-level claim whose name contains dots wins.
fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for part in parts {
        cur = cur.as_object()?.get(part)?;
    }
    Some(cur)
}
