//! Workload identity for wardmesh: SPIFFE IDs and trust domains, the certificate
//! authority (offline-capable root, sealed intermediate, CSR issuance of X509-SVIDs),
//! attestation (Kubernetes service-account tokens, join tokens), the renewal schedule,
//! and the rustls configurations that carry identities onto the wire. It owns no sockets
//! and no storage; the agent and the control plane do the I/O.

pub mod attest;
pub mod ca;
pub mod keygen;
pub mod rotation;
pub mod seal;
pub mod spiffe;
pub mod svid;
pub mod tls;

#[cfg(test)]
mod testutil;

pub use spiffe::{SpiffeId, TrustDomain};
