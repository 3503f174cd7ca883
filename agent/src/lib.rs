//! The wardmesh sidecar agent. This crate holds the agent's identity half: it attests
//! to the control plane, keeps the workload's X509-SVID renewed (at half-life with
//! jitter, fail-static when the control plane is down), follows trust-bundle rotation
//! and the quarantine deny-list, and publishes ready-built rustls configs through
//! `tokio::sync::watch` for the data plane. It also serves the admin endpoints
//! (`/live`, `/ready`, `/metrics`, `/config_dump`).
//!
//! Composition root: [`app::start`] (embeddable, returns handles) and [`app::run`]
//! (the binary's entry). Clocks and metric registries are passed in, never global.

pub mod admin;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod identity;

#[cfg(test)]
mod testing;
