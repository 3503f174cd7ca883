//! wardmesh policy: Rego policies as OPA-ABI WebAssembly bundles — built, signed,
//! verified and evaluated in-process (DESIGN.md §4).
//!
//! * [`build_bundle`] turns a policy directory into an OPA bundle (`.tar.gz` with
//!   `policy.wasm`, `data.json`, `.manifest`), the layout of `opa build -t wasm`. The Rego
//!   is checked natively with regorus (errors name `file:line:col`), then embedded into
//!   the wasm guest from `policies/guest` (regorus behind OPA's wasm ABI), which this
//!   crate's `build.rs` compiles from source.
//! * [`sign_bundle`] / [`verify_bundle`] implement OPA's bundle signing (`.signatures.json`,
//!   a JWT listing every file's SHA-256; ES256 or EdDSA). Only a [`VerifiedBundle`] loads.
//! * [`PolicyRuntime`] / [`PolicyEngine`] evaluate with opa-wasm on wasmtime: compiled
//!   once, a pool of instances, CPU-time and memory caps; every failure is a deny with rule
//!   [`RULE_POLICY_ERROR`]. Bundles from the real `opa build -t wasm` load too.
//! * [`run_rego_tests`] runs `test_*` rules like `opa test`.
//!
//! Seams left for the agent and control plane: distribution, activation and rollback
//! hold [`VerifiedBundle`]s and swap [`PolicyEngine`]s; dry-run mode wraps a
//! [`Decision`]; end-user JWT validation fills `input.user` before [`PolicyEngine::evaluate`].

mod bench;
pub mod builder;
pub mod bundle;
mod engine;
pub mod rego;
mod sign;

pub use bench::{EvalLatency, bench_eval};
pub use builder::{
    BuildError, BuildOptions, DEFAULT_ENTRYPOINT, Evaluator, build_bundle, build_bundle_with,
};
pub use bundle::{BundleError, BundleFiles, Manifest};
pub use engine::{
    Decision, EvalError, InputError, LoadError, LoadReport, PolicyEngine, PolicyRuntime,
    RULE_POLICY_ERROR, RuntimeConfig,
};
pub use rego::{RegoError, RegoTestOutcome, RegoTestReport, RegoTestResult, run_rego_tests};
pub use sign::{
    KeyError, SignError, SignatureAlgorithm, SigningKey, VerifiedBundle, VerifyError, VerifyingKey,
    danger_accept_unsigned_bundle, file_digest, sign_bundle, verify_bundle,
};
