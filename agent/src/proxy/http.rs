//! Pure HTTP decisions of the proxy: how a request is rewritten for the next hop, which
//! headers the agent owns, and the JSON answers the agent gives instead of the upstream.
//! No sockets here; everything is table-tested.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use wardmesh_identity::SpiffeId;
use wardmesh_proto::flow::time_ordered_bits;

use crate::authz::Decision;
use crate::discovery::HostPort;
use crate::metrics::Outcome;

/// The caller's SPIFFE ID, set by the inbound agent for the app. Never trusted from
/// outside: both directions strip it.
pub const PEER_ID_HEADER: HeaderName = HeaderName::from_static("x-wardmesh-peer-id");
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// Set on every answer the agent gives itself (deny, upstream failure): its error code,
/// so clients and the calling agent tell agent errors from app errors. Stripped from app
/// responses.
pub const ERROR_HEADER: HeaderName = HeaderName::from_static("x-wardmesh-error");

const MAX_REQUEST_ID_LEN: usize = 128;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body the proxy returns: the upstream's, streamed, or one of ours.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// proxy credentials an explicit-mode app may send us.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The request id to use: the caller's when it is a sane token, else a fresh one.
///
/// A fresh id is laid out like a UUIDv7 (millisecond time on top, 80 random bits): as
/// unique as a random one, but the control plane's request-id index then grows at its
/// right edge instead of taking a random page per record (measured: the single largest
/// cost of flow ingest into SQLite). The time only orders ids; nothing decides on it.
pub(crate) fn request_id(headers: &HeaderMap) -> String {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= MAX_REQUEST_ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    };
    match headers.get(&REQUEST_ID_HEADER).map(HeaderValue::to_str) {
        Some(Ok(s)) if ok(s) => s.to_owned(),
        _ => format!(
            "{:032x}",
            time_ordered_bits(time::OffsetDateTime::now_utc(), rand::random::<u128>())
        ),
    }
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(*n);
    }
}

/// The authority a request is addressed to: the absolute URI's (explicit proxy, HTTP/2
/// `:authority`), else the Host header. Port defaults to 80.
pub(crate) fn request_authority(parts: &Parts) -> Option<HostPort> {
    HostPort::parse(&raw_authority(parts)?, Some(80))
}

/// The authority as the client wrote it (URI first, then Host).
fn raw_authority(parts: &Parts) -> Option<String> {
    let raw = match parts.uri.authority() {
        Some(a) => a.as_str().to_owned(),
        None => parts.headers.get(HOST)?.to_str().ok()?.to_owned(),
    };
    // Userinfo has no place in a mesh authority.
    (!raw.contains('@')).then_some(raw)
}

fn path_and_query(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |p| p.as_str())
}

/// Rewrites an inbound request for the local app (HTTP/1.1): origin-form target on
/// `app`, the caller's Host kept, the agent's headers set and forged ones removed.
pub(crate) fn to_app_request(
    parts: &mut Parts,
    app: std::net::SocketAddr,
    peer: Option<&SpiffeId>,
    request_id: &str,
) -> Result<(), http::Error> {
    let host = raw_authority(parts);
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(&PEER_ID_HEADER);
    if let Some(peer) = peer {
        parts
            .headers
            .insert(PEER_ID_HEADER, HeaderValue::try_from(peer.to_string())?);
    }
    parts
        .headers
        .insert(REQUEST_ID_HEADER, HeaderValue::try_from(request_id)?);
    if let Some(host) = host {
        parts.headers.insert(HOST, HeaderValue::try_from(host)?);
    }
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(app.to_string())
        .path_and_query(path_and_query(&parts.uri))
        .build()?;
    parts.version = Version::HTTP_11;
    Ok(())
}

/// Rewrites an app's outbound request for the mesh hop (HTTP/2 to the peer agent):
/// absolute URI with the authority the app used, no Host header (HTTP/2 carries it as
/// `:authority`), no forged peer id, a request id.
pub(crate) fn to_mesh_request(
    parts: &mut Parts,
    fallback: &HostPort,
    request_id: &str,
) -> Result<(), http::Error> {
    // Keep the authority exactly as the app wrote it; the server app may care.
    let authority = raw_authority(parts).unwrap_or_else(|| fallback.to_string());
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(&PEER_ID_HEADER);
    parts.headers.remove(HOST);
    parts
        .headers
        .insert(REQUEST_ID_HEADER, HeaderValue::try_from(request_id)?);
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path_and_query(&parts.uri))
        .build()?;
    parts.version = Version::HTTP_2;
    Ok(())
}

/// Rewrites an app's request for a non-mesh destination (passthrough): HTTP/1.1 with an
/// absolute URI the pooled client dials.
pub(crate) fn to_passthrough_request(
    parts: &mut Parts,
    target: &HostPort,
) -> Result<(), http::Error> {
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(&PEER_ID_HEADER);
    if !parts.headers.contains_key(HOST) {
        parts
            .headers
            .insert(HOST, HeaderValue::try_from(target.to_string())?);
    }
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(target.to_string())
        .path_and_query(path_and_query(&parts.uri))
        .build()?;
    parts.version = Version::HTTP_11;
    Ok(())
}

