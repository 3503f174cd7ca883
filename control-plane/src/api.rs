//! The HTTP adapter: routes, extractors and the mapping of bodies and errors. Handlers
//! are one line into the services; no decisions are made here.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Query, Request, State};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use wardmesh_identity::SpiffeId;
use wardmesh_proto::identity::{AttestRequest, RenewRequest, SyncRequest};
use wardmesh_proto::operator::{CreateJoinTokenRequest, QuarantineRequest, Role};
use wardmesh_proto::paths;

use crate::audit::AuditLog;
use crate::error::ApiFailure;
use crate::identity::IdentityService;
use crate::operator::OperatorService;

/// Request bodies above this are refused with 413 before parsing.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The verified SPIFFE ID of the TLS client, if it presented a certificate.
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity(pub Option<SpiffeId>);

#[derive(Debug, Clone)]
pub struct ApiState {
    pub identity: IdentityService,
    pub operator: OperatorService,
    pub audit: AuditLog,
    pub policy: crate::policy::PolicyService,
    pub registry: Arc<prometheus::Registry>,
}

/// `Json<T>` whose rejections become [`ApiFailure`] bodies that say what was wrong.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiFailure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(rej) => {
                let status = rej.status();
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "body_too_large"
                } else if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
                    "content_type_json_required"
                } else {
                    "invalid_body"
                };
                Err(ApiFailure::new(status, code, rej.body_text()))
            }
        }
    }
}

/// A query string, or a 400 that says what was wrong with it.
pub(crate) fn query<T>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiFailure> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiFailure::bad_request("invalid_query", e.body_text()))
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

pub(crate) fn reply<T: serde::Serialize>(res: Result<T, ApiFailure>) -> Response {
    match res {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

pub fn router(state: ApiState) -> Router {
    // Every call to an operator endpoint, allowed or not, is an audit entry.
    let operator = Router::new()
        .route(paths::JOIN_TOKENS, post(create_join_token))
        .route(
            paths::QUARANTINE,
            get(list_quarantine).post(quarantine).delete(unquarantine),
        )
        .route(paths::AGENTS, get(list_agents))
        .route(paths::ISSUANCES, get(list_issuances))
        .route(paths::EVENTS, get(list_events))
        .route(paths::CA, get(ca_status))
        .route(paths::CA_RELOAD, post(ca_reload))
        .route(paths::AUDIT_ENTRIES, get(crate::audit::api::entries))
        .route(
            paths::AUDIT_CHECKPOINTS,
            get(crate::audit::api::checkpoints),
        )
        .route(paths::AUDIT_KEY, get(crate::audit::api::key))
        .route(
            paths::AUDIT_SUBJECT_LOOKUP,
            get(crate::audit::api::subject_lookup),
        )
        .route(
            paths::AUDIT_DISCLOSURES,
            post(crate::audit::disclosures::handler),
        )
        .merge(crate::policy::operator_routes())
        .route_layer(from_fn_with_state(
            state.clone(),
            crate::audit::api::record_operator_call,
        ));
    Router::new()
        .route(paths::ATTEST, post(attest))
        .route(paths::RENEW, post(renew))
        .route(paths::AGENT_SYNC, post(sync))
        .route(paths::FLOWS, crate::flows::api::routes(state.clone()))
        .merge(crate::policy::agent_routes())
        .merge(operator)
        .route(paths::LIVE, get(|| async { "live\n" }))
        .route(paths::READY, get(|| async { "ready\n" }))
        .route(paths::METRICS, get(metrics))
        .fallback(|| async {
            ApiFailure::not_found("not_found", "no such endpoint; see api/openapi.yaml")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn attest(State(s): State<ApiState>, JsonBody(req): JsonBody<AttestRequest>) -> Response {
    reply(s.identity.attest(req).await)
}

async fn renew(
    State(s): State<ApiState>,
    Extension(peer): Extension<PeerIdentity>,
    JsonBody(req): JsonBody<RenewRequest>,
) -> Response {
    reply(s.identity.renew(peer.0.as_ref(), req).await)
}

async fn sync(
    State(s): State<ApiState>,
    Extension(peer): Extension<PeerIdentity>,
    JsonBody(req): JsonBody<SyncRequest>,
) -> Response {
    reply(s.operator.sync(peer.0.as_ref(), req).await)
}

async fn create_join_token(
    State(s): State<ApiState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CreateJoinTokenRequest>,
) -> Response {
    reply(
        async {
            let op = s
                .operator
                .authorize(bearer(&headers), Role::SecurityAdmin)
                .await?;
            s.operator.create_join_token(&op, req).await
        }
        .await,
    )
}

async fn list_quarantine(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    reply(
        async {
            s.operator.authorize(bearer(&headers), Role::Viewer).await?;
            s.operator.list_quarantined().await
        }
        .await,
    )
}

async fn quarantine(
    State(s): State<ApiState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<QuarantineRequest>,
) -> Response {
    reply(
        async {
            let op = s
                .operator
                .authorize(bearer(&headers), Role::SecurityAdmin)
                .await?;
            s.operator.quarantine(&op, req).await
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdQuery {
    spiffe_id: String,
}

async fn unquarantine(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: Result<Query<IdQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    reply(
        async {
            let op = s
                .operator
                .authorize(bearer(&headers), Role::SecurityAdmin)
                .await?;
            let q = query(q)?;
            s.operator.unquarantine(&op, &q.spiffe_id).await
        }
        .await,
    )
}

async fn list_agents(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    reply(
        async {
            s.operator.authorize(bearer(&headers), Role::Viewer).await?;
            s.operator.list_agents().await
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    spiffe_id: Option<String>,
    after: Option<i64>,
    limit: Option<u32>,
}

async fn list_issuances(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    reply(
        async {
            s.operator
                .authorize(bearer(&headers), Role::Auditor)
                .await?;
            let q = query(q)?;
            s.operator
                .list_issuances(q.spiffe_id.as_deref(), q.limit.unwrap_or(100))
                .await
        }
        .await,
    )
}

async fn list_events(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    reply(
        async {
            s.operator
                .authorize(bearer(&headers), Role::Auditor)
                .await?;
            let q = query(q)?;
            s.operator
                .list_events(q.after.unwrap_or(0), q.limit.unwrap_or(100))
                .await
        }
        .await,
    )
}

async fn ca_status(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    reply(
        async {
            s.operator.authorize(bearer(&headers), Role::Viewer).await?;
            Ok(s.operator.ca_status())
        }
        .await,
    )
}

async fn ca_reload(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    reply(
        async {
            let op = s
                .operator
                .authorize(bearer(&headers), Role::SecurityAdmin)
                .await?;
            s.operator.reload_ca(&op).await
        }
        .await,
    )
}

async fn metrics(State(s): State<ApiState>) -> Response {
    let mut buf = String::new();
    let encoder = prometheus::TextEncoder::new();
    match encoder.encode_utf8(&s.registry.gather(), &mut buf) {
        Ok(()) => ([(http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], buf).into_response(),
        Err(_) => ApiFailure::internal("metrics").into_response(),
    }
}
