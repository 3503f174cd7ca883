//! `opa test` for wardmesh: every rule named `test_*` in the policy directory (usually in
//! `*_test.rego` files) is evaluated natively with regorus; a test passes when its value
//! is defined and not `false`.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use regorus::Value;
use regorus::unstable::{Rule, RuleHead};

use super::{RegoError, engine_with, load_data, load_rego_files};

/// How one test ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegoTestOutcome {
    Pass,
    /// The rule was `false` or undefined.
    Fail,
    /// Evaluation failed (conflicting outputs, a builtin error in strict mode, …).
    Error(String),
}

/// One test rule and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegoTestResult {
    /// `data.wardmesh.authz_test.test_clinician_reads_notes`
    pub rule: String,
    pub file: String,
    pub line: u32,
    pub outcome: RegoTestOutcome,
    pub duration: Duration,
}

/// All tests of a directory. `Display` prints one line per test and `N passed, N failed`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegoTestReport {
    pub results: Vec<RegoTestResult>,
}

impl RegoTestReport {
    pub fn passed(&self) -> usize {
        self.results
            .iter()
            .filter(|r| r.outcome == RegoTestOutcome::Pass)
            .count()
    }

    /// Failed and errored tests.
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// True when there is at least one test and every test passed.
    pub fn is_success(&self) -> bool {
        !self.results.is_empty() && self.failed() == 0
    }
}

impl fmt::Display for RegoTestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.results {
            let status = match &r.outcome {
                RegoTestOutcome::Pass => "PASS".to_string(),
                RegoTestOutcome::Fail => "FAIL".to_string(),
                RegoTestOutcome::Error(e) => format!("ERROR: {e}"),
            };
            writeln!(
                f,
                "{}:{}: {}: {} ({:?})",
                r.file, r.line, r.rule, status, r.duration
            )?;
        }
        writeln!(f, "{} passed, {} failed", self.passed(), self.failed())
    }
}

/// Runs every `test_*` rule under `dir` (policies, tests and data files together).
pub fn run_rego_tests(dir: &Path) -> Result<RegoTestReport, RegoError> {
    let files = load_rego_files(dir)?;
    let data = load_data(dir)?;
    let mut engine = engine_with(&files, &data)?;

    let mut tests = Vec::new();
    for module in engine.get_modules() {
        let package = module.package.refr.span().text().to_string();
        let file = module.package.span.source.get_path().clone();
        for rule in &module.policy {
            let Rule::Spec { span, head, .. } = rule.as_ref() else {
                continue;
            };
            let refr = match head {
                RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. } => refr,
                RuleHead::Func { .. } => continue,
            };
            let name = refr.span().text();
            if name.starts_with("test_") {
                let rule = format!("data.{package}.{name}");
                if !tests.iter().any(|(r, _, _)| *r == rule) {
                    tests.push((rule, file.clone(), span.line));
                }
            }
        }
    }

    let mut report = RegoTestReport::default();
    for (rule, file, line) in tests {
        let start = Instant::now();
        let outcome = match engine.eval_rule(rule.clone()) {
            Ok(Value::Undefined) | Ok(Value::Bool(false)) => RegoTestOutcome::Fail,
            Ok(_) => RegoTestOutcome::Pass,
            Err(e) => RegoTestOutcome::Error(e.to_string().trim().to_string()),
        };
        report.results.push(RegoTestResult {
            rule,
            file,
            line,
            outcome,
            duration: start.elapsed(),
        });
    }
    Ok(report)
}
