//! Building flow records: pure functions from what the listener knows to a
//! [`FlowRecord`] that passes [`FlowRecord::validate`]. Values a peer controls
//! (purpose-of-use header, method, user subject) are normalised here so a strange value
//! can never make a fail-closed route unanswerable.

use std::time::Duration;

use time::OffsetDateTime;
use wardmesh_identity::SpiffeId;
use wardmesh_proto::flow::{
    FlowDirection, FlowKind, FlowRecord, Verdict, new_record_id, time_ordered_bits,
};

use crate::authz::{Decision, Enriched};

/// Recorded instead of a purpose-of-use value that is not an HL7-style code.
pub const UNRECOGNIZED_PURPOSE: &str = "unrecognized";
/// Recorded instead of a method that is not an upper-case token.
pub const OTHER_METHOD: &str = "OTHER";
const MAX_USER_BYTES: usize = 512;

/// One HTTP request as the inbound listener saw it, from arrival to response head.
#[derive(Debug, Clone)]
pub struct HttpFlow {
    pub at: OffsetDateTime,
    pub request_id: String,
    pub source: Option<String>,
    pub destination: String,
    pub method: String,
    /// Template, `unmatched`, or `None` before the route was looked up (then
    /// `unmatched`: the raw path is never recorded).
    pub route: Option<String>,
    pub user: Option<String>,
    pub purpose: Option<String>,
    pub subject_pseudonym: Option<String>,
    pub break_glass: bool,
    pub phi: bool,
    pub verdict: Verdict,
    pub policy_revision: Option<String>,
    pub rule: Option<String>,
    pub bytes_in: u64,
}

impl HttpFlow {
    pub fn new(
        at: OffsetDateTime,
        request_id: &str,
        source: Option<&SpiffeId>,
        destination: &SpiffeId,
        method: &http::Method,
    ) -> Self {
        Self {
            at,
            request_id: request_id.to_owned(),
            source: source.map(ToString::to_string),
            destination: destination.to_string(),
            method: method_token(method.as_str()),
            route: None,
            user: None,
            purpose: None,
            subject_pseudonym: None,
            break_glass: false,
            phi: false,
            verdict: Verdict::Allowed,
            policy_revision: None,
            rule: None,
            bytes_in: 0,
        }
    }

    /// What the route lookup and token validation found.
    pub fn enriched(&mut self, e: &Enriched, purpose: Option<&str>) {
        self.route = Some(e.route.clone());
        self.user = e.user_sub.as_deref().map(bounded_text);
        self.purpose = purpose.map(purpose_code);
        self.subject_pseudonym = e.subject_pseudonym.clone();
        self.phi = e.phi;
    }

    /// What the policy decided; a break-glass grant counts only when the request went
    /// through.
    pub fn decided(&mut self, d: &Decision, break_glass_grant: bool) {
        self.verdict = verdict_of(d);
        self.policy_revision = non_empty(&d.policy_revision);
        self.rule = non_empty(&d.rule);
        self.break_glass = break_glass_grant && !d.blocks();
    }

    /// Refused before any policy ran (invalid bearer token: the reason is the rule).
    pub fn refused(&mut self, rule: &str) {
        self.verdict = Verdict::Denied;
        self.rule = Some(rule.to_owned());
    }

    /// The record, once the response status is known; `id` is random bits (the id's
    /// top bits are the record's time, see [`time_ordered_bits`]).
    pub fn finish(self, id: u128, status: u16, latency: Duration, bytes_out: u64) -> FlowRecord {
        FlowRecord {
            id: new_record_id(time_ordered_bits(self.at, id)),
            at: self.at,
            request_id: Some(self.request_id),
            kind: FlowKind::Http,
            direction: FlowDirection::Inbound,
            source: self.source,
            destination: self.destination,
            method: Some(self.method),
            route: Some(
                self.route
                    .unwrap_or_else(|| crate::routes::UNMATCHED.to_owned()),
            ),
            status: Some(status),
            verdict: self.verdict,
            policy_revision: self.policy_revision,
            rule: self.rule,
            latency_us: micros(latency),
            bytes_in: self.bytes_in,
            bytes_out,
            user: self.user,
            purpose: self.purpose,
            break_glass: self.break_glass,
            subject_pseudonym: self.subject_pseudonym,
        }
    }
}

/// One opaque TCP connection: identities, verdict, duration and bytes.
#[derive(Debug, Clone)]
pub struct TcpFlow {
    pub at: OffsetDateTime,
    pub source: Option<String>,
    pub destination: String,
    pub verdict: Verdict,
    pub policy_revision: Option<String>,
    pub rule: Option<String>,
}

impl TcpFlow {
    pub fn finish(self, id: u128, duration: Duration, bytes_in: u64, bytes_out: u64) -> FlowRecord {
        FlowRecord {
            id: new_record_id(time_ordered_bits(self.at, id)),
            at: self.at,
            request_id: None,
            kind: FlowKind::Tcp,
            direction: FlowDirection::Inbound,
            source: self.source,
            destination: self.destination,
            method: None,
            route: None,
            status: None,
            verdict: self.verdict,
            policy_revision: self.policy_revision,
            rule: self.rule,
            latency_us: micros(duration),
            bytes_in,
            bytes_out,
            user: None,
            purpose: None,
            break_glass: false,
            subject_pseudonym: None,
        }
    }
}

/// The verdict fields of a TCP flow from a decision (`None`: no identity, no policy).
pub fn tcp_verdict(d: Option<&Decision>) -> (Verdict, Option<String>, Option<String>) {
    match d {
        None => (Verdict::Allowed, None, None),
        Some(d) => (
            verdict_of(d),
            non_empty(&d.policy_revision),
            non_empty(&d.rule),
        ),
    }
}

