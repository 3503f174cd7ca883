//! `wardmesh-bench issuance`: how many X509-SVIDs per second this machine issues.
//!
//! Two measurements, run one after the other so they see the same machine:
//! - `signer`: `Signer::sign_csr` (CSR validation + leaf signing) called directly on OS
//!   threads: the ceiling set by the CA's own cryptography.
//! - `api`: the real control plane over HTTPS: join-token attestation (first
//!   certificate) and mTLS renewal, including TLS, HTTP, JSON and the SQLite store.
//!
//! Key generation is the agent's cost, not the CA's: every CSR is generated before the
//! clock starts, and the key generation rate is reported as its own (untimed) row.

mod api;
mod signer;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::ValueEnum;
use wardmesh_identity::ca::{CaDir, CaLifetimes};
use wardmesh_identity::keygen::{KeyAndCsr, generate_csr};
use wardmesh_identity::seal::SealKey;
use wardmesh_identity::spiffe::DEFAULT_TRUST_DOMAIN;
use wardmesh_identity::{SpiffeId, TrustDomain};

use crate::machine::{self, CpuSnapshot, Facts};
use crate::stats::{Errors, Row, Summary, Table};

/// The throughput the control plane is meant to sustain on a 2-core machine.
pub const TARGET_PER_SECOND: f64 = 1000.0;
/// Leaf lifetime asked of the signer (the control plane's default).
const LEAF_TTL: Duration = Duration::from_secs(3600);
/// Namespace of the benchmark's workload identities.
const BENCH_NAMESPACE: &str = "bench";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// In-process `Signer::sign_csr` on OS threads.
    Signer,
    /// End to end through the control plane's HTTPS API.
    Api,
    /// `signer`, then `api`.
    Both,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Length of each timed phase (signer; api attest; api renew), in seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Load: OS threads in `signer` mode (default: available parallelism), concurrent
    /// client tasks, each with its own keep-alive connection, in `api` mode (default 16).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Which measurement to run.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    pub mode: Mode,
    /// Upper bound on operations in any one timed phase, whatever the duration.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_ops: usize,
    /// Join tokens (one per attesting agent, each with its own key) created before the
    /// attest phase. They bound that phase: it ends at `--seconds` or when they run out.
    #[arg(long, default_value_t = 12_000)]
    pub attest_agents: usize,
    /// Time limit for each setup step (key generation, join tokens); not measured
    /// against the target.
    #[arg(long, default_value_t = 120)]
    pub setup_seconds: u64,
    /// Distinct CSRs the signer cycles through.
    #[arg(long, default_value_t = 1024)]
    pub csr_pool: usize,
    /// Directory in which the temporary control-plane home (CA, SQLite store) is made;
    /// default the system temp dir. Its file system decides what an fsync costs.
    #[arg(long)]
    pub home_in: Option<PathBuf>,
}

impl Args {
    fn phase_length(&self) -> Duration {
        Duration::from_secs(self.seconds.max(1))
    }

    fn setup_limit(&self) -> Duration {
        Duration::from_secs(self.setup_seconds.max(1))
    }
}

pub fn run(args: &Args) -> anyhow::Result<Table> {
    if std::env::var_os(wardmesh_identity::seal::SEAL_KEY_ENV).is_some() {
        anyhow::bail!(
            "{} is set; the benchmark makes its own throwaway CA, unset it",
            wardmesh_identity::seal::SEAL_KEY_ENV
        );
    }
    Facts::collect().print();
    println!(
        "command       {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!(
        "target        ≥ {TARGET_PER_SECOND:.0} certificates/s; phases of {} s\n",
        args.phase_length().as_secs()
    );

    let mut table = Table::default();
    if matches!(args.mode, Mode::Signer | Mode::Both) {
        let threads = args.concurrency.unwrap_or_else(machine::nproc).max(1);
        signer::run(args, threads, &mut table)?;
    }
    if matches!(args.mode, Mode::Api | Mode::Both) {
        let tasks = args.concurrency.unwrap_or(16).max(1);
        api::run(args, tasks, &mut table)?;
    }

    println!("\nload average after: {}", machine::loadavg());
    println!(
        "\ncpu% = this process (load generator and system under test together), other = the rest\n\
         of the machine over the same interval, steal = taken by the hypervisor; 100 = one core.\n"
    );
    print!("{}", table.render());
    Ok(table)
}

