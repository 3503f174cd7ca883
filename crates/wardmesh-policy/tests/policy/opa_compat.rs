//! A module built by the real `opa build -t wasm` (ABI 1.2, OPA's own exports) loads and
//! evaluates through the same path as a wardmesh bundle.

use serde_json::json;
use wardmesh_policy::{LoadError, RuntimeConfig, danger_accept_unsigned_bundle};

use super::support::{bundle_around, repo_root, runtime, runtime_with};

fn opa_bundle() -> wardmesh_policy::VerifiedBundle {
    let wasm = std::fs::read(
        repo_root().join("crates/wardmesh-policy/tests/fixtures/opa-hello/policy.wasm"),
    )
    .unwrap();
    danger_accept_unsigned_bundle(&bundle_around(wasm, "example", &json!({}))).unwrap()
}

#[test]
fn opa_built_module_evaluates() {
    let engine = runtime_with(RuntimeConfig {
        entrypoint: "example".into(),
        ..RuntimeConfig::default()
    })
    .load(&opa_bundle())
    .unwrap();
    let get_root =
        json!({"attributes": {"request": {"http": {"method": "GET", "path": "/", "headers": {}}}}});
    assert_eq!(
        engine.evaluate_raw(&get_root).unwrap(),
        [json!({"result": {"allow": true}})]
    );
    let post = json!({"attributes": {"request": {"http": {"method": "POST", "path": "/", "headers": {}}}}});
    assert_eq!(
        engine.evaluate_raw(&post).unwrap(),
        [json!({"result": {"allow": false}})]
    );
    // Its result is not a wardmesh decision object: a deny, never an allow.
    let d = engine.evaluate(&get_root);
    assert!(!d.allow);
    assert_eq!(d.rule, wardmesh_policy::RULE_POLICY_ERROR);
}

#[test]
fn opa_built_module_without_our_entrypoint_is_a_load_error() {
    let err = runtime().load(&opa_bundle()).unwrap_err();
    assert!(
        matches!(&err, LoadError::MissingEntrypoint { available, .. } if available == &["example"]),
        "{err}"
    );
}
