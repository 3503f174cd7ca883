use http::HeaderValue;
use time::macros::datetime;

use super::*;

const A: &str = "spiffe://wardmesh.local/ns/clinic/sa/frontend";
const B: &str = "spiffe://wardmesh.local/ns/clinic/sa/notes-api";

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn input(source: &str) -> AuthzInput {
    build_input(
        &id(source),
        &id(B),
        8080,
        None,
        RequestExtras::default(),
        datetime!(2026-01-02 03:04:05 UTC),
    )
}

#[test]
fn allow_list_allows_listed_and_denies_the_rest() {
    let list = AllowList::new([id(A)]);
    let yes = list.decide(&input(A));
    assert!(yes.allow);
    assert_eq!(yes.rule, RULE_ALLOW_LIST);
    let no = list.decide(&input("spiffe://wardmesh.local/ns/clinic/sa/other"));
    assert!(!no.allow);
    assert_eq!(no.rule, RULE_DEFAULT_DENY);
    assert!(no.reason.contains("sa/other"), "{}", no.reason);
    assert_eq!(yes.policy_revision, no.policy_revision);
    assert!(yes.policy_revision.starts_with("allowlist-"));
}

#[test]
fn empty_allow_list_denies_everything() {
    let list = AllowList::new([]);
    for source in [A, B] {
        let d = list.decide(&input(source));
        assert!(!d.allow);
        assert_eq!(d.rule, RULE_DEFAULT_DENY);
    }
}

#[test]
fn revision_names_the_content_not_the_order() {
    let ab = AllowList::new([id(A), id(B)]);
    let ba = AllowList::new([id(B), id(A)]);
    assert_eq!(ab.revision(), ba.revision());
    assert_ne!(ab.revision(), AllowList::new([id(A)]).revision());
    assert_ne!(
        AllowList::new([]).revision(),
        AllowList::new([id(A)]).revision()
    );
}

#[test]
fn input_carries_identity_request_and_only_allow_listed_headers() {
    let mut headers = HeaderMap::new();
    headers.insert("x-purpose-of-use", HeaderValue::from_static("TREAT"));
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("authorization", HeaderValue::from_static("Bearer secret"));
    headers.insert("cookie", HeaderValue::from_static("session=1"));
    headers.insert("x-patient-id", HeaderValue::from_static("P123"));
    let facts = HttpFacts {
        method: "GET",
        path: "/patients/P123/notes",
        protocol: "http2",
        headers: &headers,
    };
    let i = build_input(
        &id(A),
        &id(B),
        8080,
        Some(facts),
        RequestExtras::default(),
        datetime!(2026-01-02 03:04:05 UTC),
    );
    assert_eq!(i.source.namespace.as_deref(), Some("clinic"));
    assert_eq!(i.source.service_account.as_deref(), Some("frontend"));
    assert_eq!(i.destination.spiffe_id, B);
    assert_eq!(i.destination.port, 8080);
    assert_eq!(i.context.purpose_of_use.as_deref(), Some("TREAT"));
    assert_eq!(i.context.time, "2026-01-02T03:04:05Z");
    assert!(i.user.is_none());
    let req = i.request.unwrap();
    assert_eq!(
        (req.method.as_str(), req.protocol.as_str()),
        ("GET", "http2")
    );
    let names: Vec<&str> = req.headers.keys().map(String::as_str).collect();
    assert_eq!(names, ["content-type", "x-purpose-of-use"]);
}

#[test]
fn ambiguous_or_oversized_headers_are_left_out() {
    let mut headers = HeaderMap::new();
    headers.append("x-purpose-of-use", HeaderValue::from_static("TREAT"));
    headers.append("x-purpose-of-use", HeaderValue::from_static("HPAYMT"));
    let long = "a".repeat(MAX_INPUT_HEADER_LEN + 1);
    headers.insert("user-agent", HeaderValue::from_str(&long).unwrap());
    let facts = HttpFacts {
        method: "GET",
        path: "/",
        protocol: "http1",
        headers: &headers,
    };
    let i = build_input(
        &id(A),
        &id(B),
        1,
        Some(facts),
        RequestExtras::default(),
        datetime!(2026-01-02 0:00 UTC),
    );
    assert_eq!(i.context.purpose_of_use, None);
    assert!(i.request.unwrap().headers.is_empty());
}

#[test]
fn tcp_input_has_no_request() {
    assert!(input(A).request.is_none());
    assert!(input(A).context.purpose_of_use.is_none());
}

#[test]
fn handle_swaps_the_authorizer_for_the_next_decision() {
    let handle = AuthzHandle::new(Arc::new(AllowList::new([])));
    let copy = handle.clone();
    assert!(!copy.decide(&input(A)).allow);
    handle.set(Arc::new(AllowList::new([id(A)])));
    assert!(copy.decide(&input(A)).allow, "clones share the slot");
}

#[test]
fn input_serializes_like_the_policy_contract() {
    let v = serde_json::to_value(input(A)).unwrap();
    for key in ["source", "destination", "request", "user", "context"] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert_eq!(v["request"], serde_json::Value::Null);
    assert_eq!(v["context"]["purpose_of_use"], serde_json::Value::Null);
}
