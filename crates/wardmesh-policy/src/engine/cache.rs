//! Getting native code for a module: compile it, or map a precompiled copy from the
//! module cache directory (keyed by the wasm's SHA-256 and the engine's compatibility
//! hash, written only by this code).

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

use super::LoadError;

/// Returns the module and whether it came from the cache.
pub(super) fn module(
    engine: &Engine,
    wasm: &[u8],
    cache_dir: Option<&Path>,
) -> Result<(Module, bool), LoadError> {
    let compile_err = |e: wasmtime::Error| LoadError::Compile(format!("{e:#}"));
    let Some(dir) = cache_dir else {
        return Ok((Module::new(engine, wasm).map_err(compile_err)?, false));
    };
    let path = entry(engine, wasm, dir);
    if path.exists() {
        if let Some(m) = map(engine, &path) {
            return Ok((m, true));
        }
        // Stale or damaged: replace it.
        let _ = fs::remove_file(&path);
    }
    let native = engine.precompile_module(wasm).map_err(compile_err)?;
    store(dir, &path, &native)?;
    match map(engine, &path) {
        Some(m) => Ok((m, false)),
        None => Ok((Module::new(engine, wasm).map_err(compile_err)?, false)),
    }
}

fn entry(engine: &Engine, wasm: &[u8], dir: &Path) -> PathBuf {
    let mut h = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let digest = hex::encode(Sha256::digest(wasm));
    dir.join(format!("{}-{:016x}.cwasm", &digest[..32], h.finish()))
}

#[allow(unsafe_code)]
fn map(engine: &Engine, path: &Path) -> Option<Module> {
    // SAFETY: deserializing runs the native code in the file, so the file must come from
    // `Engine::precompile_module` of a compatible engine. Files here are written only by
    // `store` below from exactly that output, named by the wasm's digest and this
    // engine's compatibility hash, in a directory the operator configures as private to
    // this process; wasmtime also checks the file's header, version and settings.
    unsafe { Module::deserialize_file(engine, path) }.ok()
}

fn store(dir: &Path, path: &Path, native: &[u8]) -> Result<(), LoadError> {
    let io = |source| LoadError::Cache {
        path: path.to_path_buf(),
        source,
    };
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io)?;
    // Unique per writer: concurrent loads of one module may race to fill the cache.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(io)?;
    f.write_all(native).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}
