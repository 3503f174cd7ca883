//! `wardctl policy test`: the directory's `test_*` rules, reported like `opa test -v`.

use anyhow::{Context, bail};
use serde::Serialize;
use wardmesh_policy::{RegoTestOutcome, RegoTestResult, run_rego_tests};

use super::{Env, TestArgs};
use crate::args::Output;

/// One test in `-o json`.
#[derive(Debug, Serialize)]
struct JsonResult<'a> {
    rule: &'a str,
    location: String,
    outcome: &'static str,
    error: Option<&'a str>,
    duration_us: u128,
}

pub(super) fn run(g: &Env, a: &TestArgs) -> anyhow::Result<()> {
    let report = run_rego_tests(&a.dir)
        .with_context(|| format!("loading the policies in {}", a.dir.display()))?;
    let results: Vec<&RegoTestResult> = report
        .results
        .iter()
        .filter(|r| a.run.as_deref().is_none_or(|f| r.rule.contains(f)))
        .collect();
    if results.is_empty() {
        bail!(
            "no test_* rules{} in {}",
            a.run
                .as_deref()
                .map(|f| format!(" matching {f:?}"))
                .unwrap_or_default(),
            a.dir.display()
        );
    }
    let location = |r: &RegoTestResult| format!("{}:{}", a.dir.join(&r.file).display(), r.line);
    match g.output {
        Output::Json => {
            let rows: Vec<JsonResult<'_>> = results
                .iter()
                .map(|r| JsonResult {
                    rule: &r.rule,
                    location: location(r),
                    outcome: label(&r.outcome),
                    error: match &r.outcome {
                        RegoTestOutcome::Error(e) => Some(e),
                        _ => None,
                    },
                    duration_us: r.duration.as_micros(),
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Output::Table => {
            let mut file = None;
            for r in &results {
                if file != Some(&r.file) {
                    println!("{}:", a.dir.join(&r.file).display());
                    file = Some(&r.file);
                }
                let status = match &r.outcome {
                    RegoTestOutcome::Pass => "PASS".to_owned(),
                    RegoTestOutcome::Fail => format!("FAIL (at {})", location(r)),
                    RegoTestOutcome::Error(e) => format!("ERROR (at {}): {e}", location(r)),
                };
                println!("{}: {status} ({:?})", r.rule, r.duration);
            }
            println!("{}", "-".repeat(80));
            let passed = results
                .iter()
                .filter(|r| r.outcome == RegoTestOutcome::Pass)
                .count();
            let failed = results.len() - passed;
            println!("PASS: {passed}/{}", results.len());
            if failed > 0 {
                println!("FAIL: {failed}/{}", results.len());
            }
        }
    }
    let failed = results
        .iter()
        .filter(|r| r.outcome != RegoTestOutcome::Pass)
        .count();
    if failed > 0 {
        bail!("{failed} of {} policy tests failed", results.len());
    }
    Ok(())
}

fn label(o: &RegoTestOutcome) -> &'static str {
    match o {
        RegoTestOutcome::Pass => "pass",
        RegoTestOutcome::Fail => "fail",
        RegoTestOutcome::Error(_) => "error",
    }
}
