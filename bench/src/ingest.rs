//! `ingest`: flow records per second into the control plane's store (issue 5's target:
//! ≥ 50,000/s into SQLite on this 2-core machine), on SQLite in a temp dir and, when
//! given a URL, on PostgreSQL.
//!
//! It drives the store the way `POST /v1/flows` does once the body is parsed: each batch
//! comes from one agent (the records' destination), is checked with
//! [`check_batch`], gets its audit entries from [`audit_for`] and is stored with
//! [`Store::ingest_flows_audited`] — flows and audit entries in one transaction. Records
//! are shaped like the agent's inbound HTTP records: time-ordered record ids and (as the
//! agent makes them) request ids, `--caller-request-ids` percent random ones, route templates, a keyed patient pseudonym on PHI routes, a few denies and
//! break-glass uses. Batches have the shipper's default size. Several tasks ingest at
//! once, as several agents would. After the timed phase one batch is resent and must
//! come back as all duplicates with nothing audited.
//!
//! Not measured here: TLS, HTTP and JSON of the API (see the README for why).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use time::OffsetDateTime;
use tokio::task::JoinSet;
use wardmesh_control_plane::flows::{audit_for, check_batch};
use wardmesh_identity::SpiffeId;
use wardmesh_proto::flow::{
    FlowDirection, FlowKind, FlowRecord, IngestBatch, MAX_BATCH_RECORDS, Verdict, new_record_id,
    subject_pseudonym, time_ordered_bits,
};
use wardmesh_store::{AuditQuery, FlowQuery, Store};

use crate::machine::{CpuSnapshot, Facts, loadavg};
use crate::stats::{Errors, Row, Summary, Table};

/// Issue 5's target for SQLite.
const TARGET_PER_SECOND: f64 = 50_000.0;
/// Route templates of the clinic's services: (method, template, names a patient).
const ROUTES: &[(&str, &str, bool)] = &[
    ("GET", "/patients/{patient}/notes", true),
    ("GET", "/patients/{patient}/labs", true),
    ("POST", "/patients/{patient}/notes", true),
    ("GET", "/schedule/{day}", false),
    ("GET", "/healthz", false),
    ("GET", "/billing/{invoice}", false),
];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Records per backend: the phase ends here or at `--seconds`, whichever is first.
    #[arg(long, default_value_t = 600_000)]
    pub records: usize,
    /// Time limit of each backend's phase.
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
    /// Records per batch (the agent shipper's default is the protocol maximum).
    #[arg(long, default_value_t = MAX_BATCH_RECORDS)]
    pub batch: usize,
    /// Concurrent ingesting tasks (agents shipping at the same time).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// PostgreSQL to measure too; the benchmark makes and drops its own database there.
    #[arg(long, env = "WARDMESH_TEST_POSTGRES_URL")]
    pub postgres_url: Option<String>,
    /// Percent of records whose request id came from the caller (random, e.g. an edge
    /// proxy's UUIDv4) instead of being made by the agent (time-ordered, as the agent
    /// makes them). Random ids each take a random page of the request-id index.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub caller_request_ids: u8,
    /// Directory for the temporary SQLite file (default: the system temp dir). Its file
    /// system decides what an fsync costs.
    #[arg(long)]
    pub home_in: Option<std::path::PathBuf>,
}

