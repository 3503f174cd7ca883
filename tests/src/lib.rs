//! Support for wardmesh's integration tests: a real CA in a temp dir, an in-process
//! control plane on an ephemeral loopback port (SQLite or a fresh PostgreSQL database),
//! HTTPS clients that verify it, and prerequisite checks that skip loudly on a laptop
//! but fail under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod agents;
pub mod cp;
pub mod netns;
pub mod prereq;

pub use cp::{TestCp, TestMesh};
