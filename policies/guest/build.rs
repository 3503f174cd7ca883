//! Link settings the OPA wasm ABI needs: the host provides the linear memory as
//! `env.memory` (opa-wasm and OPA's SDKs create it from the module's import type).

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.starts_with("wasm32") {
        println!("cargo:rustc-link-arg=--import-memory");
        // The shadow stack lives at the bottom of linear memory; 512 KiB is ample for
        // regorus' recursion on policy-sized inputs and keeps the module's minimum small.
        println!("cargo:rustc-link-arg=-zstack-size=524288");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
