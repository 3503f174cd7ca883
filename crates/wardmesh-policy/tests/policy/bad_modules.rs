//! Modules that misbehave: trap, loop, exhaust memory, or are not OPA modules at all.
//! Each is a clear load error or a `policy_error` deny; nothing crashes, nothing allows.

use serde_json::json;
use walrus::ir::Value as WasmValue;
use walrus::{ConstExpr, ExportItem, FunctionBuilder, ValType};
use wardmesh_policy::{
    BuildOptions, EvalError, Evaluator, InputError, LoadError, RULE_POLICY_ERROR, RuntimeConfig,
    build_bundle_with, danger_accept_unsigned_bundle, sign_bundle, verify_bundle,
};

use super::support::{
    Req, bundle_around, clinic_bundle, clinic_engine, clinician, policy_dir, runtime, runtime_with,
    signing_key,
};

#[derive(Clone, Copy)]
enum Misbehave {
    Loop,
    Trap,
}

/// The clinic module with `opa_eval` replaced: the first call (the load-time warm-up)
/// works, every later call loops forever or traps.
fn sabotaged(how: Misbehave, from_first_call: bool) -> Vec<u8> {
    let mut module = walrus::Module::from_buffer(clinic_bundle().wasm()).unwrap();
    let original = module.exports.get_func("opa_eval").unwrap();
    let calls = module.globals.add_local(
        ValType::I32,
        true,
        false,
        ConstExpr::Value(WasmValue::I32(i32::from(from_first_call))),
    );
    let params = [ValType::I32; 7];
    let args: Vec<_> = params.iter().map(|t| module.locals.add(*t)).collect();
    let mut f = FunctionBuilder::new(&mut module.types, &params, &[ValType::I32]);
    let mut body = f.func_body();
    body.global_get(calls).if_else(
        None,
        |then| match how {
            Misbehave::Loop => {
                then.loop_(None, |l| {
                    let id = l.id();
                    l.br(id);
                });
            }
            Misbehave::Trap => {
                then.unreachable();
            }
        },
        |_| {},
    );
    body.i32_const(1).global_set(calls);
    for a in &args {
        body.local_get(*a);
    }
    body.call(original);
    let replacement = f.finish(args, &mut module.funcs);
    let export = module
        .exports
        .iter_mut()
        .find(|e| e.name == "opa_eval")
        .unwrap();
    export.item = ExportItem::Function(replacement);
    module.emit_wasm()
}

fn load(wasm: Vec<u8>, config: RuntimeConfig) -> Result<wardmesh_policy::PolicyEngine, LoadError> {
    let bundle = bundle_around(wasm, "wardmesh/authz/decision", clinic_bundle().data());
    runtime_with(config).load(&danger_accept_unsigned_bundle(&bundle).unwrap())
}

fn notes_read() -> serde_json::Value {
    Req::new(clinician(true), "GET", "/patients/p-1001/notes", "TREAT").input()
}

#[test]
fn an_endless_loop_runs_out_of_its_time_budget_and_denies() {
    let engine = load(sabotaged(Misbehave::Loop, false), RuntimeConfig::default()).unwrap();
    let started = std::time::Instant::now();
    let d = engine.evaluate(&notes_read());
    assert!(!d.allow);
    assert_eq!(d.rule, RULE_POLICY_ERROR);
    assert!(d.reason.contains("budget"), "{}", d.reason);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // The looping instance was thrown away; the next request gets a fresh one (which
    // loops again, and is denied again): no crash, no allow.
    let again = engine.evaluate(&notes_read());
    assert_eq!(again.rule, RULE_POLICY_ERROR);
}

#[test]
fn a_trap_during_evaluation_denies() {
    let engine = load(sabotaged(Misbehave::Trap, false), RuntimeConfig::default()).unwrap();
    let d = engine.evaluate(&notes_read());
    assert!(!d.allow);
    assert_eq!(d.rule, RULE_POLICY_ERROR);
    assert!(
        d.reason.contains("trap") || d.reason.contains("unreachable"),
        "{}",
        d.reason
    );
}

#[test]
fn a_module_that_traps_from_the_start_does_not_load() {
    let err = load(sabotaged(Misbehave::Trap, true), RuntimeConfig::default()).unwrap_err();
    assert!(matches!(err, LoadError::Warmup(_)), "{err}");
    let err = load(sabotaged(Misbehave::Loop, true), RuntimeConfig::default()).unwrap_err();
    assert!(matches!(err, LoadError::Warmup(_)), "{err}");
}

