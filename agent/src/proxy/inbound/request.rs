//! One inbound HTTP request: authenticate the end user, authorize, forward to the app,
//! and write the request's flow record — durably before the response leaves on a PHI
//! (fail-closed) route, where a record that cannot be written turns the answer into a
//! 503: no access without audit.

use std::time::Instant;

use http::{Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use tracing::{debug, error, info, warn};

use super::{DIR, Inbound, Peer, error_chain};
use crate::authz::{self, HttpFacts};
use crate::metrics::{Outcome, Protocol};
use crate::proxy::http::{self as h, ProxyBody};
use crate::telemetry::record::HttpFlow;

impl Inbound {
    pub(super) async fn request(&self, peer: &Peer, req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let protocol = if req.version() == Version::HTTP_2 {
            Protocol::Http2
        } else {
            Protocol::Http1
        };
        let request_id = h::request_id(req.headers());
        let mut flow = self.telemetry.as_ref().and_then(|_| {
            let destination = peer.local.clone().or_else(|| self.tls.local_id())?;
            let mut f = HttpFlow::new(
                self.clock.now(),
                &request_id,
                peer.id.as_ref(),
                &destination,
                req.method(),
            );
            f.bytes_in = req.body().size_hint().exact().unwrap_or(0);
            Some(f)
        });
        let (resp, outcome) = self.handle(peer, req, &request_id, flow.as_mut()).await;
        let (resp, outcome) = match flow {
            Some(f) => self.account(f, resp, outcome, started, &request_id).await,
            None => (resp, outcome),
        };
        self.metrics
            .request(DIR, protocol, outcome, started.elapsed());
        resp
    }

    /// Writes the flow record. On a route that waits for the disk, a failed write
    /// replaces the response (the app's answer is dropped, never released unaudited).
    async fn account(
        &self,
        flow: HttpFlow,
        resp: Response<ProxyBody>,
        outcome: Outcome,
        started: Instant,
        request_id: &str,
    ) -> (Response<ProxyBody>, Outcome) {
        let Some(telemetry) = &self.telemetry else {
            return (resp, outcome);
        };
        let phi = flow.phi;
        let bytes_out = resp.body().size_hint().exact().unwrap_or(0);
        let record = flow.finish(
            rand::random(),
            resp.status().as_u16(),
            started.elapsed(),
            bytes_out,
        );
        match telemetry.record(&record, phi).await {
            Ok(()) => (resp, outcome),
            Err(e) if telemetry.waits(phi) && !resp.status().is_client_error() => {
                error!(error = %e, route = record.route.as_deref().unwrap_or_default(), request_id, "flow record not written: response withheld (no access without audit)");
                let reason =
                    format!("this route requires an audit record and none could be written: {e}");
                let o = Outcome::AuditUnavailable;
                (h::failure_response(o, &reason, request_id), o)
            }
            Err(e) => {
                debug!(error = %e, request_id, "flow record not written");
                (resp, outcome)
            }
        }
    }

    async fn handle(
        &self,
        peer: &Peer,
        req: Request<Incoming>,
        request_id: &str,
        mut flow: Option<&mut HttpFlow>,
    ) -> (Response<ProxyBody>, Outcome) {
        let version = req.version();
        let (mut parts, body) = req.into_parts();
        if let (Some(id), Some(local)) = (&peer.id, &peer.local) {
            let facts = HttpFacts {
                method: parts.method.as_str(),
                path: parts.uri.path(),
                protocol: if version == Version::HTTP_2 {
                    Protocol::Http2.as_str()
                } else {
                    Protocol::Http1.as_str()
                },
                headers: &parts.headers,
            };
            let now = self.clock.now();
            let enriched =
                match self
                    .gate
                    .enrich(&self.routes, parts.uri.path(), &parts.headers, now)
                {
                    Ok(e) => e,
                    Err(e) => {
                        self.metrics.unauthenticated(e.reason());
                        info!(peer = %id, reason = e.reason(), request_id, "bearer token refused");
                        if let Some(f) = flow.as_deref_mut() {
                            f.refused(e.reason());
                        }
                        return (h::unauthorized_response(&e, request_id), Outcome::Denied);
                    }
                };
            let input = authz::build_input(
                id,
                local,
                peer.port,
                Some(facts),
                enriched.extras.clone(),
                now,
            );
            if let Some(f) = flow.as_deref_mut() {
                f.enriched(&enriched, input.context.purpose_of_use.as_deref());
            }
            if let Some(t) = &self.telemetry
                && t.refuses(enriched.phi)
            {
                warn!(peer = %id, route = %enriched.route, request_id, "flow spool full: PHI request refused (no access without audit)");
                let reason = "the agent's audit spool is full, so this PHI route cannot be \
                              audited; the request was refused (check the control plane's \
                              reachability and wardmesh_spool_full)";
                let o = Outcome::AuditUnavailable;
                return (h::failure_response(o, reason, request_id), o);
            }
            let decision = self.gate.authz.decide(&input);
            let grant = enriched.break_glass_grant.as_deref();
            if let Some(f) = flow {
                f.decided(&decision, grant.is_some());
            }
            if !decision.allow {
                info!(
                    peer = %id,
                    method = %parts.method,
                    route = %enriched.route,
                    rule = %decision.rule,
                    policy_revision = %decision.policy_revision,
                    dry_run = decision.dry_run,
                    request_id,
                    "request denied"
                );
                if decision.blocks() {
                    self.metrics.deny(&decision.rule);
                    return (h::deny_response(&decision, request_id), Outcome::Denied);
                }
                self.metrics.dry_run_deny(&decision.rule);
            }
            if let Some(grant) = grant.filter(|_| decision.allow) {
                self.metrics.break_glass_use();
                warn!(peer = %id, route = %enriched.route, grant_id = grant, rule = %decision.rule, request_id, "break-glass access");
            }
        }
        let Some(app) = peer.app else {
            let reason = "no application address: set inbound.app, or run in transparent mode";
            let o = Outcome::UpstreamUnavailable;
            return (h::failure_response(o, reason, request_id), o);
        };
        if let Err(e) = h::to_app_request(&mut parts, app, peer.id.as_ref(), request_id) {
            let reason = format!("cannot forward this request: {e}");
            let o = Outcome::BadRequest;
            return (h::failure_response(o, &reason, request_id), o);
        }
        let req = Request::from_parts(parts, body);
        let sent = tokio::time::timeout(self.cfg.upstream_timeout(), self.app_client.request(req));
        let (outcome, reason) = match sent.await {
            Ok(Ok(mut resp)) => {
                h::fix_response(&mut resp, version, request_id);
                // Only the agent speaks for the agent.
                resp.headers_mut().remove(&h::ERROR_HEADER);
                let outcome = if peer.id.is_some() {
                    Outcome::Allowed
                } else {
                    Outcome::Passthrough
                };
                return (resp.map(|b| b.map_err(Into::into).boxed_unsync()), outcome);
            }
            Ok(Err(e)) if e.is_connect() => (
                Outcome::UpstreamUnavailable,
                format!("cannot connect to the application at {app}"),
            ),
            Ok(Err(e)) => (
                Outcome::UpstreamError,
                format!("the application at {app} failed: {}", error_chain(&e)),
            ),
            Err(_) => (
                Outcome::UpstreamTimeout,
                format!(
                    "the application at {app} sent no response within {:?}",
                    self.cfg.upstream_timeout()
                ),
            ),
        };
        debug!(outcome = outcome.as_str(), %reason, request_id, "upstream failure");
        (h::failure_response(outcome, &reason, request_id), outcome)
    }
}
