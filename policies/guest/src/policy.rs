//! The embedded policy: Rego sources and entrypoints patched in per bundle, compiled once
//! per data document into the persistent arena, evaluated through regorus'
//! compiled-policy path (its register VM, or the interpreter as a fallback).
//!
//! The bundle builder writes a JSON blob
//! `{"entrypoints": ["pkg/rule", ...], "modules": [{"id": "file.rego", "content": "..."}]}`
//! into a data segment and points [`WARDMESH_POLICY_SLOT`] at it, so the module itself
//! carries the policy and `data.json` stays pure data.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::ptr;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::RegoVM;
use regorus::rvm::program::Program;
use regorus::{CompiledPolicy, Engine, Value};

use crate::heap;

/// `"WPL1"`: lets the bundle builder check that it patches the right bytes.
pub const SLOT_MAGIC: u32 = 0x3150_4c57;

/// Where the bundle builder tells the guest about the embedded policy. Read with a
/// volatile load: the compiler must not fold the link-time zeros.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Slot {
    pub magic: u32,
    /// Address and length of the embedded JSON blob (0 when unpatched).
    pub blob_ptr: u32,
    pub blob_len: u32,
    /// First byte after the blob: where the arena starts (0: use `__heap_base`).
    pub heap_base: u32,
    /// Arena reservation in bytes (0: [`heap::DEFAULT_ARENA_BYTES`]).
    pub arena_bytes: u32,
}

#[unsafe(no_mangle)]
pub static WARDMESH_POLICY_SLOT: Slot = Slot {
    magic: SLOT_MAGIC,
    blob_ptr: 0,
    blob_len: 0,
    heap_base: 0,
    arena_bytes: 0,
};

pub fn slot() -> Slot {
    // SAFETY: a plain read of a static; volatile so the patched bytes are seen.
    unsafe { ptr::read_volatile(ptr::addr_of!(WARDMESH_POLICY_SLOT)) }
}

/// Identifies one data document: its address and the serial number it was given when it
/// was parsed or last changed (addresses are reused after a heap reset).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DataKey {
    pub addr: usize,
    pub serial: u64,
}

struct Sources {
    entrypoints: Vec<String>,
    modules: Vec<(String, String)>,
    /// `"interpreter"` forces regorus' interpreter; anything else uses its VM.
    interpreter_only: bool,
}

/// One entrypoint, compiled. regorus' register VM is several times faster than its
/// tree-walking interpreter; a policy using something the VM does not support (such as
/// `with`) falls back to the interpreter.
enum Compiled {
    Vm(alloc::sync::Arc<Program>),
    Interpreter(CompiledPolicy),
}

impl Compiled {
    fn eval(&self, data: &Value, input: Value) -> Result<Value, String> {
        match self {
            Self::Vm(program) => {
                let mut vm = RegoVM::new();
                vm.load_program(program.clone());
                // The host's fuel budget bounds the work, not an instruction count.
                vm.set_max_instructions(usize::MAX);
                vm.set_data(data.clone())
                    .map_err(|e| alloc::format!("data: {e}"))?;
                vm.set_input(input);
                vm.execute()
                    .map_err(|e| alloc::format!("evaluation failed: {e}"))
            }
            Self::Interpreter(policy) => policy
                .eval_with_input(input)
                .map_err(|e| alloc::format!("evaluation failed: {e}")),
        }
    }
}

struct State {
    sources: Option<Sources>,
    key: Option<DataKey>,
    compiled: Vec<Option<Compiled>>,
}

struct Global(UnsafeCell<State>);
// SAFETY: single-threaded guest.
unsafe impl Sync for Global {}

static STATE: Global = Global(UnsafeCell::new(State {
    sources: None,
    key: None,
    compiled: Vec::new(),
}));

fn state() -> &'static mut State {
    // SAFETY: single-threaded and never re-entered: exports do not call each other
    // while holding this reference.
    unsafe { &mut *STATE.0.get() }
}

