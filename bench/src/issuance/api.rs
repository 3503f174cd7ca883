//! `issuance --mode api`: the real control plane (HTTPS, axum, embedded SQLite) on
//! 127.0.0.1, driven by concurrent clients in the same process.
//!
//! Phases, each bounded by a count and a deadline:
//! 1. setup (untimed): agent keys and CSRs; join tokens through `POST /v1/join-tokens`;
//! 2. attest: `POST /v1/identity/attest` with a join token, one per agent;
//! 3. renew: `POST /v1/identity/renew` over mTLS with the SVID from phase 2 (no token).
//!
//! Any non-200 answer is an error and is printed. At the end the control plane's own
//! issuance counter must agree with what the clients counted.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinSet;
use wardmesh_control_plane::ControlPlaneConfig;
use wardmesh_control_plane::app::ADMIN_TOKEN_FILE;
use wardmesh_identity::SpiffeId;
use wardmesh_identity::keygen::KeyAndCsr;
use wardmesh_identity::seal::{SealKey, write_private};
use wardmesh_identity::svid::certs_from_pem;
use wardmesh_identity::tls::{Svid, TrustBundle, control_plane_client_config};
use wardmesh_proto::identity::{AttestRequest, Attestation, RenewRequest, SvidResponse};
use wardmesh_proto::operator::{CreateJoinTokenRequest, CreateJoinTokenResponse};
use wardmesh_proto::paths;

use super::{Args, agent_id, generate_csrs, init_ca, temp_home, trust_domain};
use crate::machine::{CpuSnapshot, nproc};
use crate::stats::{Errors, Row, Summary, Table};

/// Fresh CSRs each renewing agent cycles through (a real agent makes a new key per renewal).
const RENEW_CSRS_PER_AGENT: usize = 8;
/// Join-token lifetime: long enough to outlast setup and the attest phase.
const JOIN_TOKEN_TTL_SECONDS: u64 = 3600;
/// A single request taking longer than this is an error, not a slow sample.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const ISSUED_METRIC: &str = "wardmesh_cp_svid_requests_total";

pub fn run(args: &Args, tasks: usize, table: &mut Table) -> anyhow::Result<()> {
    let home = temp_home(args)?;
    let seal = SealKey::generate();
    write_private(&home.path().join("seal.key"), seal.to_hex().as_bytes())
        .context("writing seal.key")?;
    init_ca(&home.path().join("ca"), &seal)?;

    let td = trust_domain()?;
    let agents = args.attest_agents.max(tasks);
    let ids = (0..agents)
        .map(|i| agent_id(&td, i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The first `tasks` agents are attested first and then renew; they need extra CSRs.
    let renew_ids: Vec<SpiffeId> = (0..tasks)
        .flat_map(|j| std::iter::repeat_n(ids[j].clone(), RENEW_CSRS_PER_AGENT))
        .collect();
    let all_ids: Vec<SpiffeId> = ids.iter().chain(&renew_ids).cloned().collect();
    eprintln!(
        "api: generating {} agent keys and CSRs (untimed) …",
        all_ids.len()
    );
    let (mut keys, keygen) = generate_csrs(
        "api: agent keygen + csr",
        &all_ids,
        nproc(),
        args.setup_limit(),
    )?;
    table.push(keygen);
    let renew_keys = keys.split_off(agents);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        let registry = Arc::new(prometheus::Registry::new());
        let cfg = ControlPlaneConfig::local(home.path(), "127.0.0.1:0".parse()?);
        let cp = wardmesh_control_plane::start(&cfg, registry.clone())
            .await
            .context("starting the control plane")?;
        let bench = Bench {
            url: format!("https://127.0.0.1:{}", cp.addr.port()),
            bundle: cp.ca.current().bundle.clone(),
            tasks,
            phase: args.phase_length(),
            max_ops: args.max_ops,
        };
        let res = bench
            .drive(args, home.path(), &ids, &keys, &renew_keys, table)
            .await
            .and_then(|counted| check_server_counters(&registry, counted, table));
        cp.shutdown().await;
        res
    })
}

