//! `policy-eval`: in-process evaluation latency of the shipped clinic policy
//! (policies/clinic, built into an OPA wasm bundle, signed, verified, loaded with
//! opa-wasm on wasmtime), through `wardmesh_policy::bench_eval`. Target: p99 ≤ 50 µs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use wardmesh_policy::{
    PolicyRuntime, RuntimeConfig, SignatureAlgorithm, SigningKey, bench_eval, build_bundle,
    sign_bundle, verify_bundle,
};

use crate::machine::{CpuSnapshot, Facts};

/// The design's budget for one evaluation (DESIGN.md §4).
const TARGET_P99: Duration = Duration::from_micros(50);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Timed evaluations (after 1,000 untimed ones).
    #[arg(long, default_value_t = 200_000)]
    pub evaluations: usize,
    /// The policy directory [default: policies/clinic of this checkout].
    #[arg(long)]
    pub policy_dir: Option<PathBuf>,
}

/// policies/clinic of this checkout.
pub fn clinic_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies/clinic")
}

pub fn run(args: &Args, print_facts: bool) -> anyhow::Result<usize> {
    anyhow::ensure!(
        (1..=10_000_000).contains(&args.evaluations),
        "--evaluations must be between 1 and 10000000"
    );
    if print_facts {
        Facts::collect().print();
        println!(
            "command       {}",
            std::env::args().collect::<Vec<_>>().join(" ")
        );
    }
    let dir = args.policy_dir.clone().unwrap_or_else(clinic_dir);
    let t = Instant::now();
    let built =
        build_bundle(&dir, "bench").with_context(|| format!("building {}", dir.display()))?;
    let key = SigningKey::generate(SignatureAlgorithm::Es256, "bench")?;
    let signed = sign_bundle(&built, &key)?;
    let verified = verify_bundle(&signed, &[key.verifying_key()])?;
    let build_time = t.elapsed();
    let t = Instant::now();
    let engine = PolicyRuntime::new(RuntimeConfig::default())?.load(&verified)?;
    let load_time = t.elapsed();
    let inputs = inputs();
    // The inputs must get the decisions the policy's own tests expect, or we would be
    // timing an error path.
    let expect = [true, false, true, false];
    let mut errors = 0;
    for (input, want) in inputs.iter().zip(expect) {
        let d = engine.evaluate(input);
        if d.allow != want {
            errors += 1;
            eprintln!("unexpected decision {d:?} for {input}");
        }
    }
    let cpu0 = CpuSnapshot::now();
    let r = bench_eval(&engine, &inputs, args.evaluations);
    let cpu = CpuSnapshot::now().since(&cpu0);
    println!(
        "policy-eval: {} (built + signed + verified in {:.2} s, compiled + loaded in {:.2} s)",
        dir.display(),
        build_time.as_secs_f64(),
        load_time.as_secs_f64()
    );
    println!();
    println!(
        "| benchmark | evaluations | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | mean µs | evals/s (1 thread) | target p99 | met | cpu% | other |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|");
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "| policy-eval (clinic, 4 inputs round-robin) | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.0} | ≤ {:.0} | {} | {:.0} | {:.0} |",
        r.evaluations,
        us(r.p50),
        us(r.p90),
        us(r.p99),
        us(r.p999),
        us(r.max),
        us(r.mean),
        1e6 / us(r.mean).max(1e-9),
        us(TARGET_P99),
        if r.p99 <= TARGET_P99 { "yes" } else { "NO" },
        cpu.process,
        cpu.others
    );
    Ok(errors)
}

/// Four requests of the clinic's kinds: a clinician with MFA reading notes for
/// treatment (allow), billing reading notes (deny), billing reading billing (allow), a
/// Part 2 record without consent (deny).
fn inputs() -> Vec<Value> {
    let clinician = json!({"sub": "dr-ada", "roles": ["clinician"], "amr": ["pwd", "otp"], "mfa": true, "iss": "https://idp.clinic.example"});
    let biller = json!({"sub": "bill-bo", "roles": ["billing"], "amr": ["pwd"], "mfa": false, "iss": "https://idp.clinic.example"});
    let req = |user: &Value, path: &str, purpose: &str| {
        json!({
            "source": {"spiffe_id": "spiffe://wardmesh.local/ns/clinic/sa/frontend", "namespace": "clinic", "service_account": "frontend"},
            "destination": {"spiffe_id": "spiffe://wardmesh.local/ns/clinic/sa/records", "port": 8080},
            "request": {"method": "GET", "path": path, "route": null,
                        "headers": {"x-purpose-of-use": purpose, "accept": "application/json"}, "protocol": "http1"},
            "user": user,
            "context": {"purpose_of_use": purpose, "break_glass": null, "consent": null,
                        "time": "2026-11-25T12:00:00Z", "risk": {"flagged": false, "score": 0.1}}
        })
    };
    vec![
        req(&clinician, "/patients/p-1001/notes", "TREAT"),
        req(&biller, "/patients/p-1001/notes", "HPAYMT"),
        req(&biller, "/patients/p-1001/billing", "HPAYMT"),
        req(&clinician, "/patients/p-2002/notes", "TREAT"),
    ]
}