/// Prepares an upstream response for the client: hop-by-hop headers go, the version
/// becomes the client's, the request id is echoed.
pub(crate) fn fix_response<B>(resp: &mut Response<B>, version: Version, request_id: &str) {
    strip_hop_by_hop(resp.headers_mut());
    *resp.version_mut() = version;
    if let Ok(v) = HeaderValue::try_from(request_id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
}

pub(crate) fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

pub(crate) fn empty() -> ProxyBody {
    full(Bytes::new())
}

/// A JSON answer from the agent itself.
pub(crate) fn json_response(
    status: StatusCode,
    error: &'static str,
    body: &serde_json::Value,
) -> Response<ProxyBody> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    bytes.push(b'\n');
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static(error));
    resp
}

/// The 403 for a denied request: names the rule and the policy revision.
pub(crate) fn deny_response(decision: &Decision, request_id: &str) -> Response<ProxyBody> {
    let mut resp = json_response(
        StatusCode::FORBIDDEN,
        "forbidden",
        &json!({
            "error": "forbidden",
            "rule": decision.rule,
            "policy_revision": decision.policy_revision,
            "request_id": request_id,
            "reason": decision.reason,
        }),
    );
    if let Ok(v) = HeaderValue::try_from(request_id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

/// The status and error code the agent answers with for a failed request. Pure; the
/// outcome is also the metric label.
pub(crate) fn failure_status(outcome: Outcome) -> (StatusCode, &'static str) {
    match outcome {
        Outcome::UpstreamUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "upstream_unavailable"),
        Outcome::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
        Outcome::UpstreamError => (StatusCode::BAD_GATEWAY, "upstream_error"),
        Outcome::UnknownDestination => (StatusCode::BAD_GATEWAY, "unknown_destination"),
        Outcome::WrongServerIdentity => (StatusCode::BAD_GATEWAY, "wrong_server_identity"),
        Outcome::DestinationQuarantined => (StatusCode::FORBIDDEN, "destination_quarantined"),
        Outcome::Denied => (StatusCode::FORBIDDEN, "forbidden"),
        Outcome::BadRequest => (StatusCode::BAD_REQUEST, "bad_request"),
        Outcome::HeaderTimeout => (StatusCode::REQUEST_TIMEOUT, "header_timeout"),
        Outcome::HeadersTooLarge => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
        ),
        Outcome::AuditUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable"),
        // Not failures; listed so the match stays exhaustive.
        Outcome::Allowed | Outcome::Passthrough => (StatusCode::BAD_GATEWAY, "upstream_error"),
    }
}

/// The 401 for an invalid bearer token: the reason code and sentence, never the token.
pub(crate) fn unauthorized_response(
    err: &crate::jwt::JwtError,
    request_id: &str,
) -> Response<ProxyBody> {
    let mut resp = json_response(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        &json!({
            "error": "unauthorized",
            "reason": err.reason(),
            "message": err.to_string(),
            "request_id": request_id,
        }),
    );
    let challenge = format!(
        "Bearer error=\"invalid_token\", error_description=\"{}\"",
        err.reason()
    );
    if let Ok(v) = HeaderValue::try_from(challenge) {
        resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
    if let Ok(v) = HeaderValue::try_from(request_id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

/// A JSON error answer for `outcome` with a one-line reason.
pub(crate) fn failure_response(
    outcome: Outcome,
    reason: &str,
    request_id: &str,
) -> Response<ProxyBody> {
    let (status, error) = failure_status(outcome);
    let mut resp = json_response(
        status,
        error,
        &json!({ "error": error, "reason": reason, "request_id": request_id }),
    );
    if let Ok(v) = HeaderValue::try_from(request_id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

/// The outcome of an HTTP connection that hyper ended with an error before a request
/// reached us (hyper already answered 431 or closed). `None`: not a request failure
/// (the peer went away, I/O error). Pure.
pub(crate) fn connection_error_outcome(e: &hyper::Error) -> Option<Outcome> {
    if e.is_timeout() {
        Some(Outcome::HeaderTimeout)
    } else if e.is_parse_too_large() {
        Some(Outcome::HeadersTooLarge)
    } else if e.is_parse() {
        Some(Outcome::BadRequest)
    } else {
        None
    }
}

/// What a response from a peer agent says about the request, for the outbound metric:
/// the peer agent's own error code when it answered itself, else `Allowed`. Pure.
pub(crate) fn peer_outcome(headers: &HeaderMap) -> Outcome {
    match headers.get(&ERROR_HEADER).map(HeaderValue::as_bytes) {
        None => Outcome::Allowed,
        Some(b"forbidden") => Outcome::Denied,
        Some(b"upstream_unavailable") => Outcome::UpstreamUnavailable,
        Some(b"upstream_timeout") => Outcome::UpstreamTimeout,
        Some(_) => Outcome::UpstreamError,
    }
}

#[cfg(test)]
mod tests;
