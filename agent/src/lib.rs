//! The wardmesh sidecar agent. Its identity half attests
//! to the control plane, keeps the workload's X509-SVID renewed (at half-life with
//! jitter, fail-static when the control plane is down), follows trust-bundle rotation
//! and the quarantine deny-list, and publishes ready-built rustls configs through
//! `tokio::sync::watch` for the data plane. It also serves the admin endpoints
//! (`/live`, `/ready`, `/metrics`, `/config_dump`).
//!
//! The data plane ([`proxy`]) carries the app's traffic: the inbound listener accepts
//! mesh mTLS from other agents and authorizes every request ([`authz`])
//! with the Rego policy compiled to wasm ([`policy`]), the declared
//! route templates ([`routes`]) and the end user's validated JWT ([`jwt`]) — before it
//! reaches the app; the outbound listener takes the app's calls (transparently or as an
//! HTTP proxy) to the destination's agent, found through [`discovery`]. Every inbound
//! request and TCP connection leaves a flow record ([`telemetry`]) in the durable
//! [`spool`], which ships it to the control plane.
//!
//! Composition root: [`app::start`] (embeddable, returns handles) and [`app::run`]
//! (the binary's entry). Clocks and metric registries are passed in, never global.

pub mod admin;
pub mod app;
pub mod authz;
pub mod cli;
pub mod clock;
pub mod config;
pub mod discovery;
pub mod identity;
pub mod iptables;
pub mod jwt;
pub mod metrics;
pub mod original_dst;
pub mod policy;
pub mod proxy;
pub mod routes;
pub mod spool;
pub mod telemetry;

#[cfg(test)]
mod testing;