struct Bench {
    url: String,
    bundle: TrustBundle,
    tasks: usize,
    phase: Duration,
    max_ops: usize,
}

/// Issuances the clients saw succeed, to compare with the server's counter.
#[derive(Debug, Clone, Copy)]
struct Counted {
    attest: usize,
    renew: usize,
}

/// What one attest worker brings back.
#[derive(Default)]
struct AttestOut {
    lat: Vec<Duration>,
    /// Chains issued to the agents that will renew (index < tasks).
    chains: Vec<(usize, String)>,
}

impl Bench {
    async fn drive(
        &self,
        args: &Args,
        home: &Path,
        ids: &[SpiffeId],
        keys: &[KeyAndCsr],
        renew_keys: &[KeyAndCsr],
        table: &mut Table,
    ) -> anyhow::Result<Counted> {
        let admin = std::fs::read_to_string(home.join(ADMIN_TOKEN_FILE))
            .context("reading the bootstrap admin token")?
            .trim()
            .to_owned();

        eprintln!(
            "api: creating {} join tokens (untimed, at most {} s) …",
            ids.len(),
            args.setup_seconds
        );
        let (tokens, row) = self.create_tokens(&admin, ids, args.setup_limit()).await?;
        table.push(row);

        let jobs: Vec<(usize, Vec<u8>)> = tokens
            .into_iter()
            .map(|(i, token)| {
                let body = AttestRequest {
                    csr_pem: keys[i].csr_pem.clone(),
                    attestation: Attestation::JoinToken { token },
                };
                Ok((i, serde_json::to_vec(&body)?))
            })
            .collect::<anyhow::Result<_>>()?;
        eprintln!(
            "api: attesting for up to {} s with {} tasks ({} tokens) …",
            self.phase.as_secs(),
            self.tasks,
            jobs.len()
        );
        let (chains, row) = self.attest(ids, jobs).await?;
        let attested = row.summary.ops;
        println!(
            "api attest: {attested} certificates in {:.2} s = {:.0}/s{}",
            row.summary.elapsed.as_secs_f64(),
            row.summary.per_second(),
            if row.summary.elapsed < self.phase {
                " (ran out of join tokens before the deadline; raise --attest-agents)"
            } else {
                ""
            }
        );
        table.push(row);

        eprintln!(
            "api: renewing for {} s with {} mTLS agents …",
            self.phase.as_secs(),
            chains.len()
        );
        let row = self.renew(ids, keys, renew_keys, &chains).await?;
        let renewed = row.summary.ops;
        println!(
            "api renew: {renewed} certificates in {:.2} s = {:.0}/s",
            row.summary.elapsed.as_secs_f64(),
            row.summary.per_second()
        );
        table.push(row);
        Ok(Counted {
            attest: attested,
            renew: renewed,
        })
    }

    fn client(&self, svid: Option<&Svid>) -> anyhow::Result<reqwest::Client> {
        let tls = control_plane_client_config(&self.bundle, svid)?;
        Ok(reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(REQUEST_TIMEOUT)
            .build()?)
    }

    /// One client (so one keep-alive connection) per task, made before a phase starts.
    fn clients(&self) -> anyhow::Result<Vec<reqwest::Client>> {
        (0..self.tasks).map(|_| self.client(None)).collect()
    }

