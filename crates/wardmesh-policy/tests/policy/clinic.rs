//! The shipped clinic policy, end to end: Rego unit tests, bundle layout, and a table of
//! decisions evaluated through opa-wasm on wasmtime (and cross-checked natively).

use std::collections::BTreeSet;

use serde_json::{Value, json};
use wardmesh_policy::rego::{engine_with, load_data, load_rego_files};
use wardmesh_policy::{BundleFiles, Manifest, build_bundle, run_rego_tests};

use super::support::{Req, biller, clinic_bundle, clinic_dir, clinic_engine, clinician};

#[test]
fn clinic_rego_unit_tests_pass() {
    let report = run_rego_tests(&clinic_dir()).unwrap();
    assert!(report.is_success(), "{report}");
    assert!(report.passed() >= 18, "{report}");
    assert!(
        report.to_string().ends_with("passed, 0 failed\n"),
        "{report}"
    );
}

#[test]
fn bundle_has_opa_build_layout_and_is_reproducible() {
    let a = build_bundle(&clinic_dir(), "clinic-v1").unwrap();
    let b = build_bundle(&clinic_dir(), "clinic-v1").unwrap();
    assert_eq!(a, b, "same sources, same bytes");

    let files = BundleFiles::read_tar_gz(&a).unwrap();
    let names: Vec<&str> = files.names().collect();
    assert_eq!(
        names,
        [".manifest", "authz.rego", "data.json", "policy.wasm"]
    );
    let manifest = Manifest::parse(files.get(".manifest").unwrap()).unwrap();
    assert_eq!(manifest.revision, "clinic-v1");
    assert_eq!(
        manifest.roots,
        Some(vec!["consent".to_string(), "wardmesh".to_string()])
    );
    assert_eq!(manifest.wasm.len(), 1);
    assert_eq!(manifest.wasm[0].entrypoint, "wardmesh/authz/decision");
    assert_eq!(manifest.wasm[0].module, "/policy.wasm");
    let data: Value = serde_json::from_slice(files.get("data.json").unwrap()).unwrap();
    assert_eq!(data["consent"]["p-2001"]["part2"], json!(true));
}

#[test]
fn policy_wasm_speaks_exactly_the_opa_abi() {
    let module = walrus::Module::from_buffer(clinic_bundle().wasm()).unwrap();
    let imports: BTreeSet<String> = module
        .imports
        .iter()
        .map(|i| format!("{}.{}", i.module, i.name))
        .collect();
    let allowed = [
        "env.memory",
        "env.opa_abort",
        "env.opa_println",
        "env.opa_builtin0",
        "env.opa_builtin1",
        "env.opa_builtin2",
        "env.opa_builtin3",
        "env.opa_builtin4",
    ];
    assert!(imports.contains("env.memory"));
    for i in &imports {
        assert!(allowed.contains(&i.as_str()), "unexpected import {i}");
    }
    let exports: BTreeSet<&str> = module.exports.iter().map(|e| e.name.as_str()).collect();
    for required in [
        "opa_eval",
        "opa_malloc",
        "opa_free",
        "opa_json_parse",
        "opa_json_dump",
        "opa_heap_ptr_get",
        "opa_heap_ptr_set",
        "eval",
        "entrypoints",
        "builtins",
        "opa_eval_ctx_new",
        "opa_eval_ctx_set_input",
        "opa_eval_ctx_set_data",
        "opa_eval_ctx_set_entrypoint",
        "opa_eval_ctx_get_result",
        "opa_wasm_abi_version",
        "opa_wasm_abi_minor_version",
        "memory",
    ] {
        assert!(exports.contains(required), "missing export {required}");
    }
    assert!(
        !exports
            .iter()
            .any(|e| e.starts_with("__") || e.starts_with("WARDMESH")),
        "{exports:?}"
    );
    for (name, want) in [
        ("opa_wasm_abi_version", 1),
        ("opa_wasm_abi_minor_version", 2),
    ] {
        let export = module.exports.iter().find(|e| e.name == name).unwrap();
        let walrus::ExportItem::Global(g) = export.item else {
            panic!("{name} is not a global");
        };
        let global = module.globals.get(g);
        assert_eq!(global.ty, walrus::ValType::I32);
        assert!(!global.mutable);
        assert!(matches!(
            global.kind,
            walrus::GlobalKind::Local(walrus::ConstExpr::Value(walrus::ir::Value::I32(v))) if v == want
        ));
    }
}

