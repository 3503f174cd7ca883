//! Load a bundle the way an agent does and report what it costs:
//!
//! ```sh
//! cargo run -p wardmesh-policy --example policy_load -- policies/clinic /tmp/policy-cache
//! ```
//!
//! Builds the directory's bundle (saved as /tmp/policy_load.tar.gz; pass that file to
//! measure loading alone), loads it with a module cache (run twice: the second run
//! maps the precompiled module), prints the load times, the process RSS before and after,
//! and evaluation latency over 100k evaluations.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;
use wardmesh_policy::{
    PolicyRuntime, RuntimeConfig, bench_eval, build_bundle, danger_accept_unsigned_bundle,
};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let source = PathBuf::from(args.next().unwrap_or_else(|| "policies/clinic".into()));
    let cache = args.next().map(PathBuf::from);
    // A directory is built first (and the bundle saved next to the cache); a file is
    // read as a bundle, so a run measures loading alone.
    let bundle = if source.is_dir() {
        let b = build_bundle(&source, "measure").unwrap();
        std::fs::write("/tmp/policy_load.tar.gz", &b).unwrap();
        b
    } else {
        std::fs::read(&source).unwrap()
    };
    let verified = danger_accept_unsigned_bundle(&bundle).unwrap();
    let input = json!({
        "source": {"spiffe_id": "spiffe://wardmesh.local/ns/clinic/sa/frontend", "namespace": "clinic", "service_account": "frontend"},
        "destination": {"spiffe_id": "spiffe://wardmesh.local/ns/clinic/sa/records", "port": 8080},
        "request": {"method": "GET", "path": "/patients/p-1001/notes", "route": null, "headers": {"x-purpose-of-use": "TREAT"}, "protocol": "http1"},
        "user": {"sub": "dr-ada", "roles": ["clinician"], "amr": ["pwd", "otp"], "mfa": true, "iss": "https://idp.clinic.example"},
        "context": {"purpose_of_use": "TREAT", "break_glass": null, "consent": null, "time": "2025-06-01T12:00:00Z", "risk": {"flagged": false}}
    });
    let rss_before = rss_kib();
    let runtime = PolicyRuntime::new(RuntimeConfig {
        module_cache_dir: cache,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let t = Instant::now();
    let (engine, report) = runtime.load_with_report(&verified).unwrap();
    let loaded = t.elapsed();
    assert!(engine.evaluate(&input).allow);
    println!(
        "policy.wasm {} bytes, bundle {} bytes; load {loaded:?} (native code {:?}, from cache: {}; instantiate {:?}); RSS {rss_before} KiB -> {} KiB",
        verified.wasm().len(),
        bundle.len(),
        report.compile,
        report.from_cache,
        report.instantiate,
        rss_kib()
    );
    let r = bench_eval(&engine, &[input], 100_000);
    println!(
        "{} evaluations: p50 {:?} p90 {:?} p99 {:?} max {:?}; RSS {} KiB",
        r.evaluations,
        r.p50,
        r.p90,
        r.p99,
        r.max,
        rss_kib()
    );
}
