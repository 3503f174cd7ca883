//! HTTP side of the audit log: the audit endpoints, and the layer that records every call
//! to an operator endpoint as an `operator.api` entry.
//!
//! The entry holds the method, the route *template* (never the raw path or query string:
//! those can carry patient ids), the caller's name and role, and the outcome. Tokens never
//! appear. For reads the entry is written before the answer leaves: if it cannot be
//! written the caller gets 503 instead of the data (no disclosure without audit). Writes
//! are applied (and recorded as their own events) already, so their answer stands.

use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;
use wardmesh_identity::attest::hash_secret;
use wardmesh_proto::operator::Role;

use super::{AuditRecord, EntriesQuery, kinds};
use crate::api::{ApiState, bearer, query, reply};
use crate::error::ApiFailure;

/// `GET /v1/audit/entries` (auditor).
pub async fn entries(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: Result<Query<EntriesQuery>, QueryRejection>,
) -> Response {
    reply(
        async {
            s.operator
                .authorize(bearer(&headers), Role::Auditor)
                .await?;
            let q = query(q)?;
            s.audit.entries(q).await
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    after: Option<i64>,
    limit: Option<u32>,
}

/// `GET /v1/audit/checkpoints` (auditor).
pub async fn checkpoints(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    reply(
        async {
            s.operator
                .authorize(bearer(&headers), Role::Auditor)
                .await?;
            let q = query(q)?;
            s.audit.checkpoints(q.after, q.limit).await
        }
        .await,
    )
}

/// `GET /v1/audit/subject-lookup` (auditor).
pub async fn subject_lookup(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    reply(
        async {
            s.operator
                .authorize(bearer(&headers), Role::Auditor)
                .await?;
            s.audit.subject_lookup().await
        }
        .await,
    )
}

/// `GET /v1/audit/key` (viewer): the public key is not secret; pinning it is the point.
pub async fn key(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    reply(
        async {
            s.operator.authorize(bearer(&headers), Role::Viewer).await?;
            Ok(s.audit.key_info())
        }
        .await,
    )
}

/// Who is calling, as far as the token says (the handler decides what they may do).
struct Caller {
    actor: String,
    role: Option<&'static str>,
}

async fn identify(s: &ApiState, headers: &HeaderMap) -> Caller {
    let Some(token) = bearer(headers) else {
        return Caller {
            actor: "anonymous".to_owned(),
            role: None,
        };
    };
    if token.len() > 256 {
        return unknown_token();
    }
    match s
        .operator
        .store
        .find_operator_token(&hash_secret(token))
        .await
    {
        Ok(Some(t)) => Caller {
            actor: format!("operator:{}", t.name),
            role: Role::parse(&t.role).map(Role::as_str),
        },
        Ok(None) => unknown_token(),
        Err(e) => {
            tracing::warn!(error = %e, "could not look up the caller's token for the audit log");
            Caller {
                actor: "unidentified".to_owned(),
                role: None,
            }
        }
    }
}

fn unknown_token() -> Caller {
    Caller {
        actor: "unknown-token".to_owned(),
        role: None,
    }
}

/// A closed set of outcomes, from the status.
fn outcome(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "allowed",
        401 => "unauthenticated",
        403 => "denied",
        400..=499 => "rejected",
        _ => "failed",
    }
}

/// Layer on the operator routes: runs the handler, then appends the `operator.api` entry.
pub async fn record_operator_call(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let caller = identify(&s, req.headers()).await;
    let resp = next.run(req).await;
    let status = resp.status();
    let record =
        AuditRecord::new(kinds::OPERATOR_API, &caller.actor, &template).detail(serde_json::json!({
            "method": method.as_str(),
            "path": template,
            "role": caller.role,
            "outcome": outcome(status),
            "status": status.as_u16(),
        }));
    match s.audit.append(record).await {
        Ok(_) => resp,
        Err(e) => {
            tracing::error!(error = %e, method = %method, path = %template, "could not record an operator call in the audit log");
            if method == Method::GET && status.is_success() {
                ApiFailure::internal("audit_unavailable").into_response()
            } else {
                resp
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_a_closed_set() {
        let cases = [
            (200, "allowed"),
            (204, "allowed"),
            (400, "rejected"),
            (401, "unauthenticated"),
            (403, "denied"),
            (404, "rejected"),
            (413, "rejected"),
            (503, "failed"),
        ];
        for (code, want) in cases {
            assert_eq!(outcome(StatusCode::from_u16(code).unwrap()), want, "{code}");
        }
    }
}