/// (request, expected allow, expected rule, expected obligations)
fn table() -> Vec<(Value, bool, &'static str, Vec<&'static str>)> {
    let mut bg = Req::new(clinician(false), "GET", "/patients/p-2002/notes", "ETREAT");
    bg.break_glass = json!({"grant_id": "bg-7", "reason": "unresponsive patient in ED", "expires_at": "2025-06-01T13:00:00Z"});
    let mut risky = Req::new(biller(), "GET", "/patients/p-1001/billing", "HPAYMT");
    risky.risk_flagged = true;
    let mut risky_mfa = Req::new(clinician(true), "GET", "/patients/p-1001/notes", "TREAT");
    risky_mfa.risk_flagged = true;
    let mut consent_in_request =
        Req::new(clinician(true), "GET", "/patients/p-9001/notes", "TREAT");
    consent_in_request.consent = json!({"part2": true, "purposes": {"TREAT": true}});
    let mut part2_in_request = Req::new(clinician(true), "GET", "/patients/p-9001/notes", "TREAT");
    part2_in_request.consent = json!({"part2": true, "purposes": {}});
    vec![
        (
            Req::new(clinician(true), "GET", "/patients/p-1001/notes", "TREAT").input(),
            true,
            "clinician-notes-treat",
            vec![],
        ),
        (
            Req::new(clinician(true), "HEAD", "/patients/p-1001/notes/", "TREAT").input(),
            true,
            "clinician-notes-treat",
            vec![],
        ),
        (
            Req::new(clinician(false), "GET", "/patients/p-1001/notes", "TREAT").input(),
            false,
            "step-up-mfa",
            vec![],
        ),
        (
            Req::new(clinician(true), "PUT", "/patients/p-1001/notes", "TREAT").input(),
            false,
            "default-deny",
            vec![],
        ),
        (
            Req::new(clinician(true), "GET", "/patients/p-1001/notes", "HOPERAT").input(),
            false,
            "default-deny",
            vec![],
        ),
        (
            Req::new(clinician(true), "GET", "/patients/p-1001/billing", "TREAT").input(),
            false,
            "default-deny",
            vec![],
        ),
        (
            Req::new(biller(), "GET", "/patients/p-1001/billing", "HPAYMT").input(),
            true,
            "billing-read",
            vec![],
        ),
        (
            Req::new(biller(), "GET", "/patients/p-1001/notes", "HPAYMT").input(),
            false,
            "default-deny",
            vec![],
        ),
        (
            Req::new(biller(), "DELETE", "/patients/p-1001/billing", "HPAYMT").input(),
            false,
            "default-deny",
            vec![],
        ),
        (
            Req::new(clinician(true), "GET", "/patients/p-2001/notes", "TREAT").input(),
            true,
            "clinician-notes-treat",
            vec![],
        ),
        (
            Req::new(clinician(true), "GET", "/patients/p-2002/notes", "TREAT").input(),
            false,
            "part2-consent-required",
            vec![],
        ),
        (
            Req::new(biller(), "GET", "/patients/p-2002/billing", "HPAYMT").input(),
            false,
            "part2-consent-required",
            vec![],
        ),
        (
            Req::new(clinician(true), "GET", "/patients/p-3001/notes", "TREAT").input(),
            false,
            "consent-refused",
            vec![],
        ),
        (
            consent_in_request.input(),
            true,
            "clinician-notes-treat",
            vec![],
        ),
        (
            part2_in_request.input(),
            false,
            "part2-consent-required",
            vec![],
        ),
        (bg.input(), true, "break-glass", vec!["audit", "review"]),
        (
            Req::new(clinician(true), "GET", "/patients/p-1001/notes", "ETREAT").input(),
            false,
            "default-deny",
            vec![],
        ),
        (risky.input(), false, "step-up-mfa", vec![]),
        (risky_mfa.input(), true, "clinician-notes-treat", vec![]),
        (
            Req::new(Value::Null, "GET", "/patients/p-1001/notes", "TREAT").input(),
            false,
            "default-deny",
            vec![],
        ),
        (
            Req::new(clinician(true), "GET", "/admin/users", "TREAT").input(),
            false,
            "default-deny",
            vec![],
        ),
        (
            Req::new(
                clinician(true),
                "GET",
                "/patients/p-1001/notes/../billing",
                "TREAT",
            )
            .input(),
            false,
            "default-deny",
            vec![],
        ),
        (
            json!({"source": {"spiffe_id": "spiffe://wardmesh.local/ns/a/sa/b"}, "request": null, "user": null, "context": {}}),
            false,
            "default-deny",
            vec![],
        ),
        (json!({}), false, "default-deny", vec![]),
    ]
}

