//! wardmesh integration tests: one binary, real TLS, real sockets, real stores.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit;
mod dataplane;
mod identity_api;
mod injector;
mod k8s_attestation;
mod openapi;
mod policy;
mod rotation;
mod telemetry;
mod transparent;