    async fn create_tokens(
        &self,
        admin: &str,
        ids: &[SpiffeId],
        limit: Duration,
    ) -> anyhow::Result<(Vec<(usize, String)>, Row)> {
        let bodies = ids
            .iter()
            .map(|id| {
                serde_json::to_vec(&CreateJoinTokenRequest {
                    spiffe_id: id.to_string(),
                    ttl_seconds: Some(JOIN_TOKEN_TTL_SECONDS),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bodies = Arc::new(bodies);
        let admin: Arc<str> = admin.into();
        let url: Arc<str> = format!("{}{}", self.url, paths::JOIN_TOKENS).into();
        let clients = self.clients()?;
        let run = Phase::new(self.tasks, limit, ids.len());
        let mut set = JoinSet::new();
        for client in clients {
            let (bodies, admin, url, run) =
                (bodies.clone(), admin.clone(), url.clone(), run.clone());
            set.spawn(async move {
                let mut lat = Vec::new();
                let mut tokens = Vec::new();
                while let Some(i) = run.next() {
                    let req = client.post(&*url).bearer_auth(&*admin);
                    let t0 = Instant::now();
                    match send(req, bodies[i].clone()).await {
                        Ok(bytes) => {
                            lat.push(t0.elapsed());
                            match serde_json::from_slice::<CreateJoinTokenResponse>(&bytes) {
                                Ok(r) => tokens.push((i, r.token)),
                                Err(e) => run.errors.record(format!("join token {i}: {e}")),
                            }
                        }
                        Err(e) => run.errors.record(format!("join token {i}: {e}")),
                    }
                }
                (lat, tokens)
            });
        }
        let mut lat = Vec::new();
        let mut tokens = Vec::new();
        while let Some(res) = set.join_next().await {
            let (l, t) = res.context("join-token worker panicked")?;
            lat.extend(l);
            tokens.extend(t);
        }
        tokens.sort_unstable_by_key(|(i, _)| *i);
        let row = run.finish("api: POST /v1/join-tokens", lat, false);
        Ok((tokens, row))
    }

    async fn attest(
        &self,
        ids: &[SpiffeId],
        jobs: Vec<(usize, Vec<u8>)>,
    ) -> anyhow::Result<(Vec<(usize, String)>, Row)> {
        let jobs = Arc::new(jobs);
        let ids: Arc<[String]> = ids.iter().map(|id| id.to_string()).collect();
        let url: Arc<str> = format!("{}{}", self.url, paths::ATTEST).into();
        let renewers = self.tasks;
        let clients = self.clients()?;
        let run = Phase::new(self.tasks, self.phase, jobs.len().min(self.max_ops));
        let mut set = JoinSet::new();
        for client in clients {
            let (jobs, ids, url, run) = (jobs.clone(), ids.clone(), url.clone(), run.clone());
            set.spawn(async move {
                let mut out = AttestOut::default();
                while let Some(k) = run.next() {
                    let (i, body) = &jobs[k];
                    let t0 = Instant::now();
                    let res = send(client.post(&*url), body.clone()).await;
                    let elapsed = t0.elapsed();
                    match res.and_then(|b| svid_for(&b, &ids[*i])) {
                        Ok(svid) => {
                            out.lat.push(elapsed);
                            if *i < renewers {
                                out.chains.push((*i, svid.chain_pem));
                            }
                        }
                        Err(e) => run.errors.record(format!("attest {}: {e}", ids[*i])),
                    }
                }
                out
            });
        }
        let mut lat = Vec::new();
        let mut chains = Vec::new();
        while let Some(res) = set.join_next().await {
            let out = res.context("attest worker panicked")?;
            lat.extend(out.lat);
            chains.extend(out.chains);
        }
        chains.sort_unstable_by_key(|(i, _)| *i);
        let row = run.finish("api: attest (join token)", lat, true);
        Ok((chains, row))
    }

    async fn renew(
        &self,
        ids: &[SpiffeId],
        keys: &[KeyAndCsr],
        renew_keys: &[KeyAndCsr],
        chains: &[(usize, String)],
    ) -> anyhow::Result<Row> {
        let url: Arc<str> = format!("{}{}", self.url, paths::RENEW).into();
        let mut agents = Vec::with_capacity(chains.len());
        for (i, chain) in chains {
            let svid = Svid::new(certs_from_pem(chain)?, keys[*i].key.serialize_der())
                .with_context(|| format!("building the SVID of agent {i}"))?;
            let client = self.client(Some(&svid))?;
            let bodies = renew_keys[i * RENEW_CSRS_PER_AGENT..(i + 1) * RENEW_CSRS_PER_AGENT]
                .iter()
                .map(|k| {
                    serde_json::to_vec(&RenewRequest {
                        csr_pem: k.csr_pem.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            agents.push((ids[*i].to_string(), client, bodies));
        }
        let run = Phase::new(agents.len(), self.phase, self.max_ops);
        let mut set = JoinSet::new();
        for (id, client, bodies) in agents {
            let (url, run) = (url.clone(), run.clone());
            set.spawn(async move {
                let mut lat = Vec::new();
                let mut n = 0usize;
                while run.next().is_some() {
                    let body = bodies[n % bodies.len()].clone();
                    n += 1;
                    let t0 = Instant::now();
                    let res = send(client.post(&*url), body).await;
                    let elapsed = t0.elapsed();
                    match res.and_then(|b| svid_for(&b, &id)) {
                        Ok(_) => lat.push(elapsed),
                        Err(e) => run.errors.record(format!("renew {id}: {e}")),
                    }
                }
                lat
            });
        }
        let mut lat = Vec::new();
        while let Some(res) = set.join_next().await {
            lat.extend(res.context("renew worker panicked")?);
        }
        Ok(run.finish("api: renew (mTLS)", lat, true))
    }
}

/// Shared state of one measured phase: work handed out by count until the deadline.
#[derive(Clone)]
struct Phase {
    concurrency: usize,
    next: Arc<AtomicUsize>,
    limit: usize,
    start: Instant,
    deadline: Instant,
    cpu0: CpuSnapshot,
    errors: Arc<Errors>,
}

impl Phase {
    fn new(concurrency: usize, length: Duration, limit: usize) -> Self {
        let start = Instant::now();
        Self {
            concurrency,
            next: Arc::new(AtomicUsize::new(0)),
            limit,
            start,
            deadline: start + length,
            cpu0: CpuSnapshot::now(),
            errors: Arc::new(Errors::default()),
        }
    }

    /// The next unit of work, or `None` once the count or the time is used up.
    fn next(&self) -> Option<usize> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        (k < self.limit).then_some(k)
    }

    fn finish(&self, name: &str, lat: Vec<Duration>, timed: bool) -> Row {
        let elapsed = self.start.elapsed();
        let cpu = CpuSnapshot::now().since(&self.cpu0);
        self.errors.print(name);
        Row {
            name: name.into(),
            concurrency: self.concurrency,
            summary: Summary::new(lat, elapsed),
            errors: self.errors.count(),
            cpu,
            timed,
        }
    }
}

/// Sends a JSON body; anything but 200 is an error carrying the status and body.
async fn send(req: reqwest::RequestBuilder, body: Vec<u8>) -> Result<bytes::Bytes, String> {
    let resp = req
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| format!("reading the {status} response: {e}"))?;
    if status != reqwest::StatusCode::OK {
        let text: String = String::from_utf8_lossy(&bytes).chars().take(300).collect();
        return Err(format!("HTTP {status}: {text}"));
    }
    Ok(bytes)
}

/// Parses an SVID response and checks it names the agent that asked.
fn svid_for(bytes: &[u8], expected_id: &str) -> Result<SvidResponse, String> {
    let svid: SvidResponse =
        serde_json::from_slice(bytes).map_err(|e| format!("bad SvidResponse: {e}"))?;
    if svid.spiffe_id != expected_id {
        return Err(format!(
            "issued for {} but {expected_id} asked",
            svid.spiffe_id
        ));
    }
    Ok(svid)
}

/// The server's issuance counter must match what the clients saw succeed.
fn check_server_counters(
    registry: &prometheus::Registry,
    counted: Counted,
    table: &mut Table,
) -> anyhow::Result<()> {
    let mut text = String::new();
    prometheus::TextEncoder::new()
        .encode_utf8(&registry.gather(), &mut text)
        .context("encoding the control plane's metrics")?;
    let server = |attestation: &str| -> u64 {
        let want = format!("attestation=\"{attestation}\"");
        text.lines()
            .filter(|l| l.starts_with(ISSUED_METRIC))
            .filter(|l| l.contains(&want) && l.contains("outcome=\"issued\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let (attest, renew) = (server("join_token"), server("renewal"));
    println!(
        "server counted: {attest} attest + {renew} renewal issuances (clients saw {} + {})",
        counted.attest, counted.renew
    );
    if attest != counted.attest as u64 || renew != counted.renew as u64 {
        table.mark_error();
        println!("ERROR: the control plane's issuance counter disagrees with the clients");
    }
    Ok(())
}