#[test]
fn not_wasm_and_not_opa_modules_do_not_load() {
    let err = load(b"definitely not wasm".to_vec(), RuntimeConfig::default()).unwrap_err();
    assert!(matches!(err, LoadError::Compile(_)), "{err}");
    // A valid module without the OPA ABI.
    let mut m = walrus::Module::default();
    let (mem, _) = m.add_import_memory("env", "memory", false, false, 1, None, None);
    m.exports.add("memory", mem);
    let err = load(m.emit_wasm(), RuntimeConfig::default()).unwrap_err();
    assert!(matches!(err, LoadError::Instantiate(_)), "{err}");
}

/// A real policy whose evaluation fails for some inputs (conflicting values for a
/// complete rule) or allocates without bound; other inputs keep working.
#[test]
fn rego_runtime_errors_and_memory_exhaustion_deny_and_the_engine_recovers() {
    let dir = policy_dir(&[(
        "authz.rego",
        r#"package wardmesh.authz

default decision := {"allow": false, "rule": "default-deny", "reason": "", "obligations": []}

decision := {"allow": true, "rule": "ok", "reason": "", "obligations": []} if input.ok

conflict := 1 if input.conflict
conflict := 2 if input.conflict

decision := {"allow": true, "rule": "conflict", "reason": "", "obligations": []} if conflict

decision := {"allow": true, "rule": "hog", "reason": "", "obligations": []} if {
    input.hog
    count([x | some x in numbers.range(1, 100000000)]) > 0
}
"#,
    )]);
    for evaluator in [Evaluator::Vm, Evaluator::Interpreter] {
        let options = BuildOptions {
            evaluator,
            ..BuildOptions::new("v1")
        };
        let bundle = sign_bundle(
            &build_bundle_with(dir.path(), &options).unwrap(),
            signing_key(),
        )
        .unwrap();
        let verified = verify_bundle(&bundle, &[signing_key().verifying_key()]).unwrap();
        let engine = runtime_with(RuntimeConfig {
            memory_limit_bytes: 48 * 1024 * 1024,
            eval_budget: std::time::Duration::from_secs(30),
            ..RuntimeConfig::default()
        })
        .load(&verified)
        .unwrap();

        assert_eq!(engine.evaluate(&json!({"ok": true})).rule, "ok");
        // OPA (and the interpreter) fail the evaluation; the VM makes the conflicting
        // rule undefined. Either way: no allow.
        let d = engine.evaluate(&json!({"conflict": true}));
        assert!(!d.allow, "{evaluator:?}: {d:?}");
        if evaluator == Evaluator::Interpreter {
            assert_eq!(d.rule, RULE_POLICY_ERROR, "{d:?}");
        }
        let d = engine.evaluate(&json!({"hog": true}));
        assert_eq!(
            (d.allow, d.rule.as_str()),
            (false, RULE_POLICY_ERROR),
            "{evaluator:?}: {d:?}"
        );
        assert!(d.reason.contains("memory"), "{}", d.reason);
        assert_eq!(engine.evaluate(&json!({"ok": true})).rule, "ok");
        assert_eq!(engine.evaluate(&json!({})).rule, "default-deny");
    }
}

#[test]
fn malformed_input_json_is_an_error_and_changes_nothing() {
    let engine = clinic_engine();
    let err = engine
        .evaluate_json(b"{\"source\": {\"spiffe_id\": ")
        .unwrap_err();
    assert!(
        matches!(err, InputError::Malformed { line: 1, .. }),
        "{err}"
    );
    let err = engine
        .evaluate_json(b"[\"not\", \"an\", \"object\"]")
        .unwrap_err();
    assert!(matches!(err, InputError::NotAnObject(_)), "{err}");
    let ok = engine
        .evaluate_json(notes_read().to_string().as_bytes())
        .unwrap();
    assert_eq!(ok.rule, "clinician-notes-treat");
}

#[test]
fn time_budget_is_per_evaluation() {
    // A budget too small for even the clinic rule: every evaluation denies, none allows.
    let engine = runtime_with(RuntimeConfig {
        eval_budget: std::time::Duration::ZERO,
        ..RuntimeConfig::default()
    })
    .load(clinic_bundle())
    .unwrap();
    let err: EvalError = engine.evaluate_raw(&notes_read()).unwrap_err();
    assert!(err.0.contains("budget"), "{err}");
    assert_eq!(engine.evaluate(&notes_read()).rule, RULE_POLICY_ERROR);
    assert!(
        runtime()
            .load(clinic_bundle())
            .unwrap()
            .evaluate(&notes_read())
            .allow
    );
}