fn load_sources() -> Result<Sources, String> {
    let slot = slot();
    if slot.magic != SLOT_MAGIC || slot.blob_ptr == 0 {
        return Err("this policy module has no embedded policy (unpatched guest)".into());
    }
    // SAFETY: the bundle builder wrote `blob_len` bytes at `blob_ptr` in a data segment.
    let bytes = unsafe {
        core::slice::from_raw_parts(slot.blob_ptr as usize as *const u8, slot.blob_len as usize)
    };
    let text = core::str::from_utf8(bytes).map_err(|_| "embedded policy is not UTF-8")?;
    let blob = Value::from_json_str(text).map_err(|e| alloc::format!("embedded policy: {e}"))?;
    let mut entrypoints = Vec::new();
    for e in blob["entrypoints"]
        .as_array()
        .map_err(|_| "embedded policy: no entrypoints")?
        .iter()
    {
        entrypoints.push(
            e.as_string()
                .map_err(|_| "embedded policy: bad entrypoint")?
                .to_string(),
        );
    }
    let mut modules = Vec::new();
    for m in blob["modules"]
        .as_array()
        .map_err(|_| "embedded policy: no modules")?
        .iter()
    {
        let id = m["id"]
            .as_string()
            .map_err(|_| "embedded policy: bad module id")?;
        let content = m["content"]
            .as_string()
            .map_err(|_| "embedded policy: bad module")?;
        modules.push((id.to_string(), content.to_string()));
    }
    let interpreter_only = blob["evaluator"]
        .as_string()
        .is_ok_and(|e| e.as_ref() == "interpreter");
    Ok(Sources {
        entrypoints,
        modules,
        interpreter_only,
    })
}

fn sources() -> Result<&'static Sources, String> {
    let st = state();
    if st.sources.is_none() {
        let loaded = heap::persistent(load_sources)?;
        st.sources = Some(loaded);
    }
    st.sources
        .as_ref()
        .ok_or_else(|| "embedded policy missing".into())
}

/// The entrypoint names, in id order.
pub fn entrypoints() -> Result<&'static [String], String> {
    Ok(&sources()?.entrypoints)
}

/// `wardmesh/authz/decision` → `data.wardmesh.authz.decision` (bracketed where a
/// component is not an identifier).
pub fn rule_path(entrypoint: &str) -> String {
    let mut out = String::from("data");
    for part in entrypoint.split('/').filter(|p| !p.is_empty()) {
        let ident = part
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ident {
            out.push('.');
            out.push_str(part);
        } else {
            out.push_str("[\"");
            out.push_str(&part.replace('\\', "\\\\").replace('"', "\\\""));
            out.push_str("\"]");
        }
    }
    out
}

fn compile(sources: &Sources, data: &Value, entry: usize) -> Result<Compiled, String> {
    let name = sources
        .entrypoints
        .get(entry)
        .ok_or_else(|| alloc::format!("unknown entrypoint id {entry}"))?;
    let mut engine = Engine::new();
    engine.set_strict_builtin_errors(false);
    for (id, content) in &sources.modules {
        engine
            .add_policy(id.clone(), content.clone())
            .map_err(|e| alloc::format!("{e}"))?;
    }
    engine
        .add_data(data.clone())
        .map_err(|e| alloc::format!("data: {e}"))?;
    let path = rule_path(name);
    let rule: regorus::Rc<str> = path.as_str().into();
    let policy = engine
        .compile_with_entrypoint(&rule)
        .map_err(|e| alloc::format!("entrypoint {name}: {e}"))?;
    if sources.interpreter_only {
        return Ok(Compiled::Interpreter(policy));
    }
    Ok(
        match Compiler::compile_from_policy(&policy, &[path.as_str()]) {
            Ok(program) => Compiled::Vm(program),
            Err(_) => Compiled::Interpreter(policy),
        },
    )
}

/// Evaluates entrypoint `entry` against `data` (identified by `key`) and `input`.
///
/// The first evaluation per data document compiles the policy and runs in the persistent
/// arena, so that everything regorus initialises lazily outlives the scratch heap.
pub fn evaluate(entry: usize, key: DataKey, data: &Value, input: Value) -> Result<Value, String> {
    let sources = sources()?;
    let st = state();
    if st.key != Some(key) || st.compiled.len() != sources.entrypoints.len() {
        heap::persistent(|| {
            st.compiled.clear();
            st.compiled.resize_with(sources.entrypoints.len(), || None);
        });
        st.key = Some(key);
    }
    let slot = st
        .compiled
        .get_mut(entry)
        .ok_or_else(|| alloc::format!("unknown entrypoint id {entry}"))?;
    if let Some(compiled) = slot.as_ref() {
        return compiled.eval(data, input);
    }
    heap::persistent(|| {
        let compiled = compile(sources, data, entry)?;
        let out = compiled.eval(data, input);
        *slot = Some(compiled);
        out
    })
}