#[test]
fn clinic_decisions_through_opa_wasm() {
    let engine = clinic_engine();
    assert_eq!(engine.revision(), "clinic-v1");
    for (input, allow, rule, obligations) in table() {
        let d = engine.evaluate(&input);
        assert_eq!(
            (d.allow, d.rule.as_str()),
            (allow, rule),
            "input: {input}\ndecision: {d:?}"
        );
        assert_eq!(d.obligations, obligations, "input: {input}");
        assert_eq!(d.policy_revision, "clinic-v1");
        if rule == "step-up-mfa" {
            assert_eq!(d.reason, "mfa_required");
        }
        assert!(!d.reason.is_empty());
    }
}

#[test]
fn wasm_guest_agrees_with_native_regorus() {
    let dir = clinic_dir();
    let files: Vec<_> = load_rego_files(&dir)
        .unwrap()
        .into_iter()
        .filter(|f| !f.is_test())
        .collect();
    let mut native = engine_with(&files, &load_data(&dir).unwrap()).unwrap();
    for (input, ..) in table() {
        native.set_input(regorus::Value::from(input.clone()));
        let want: Value = serde_json::from_str(
            &native
                .eval_rule("data.wardmesh.authz.decision".into())
                .unwrap()
                .to_json_str()
                .unwrap(),
        )
        .unwrap();
        let got = clinic_engine().evaluate_raw(&input).unwrap();
        assert_eq!(got, vec![json!({"result": want})], "input: {input}");
    }
}

#[test]
fn concurrent_evaluations_use_a_pool_of_instances() {
    let engine = clinic_engine().clone();
    let allow = Req::new(clinician(true), "GET", "/patients/p-1001/notes", "TREAT").input();
    let deny = Req::new(biller(), "GET", "/patients/p-1001/notes", "HPAYMT").input();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (engine, allow, deny) = (&engine, &allow, &deny);
            s.spawn(move || {
                for i in 0..300 {
                    let (input, want) = if (i + t) % 2 == 0 {
                        (allow, true)
                    } else {
                        (deny, false)
                    };
                    assert_eq!(engine.evaluate(input).allow, want);
                }
            });
        }
    });
    let idle = engine.idle_instances();
    assert!(
        (1..=wardmesh_policy::RuntimeConfig::default().max_idle_instances).contains(&idle),
        "{idle}"
    );
}

#[test]
fn a_warmed_cache_makes_loading_map_instead_of_compile() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = wardmesh_policy::PolicyRuntime::new(wardmesh_policy::RuntimeConfig {
        module_cache_dir: Some(dir.path().to_path_buf()),
        ..wardmesh_policy::RuntimeConfig::default()
    })
    .unwrap();
    assert!(!runtime.warm_cache(clinic_bundle()).unwrap());
    assert!(runtime.warm_cache(clinic_bundle()).unwrap());
    let (engine, report) = runtime.load_with_report(clinic_bundle()).unwrap();
    assert!(report.from_cache);
    let allow = Req::new(clinician(true), "GET", "/patients/p-1001/notes", "TREAT").input();
    assert!(engine.evaluate(&allow).allow);
    // A damaged cache entry is replaced, not trusted. (Entries are memory-mapped: they
    // are replaced by rename, never rewritten in place.)
    drop(engine);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let tmp = path.with_extension("garbage");
        std::fs::write(&tmp, b"garbage").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    let (engine, report) = runtime.load_with_report(clinic_bundle()).unwrap();
    assert!(!report.from_cache);
    assert!(engine.evaluate(&allow).allow);
}