/// A fresh home directory for a CA (and, in `api` mode, a control plane).
fn temp_home(args: &Args) -> anyhow::Result<tempfile::TempDir> {
    let dir = match &args.home_in {
        Some(parent) => tempfile::Builder::new()
            .prefix("wardmesh-bench-")
            .tempdir_in(parent),
        None => tempfile::Builder::new().prefix("wardmesh-bench-").tempdir(),
    };
    dir.context("creating a temporary home directory")
}

fn trust_domain() -> anyhow::Result<TrustDomain> {
    Ok(TrustDomain::new(DEFAULT_TRUST_DOMAIN)?)
}

/// Initialises a root and intermediate in `ca_dir`, sealed with `seal`.
pub(crate) fn init_ca(ca_dir: &Path, seal: &SealKey) -> anyhow::Result<CaDir> {
    let dir = CaDir::new(ca_dir);
    dir.init(
        &trust_domain()?,
        seal,
        time::OffsetDateTime::now_utc(),
        CaLifetimes::default(),
    )
    .with_context(|| format!("initialising a CA in {}", ca_dir.display()))?;
    Ok(dir)
}

/// `spiffe://wardmesh.local/ns/bench/sa/agent-<i>`.
fn agent_id(td: &TrustDomain, i: usize) -> anyhow::Result<SpiffeId> {
    Ok(SpiffeId::workload(
        td,
        BENCH_NAMESPACE,
        &format!("agent-{i}"),
    )?)
}

/// Generates a key and a CSR for each id on `threads` OS threads, in order, and the
/// untimed row that reports what that costs. Gives up after `limit`.
fn generate_csrs(
    name: &str,
    ids: &[SpiffeId],
    threads: usize,
    limit: Duration,
) -> anyhow::Result<(Vec<KeyAndCsr>, Row)> {
    let threads = threads.clamp(1, ids.len().max(1));
    let chunk = ids.len().div_ceil(threads).max(1);
    let cpu0 = CpuSnapshot::now();
    let start = Instant::now();
    let deadline = start + limit;
    let errors = Errors::default();
    let parts: Vec<(Vec<KeyAndCsr>, Vec<Duration>)> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .chunks(chunk)
            .map(|part| {
                let errors = &errors;
                s.spawn(move || {
                    let mut out = Vec::with_capacity(part.len());
                    let mut lat = Vec::with_capacity(part.len());
                    for id in part {
                        if Instant::now() >= deadline {
                            break;
                        }
                        let t0 = Instant::now();
                        match generate_csr(id) {
                            Ok(k) => {
                                lat.push(t0.elapsed());
                                out.push(k);
                            }
                            Err(e) => errors.record(format!("{id}: {e}")),
                        }
                    }
                    (out, lat)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let elapsed = start.elapsed();
    let cpu = CpuSnapshot::now().since(&cpu0);
    errors.print(name);
    let mut keys = Vec::with_capacity(ids.len());
    let mut lat = Vec::with_capacity(ids.len());
    for (k, l) in parts {
        keys.extend(k);
        lat.extend(l);
    }
    if keys.len() != ids.len() {
        anyhow::bail!(
            "{name}: generated {} of {} keys within {} s (--setup-seconds); see any errors above",
            keys.len(),
            ids.len(),
            limit.as_secs()
        );
    }
    let row = Row {
        name: name.into(),
        concurrency: threads,
        summary: Summary::new(lat, elapsed),
        errors: errors.count(),
        cpu,
        timed: false,
    };
    Ok((keys, row))
}
