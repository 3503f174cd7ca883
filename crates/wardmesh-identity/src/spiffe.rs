//! SPIFFE IDs and trust domains, parsed per the SPIFFE-ID specification.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The default trust domain of a wardmesh installation.
pub const DEFAULT_TRUST_DOMAIN: &str = "wardmesh.local";

const MAX_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("spiffe id must start with \"spiffe://\" (got {0:?})")]
    Scheme(String),
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    #[error(
        "trust domain {0:?} may only contain lowercase letters, digits, '.', '-' and '_', and at most 255 characters"
    )]
    BadTrustDomain(String),
    #[error("path segment {0:?} is empty, '.' or '..', or has characters outside [A-Za-z0-9._-]")]
    BadPathSegment(String),
    #[error("spiffe id must not end with '/'")]
    TrailingSlash,
    #[error("spiffe id is longer than 2048 bytes")]
    TooLong,
    #[error("spiffe id must not contain a query, fragment, port or user info")]
    ExtraComponents,
    #[error("workload path must be /ns/<namespace>/sa/<service-account> (got {0:?})")]
    NotWorkloadPath(String),
}

/// A validated trust domain name, e.g. `wardmesh.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        if name.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain);
        }
        let ok = name.len() <= MAX_TRUST_DOMAIN_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !ok {
            return Err(SpiffeIdError::BadTrustDomain(name.to_owned()));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of the trust domain itself, `spiffe://<td>`.
    pub fn id_string(&self) -> String {
        format!("spiffe://{}", self.0)
    }
}

impl Default for TrustDomain {
    fn default() -> Self {
        Self(DEFAULT_TRUST_DOMAIN.to_owned())
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for TrustDomain {
    type Error = SpiffeIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<TrustDomain> for String {
    fn from(td: TrustDomain) -> String {
        td.0
    }
}

/// A workload's SPIFFE ID: `spiffe://<trust-domain>/<path>`.
///
/// Workload IDs are always non-root (they have a path); the trust domain's own ID is
/// [`TrustDomain::id_string`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    path: String,
}

impl SpiffeId {
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::Scheme(s.chars().take(64).collect()))?;
        if rest.contains(['?', '#', '@', ':']) {
            return Err(SpiffeIdError::ExtraComponents);
        }
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let trust_domain = TrustDomain::new(td)?;
        if path.is_empty() {
            return Err(SpiffeIdError::BadPathSegment(String::new()));
        }
        if path.ends_with('/') {
            return Err(SpiffeIdError::TrailingSlash);
        }
        for seg in path[1..].split('/') {
            let ok = !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(SpiffeIdError::BadPathSegment(seg.to_owned()));
            }
        }
        Ok(Self {
            trust_domain,
            path: path.to_owned(),
        })
    }

    /// `spiffe://<td>/ns/<namespace>/sa/<service-account>`.
    pub fn workload(
        td: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        if namespace.contains('/') || service_account.contains('/') {
            return Err(SpiffeIdError::NotWorkloadPath(format!(
                "/ns/{namespace}/sa/{service_account}"
            )));
        }
        Self::parse(&format!(
            "spiffe://{td}/ns/{namespace}/sa/{service_account}"
        ))
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// `(namespace, service_account)` when the path has the workload form.
    pub fn workload_parts(&self) -> Option<(&str, &str)> {
        let mut it = self.path[1..].split('/');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    pub fn namespace(&self) -> Option<&str> {
        self.workload_parts().map(|(ns, _)| ns)
    }

    pub fn service_account(&self) -> Option<&str> {
        self.workload_parts().map(|(_, sa)| sa)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = SpiffeIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> String {
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_ids() {
        let id = SpiffeId::parse("spiffe://wardmesh.local/ns/clinic/sa/notes-api").unwrap();
        assert_eq!(id.trust_domain().as_str(), "wardmesh.local");
        assert_eq!(id.workload_parts(), Some(("clinic", "notes-api")));
        assert_eq!(
            id.to_string(),
            "spiffe://wardmesh.local/ns/clinic/sa/notes-api"
        );
        let other = SpiffeId::parse("spiffe://wardmesh.local/agent/x").unwrap();
        assert_eq!(other.workload_parts(), None);
    }

    #[test]
    fn rejects_invalid_ids() {
        let bad = [
            ("http://wardmesh.local/ns/a/sa/b", "scheme"),
            ("spiffe://", "empty td"),
            ("spiffe://Wardmesh.local/ns/a", "uppercase td"),
            ("spiffe://wardmesh.local", "no path"),
            ("spiffe://wardmesh.local/", "trailing slash"),
            ("spiffe://wardmesh.local/ns//sa/b", "empty segment"),
            ("spiffe://wardmesh.local/ns/../sa/b", "dot-dot"),
            ("spiffe://wardmesh.local/ns/a?x=1", "query"),
            ("spiffe://wardmesh.local:443/ns/a", "port"),
            ("spiffe://user@wardmesh.local/ns/a", "userinfo"),
            ("spiffe://wardmesh.local/ns/a b", "space"),
        ];
        for (s, why) in bad {
            assert!(SpiffeId::parse(s).is_err(), "{why}: {s} should be rejected");
        }
        let long = format!("spiffe://td/{}", "a".repeat(2100));
        assert_eq!(SpiffeId::parse(&long), Err(SpiffeIdError::TooLong));
    }

    #[test]
    fn workload_constructor_validates_parts() {
        let td = TrustDomain::default();
        assert!(SpiffeId::workload(&td, "ns1", "sa1").is_ok());
        assert!(SpiffeId::workload(&td, "", "sa1").is_err());
        assert!(matches!(
            SpiffeId::workload(&td, "a/b", "sa1"),
            Err(SpiffeIdError::NotWorkloadPath(_))
        ));
    }

    #[test]
    fn serde_round_trip_validates() {
        let id: SpiffeId = serde_json::from_str("\"spiffe://wardmesh.local/ns/a/sa/b\"").unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"spiffe://wardmesh.local/ns/a/sa/b\""
        );
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://x/\"").is_err());
    }
}
