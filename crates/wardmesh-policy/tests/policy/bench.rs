//! Measurements, `#[ignore]`d so the normal test run stays fast. Run them alone:
//!
//! ```sh
//! cargo test -p wardmesh-policy --release --test policy -- --ignored --nocapture --test-threads 1
//! ```

use std::time::Instant;

use wardmesh_policy::{PolicyRuntime, RuntimeConfig, bench_eval, build_bundle};

use super::support::{Req, biller, cache_dir, clinic_bundle, clinic_dir, clinician};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// p50/p99 over 100k evaluations of the clinic policy through opa-wasm (one thread).
#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn bench_clinic_policy_evaluation() {
    let engine = PolicyRuntime::new(RuntimeConfig {
        module_cache_dir: Some(cache_dir().to_path_buf()),
        ..RuntimeConfig::default()
    })
    .unwrap()
    .load(clinic_bundle())
    .unwrap();
    let inputs = [
        Req::new(clinician(true), "GET", "/patients/p-1001/notes", "TREAT").input(),
        Req::new(biller(), "GET", "/patients/p-1001/notes", "HPAYMT").input(),
        Req::new(biller(), "GET", "/patients/p-1001/billing", "HPAYMT").input(),
        Req::new(clinician(true), "GET", "/patients/p-2002/notes", "TREAT").input(),
    ];
    let r = bench_eval(&engine, &inputs, 100_000);
    println!(
        "clinic policy, {} evaluations: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}, mean {:?}",
        r.evaluations, r.p50, r.p90, r.p99, r.max, r.mean
    );
    assert_eq!(r.evaluations, 100_000);
}

/// Module size, compile and load times, and RSS after load: cold compile versus a
/// precompiled module from the cache (run alone, `--test-threads 1`).
#[test]
#[ignore = "measurement: run with --ignored --nocapture"]
fn measure_load_costs_and_rss() {
    let bundle = build_bundle(&clinic_dir(), "measure").unwrap();
    let verified = wardmesh_policy::danger_accept_unsigned_bundle(&bundle).unwrap();
    println!(
        "guest (raw) {} bytes; policy.wasm {} bytes; bundle .tar.gz {} bytes",
        wardmesh_policy::builder::GUEST_WASM.len(),
        verified.wasm().len(),
        bundle.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let rss0 = rss_kib();
    let runtime = PolicyRuntime::new(RuntimeConfig {
        module_cache_dir: Some(dir.path().to_path_buf()),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let t = Instant::now();
    let (engine, report) = runtime.load_with_report(&verified).unwrap();
    println!(
        "cold load: {:?} total ({:?} compile, {:?} instantiate+warm-up); RSS {} -> {} KiB",
        t.elapsed(),
        report.compile,
        report.instantiate,
        rss0,
        rss_kib()
    );
    drop(engine);
    let t = Instant::now();
    let (engine, report) = runtime.load_with_report(&verified).unwrap();
    assert!(report.from_cache);
    println!(
        "cached load: {:?} total ({:?} map, {:?} instantiate+warm-up); RSS {} KiB",
        t.elapsed(),
        report.compile,
        report.instantiate,
        rss_kib()
    );
    let input = Req::new(clinician(true), "GET", "/patients/p-1001/notes", "TREAT").input();
    for _ in 0..10_000 {
        assert!(engine.evaluate(&input).allow);
    }
    println!("after 10k evaluations: RSS {} KiB", rss_kib());
}

/// RSS of a process that only maps a precompiled clinic module (what an agent restart
/// does): run as `RSS_ONLY_CACHED=1 cargo test … measure_cached_load_rss_alone`.
#[test]
#[ignore = "measurement: run alone with --ignored --nocapture"]
fn measure_cached_load_rss_alone() {
    let dir = std::env::var("POLICY_CACHE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| cache_dir().to_path_buf());
    let bundle = build_bundle(&clinic_dir(), "measure").unwrap();
    let verified = wardmesh_policy::danger_accept_unsigned_bundle(&bundle).unwrap();
    let rss0 = rss_kib();
    let runtime = PolicyRuntime::new(RuntimeConfig {
        module_cache_dir: Some(dir),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let (engine, report) = runtime.load_with_report(&verified).unwrap();
    let input = Req::new(clinician(true), "GET", "/patients/p-1001/notes", "TREAT").input();
    for _ in 0..1_000 {
        assert!(engine.evaluate(&input).allow);
    }
    println!(
        "from cache: {} ({:?} map, {:?} instantiate); RSS before load {} KiB, after load + 1k evals {} KiB",
        report.from_cache,
        report.compile,
        report.instantiate,
        rss0,
        rss_kib()
    );
}
