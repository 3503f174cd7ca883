//! Evaluation: a verified bundle's `policy.wasm` loaded with opa-wasm on wasmtime.
//!
//! * One [`PolicyRuntime`] (one wasmtime `Engine` with epoch interruption, and the
//!   thread that ticks its epoch) per process.
//! * [`PolicyRuntime::load`] compiles the module **once** per bundle (or maps a
//!   precompiled copy from [`RuntimeConfig::module_cache_dir`]) and prewarms instances.
//! * A [`PolicyEngine`] keeps a small pool of `Store` + opa-wasm `Policy` pairs, one per
//!   concurrent evaluation; evaluation takes one, runs, and puts it back.
//! * Every evaluation gets a CPU-time budget (see [`budget`]), and every instance a
//!   linear-memory cap: a policy that traps, loops or exhausts memory yields a deny with rule
//!   [`RULE_POLICY_ERROR`] (and the instance is thrown away), never a crash or an allow.
//!
//! Only the documented OPA ABI is used (through opa-wasm), so bundles from
//! `opa build -t wasm` load the same way as wardmesh-built ones.

use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use opa_wasm::{DefaultContext, Policy, Runtime};
use wasmtime::{Engine, Module, Store, StoreLimits, StoreLimitsBuilder};

use crate::builder::DEFAULT_ENTRYPOINT;
use crate::sign::VerifiedBundle;

mod budget;
mod cache;
mod decision;

pub use decision::{Decision, InputError, RULE_POLICY_ERROR};

/// Knobs of the policy runtime. [`Default`] suits an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// CPU time one evaluation may use. The clinic policy needs tens of µs; an endless
    /// loop is interrupted after one to two budgets (rounded up to the 2 ms epoch tick),
    /// and a thread that was only preempted for that long is not.
    pub eval_budget: Duration,
    /// CPU time for creating an instance (the guest compiles its Rego on first use).
    pub instance_budget: Duration,
    /// Linear-memory cap per instance, in bytes.
    pub memory_limit_bytes: usize,
    /// Instances created when a bundle loads.
    pub prewarm_instances: usize,
    /// Idle instances kept for reuse; more concurrent evaluations create extra
    /// instances that are dropped afterwards.
    pub max_idle_instances: usize,
    /// Directory for precompiled modules (must be private to this process's user). With
    /// it, a restart maps the native code instead of recompiling for a second or more.
    /// Entries are memory-mapped: replace them (rename), never rewrite them in place.
    pub module_cache_dir: Option<PathBuf>,
    /// The entrypoint evaluated for every request.
    pub entrypoint: String,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            eval_budget: Duration::from_millis(10),
            instance_budget: Duration::from_secs(10),
            memory_limit_bytes: 64 * 1024 * 1024,
            prewarm_instances: 1,
            max_idle_instances: std::thread::available_parallelism().map_or(2, |n| n.get().min(8)),
            module_cache_dir: None,
            entrypoint: DEFAULT_ENTRYPOINT.to_string(),
        }
    }
}

/// An evaluation that produced no result (trap, time budget or memory exhausted, …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

/// Why a bundle could not be loaded. Nothing is activated on any of these.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("configuring wasmtime: {0}")]
    Engine(String),
    #[error("policy.wasm does not compile: {0}")]
    Compile(String),
    #[error("policy.wasm is not a usable OPA wasm module: {0}")]
    Instantiate(String),
    #[error("policy.wasm has no entrypoint {entrypoint} (it has: {})", .available.join(", "))]
    MissingEntrypoint {
        entrypoint: String,
        available: Vec<String>,
    },
    #[error("the policy fails its first evaluation: {0}")]
    Warmup(String),
    #[error("module cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The process-wide wasm engine. Cheap to clone.
#[derive(Clone)]
pub struct PolicyRuntime {
    engine: Engine,
    config: Arc<RuntimeConfig>,
    _ticker: Arc<budget::Ticker>,
}

impl std::fmt::Debug for PolicyRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyRuntime")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// How a load went, for logs and `/config_dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Time to get native code: compiling, or mapping a cached copy.
    pub compile: Duration,
    /// Whether the native code came from the module cache.
    pub from_cache: bool,
    /// Time to create and warm the prewarmed instances.
    pub instantiate: Duration,
}

