//! HTTP side of flow telemetry: `POST /v1/flows` (agents, mTLS) and `GET /v1/flows`
//! (operators, viewer role; recorded as an `operator.api` audit entry like every operator
//! call).

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::handler::Handler as _;
use axum::middleware::from_fn_with_state;
use axum::response::Response;
use axum::routing::{MethodRouter, get};
use bytes::Bytes;
use http::HeaderMap;
use wardmesh_proto::flow::{FlowPage, IngestAck, IngestBatch, MAX_BATCH_BYTES};
use wardmesh_proto::operator::Role;

use super::{FlowsQuery, audit_for, check_batch};
use crate::api::{ApiState, PeerIdentity, bearer, query, reply};
use crate::error::ApiFailure;

/// Both methods of `/v1/flows`: only the operator read goes through the audit layer (an
/// agent's batch writes its own audit entries), and only ingest gets the large body limit.
pub fn routes(state: ApiState) -> MethodRouter<ApiState> {
    get(list)
        .route_layer(from_fn_with_state(
            state,
            crate::audit::api::record_operator_call,
        ))
        .post(ingest.layer(DefaultBodyLimit::max(MAX_BATCH_BYTES)))
}

/// `POST /v1/flows`.
pub async fn ingest(
    State(s): State<ApiState>,
    Extension(peer): Extension<PeerIdentity>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    reply(
        async {
            let peer = peer.0.ok_or_else(|| {
                ApiFailure::unauthorized(
                    "client_certificate_required",
                    "flow ingest is for agents: present the workload's X509-SVID",
                )
            })?;
            let body = body.map_err(|e| ApiFailure::new(e.status(), "invalid_body", e.body_text()))?;
            let batch: IngestBatch = serde_json::from_slice(&body).map_err(|e| {
                ApiFailure::bad_request("invalid_batch", format!("not a flow batch: {e}"))
            })?;
            check_batch(&peer, &batch)?;
            let audit = audit_for(&peer, &batch.records);
            let out = s
                .operator
                .store
                .ingest_flows_audited(&batch.records, &audit)
                .await?;
            tracing::debug!(agent = %peer, instance = %batch.agent_instance, inserted = out.inserted, duplicates = out.duplicates, audited = out.audited, "flow batch ingested");
            Ok(IngestAck {
                accepted: out.inserted,
                duplicates: out.duplicates,
            })
        }
        .await,
    )
}

/// `GET /v1/flows` (viewer).
pub async fn list(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: Result<Query<FlowsQuery>, QueryRejection>,
) -> Response {
    reply(
        async {
            s.operator.authorize(bearer(&headers), Role::Viewer).await?;
            let td = s.operator.ca.current().trust_domain().clone();
            let q = query(q)?.parse(&td)?;
            let flows = s.operator.store.query_flows(&q).await?;
            let next_after = flows.last().map_or(q.after, |f| f.seq.max(q.after));
            Ok(FlowPage { flows, next_after })
        }
        .await,
    )
}
