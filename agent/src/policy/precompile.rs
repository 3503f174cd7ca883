//! Compiling a policy module in a short-lived child process, so the agent never holds the
//! compiler's memory.
//!
//! Why: cranelift peaks near 90 MB of heap while it compiles the policy module; even
//! with the freed pages handed back, the agent's peak resident size (VmHWM, what a pod's
//! memory limit meets) stays there — 76.7 MB under load against 23 MB for the same agent
//! that mapped the module from its cache (bench/RESULTS.md). With a module cache
//! configured, the agent therefore runs `wardmesh-agent precompile-policy` with the
//! bundle on stdin: the child verifies the bundle with the same keys, compiles it into
//! the cache (`PolicyRuntime::warm_cache`, nothing instantiated) and exits; the agent
//! then verifies the bundle itself and maps the native code from the cache. If the child fails, the agent compiles in process (and says so),
//! so a policy still activates — only the memory peak differs.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use wardmesh_policy::bundle::MAX_BUNDLE_BYTES;

use super::{PolicyConfig, PolicyKeyConfig, PolicyLoader};

/// A compile takes seconds (1–4 s measured); a child still running after this is stuck.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) const EXAMPLE: &str = "\
Example (warm the cache in an init container, so the agent only maps the module):
  wardmesh-agent precompile-policy --bundle ./clinic.tar.gz --cache-dir /var/cache/wardmesh \\
    --public-key policy-1=/etc/wardmesh/policy-1.pub.pem";

/// `wardmesh-agent precompile-policy`.
#[derive(Debug, Args)]
pub struct PrecompileArgs {
    /// The signed bundle (`.tar.gz`), or `-` for stdin.
    #[arg(long, value_name = "FILE")]
    pub bundle: PathBuf,
    /// The module cache directory (the agent's `[policy] cache_dir`).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: PathBuf,
    /// A key the bundle's signature must verify with, as `KEY_ID=PEM_FILE` (repeatable).
    #[arg(long = "public-key", value_name = "KEY_ID=FILE", required = true, value_parser = parse_key)]
    pub public_keys: Vec<PolicyKeyConfig>,
}

fn parse_key(s: &str) -> Result<PolicyKeyConfig, String> {
    match s.split_once('=') {
        Some((id, file)) if !id.is_empty() && !file.is_empty() => Ok(PolicyKeyConfig {
            key_id: id.to_owned(),
            file: file.into(),
        }),
        _ => Err(format!("`{s}` is not KEY_ID=PEM_FILE")),
    }
}

/// The subcommand: verify, compile into the cache, exit.
pub fn main(args: PrecompileArgs) -> anyhow::Result<()> {
    let bytes = if args.bundle == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .take(MAX_BUNDLE_BYTES as u64 + 1)
            .read_to_end(&mut buf)?;
        buf
    } else {
        std::fs::read(&args.bundle)
            .map_err(|e| anyhow::anyhow!("cannot read bundle {}: {e}", args.bundle.display()))?
    };
    let loader = PolicyLoader::new(&PolicyConfig {
        public_keys: args.public_keys,
        cache_dir: Some(args.cache_dir),
        ..PolicyConfig::default()
    })?;
    loader.warm_cache(&bytes)?;
    Ok(())
}

/// In the agent: has `exe precompile-policy` put the native code of `bundle` into
/// `config.cache_dir`. `Err` says why not (the caller compiles in process then).
pub(super) fn in_child(exe: &Path, config: &PolicyConfig, bundle: &[u8]) -> Result<(), String> {
    let Some(cache_dir) = &config.cache_dir else {
        return Err("no [policy] cache_dir to hand the module over in".into());
    };
    let mut cmd = Command::new(exe);
    cmd.arg("precompile-policy")
        .arg("--bundle")
        .arg("-")
        .arg("--cache-dir")
        .arg(cache_dir);
    for k in &config.public_keys {
        cmd.arg("--public-key")
            .arg(format!("{}={}", k.key_id, k.file.display()));
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "warn")
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    // Written and drained on their own threads, so neither a child that stops reading
    // nor a chatty one can block the agent past the deadline below; dropping the stdin
    // handle closes the pipe (end of the bundle).
    let stdin = child.stdin.take().map(|mut pipe| {
        let bundle = bundle.to_vec();
        std::thread::spawn(move || pipe.write_all(&bundle))
    });
    let stderr = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    });
    let deadline = Instant::now() + COMPILE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "compiler process still running after {} s; killed",
                    COMPILE_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("compiler process: {e}")),
        }
    };
    // A child that succeeded has read the whole bundle; one that failed early may have
    // closed the pipe (EPIPE here), and its stderr says more than that.
    let _ = stdin.map(|t| t.join());
    if status.success() {
        return Ok(());
    }
    let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    Err(format!(
        "compiler process {status}: {}",
        stderr.trim().chars().take(500).collect::<String>()
    ))
}