impl PolicyRuntime {
    pub fn new(config: RuntimeConfig) -> Result<Self, LoadError> {
        let mut cfg = wasmtime::Config::new();
        cfg.epoch_interruption(true);
        cfg.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&cfg).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let ticker = budget::Ticker::start(&engine)
            .map_err(|e| LoadError::Engine(format!("starting the epoch ticker: {e}")))?;
        Ok(Self {
            engine,
            config: Arc::new(config),
            _ticker: ticker,
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Fills the module cache for `bundle` without instantiating anything, so the
    /// compilation's memory peak (~100 MB for a wardmesh guest) can be paid in a
    /// short-lived helper process and the agent itself only maps the result. Returns
    /// whether the module was already cached. Needs [`RuntimeConfig::module_cache_dir`].
    pub fn warm_cache(&self, bundle: &VerifiedBundle) -> Result<bool, LoadError> {
        let Some(dir) = self.config.module_cache_dir.as_deref() else {
            return Err(LoadError::Cache {
                path: PathBuf::new(),
                source: std::io::Error::other("no module_cache_dir is configured"),
            });
        };
        cache::module(&self.engine, bundle.wasm(), Some(dir)).map(|(_, cached)| cached)
    }

    /// Compiles (once) and instantiates a verified bundle. CPU-heavy on a cache miss
    /// (about a second for a wardmesh guest): call it from a blocking thread.
    pub fn load(&self, bundle: &VerifiedBundle) -> Result<PolicyEngine, LoadError> {
        self.load_with_report(bundle).map(|(engine, _)| engine)
    }

    /// [`PolicyRuntime::load`], also saying how long compiling and instantiating took.
    pub fn load_with_report(
        &self,
        bundle: &VerifiedBundle,
    ) -> Result<(PolicyEngine, LoadReport), LoadError> {
        let started = Instant::now();
        let (module, from_cache) = cache::module(
            &self.engine,
            bundle.wasm(),
            self.config.module_cache_dir.as_deref(),
        )?;
        let compile = started.elapsed();

        let shared = Arc::new(Shared {
            runtime: self.clone(),
            module,
            data: bundle.data().clone(),
            revision: bundle.revision().to_string(),
            idle: Mutex::new(Vec::new()),
        });
        let started = Instant::now();
        let mut warm = Vec::new();
        for _ in 0..self.config.prewarm_instances.max(1) {
            warm.push(block_on(shared.instantiate())?);
        }
        if let Ok(mut idle) = shared.idle.lock() {
            idle.extend(warm);
        }
        let report = LoadReport {
            compile,
            from_cache,
            instantiate: started.elapsed(),
        };
        tracing::info!(
            revision = %bundle.revision(),
            signer = bundle.signer().unwrap_or("unsigned"),
            compile_ms = report.compile.as_millis() as u64,
            from_cache = report.from_cache,
            instantiate_ms = report.instantiate.as_millis() as u64,
            "policy bundle loaded"
        );
        Ok((PolicyEngine { shared }, report))
    }
}

/// A loaded policy, ready to evaluate. Cheap to clone; safe to share across threads.
#[derive(Clone)]
pub struct PolicyEngine {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("revision", &self.shared.revision)
            .field("idle_instances", &self.idle_instances())
            .finish_non_exhaustive()
    }
}

struct Shared {
    runtime: PolicyRuntime,
    module: Module,
    data: serde_json::Value,
    revision: String,
    idle: Mutex<Vec<Instance>>,
}

struct StoreState {
    limits: StoreLimits,
    budget: budget::Budget,
}

/// Starts a budget of `limit` for the store's next call into the guest.
fn start_budget(store: &mut Store<StoreState>, limit: Duration) {
    let ticks = store.data_mut().budget.start(limit);
    store.set_epoch_deadline(ticks);
}

struct Instance {
    store: Store<StoreState>,
    policy: Policy<DefaultContext>,
}

impl Shared {
    fn config(&self) -> &RuntimeConfig {
        &self.runtime.config
    }

