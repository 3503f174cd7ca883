//! Builds the policy guest (`policies/guest`) for `wasm32-unknown-unknown` from source, so
//! every `cargo build` produces the module that bundles embed: no committed binaries.
//!
//! The guest is its own workspace with its own lock file; it is built in release mode
//! with a target directory under `OUT_DIR`, and copied to `$OUT_DIR/guest.wasm`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = path_var("CARGO_MANIFEST_DIR");
    let out_dir = path_var("OUT_DIR");
    let guest = manifest_dir.join("../../policies/guest");
    let guest = guest.canonicalize().unwrap_or(guest);

    for rel in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", guest.join(rel).display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let target_dir = out_dir.join("guest-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guest)
        .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
        .arg("--manifest-path")
        .arg(guest.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    if guest.join("Cargo.lock").exists() {
        cmd.arg("--locked");
    }
    // The outer build's settings are for the host; none of them apply to the guest.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PROFILE_RELEASE_DEBUG",
        "CARGO_PROFILE_RELEASE_LTO",
        "CARGO_PROFILE_RELEASE_OPT_LEVEL",
        "CARGO_PROFILE_RELEASE_CODEGEN_UNITS",
        "CARGO_PROFILE_RELEASE_PANIC",
    ] {
        cmd.env_remove(var);
    }
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("failed to run cargo for the policy guest: {e}"));
    if !output.status.success() {
        panic!(
            "building the policy guest (policies/guest) for wasm32-unknown-unknown failed \
             (is the target installed? `rustup target add wasm32-unknown-unknown`):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let built = target_dir.join("wasm32-unknown-unknown/release/wardmesh_policy_guest.wasm");
    copy(&built, &out_dir.join("guest.wasm"));
}

fn path_var(name: &str) -> PathBuf {
    env::var_os(name)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("cargo did not set {name}"))
}

fn copy(from: &Path, to: &Path) {
    if let Err(e) = std::fs::copy(from, to) {
        panic!("copying {} to {}: {e}", from.display(), to.display());
    }
}
