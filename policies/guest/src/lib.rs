//! wardmesh policy guest: the regorus Rego evaluator behind OPA's WebAssembly ABI.
//!
//! Built for `wasm32-unknown-unknown` by `crates/wardmesh-policy/build.rs`. The raw module
//! is a template: the bundle builder embeds the Rego sources and entrypoints (see
//! [`policy`]) and adds what stable Rust cannot emit: the `opa_wasm_abi_version` /
//! `opa_wasm_abi_minor_version` i32 globals and the `memory` export.
//!
//! Imports: `env.memory`, `env.opa_abort`, `env.opa_println`. Exports: the OPA ABI 1.2
//! set (`opa_eval`, `eval`, `entrypoints`, `builtins`, `opa_eval_ctx_*`, `opa_malloc`,
//! `opa_free`, `opa_json_parse`, `opa_value_parse`, `opa_json_dump`, `opa_value_dump`,
//! `opa_heap_ptr_get/set`, `opa_value_add_path`, `opa_value_remove_path`).
//!
//! Values handed to the host (`value_addr`) point to a tagged box holding a regorus
//! [`Value`]; hosts treat them as opaque, as the ABI says.

extern crate alloc;

mod abi;
mod heap;
mod policy;

use alloc::string::String;

use regorus::Value;

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn opa_abort(addr: i32);
    fn opa_println(addr: i32);
}

/// Copies `msg` into the scratch heap as a NUL-terminated string.
fn c_string(msg: &str) -> i32 {
    let mut bytes = alloc::vec::Vec::with_capacity(msg.len() + 1);
    bytes.extend(msg.bytes().filter(|b| *b != 0));
    bytes.push(0);
    let leaked = bytes.leak();
    leaked.as_ptr() as usize as i32
}

/// Reports an internal error to the host and traps. Never returns.
pub(crate) fn abort(msg: &str) -> ! {
    let addr = c_string(&alloc::format!("wardmesh policy guest: {msg}"));
    // SAFETY: host import; the string is NUL-terminated in linear memory.
    unsafe { opa_abort(addr) };
    core::arch::wasm32::unreachable()
}

/// [`abort`] with a NUL-terminated static message; allocates nothing.
pub(crate) fn abort_static(msg: &'static [u8]) -> ! {
    // SAFETY: host import; `msg` is NUL-terminated and lives in the data segment.
    unsafe { opa_abort(msg.as_ptr() as usize as i32) };
    core::arch::wasm32::unreachable()
}

#[allow(dead_code)]
pub(crate) fn println(msg: &str) {
    let addr = c_string(msg);
    // SAFETY: host import; the string is NUL-terminated in linear memory.
    unsafe { opa_println(addr) };
}

/// Called first by every export: panics become `opa_abort` with the panic message.
pub(crate) fn init() {
    static DONE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if DONE.swap(true, core::sync::atomic::Ordering::Relaxed) {
        return;
    }
    std::panic::set_hook(alloc::boxed::Box::new(|info| {
        let msg: String = alloc::format!("panic: {info}");
        abort(&msg);
    }));
}

/// The result set OPA returns for one entrypoint: `[{"result": v}]`, or `[]` when the
/// rule is undefined.
pub(crate) fn result_set(v: Value) -> Value {
    if v == Value::Undefined {
        return Value::new_array();
    }
    let mut row = alloc::collections::BTreeMap::new();
    row.insert(Value::from("result"), v);
    Value::from(alloc::vec![Value::from(row)])
}
