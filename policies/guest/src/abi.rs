//! The exported functions of OPA's wasm ABI (1.2).

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::alloc::{GlobalAlloc, Layout};
use core::arch::wasm32;
use core::cell::Cell;
use core::ptr;

use regorus::Value;

use crate::heap::HEAP;
use crate::policy::{self, DataKey};
use crate::{abort, init, result_set};

const VALUE_MAGIC: u32 = 0x4c41_5657; // "WVAL"
const CTX_MAGIC: u32 = 0x5854_4357; // "WCTX"
const MALLOC_MAGIC: u32 = 0x434c_4d57; // "WMLC"

const OPA_ERR_OK: i32 = 0;
const OPA_ERR_INVALID_TYPE: i32 = 2;
const OPA_ERR_INVALID_PATH: i32 = 3;

#[repr(C)]
struct Boxed {
    magic: u32,
    serial: u64,
    value: Value,
}

#[repr(C)]
struct Ctx {
    magic: u32,
    entrypoint: i32,
    data: i32,
    input: i32,
    result: i32,
}

struct Serial(Cell<u64>);
// SAFETY: single-threaded guest.
unsafe impl Sync for Serial {}
static SERIAL: Serial = Serial(Cell::new(1));

fn next_serial() -> u64 {
    let s = SERIAL.0.get();
    SERIAL.0.set(s + 1);
    s
}

fn memory_len() -> usize {
    wasm32::memory_size(0) * 65536
}

fn boxed(value: Value) -> i32 {
    let b = Box::new(Boxed {
        magic: VALUE_MAGIC,
        serial: next_serial(),
        value,
    });
    Box::into_raw(b) as usize as i32
}

/// The tagged box at `addr`, if `addr` is one this guest handed out.
fn boxed_at(addr: i32) -> Option<&'static mut Boxed> {
    let a = addr as u32 as usize;
    if a == 0
        || !a.is_multiple_of(core::mem::align_of::<Boxed>())
        || a + size_of::<Boxed>() > memory_len()
    {
        return None;
    }
    // SAFETY: in bounds and aligned; the magic is checked before a reference is formed.
    unsafe {
        if ptr::read(a as *const u32) != VALUE_MAGIC {
            return None;
        }
        Some(&mut *(a as *mut Boxed))
    }
}

fn value_at(addr: i32) -> Option<&'static mut Value> {
    boxed_at(addr).map(|b| &mut b.value)
}

fn ctx_at(addr: i32) -> &'static mut Ctx {
    let a = addr as u32 as usize;
    if a == 0
        || !a.is_multiple_of(core::mem::align_of::<Ctx>())
        || a + size_of::<Ctx>() > memory_len()
    {
        abort("invalid evaluation context address");
    }
    // SAFETY: in bounds and aligned; the magic is checked before use.
    unsafe {
        if ptr::read(a as *const u32) != CTX_MAGIC {
            abort("invalid evaluation context");
        }
        &mut *(a as *mut Ctx)
    }
}

fn bytes_at(addr: i32, len: i32) -> &'static [u8] {
    let (a, n) = (addr as u32 as usize, len.max(0) as usize);
    if a.checked_add(n).is_none_or(|end| end > memory_len()) {
        abort("string out of bounds");
    }
    // SAFETY: bounds checked against the current memory size.
    unsafe { core::slice::from_raw_parts(a as *const u8, n) }
}

fn parse_json(bytes: &[u8]) -> Result<Value, alloc::string::String> {
    // opa-wasm counts the trailing NUL in `size`; OPA's SDKs do not.
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let text = core::str::from_utf8(&bytes[..end]).map_err(|_| "input is not UTF-8")?;
    Value::from_json_str(text).map_err(|e| alloc::format!("{e}"))
}

fn dump(v: &Value) -> i32 {
    let mut out: Vec<u8> = match serde_json::to_vec(v) {
        Ok(o) => o,
        Err(e) => abort(&alloc::format!("cannot serialize value: {e}")),
    };
    out.push(0);
    out.leak().as_ptr() as usize as i32
}

