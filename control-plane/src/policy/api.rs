//! HTTP routes of the policy service: operator endpoints (token + role) and the two agent
//! endpoints (mTLS identity). One line into the service each.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use http::HeaderMap;
use serde::Deserialize;
use wardmesh_proto::operator::Role;
use wardmesh_proto::paths;
use wardmesh_proto::policy::{
    ActivateRequest, BreakGlassRequest, BreakGlassReviewRequest, ConsentRequest,
    PolicyContextRequest, PolicyMode,
};

use super::MAX_BUNDLE_BYTES;
use crate::api::{ApiState, JsonBody, PeerIdentity, bearer, query, reply};
use crate::error::ApiFailure;

const MAX_CONTEXT_WAIT: u32 = 60;

/// Operator endpoints (the caller wraps them in the API-call audit layer).
pub fn operator_routes() -> Router<ApiState> {
    Router::new()
        .route(
            paths::POLICY,
            get(status)
                .post(push)
                .layer(DefaultBodyLimit::max(MAX_BUNDLE_BYTES)),
        )
        .route(paths::POLICY_ACTIVATE, post(activate))
        .route(paths::CONSENTS, get(list_consents).put(set_consent))
        .route(paths::BREAKGLASS, get(list_break_glass).post(grant))
        .route(paths::BREAKGLASS_REVIEW, post(review))
}

/// Agent endpoints (mTLS identity).
pub fn agent_routes() -> Router<ApiState> {
    Router::new()
        .route(paths::AGENT_POLICY_BUNDLE, get(agent_bundle))
        .route(paths::AGENT_POLICY_CONTEXT, post(agent_context))
}

async fn status(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    reply(
        async {
            s.operator.authorize(bearer(&headers), Role::Viewer).await?;
            s.policy.status().await
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushQuery {
    mode: Option<String>,
}

async fn push(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: Result<Query<PushQuery>, QueryRejection>,
    body: Bytes,
) -> Response {
    reply(
        async {
            let op = s
                .operator
                .authorize(bearer(&headers), Role::SecurityAdmin)
                .await?;
            let mode = match query(q)?.mode {
                None => PolicyMode::Enforce,
                Some(m) => PolicyMode::parse(&m).ok_or_else(|| {
                    ApiFailure::bad_request(
                        "invalid_mode",
                        format!("mode {m:?} is not `enforce` or `dry-run`"),
                    )
                })?,
            };
            s.policy.push(&op, &body, mode).await
        }
        .await,
    )
}

async fn activate(
    State(s): State<ApiState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ActivateRequest>,
) -> Response {
    reply(
        async {
            let op = s
                .operator
                .authorize(bearer(&headers), Role::SecurityAdmin)
                .await?;
            s.policy.activate(&op, req).await
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevisionQuery {
    revision: String,
}

async fn agent_bundle(
    State(s): State<ApiState>,
    Extension(peer): Extension<PeerIdentity>,
    q: Result<Query<RevisionQuery>, QueryRejection>,
) -> Response {
    let res = async {
        agent(&s, &peer).await?;
        let q = query(q)?;
        s.policy.bundle(&q.revision).await
    }
    .await;
    match res {
        Ok(bytes) => ([(http::header::CONTENT_TYPE, "application/gzip")], bytes).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn agent_context(
    State(s): State<ApiState>,
    Extension(peer): Extension<PeerIdentity>,
    JsonBody(req): JsonBody<PolicyContextRequest>,
) -> Response {
    reply(
        async {
            agent(&s, &peer).await?;
            let wait = Duration::from_secs(u64::from(req.wait_seconds.min(MAX_CONTEXT_WAIT)));
            let mut rx = s.policy.context.subscribe();
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let ctx = rx.borrow_and_update().clone();
                if ctx.generation != req.generation || tokio::time::Instant::now() >= deadline {
                    return Ok(ctx.as_ref().clone());
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return Ok(ctx.as_ref().clone()) },
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
        .await,
    )
}

/// Agent endpoints: an SVID from this mesh, not quarantined.
async fn agent(s: &ApiState, peer: &PeerIdentity) -> Result<(), ApiFailure> {
    let Some(id) = &peer.0 else {
        return Err(ApiFailure::unauthorized(
            "client_certificate_required",
            "this endpoint requires the agent's SVID as TLS client certificate",
        ));
    };
    if s.operator.store.is_quarantined(&id.to_string()).await? {
        return Err(ApiFailure::forbidden(
            "quarantined",
            format!("{id} is quarantined"),
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectQuery {
    subject: Option<String>,
}

async fn list_consents(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: Result<Query<SubjectQuery>, QueryRejection>,
) -> Response {
    reply(
        async {
            s.operator
                .authorize(bearer(&headers), Role::Auditor)
                .await?;
            let q = query(q)?;
            s.policy.list_consents(q.subject.as_deref()).await
        }
        .await,
    )
}

async fn set_consent(
    State(s): State<ApiState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ConsentRequest>,
) -> Response {
    reply(
        async {
            let op = s
                .operator
                .authorize(bearer(&headers), Role::SecurityAdmin)
                .await?;
            s.policy.set_consent(&op, req).await
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingQuery {
    pending: Option<bool>,
}

async fn list_break_glass(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: Result<Query<PendingQuery>, QueryRejection>,
) -> Response {
    reply(
        async {
            s.operator
                .authorize(bearer(&headers), Role::Auditor)
                .await?;
            let q = query(q)?;
            s.policy.list_break_glass(q.pending.unwrap_or(false)).await
        }
        .await,
    )
}

async fn grant(
    State(s): State<ApiState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<BreakGlassRequest>,
) -> Response {
    reply(
        async {
            let op = s
                .operator
                .authorize(bearer(&headers), Role::SecurityAdmin)
                .await?;
            s.policy.grant_break_glass(&op, req).await
        }
        .await,
    )
}

async fn review(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(grant_id): Path<String>,
    JsonBody(req): JsonBody<BreakGlassReviewRequest>,
) -> Response {
    reply(
        async {
            let op = s
                .operator
                .authorize(bearer(&headers), Role::Auditor)
                .await?;
            s.policy.review_break_glass(&op, &grant_id, req).await
        }
        .await,
    )
}
