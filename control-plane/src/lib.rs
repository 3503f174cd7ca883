//! The wardmesh control plane: it loads the CA directory and keeps it current (root
//! rotation without restarts), attests workloads and issues their X509-SVIDs, keeps the
//! quarantine deny-list and pushes it to agents through long-poll syncs, and serves the
//! operator API, all over one TLS port. Every event and every operator API call goes into
//! the hash-chained, checkpoint-signed audit log (`audit`); `retention` deletes old flows
//! and, when configured, prunes old audit entries up to a signed checkpoint. Storage is
//! `wardmesh-store` (SQLite by default, PostgreSQL for HA). The core services
//! (`identity`, `operator`) know nothing of HTTP; `api` is the thin adapter.

pub mod api;
pub mod app;
pub mod audit;
pub mod ca_state;
pub mod config;
pub mod error;
pub mod flows;
pub mod identity;
pub mod injector;
pub mod metrics;
pub mod operator;
pub mod policy;
pub mod retention;
pub mod server;
pub mod tokenreview;

pub use app::{RunningControlPlane, start};
pub use config::ControlPlaneConfig;