    async fn instantiate(&self) -> Result<Instance, LoadError> {
        let cfg = self.config();
        let limits = StoreLimitsBuilder::new()
            .memory_size(cfg.memory_limit_bytes)
            .memories(1)
            .instances(1)
            .tables(4)
            .build();
        let mut store = Store::new(
            &self.runtime.engine,
            StoreState {
                limits,
                budget: budget::Budget::new(),
            },
        );
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().budget.on_deadline()));
        start_budget(&mut store, cfg.instance_budget);
        let runtime = Runtime::new(&mut store, &self.module)
            .await
            .map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        if !runtime.entrypoints().contains(cfg.entrypoint.as_str()) {
            let mut available: Vec<String> = runtime
                .entrypoints()
                .into_iter()
                .map(str::to_string)
                .collect();
            available.sort();
            return Err(LoadError::MissingEntrypoint {
                entrypoint: cfg.entrypoint.clone(),
                available,
            });
        }
        let policy = runtime
            .with_data(&mut store, &self.data)
            .await
            .map_err(|e| LoadError::Instantiate(format!("loading data.json: {e:#}")))?;
        // The first evaluation compiles the Rego inside a wardmesh guest; do it now, not
        // on a request. Its answer does not matter, only that it runs.
        let _: Vec<serde_json::Value> = policy
            .evaluate(&mut store, &cfg.entrypoint, &serde_json::json!({}))
            .await
            .map_err(|e| LoadError::Warmup(format!("{e:#}")))?;
        Ok(Instance { store, policy })
    }

    fn checkout(&self) -> Result<Instance, LoadError> {
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match pooled {
            Some(i) => Ok(i),
            None => block_on(self.instantiate()),
        }
    }

    fn checkin(&self, instance: Instance) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.config().max_idle_instances
        {
            idle.push(instance);
        }
    }
}

impl PolicyEngine {
    /// `.manifest` revision of the loaded bundle.
    pub fn revision(&self) -> &str {
        &self.shared.revision
    }

    /// Instances waiting in the pool.
    pub fn idle_instances(&self) -> usize {
        self.shared.idle.lock().map_or(0, |i| i.len())
    }

    /// Decides one request. Never fails: any problem inside the policy is a deny with rule
    /// [`RULE_POLICY_ERROR`]. CPU-bound (tens of µs) and non-blocking.
    pub fn evaluate(&self, input: &serde_json::Value) -> Decision {
        match self.evaluate_raw(input) {
            Ok(rows) => Decision::from_result_set(&rows, &self.shared.revision),
            Err(e) => Decision::policy_error(e.0, &self.shared.revision),
        }
    }

    /// The entrypoint's raw OPA result set (`[{"result": …}]`, `[]` when undefined), for
    /// `wardctl policy eval` and for policies whose result is not a wardmesh decision.
    pub fn evaluate_raw(
        &self,
        input: &serde_json::Value,
    ) -> Result<Vec<serde_json::Value>, EvalError> {
        let shared = &self.shared;
        let mut instance = shared
            .checkout()
            .map_err(|e| EvalError(format!("no policy instance: {e}")))?;
        start_budget(&mut instance.store, shared.config().eval_budget);
        let entrypoint = shared.config().entrypoint.as_str();
        let out: anyhow::Result<Vec<serde_json::Value>> = block_on(instance.policy.evaluate(
            &mut instance.store,
            entrypoint,
            input,
        ));
        match out {
            Ok(rows) => {
                shared.checkin(instance);
                Ok(rows)
            }
            // The instance may be mid-way through anything: drop it, never reuse it.
            Err(e) => {
                tracing::debug!(revision = %shared.revision, error = %format!("{e:#}"), "policy evaluation failed");
                Err(EvalError(decision::describe_failure(&e)))
            }
        }
    }

    /// [`PolicyEngine::evaluate`] for raw JSON (`wardctl policy eval --input`): malformed
    /// JSON or a non-object is an error and nothing is evaluated.
    pub fn evaluate_json(&self, input: &[u8]) -> Result<Decision, InputError> {
        let value = decision::parse_input(input)?;
        Ok(self.evaluate(&value))
    }
}

/// Drives an opa-wasm future on the current thread. They never wait on I/O (no async
/// host functions are registered and epoch deadlines never yield), so the
/// first poll completes; a `Pending` would only spin.
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}
