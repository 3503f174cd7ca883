//! Everything the inbound proxy consults besides the authorizer itself: the end user's
//! bearer token, the route the path matches, and the policy context (consent for the
//! route's subject, the user's break-glass grant). [`Gate::enrich`] turns one request
//! into the [`RequestExtras`] of its policy input plus the facts telemetry needs. Pure
//! apart from reading the current snapshots.

use http::HeaderMap;
use time::OffsetDateTime;

use super::{AuthzHandle, RequestExtras};
use crate::jwt::{JwtError, JwtValidator};
use crate::policy::PolicyHandle;
use crate::routes::RouteTable;

/// The inbound decision's inputs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gate {
    pub authz: AuthzHandle,
    pub policy: PolicyHandle,
    /// `None`: no OIDC issuer configured; bearer tokens pass to the app unexamined.
    pub jwt: Option<JwtValidator>,
}

/// One request's facts beyond the wire, for the policy and for telemetry.
#[derive(Debug, Clone, Default)]
pub struct Enriched {
    pub extras: RequestExtras,
    /// Route template (or `unmatched`).
    pub route: String,
    /// The route carries protected health information.
    pub phi: bool,
    /// HMAC pseudonym of the route's subject (never the raw id).
    pub subject_pseudonym: Option<String>,
    pub user_sub: Option<String>,
    /// The break-glass grant the request was presented under.
    pub break_glass_grant: Option<String>,
}

impl Gate {
    pub fn new(authz: AuthzHandle, policy: PolicyHandle, jwt: Option<JwtValidator>) -> Self {
        Self { authz, policy, jwt }
    }

    /// The extras of one request; an invalid bearer token is an error (401), never an
    /// anonymous request.
    pub fn enrich(
        &self,
        routes: &RouteTable,
        path: &str,
        headers: &HeaderMap,
        now: OffsetDateTime,
    ) -> Result<Enriched, JwtError> {
        let user = match (&self.jwt, bearer_header(headers)) {
            (Some(v), Some(h)) => Some(v.validate(h, now)?),
            _ => None,
        };
        let m = routes.lookup(path);
        let ctx = self.policy.context();
        let subject_pseudonym = m
            .subject
            .filter(|_| ctx.has_key())
            .map(|s| ctx.pseudonym(s));
        let consent = subject_pseudonym.as_deref().and_then(|p| ctx.consent(p));
        let grant = user.as_ref().and_then(|u| ctx.break_glass(&u.sub, now));
        Ok(Enriched {
            route: m.template.to_owned(),
            phi: m.phi,
            user_sub: user.as_ref().map(|u| u.sub.clone()),
            break_glass_grant: grant.as_ref().map(|(id, _)| id.clone()),
            subject_pseudonym,
            extras: RequestExtras {
                route: Some(m.template.to_owned()),
                user: user.and_then(|u| serde_json::to_value(u).ok()),
                break_glass: grant.map(|(_, v)| v),
                consent,
            },
        })
    }
}

/// The `Authorization` header when it carries a bearer token (other schemes are the
/// app's business).
fn bearer_header(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok();
    match v {
        Some(s) if s.len() > 7 && s[..7].eq_ignore_ascii_case("bearer ") => Some(s),
        // Present but unreadable or a bare "Bearer": let the validator say what is wrong.
        Some(s) if s.trim().eq_ignore_ascii_case("bearer") => Some(s),
        None => Some(""),
        _ => None,
    }
}
