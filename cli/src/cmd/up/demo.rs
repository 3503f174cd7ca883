//! The demo workloads of `wardctl up`: a notes API (a plain HTTP app that knows nothing
//! of the mesh) behind its agent, and two callers — `frontend`, which notes-api allows,
//! and `billing`, which it does not — each sending real requests through its own agent's
//! outbound port (HTTP proxy mode) over mTLS to notes-api's agent.
//!
//! The records are synthetic: fixed, made-up notes for numbered test patients.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::routing::get;
use serde_json::json;

/// The name callers use for notes-api; resolved by their agents' discovery.
pub const NOTES_HOST: &str = "notes-api.clinic";

/// Starts the notes API on an ephemeral loopback port.
pub async fn start_notes_api() -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route("/patients/{id}/notes", get(notes))
        .route("/patients/{id}/billing", get(billing));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "demo notes api stopped");
        }
    });
    Ok(addr)
}

fn caller(headers: &HeaderMap) -> String {
    headers
        .get("x-wardmesh-peer-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
        .to_owned()
}

async fn notes(Path(id): Path<u32>, headers: HeaderMap) -> axum::Json<serde_json::Value> {
    axum::Json(json!({
        "patient": id,
        "served_to": caller(&headers),
        "notes": [{"date": "2026-11-20", "text": "synthetic session note"}],
    }))
}

async fn billing(Path(id): Path<u32>, headers: HeaderMap) -> axum::Json<serde_json::Value> {
    axum::Json(json!({"patient": id, "served_to": caller(&headers), "balance_cents": 0}))
}

/// The notes app's routes as its agent declares them (templates, patient parameter).
pub fn routes() -> Vec<wardmesh_agent::routes::RouteConfig> {
    ["/patients/{patient}/notes", "/patients/{patient}/billing"]
        .into_iter()
        .map(|t| wardmesh_agent::routes::RouteConfig {
            template: t.into(),
            subject: Some("patient".into()),
            phi: true,
        })
        .collect()
}

/// What one caller saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub allowed: u64,
    pub denied: u64,
    pub failed: u64,
}

/// An HTTP client that uses an agent's outbound port as its proxy, like an app with
/// `http_proxy=` set.
/// Every request carries the end user's bearer token and purpose of use.
pub fn client_via(
    outbound: SocketAddr,
    token: &str,
    purpose: &str,
) -> anyhow::Result<reqwest::Client> {
    let mut headers = HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    headers.insert(
        "x-purpose-of-use",
        reqwest::header::HeaderValue::from_str(purpose)?,
    );
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .proxy(reqwest::Proxy::http(format!("http://{outbound}"))?)
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// Sends one request and classifies the answer: 2xx allowed, 403 from the mesh denied.
pub async fn call(client: &reqwest::Client, patient: u32, tally: &mut Tally) -> String {
    let url = format!("http://{NOTES_HOST}/patients/{patient}/notes");
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => {
            tally.allowed += 1;
            "200 allowed".into()
        }
        Ok(r) if r.status() == reqwest::StatusCode::FORBIDDEN => {
            tally.denied += 1;
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            format!(
                "403 denied (rule {}, policy {})",
                body["rule"].as_str().unwrap_or("?"),
                body["policy_revision"].as_str().unwrap_or("?")
            )
        }
        Ok(r) => {
            tally.failed += 1;
            format!("{} unexpected", r.status().as_u16())
        }
        Err(e) => {
            tally.failed += 1;
            format!("error: {e}")
        }
    }
}
