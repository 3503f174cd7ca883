//! Turns the raw guest module into a bundle's `policy.wasm` (a post-link step with walrus):
//!
//! * the Rego sources and entrypoints go into a new data segment right after the guest's
//!   static data, and the guest's `WARDMESH_POLICY_SLOT` static is patched to point at it;
//! * the OPA ABI version globals (`opa_wasm_abi_version` = 1,
//!   `opa_wasm_abi_minor_version` = 2) are added as real exported i32 globals, and the
//!   imported memory is exported as `memory` (ABI 1.1);
//! * linker-only exports (`WARDMESH_POLICY_SLOT`, `__heap_base`, `__data_end`) and custom
//!   sections are dropped, so the module exports exactly the OPA ABI.

use walrus::{ConstExpr, DataKind, ExportItem, GlobalKind, ValType, ir::Value};

use crate::rego::RegoFile;

/// The OPA wasm ABI version the guest implements.
pub const ABI_VERSION: (i32, i32) = (1, 2);

const SLOT_EXPORT: &str = "WARDMESH_POLICY_SLOT";
const SLOT_MAGIC: u32 = 0x3150_4c57;
const SLOT_LEN: usize = 20;
const PAGE: u64 = 64 * 1024;
/// Arena reserved for the compiled policy when the sources are small.
const MIN_ARENA_BYTES: usize = 8 * 1024 * 1024;
/// regorus' compiled form takes a small multiple of the source size.
const ARENA_PER_SOURCE_BYTE: usize = 64;

/// The guest module could not be patched (a build problem, not a policy problem).
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("guest module is not valid wasm: {0}")]
    Parse(String),
    #[error("guest module has no exported i32 global {0}: is it the wardmesh policy guest?")]
    MissingSymbol(&'static str),
    #[error("guest module's policy slot is not where its export says")]
    SlotNotFound,
    #[error("embedded policy is too large for a 32-bit module ({0} bytes)")]
    TooLarge(usize),
    #[error("guest module has no memory import")]
    NoMemory,
    #[error("cannot encode the embedded policy: {0}")]
    Encode(String),
}

/// How the guest evaluates the embedded Rego.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Evaluator {
    /// regorus' register VM: several times faster. Where two definitions of a complete
    /// rule disagree it makes the rule undefined instead of failing the evaluation as
    /// OPA does; policies built as `else` chains (like the clinic library) cannot hit it.
    #[default]
    Vm,
    /// regorus' tree-walking interpreter: OPA's error semantics, slower.
    Interpreter,
}

/// Embeds `files` and `entrypoints` into a copy of `guest`.
pub fn embed_policy(
    guest: &[u8],
    files: &[RegoFile],
    entrypoints: &[String],
    evaluator: Evaluator,
) -> Result<Vec<u8>, EmbedError> {
    let blob = serde_json::to_vec(&serde_json::json!({
        "evaluator": match evaluator {
            Evaluator::Vm => "vm",
            Evaluator::Interpreter => "interpreter",
        },
        "entrypoints": entrypoints,
        "modules": files
            .iter()
            .map(|f| serde_json::json!({"id": f.path, "content": f.content}))
            .collect::<Vec<_>>(),
    }))
    .map_err(|e| EmbedError::Encode(e.to_string()))?;
    let source_bytes: usize = files.iter().map(|f| f.content.len()).sum();
    let arena = MIN_ARENA_BYTES.max(source_bytes.saturating_mul(ARENA_PER_SOURCE_BYTE));

    let mut module =
        walrus::Module::from_buffer(guest).map_err(|e| EmbedError::Parse(e.to_string()))?;
    let slot = exported_i32(&module, SLOT_EXPORT)? as usize;
    let heap_base = exported_i32(&module, "__heap_base")? as usize;

    let blob_ptr = align(heap_base, 16);
    let new_heap_base = align(blob_ptr + blob.len(), 16);
    let fits = |v: usize| u32::try_from(v).ok();
    let (Some(ptr32), Some(len32), Some(base32), Some(arena32)) = (
        fits(blob_ptr),
        fits(blob.len()),
        fits(new_heap_base),
        fits(arena),
    ) else {
        return Err(EmbedError::TooLarge(blob.len()));
    };
    if new_heap_base.saturating_add(arena) >= u32::MAX as usize / 2 {
        return Err(EmbedError::TooLarge(blob.len()));
    }

    let memory = module
        .memories
        .iter()
        .find(|m| m.import.is_some())
        .map(|m| m.id())
        .ok_or(EmbedError::NoMemory)?;

    // Patch the slot in place inside the data segment that holds it.
    let mut patched = false;
    let ids: Vec<_> = module.data.iter().map(|d| d.id()).collect();
    for id in ids {
        let data = module.data.get_mut(id);
        let DataKind::Active {
            offset: ConstExpr::Value(Value::I32(off)),
            ..
        } = data.kind
        else {
            continue;
        };
        let off = off as u32 as usize;
        if slot < off || slot + SLOT_LEN > off + data.value.len() {
            continue;
        }
        let at = slot - off;
        let bytes = &mut data.value[at..at + SLOT_LEN];
        if bytes[..4] != SLOT_MAGIC.to_le_bytes() {
            return Err(EmbedError::SlotNotFound);
        }
        for (i, v) in [SLOT_MAGIC, ptr32, len32, base32, arena32]
            .iter()
            .enumerate()
        {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        patched = true;
        break;
    }
    if !patched {
        return Err(EmbedError::SlotNotFound);
    }
    module.data.add(
        DataKind::Active {
            memory,
            offset: ConstExpr::Value(Value::I32(ptr32 as i32)),
        },
        blob,
    );
    let mem = module.memories.get_mut(memory);
    mem.initial = mem.initial.max((new_heap_base as u64).div_ceil(PAGE));

    for (name, value) in [
        ("opa_wasm_abi_version", ABI_VERSION.0),
        ("opa_wasm_abi_minor_version", ABI_VERSION.1),
    ] {
        let g = module.globals.add_local(
            ValType::I32,
            false,
            false,
            ConstExpr::Value(Value::I32(value)),
        );
        module.exports.add(name, g);
    }
    let linker_only: Vec<_> = module
        .exports
        .iter()
        .filter(|e| matches!(e.name.as_str(), SLOT_EXPORT | "__heap_base" | "__data_end"))
        .map(|e| e.id())
        .collect();
    for id in linker_only {
        module.exports.delete(id);
    }
    if !module.exports.iter().any(|e| e.name == "memory") {
        module.exports.add("memory", memory);
    }
    let customs: Vec<_> = module.customs.iter().map(|(id, _)| id).collect();
    for id in customs {
        module.customs.delete(id);
    }
    module.producers.clear();
    Ok(module.emit_wasm())
}

fn exported_i32(module: &walrus::Module, name: &'static str) -> Result<i32, EmbedError> {
    let export = module
        .exports
        .iter()
        .find(|e| e.name == name)
        .ok_or(EmbedError::MissingSymbol(name))?;
    let ExportItem::Global(g) = export.item else {
        return Err(EmbedError::MissingSymbol(name));
    };
    match module.globals.get(g).kind {
        GlobalKind::Local(ConstExpr::Value(Value::I32(v))) => Ok(v),
        _ => Err(EmbedError::MissingSymbol(name)),
    }
}

const fn align(v: usize, to: usize) -> usize {
    v.div_ceil(to) * to
}