fn verdict_of(d: &Decision) -> Verdict {
    match (d.allow, d.dry_run) {
        (true, _) => Verdict::Allowed,
        (false, true) => Verdict::DryRun,
        (false, false) => Verdict::Denied,
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX >> 1)
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| bounded_text(s))
}

/// HL7 PurposeOfUse codes are short upper-case tokens (TREAT, ETREAT, HPAYMT, …).
fn purpose_code(s: &str) -> String {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        s.to_ascii_uppercase()
    } else {
        UNRECOGNIZED_PURPOSE.to_owned()
    }
}

fn method_token(m: &str) -> String {
    if !m.is_empty() && m.len() <= 32 && m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
        m.to_owned()
    } else {
        OTHER_METHOD.to_owned()
    }
}

/// At most [`MAX_USER_BYTES`], no control characters (cut at a character boundary).
fn bounded_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_USER_BYTES));
    for c in s.chars() {
        let c = if c.is_control() { '?' } else { c };
        if out.len() + c.len_utf8() > MAX_USER_BYTES {
            break;
        }
        out.push(c);
    }
    if out.is_empty() { "?".to_owned() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::RequestExtras;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    fn flow() -> HttpFlow {
        HttpFlow::new(
            OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000),
            "req-1",
            Some(&id("spiffe://wardmesh.local/ns/clinic/sa/frontend")),
            &id("spiffe://wardmesh.local/ns/clinic/sa/notes"),
            &http::Method::GET,
        )
    }

    fn decision(allow: bool, dry_run: bool) -> Decision {
        Decision {
            allow,
            rule: "treating_clinician".into(),
            reason: "r".into(),
            policy_revision: "clinic-7".into(),
            obligations: vec![],
            dry_run,
        }
    }

    fn enriched(user: &str) -> Enriched {
        Enriched {
            extras: RequestExtras::default(),
            route: "/patients/{patient}/notes".into(),
            phi: true,
            subject_pseudonym: Some("ab".repeat(32)),
            user_sub: Some(user.into()),
            break_glass_grant: Some("g1".into()),
        }
    }

    #[test]
    fn an_allowed_request_becomes_a_valid_record() {
        let mut f = flow();
        f.enriched(&enriched("dr-ada"), Some("treat"));
        f.decided(&decision(true, false), true);
        let r = f.finish(7, 200, Duration::from_micros(1500), 42);
        r.validate().unwrap();
        assert_eq!(r.route.as_deref(), Some("/patients/{patient}/notes"));
        assert_eq!(r.purpose.as_deref(), Some("TREAT"));
        assert_eq!(r.verdict, Verdict::Allowed);
        assert!(r.break_glass);
        assert_eq!(r.latency_us, 1500);
        assert_eq!(r.request_id.as_deref(), Some("req-1"));
        assert_eq!(r.rule.as_deref(), Some("treating_clinician"));
    }

    #[test]
    fn verdicts_and_break_glass_follow_the_decision() {
        let cases = [
            (true, false, Verdict::Allowed, true),
            (false, true, Verdict::DryRun, true),
            (false, false, Verdict::Denied, false),
        ];
        for (allow, dry, want, bg) in cases {
            let mut f = flow();
            f.decided(&decision(allow, dry), true);
            assert_eq!((f.verdict, f.break_glass), (want, bg), "{allow} {dry}");
        }
    }

    #[test]
    fn peer_controlled_values_are_normalised_not_refused() {
        let mut f = HttpFlow::new(
            OffsetDateTime::UNIX_EPOCH,
            "r",
            None,
            &id("spiffe://wardmesh.local/ns/a/sa/b"),
            &http::Method::from_bytes(b"frobnicate").unwrap(),
        );
        f.enriched(&enriched(&"é\u{7}".repeat(400)), Some("TREAT; DROP TABLE"));
        let r = f.finish(1, 403, Duration::ZERO, 0);
        r.validate().unwrap();
        assert_eq!(r.method.as_deref(), Some(OTHER_METHOD));
        assert_eq!(r.purpose.as_deref(), Some(UNRECOGNIZED_PURPOSE));
        let user = r.user.unwrap();
        assert!(user.len() <= MAX_USER_BYTES && !user.contains('\u{7}'));
    }

    #[test]
    fn a_request_refused_before_routing_records_no_raw_path() {
        let mut f = flow();
        f.refused("token_expired");
        let r = f.finish(2, 401, Duration::ZERO, 0);
        r.validate().unwrap();
        assert_eq!(r.route.as_deref(), Some("unmatched"));
        assert_eq!(r.verdict, Verdict::Denied);
        assert_eq!(r.rule.as_deref(), Some("token_expired"));
    }

    #[test]
    fn tcp_records_validate() {
        let (verdict, rev, rule) = tcp_verdict(Some(&decision(false, false)));
        let r = TcpFlow {
            at: OffsetDateTime::UNIX_EPOCH,
            source: Some("spiffe://wardmesh.local/ns/a/sa/b".into()),
            destination: "spiffe://wardmesh.local/ns/a/sa/c".into(),
            verdict,
            policy_revision: rev,
            rule,
        }
        .finish(3, Duration::from_secs(2), 10, 20);
        r.validate().unwrap();
        assert_eq!(r.kind, FlowKind::Tcp);
        assert_eq!(r.verdict, Verdict::Denied);
        assert_eq!(tcp_verdict(None).0, Verdict::Allowed);
    }
}
