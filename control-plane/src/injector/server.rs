//! The webhook's HTTP side: one POST route on its own TLS listener. The body is read as
//! bytes (not axum's `Json`) so a wrong content type or bad JSON still gets an
//! AdmissionReview answer instead of axum's plain-text rejection.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use tokio::net::TcpListener;

use super::{InjectParams, InjectorConfig, WEBHOOK_PATH, review};
use crate::ca_state::CaManager;

/// The API server sends at most ~3 MiB (its own request limit) per review.
const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone)]
struct WebhookState {
    ca: Arc<CaManager>,
    cfg: Arc<InjectorConfig>,
}

pub fn router(ca: Arc<CaManager>, cfg: InjectorConfig) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(inject))
        .route(
            wardmesh_proto::paths::LIVE,
            axum::routing::get(|| async { "live\n" }),
        )
        .layer(DefaultBodyLimit::max(MAX_REVIEW_BYTES))
        .with_state(WebhookState {
            ca,
            cfg: Arc::new(cfg),
        })
}

async fn inject(State(s): State<WebhookState>, body: Bytes) -> impl IntoResponse {
    let snap = s.ca.current();
    let params = InjectParams::new(&s.cfg, snap.trust_domain().as_str(), &snap.ca.bundle_pem);
    let answer = review(&body, &params);
    tracing::info!(
        outcome = answer.outcome.as_str(),
        reason = %answer.reason,
        "admission review"
    );
    let status = StatusCode::from_u16(answer.http_status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, axum::Json(answer.body))
}

/// Serves the webhook on `listener` with the control plane's current serving certificate
/// (taken per connection, so CA rotation needs no restart) until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    ca: Arc<CaManager>,
    cfg: InjectorConfig,
    shutdown: impl Future<Output = ()>,
) {
    let rx = ca.subscribe();
    crate::server::serve(listener, rx, router(ca, cfg), shutdown).await;
}