#[unsafe(no_mangle)]
pub extern "C" fn opa_malloc(size: i32) -> i32 {
    init();
    if size < 0 {
        abort("opa_malloc: negative size");
    }
    let total = size as usize + 8;
    let Ok(layout) = Layout::from_size_align(total, 8) else {
        abort("opa_malloc: size too large");
    };
    // SAFETY: non-zero size (header included).
    let p = unsafe { HEAP.alloc(layout) };
    if p.is_null() {
        abort("opa_malloc: out of memory");
    }
    // SAFETY: `p` has room for the 8-byte header.
    unsafe {
        ptr::write(p as *mut u32, MALLOC_MAGIC);
        ptr::write((p as *mut u32).add(1), size as u32);
    }
    (p as usize + 8) as i32
}

#[unsafe(no_mangle)]
pub extern "C" fn opa_free(addr: i32) {
    init();
    let a = addr as u32 as usize;
    if a < 8 || !a.is_multiple_of(8) || a > memory_len() {
        return;
    }
    let h = a - 8;
    // SAFETY: in bounds; only a block with our header is given back to the allocator.
    unsafe {
        if ptr::read(h as *const u32) != MALLOC_MAGIC {
            return;
        }
        let size = ptr::read((h as *const u32).add(1)) as usize;
        ptr::write(h as *mut u32, 0);
        HEAP.dealloc(h as *mut u8, Layout::from_size_align_unchecked(size + 8, 8));
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn opa_json_parse(addr: i32, len: i32) -> i32 {
    init();
    match parse_json(bytes_at(addr, len)) {
        Ok(v) => boxed(v),
        Err(_) => 0,
    }
}

/// Rego set literals are not accepted: this guest parses JSON only.
#[unsafe(no_mangle)]
pub extern "C" fn opa_value_parse(addr: i32, len: i32) -> i32 {
    opa_json_parse(addr, len)
}

#[unsafe(no_mangle)]
pub extern "C" fn opa_json_dump(value: i32) -> i32 {
    init();
    match value_at(value) {
        Some(v) => dump(v),
        None => abort("opa_json_dump: invalid value address"),
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn opa_value_dump(value: i32) -> i32 {
    opa_json_dump(value)
}

#[unsafe(no_mangle)]
pub extern "C" fn opa_heap_ptr_get() -> i32 {
    init();
    HEAP.top() as i32
}

#[unsafe(no_mangle)]
pub extern "C" fn opa_heap_ptr_set(addr: i32) {
    init();
    HEAP.set_top(addr as u32 as usize);
}

/// No host-provided builtins: every builtin the embedded Rego uses runs inside regorus.
#[unsafe(no_mangle)]
pub extern "C" fn builtins() -> i32 {
    init();
    boxed(Value::new_object())
}

#[unsafe(no_mangle)]
pub extern "C" fn entrypoints() -> i32 {
    init();
    let names = policy::entrypoints().unwrap_or_else(|e| abort(&e));
    let mut map = alloc::collections::BTreeMap::new();
    for (id, name) in names.iter().enumerate() {
        map.insert(Value::from(name.as_str()), Value::from(id as u64));
    }
    boxed(Value::from(map))
}

#[unsafe(no_mangle)]
pub extern "C" fn opa_eval_ctx_new() -> i32 {
    init();
    let ctx = Box::new(Ctx {
        magic: CTX_MAGIC,
        entrypoint: 0,
        data: 0,
        input: 0,
        result: 0,
    });
    Box::into_raw(ctx) as usize as i32
}

#[unsafe(no_mangle)]
pub extern "C" fn opa_eval_ctx_set_input(ctx: i32, input: i32) {
    init();
    ctx_at(ctx).input = input;
}

#[unsafe(no_mangle)]
pub extern "C" fn opa_eval_ctx_set_data(ctx: i32, data: i32) {
    init();
    ctx_at(ctx).data = data;
}

#[unsafe(no_mangle)]
pub extern "C" fn opa_eval_ctx_set_entrypoint(ctx: i32, entrypoint: i32) {
    init();
    ctx_at(ctx).entrypoint = entrypoint;
}

#[unsafe(no_mangle)]
pub extern "C" fn opa_eval_ctx_get_result(ctx: i32) -> i32 {
    init();
    ctx_at(ctx).result
}

/// The data document and its cache key; a missing data address means `{}`.
fn data_for(addr: i32) -> (DataKey, Value) {
    if addr == 0 {
        return (DataKey { addr: 0, serial: 0 }, Value::new_object());
    }
    match boxed_at(addr) {
        Some(b) => (
            DataKey {
                addr: addr as u32 as usize,
                serial: b.serial,
            },
            b.value.clone(),
        ),
        None => abort("invalid data value address"),
    }
}

fn entry_id(entrypoint: i32) -> usize {
    usize::try_from(entrypoint).unwrap_or_else(|_| abort("invalid entrypoint id"))
}

#[unsafe(no_mangle)]
pub extern "C" fn eval(ctx: i32) -> i32 {
    init();
    let c = ctx_at(ctx);
    let (key, data) = data_for(c.data);
    let input = if c.input == 0 {
        Value::Undefined
    } else {
        value_at(c.input)
            .map(|v| v.clone())
            .unwrap_or_else(|| abort("invalid input value address"))
    };
    let out =
        policy::evaluate(entry_id(c.entrypoint), key, &data, input).unwrap_or_else(|e| abort(&e));
    let result = boxed(result_set(out));
    ctx_at(ctx).result = result;
    OPA_ERR_OK
}

/// ABI 1.2 one-shot evaluation: reset the scratch heap to `heap_ptr`, parse the input
/// JSON, evaluate, return the NUL-terminated JSON result set.
#[unsafe(no_mangle)]
pub extern "C" fn opa_eval(
    _reserved: i32,
    entrypoint: i32,
    data: i32,
    input: i32,
    input_len: i32,
    heap_ptr: i32,
    _format: i32,
) -> i32 {
    init();
    HEAP.set_top(heap_ptr as u32 as usize);
    let (key, data) = data_for(data);
    let input = if input_len <= 0 {
        Value::Undefined
    } else {
        parse_json(bytes_at(input, input_len))
            .unwrap_or_else(|e| abort(&alloc::format!("malformed input JSON: {e}")))
    };
    let out =
        policy::evaluate(entry_id(entrypoint), key, &data, input).unwrap_or_else(|e| abort(&e));
    dump(&result_set(out))
}

fn path_keys(path: i32) -> Option<Vec<Value>> {
    let p = value_at(path)?;
    let arr = p.as_array().ok()?;
    if arr.iter().all(|k| matches!(k, Value::String(_))) {
        Some(arr.to_vec())
    } else {
        None
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn opa_value_add_path(base: i32, path: i32, value: i32) -> i32 {
    init();
    let Some(keys) = path_keys(path) else {
        return OPA_ERR_INVALID_PATH;
    };
    let Some(v) = value_at(value).map(|v| v.clone()) else {
        return OPA_ERR_INVALID_TYPE;
    };
    let Some(b) = boxed_at(base) else {
        return OPA_ERR_INVALID_TYPE;
    };
    let Some((last, parents)) = keys.split_last() else {
        return OPA_ERR_INVALID_PATH;
    };
    let mut updated = b.value.clone();
    let mut cur = &mut updated;
    for k in parents {
        let Ok(obj) = cur.as_object_mut() else {
            return OPA_ERR_INVALID_PATH;
        };
        cur = obj.get_or_insert_with(k.clone(), Value::new_object);
    }
    let Ok(obj) = cur.as_object_mut() else {
        return OPA_ERR_INVALID_PATH;
    };
    obj.insert(last.clone(), v);
    b.value = updated;
    b.serial = next_serial();
    OPA_ERR_OK
}

#[unsafe(no_mangle)]
pub extern "C" fn opa_value_remove_path(base: i32, path: i32) -> i32 {
    init();
    let Some(keys) = path_keys(path) else {
        return OPA_ERR_INVALID_PATH;
    };
    let Some(b) = boxed_at(base) else {
        return OPA_ERR_INVALID_TYPE;
    };
    let Some((last, parents)) = keys.split_last() else {
        return OPA_ERR_INVALID_PATH;
    };
    let mut updated = b.value.clone();
    let mut cur = &mut updated;
    for k in parents {
        let Ok(obj) = cur.as_object_mut() else {
            return OPA_ERR_INVALID_PATH;
        };
        match obj.get_mut(k) {
            Some(next) => cur = next,
            None => return OPA_ERR_INVALID_PATH,
        }
    }
    let Ok(obj) = cur.as_object_mut() else {
        return OPA_ERR_INVALID_PATH;
    };
    if obj.remove(last).is_none() {
        return OPA_ERR_INVALID_PATH;
    }
    b.value = updated;
    b.serial = next_serial();
    OPA_ERR_OK
}
