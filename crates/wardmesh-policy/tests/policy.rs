//! End-to-end tests with real wasm modules and real crypto: build → sign → verify →
//! evaluate the shipped clinic policy, and every way a bundle or module can be bad.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod policy {
    pub mod bad_bundles;
    pub mod bad_modules;
    pub mod bench;
    pub mod clinic;
    pub mod opa_compat;
    pub mod raw_abi;
    pub mod support;
}