pub fn run(args: &Args) -> anyhow::Result<Table> {
    anyhow::ensure!(
        (1..=MAX_BATCH_RECORDS).contains(&args.batch),
        "--batch must be 1 to {MAX_BATCH_RECORDS}"
    );
    Facts::collect().print();
    println!(
        "command       {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    let quiet = quietness();
    println!(
        "quietness     other processes used {:.0} % of a core over 2 s before the run (100 = one core)",
        quiet
    );
    println!(
        "target        ≥ {TARGET_PER_SECOND:.0} records/s into SQLite; batches of {}, {} tasks, \
         ≤ {} records or {} s per backend; {} % caller-sent (random) request ids\n",
        args.batch, args.concurrency, args.records, args.seconds, args.caller_request_ids
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let mut table = Table::default();
    let mut sqlite_rate = 0.0;
    runtime.block_on(async {
        let dir = match &args.home_in {
            Some(p) => tempfile::Builder::new()
                .prefix("wardmesh-bench-")
                .tempdir_in(p),
            None => tempfile::Builder::new().prefix("wardmesh-bench-").tempdir(),
        }
        .context("creating a temporary directory")?;
        let url = format!("sqlite:{}", dir.path().join("store.db").display());
        let store = Store::open(&url)
            .await
            .context("opening the SQLite store")?;
        let row = measure("sqlite: ingest_flows_audited", &store, args).await?;
        sqlite_rate = row.summary.per_second();
        table.push(row);
        drop(store);
        if let Some(admin) = &args.postgres_url {
            let scratch = ScratchDb::create(admin).await?;
            let res = async {
                let store = Store::open(&scratch.url)
                    .await
                    .context("opening the PostgreSQL store")?;
                measure("postgres: ingest_flows_audited", &store, args).await
            }
            .await;
            scratch.drop_db().await;
            table.push(res?);
        } else {
            println!("postgres: skipped (no --postgres-url / WARDMESH_TEST_POSTGRES_URL)");
        }
        anyhow::Ok(())
    })?;
    println!("\nload average after: {}", loadavg());
    println!(
        "\nops = records stored; p50/p99/max = one batch's check + audit + ingest call; cpu% =\n\
         this process (load generator and store together; PostgreSQL's own processes count as\n\
         other), other = the rest of the machine, steal = hypervisor; 100 = one core.\n"
    );
    print!("{}", table.render());
    println!(
        "\ntarget ≥ {TARGET_PER_SECOND:.0} records/s into SQLite: {} ({sqlite_rate:.0}/s)",
        if sqlite_rate >= TARGET_PER_SECOND {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(table)
}

/// CPU used by other processes over 2 s, in % of one core.
fn quietness() -> f64 {
    let start = CpuSnapshot::now();
    std::thread::sleep(Duration::from_secs(2));
    CpuSnapshot::now().since(&start).others
}

/// One backend's timed phase.
async fn measure(name: &str, store: &Store, args: &Args) -> anyhow::Result<Row> {
    let deadline = Duration::from_secs(args.seconds.max(1));
    let tasks = args.concurrency.max(1);
    let batches_total = args.records.div_ceil(args.batch);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let errors = Arc::new(Errors::default());
    eprintln!(
        "{name}: up to {} records or {} s …",
        args.records, args.seconds
    );
    let cpu0 = CpuSnapshot::now();
    let start = Instant::now();
    let mut set = JoinSet::new();
    for t in 0..tasks {
        let (store, next, errors) = (store.clone(), next.clone(), errors.clone());
        let batch = args.batch;
        let caller_ids = args.caller_request_ids;
        set.spawn(async move {
            let mut records = Generator::new(t as u64, caller_ids);
            let mut lat = Vec::new();
            let mut stored = 0u64;
            let mut last = None;
            while start.elapsed() < deadline
                && next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < batches_total
            {
                let (peer, batch) = records.batch(batch);
                let t0 = Instant::now();
                let res = ingest(&store, &peer, &batch).await;
                lat.push(t0.elapsed());
                match res {
                    Ok(n) if n == batch.records.len() as u64 => stored += n,
                    Ok(n) => errors.record(format!(
                        "a fresh batch of {} stored {n}",
                        batch.records.len()
                    )),
                    Err(e) => errors.record(format!("{e:#}")),
                }
                last = Some((peer, batch));
            }
            (lat, stored, last)
        });
    }
    let mut lat = Vec::new();
    let mut stored = 0;
    let mut replay = None;
    while let Some(r) = set.join_next().await {
        let (l, s, last) = r.context("an ingest task panicked")?;
        lat.extend(l);
        stored += s;
        replay = replay.or(last);
    }
    let elapsed = start.elapsed();
    let cpu = CpuSnapshot::now().since(&cpu0);
    // Idempotency, checked where it counts: a resent batch stores and audits nothing.
    if let Some((peer, batch)) = &replay {
        let audit = audit_for(peer, &batch.records);
        let out = store.ingest_flows_audited(&batch.records, &audit).await?;
        if out.inserted != 0 || out.audited != 0 {
            errors.record(format!("a resent batch was stored again: {out:?}"));
        }
    }
    disclosure_reads(name, store).await?;
    if let Some((_, batch)) = &replay {
        request_id_reads(name, store, batch, &errors).await?;
    }
    errors.print(name);
    let mut summary = Summary::new(lat, elapsed);
    // Summary counts batches; the row reports records.
    summary.ops = stored as usize;
    println!(
        "{name}: {stored} records in {:.2} s = {:.0} records/s",
        elapsed.as_secs_f64(),
        summary.per_second()
    );
    Ok(Row {
        name: name.to_owned(),
        concurrency: tasks,
        summary,
        errors: errors.count(),
        cpu,
        timed: true,
    })
}

/// The read side of what was just stored: the accounting of disclosures' query (one
/// patient's PHI accesses, denies and break-glass uses, first page of 100) for 20
/// patients, timed through the store.
async fn disclosure_reads(name: &str, store: &Store) -> anyhow::Result<()> {
    let mut times = Vec::new();
    let mut found = 0;
    for k in 0..20u64 {
        let patient = format!("patient-{}", k * 2_477 % 50_000);
        let q = AuditQuery {
            subject: Some(subject_pseudonym(b"bench-mesh-key", &patient)),
            kinds: ["phi.access", "breakglass.use", "authz.deny"]
                .map(str::to_owned)
                .to_vec(),
            limit: 100,
            ..AuditQuery::default()
        };
        let t0 = Instant::now();
        found += store.audit_entries(&q).await?.len();
        times.push(t0.elapsed());
    }
    times.sort();
    println!(
        "{name}: disclosures query (20 patients, first page): p50 {:.1} ms, max {:.1} ms, \
         {found} entries",
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
    );
    Ok(())
}

/// Flows by request id (`GET /v1/flows?request_id=`) for 20 records of the last batch
/// stored, timed through the store; each must find its record.
async fn request_id_reads(
    name: &str,
    store: &Store,
    batch: &IngestBatch,
    errors: &Errors,
) -> anyhow::Result<()> {
    let mut times = Vec::new();
    for r in batch
        .records
        .iter()
        .step_by(batch.records.len().div_ceil(20).max(1))
    {
        let q = FlowQuery {
            request_id: r.request_id.clone(),
            limit: 10,
            ..FlowQuery::default()
        };
        let t0 = Instant::now();
        let found = store.query_flows(&q).await?;
        times.push(t0.elapsed());
        if !found.iter().any(|f| f.record.id == r.id) {
            errors.record("a request id lookup missed its record".to_owned());
        }
    }
    times.sort();
    println!(
        "{name}: request id query ({} lookups): p50 {:.1} ms, max {:.1} ms",
        times.len(),
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
    );
    Ok(())
}

/// What the `POST /v1/flows` handler does after parsing the body; records stored.
async fn ingest(store: &Store, peer: &SpiffeId, batch: &IngestBatch) -> anyhow::Result<u64> {
    check_batch(peer, batch).map_err(|e| anyhow::anyhow!("batch refused: {}", e.message))?;
    let audit = audit_for(peer, &batch.records);
    Ok(store
        .ingest_flows_audited(&batch.records, &audit)
        .await?
        .inserted)
}

/// Agent-like records from a small PRNG (splitmix64: no dependency, different per task).
struct Generator {
    state: u64,
    task: u64,
    peers: Vec<SpiffeId>,
    callers: Vec<String>,
    /// Percent of request ids sent by callers (random) rather than made by the agent.
    caller_request_ids: u8,
}

impl Generator {
    fn new(task: u64, caller_request_ids: u8) -> Self {
        let seed = OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
        let id = |ns: &str, sa: String| {
            SpiffeId::parse(&format!("spiffe://wardmesh.local/ns/{ns}/sa/{sa}"))
                .unwrap_or_else(|e| panic!("a fixed SPIFFE ID: {e}"))
        };
        Self {
            state: seed ^ task.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            task,
            peers: (0..5)
                .map(|i| id("records", format!("svc-{task}-{i}")))
                .collect(),
            callers: (0..20)
                .map(|i| id("clinic", format!("caller-{i}")).to_string())
                .collect(),
            caller_request_ids,
        }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn u128(&mut self) -> u128 {
        (u128::from(self.next()) << 64) | u128::from(self.next())
    }

    /// A caller's random id, or one made like the agent makes them (agent/src/proxy/http.rs).
    fn request_id(&mut self, r: u64, at: OffsetDateTime) -> String {
        let bits = self.u128();
        if (r >> 48) % 100 < u64::from(self.caller_request_ids) {
            format!("{bits:032x}")
        } else {
            format!("{:032x}", time_ordered_bits(at, bits))
        }
    }

    /// One agent's batch: every record is an inbound request to that agent.
    fn batch(&mut self, n: usize) -> (SpiffeId, IngestBatch) {
        let pick = (self.next() % self.peers.len() as u64) as usize;
        let peer = self.peers[pick].clone();
        let destination = peer.to_string();
        let now = OffsetDateTime::now_utc();
        let records = (0..n).map(|_| self.record(&destination, now)).collect();
        let batch = IngestBatch {
            agent_instance: format!("bench-{}", self.task),
            records,
        };
        (peer, batch)
    }

    fn record(&mut self, destination: &str, at: OffsetDateTime) -> FlowRecord {
        let r = self.next();
        let (method, route, phi) = ROUTES[(r % ROUTES.len() as u64) as usize];
        let denied = (r >> 8).is_multiple_of(50);
        let break_glass = phi && !denied && (r >> 16).is_multiple_of(1000);
        let user = (r >> 24) % 200;
        let patient = (r >> 32) % 50_000;
        FlowRecord {
            id: new_record_id(time_ordered_bits(at, self.u128())),
            at,
            request_id: Some(self.request_id(r, at)),
            kind: FlowKind::Http,
            direction: FlowDirection::Inbound,
            source: Some(self.callers[((r >> 40) % self.callers.len() as u64) as usize].clone()),
            destination: destination.to_owned(),
            method: Some(method.to_owned()),
            route: Some(route.to_owned()),
            status: Some(if denied { 403 } else { 200 }),
            verdict: if denied {
                Verdict::Denied
            } else {
                Verdict::Allowed
            },
            policy_revision: Some("clinic-7".to_owned()),
            rule: Some(
                if denied {
                    "default_deny"
                } else {
                    "treating_clinician"
                }
                .to_owned(),
            ),
            latency_us: 300 + (r >> 48) % 5000,
            bytes_in: 350,
            bytes_out: 2048 + (r >> 52) % 4096,
            user: Some(format!("dr-{user}")),
            purpose: Some("TREAT".to_owned()),
            break_glass,
            subject_pseudonym: phi
                .then(|| subject_pseudonym(b"bench-mesh-key", &format!("patient-{patient}"))),
        }
    }
}

/// A database of its own on the given PostgreSQL server, dropped afterwards.
struct ScratchDb {
    admin: String,
    name: String,
    url: String,
}

impl ScratchDb {
    async fn create(admin: &str) -> anyhow::Result<Self> {
        let name = format!(
            "wardmesh_bench_{}_{}",
            std::process::id(),
            OffsetDateTime::now_utc().unix_timestamp()
        );
        admin_execute(admin, &format!("CREATE DATABASE {name}")).await?;
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b)
            .context("the PostgreSQL URL has no database part")?;
        let url = format!("{base}/{name}");
        Ok(Self {
            admin: admin.to_owned(),
            name,
            url,
        })
    }

    async fn drop_db(self) {
        if let Err(e) = admin_execute(
            &self.admin,
            &format!("DROP DATABASE {} WITH (FORCE)", self.name),
        )
        .await
        {
            eprintln!("could not drop the scratch database {}: {e:#}", self.name);
        }
    }
}

async fn admin_execute(url: &str, sql: &str) -> anyhow::Result<()> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {}", wardmesh_store::redact_url(url)))?;
    let driver = tokio::spawn(conn);
    client
        .batch_execute(sql)
        .await
        .with_context(|| sql.to_owned())?;
    drop(client);
    let _ = driver.await;
    Ok(())
}
