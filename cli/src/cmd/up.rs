//! `wardctl up`: a whole mesh in one process on loopback — the embedded control plane
//! (SQLite in <home>), a demo app behind its agent and two callers behind theirs, each
//! agent attesting with a join token and keeping its identity renewed, and real traffic
//! between them over mTLS, decided by the clinic Rego policy (signed, pushed, compiled
//! to wasm) with end users' JWTs: the clinician's calls are allowed, billing's denied. `--once` sends a bounded
//! batch, prints what happened and stops.

mod demo;
mod flows;
mod policy;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use time::OffsetDateTime;
use wardmesh_agent::app::RunningAgent;
use wardmesh_agent::config::{AgentConfig, AttestationConfig, SecretString};
use wardmesh_agent::discovery::ServiceEntry;
use wardmesh_agent::proxy::{InboundConfig, OutboundConfig};
use wardmesh_agent::telemetry::TelemetryConfig;
use wardmesh_control_plane::ControlPlaneConfig;
use wardmesh_control_plane::operator::Operator;
use wardmesh_identity::ca::{CaDir, CaLifetimes};
use wardmesh_identity::{SpiffeId, TrustDomain};
use wardmesh_proto::operator::{CreateJoinTokenRequest, Role};
use wardmesh_proto::policy::PolicyMode;

use super::ca::load_or_create_seal;
use crate::args::{Global, UpArgs};
use crate::output::{rfc3339, table};

/// The demo workloads: (namespace, service account). notes-api serves; the others call it.
const NOTES: (&str, &str) = ("clinic", "notes-api");
const FRONTEND: (&str, &str) = ("clinic", "frontend");
const BILLING: (&str, &str) = ("billing", "api");
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Compiling the policy to native code the first time takes seconds.
const POLICY_TIMEOUT: Duration = Duration::from_secs(120);
/// Requests each caller sends with `--once`.
const ONCE_REQUESTS: u32 = 5;

pub async fn run(g: &Global, a: UpArgs) -> anyhow::Result<()> {
    if !(60..=86_400).contains(&a.leaf_ttl_seconds) {
        bail!("--leaf-ttl-seconds must be between 60 and 86400");
    }
    let home = &g.home;
    std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
    let dir = CaDir::new(home.join("ca"));
    if !dir.is_initialised() {
        let seal = load_or_create_seal(&home.join("seal.key"), true)?;
        let state = dir.init(
            &TrustDomain::default(),
            &seal,
            OffsetDateTime::now_utc(),
            CaLifetimes::default(),
        )?;
        println!(
            "created CA for {} in {}",
            state.trust_domain,
            dir.path().display()
        );
    }

    let demo_policy = policy::DemoPolicy::prepare(home).context("preparing the demo policy")?;
    let mut cfg = ControlPlaneConfig::local(home, a.listen);
    cfg.leaf_ttl = Duration::from_secs(a.leaf_ttl_seconds);
    cfg.policy_keys = vec![demo_policy.cp_key()];
    let registry = Arc::new(prometheus::Registry::new());
    let cp = wardmesh_control_plane::start(&cfg, registry)
        .await
        .context("starting the control plane")?;
    let url = format!("https://127.0.0.1:{}", cp.addr.port());
    println!(
        "control plane  {url}  (store {}, home {})",
        cp.store.backend_name(),
        home.display()
    );
    let bundle_path = home.join("bundle.pem");
    std::fs::write(&bundle_path, &cp.ca.current().ca.bundle_pem)
        .with_context(|| format!("writing {}", bundle_path.display()))?;
    let td = cp.ca.current().trust_domain().clone();
    let id_of = |(ns, sa): (&str, &str)| SpiffeId::workload(&td, ns, sa);
    let mesh = Mesh {
        cp: &cp,
        home,
        url: &url,
        bundle: &bundle_path,
        admin_port: a.admin_port,
    };

    let (revision, bundle) = demo_policy.bundle().context("building the clinic policy")?;
    let op = Operator {
        name: "wardctl-up".into(),
        role: Role::SecurityAdmin,
    };
    cp.policy
        .push(&op, &bundle, PolicyMode::Enforce)
        .await
        .map_err(|e| anyhow::anyhow!("pushing the clinic policy: {e}"))?;
    println!(
        "policy         {revision} (policies/clinic, signed, pushed; agents verify and compile it)"
    );

    let app = demo::start_notes_api().await?;
    println!("demo app       notes-api on {app} (plain HTTP, knows nothing of the mesh)");
    let mut notes_cfg = mesh.agent_config(0, id_of(NOTES)?).await?;
    notes_cfg.inbound = Some(InboundConfig {
        listen: "127.0.0.1:0".parse()?,
        app: Some(app),
        ..InboundConfig::default()
    });
    notes_cfg.inbound.as_mut().context("inbound")?.routes = demo::routes();
    notes_cfg.policy = demo_policy.agent_config();
    notes_cfg.oidc = Some(demo_policy.oidc());
    let notes = start_agent("clinic/notes-api", notes_cfg).await?;
    let inbound = notes
        .inbound_addr()
        .context("notes-api agent has no inbound listener")?;
    let service = ServiceEntry {
        name: demo::NOTES_HOST.into(),
        address: format!("{}:80", demo::NOTES_HOST),
        agent: Some(inbound.to_string()),
        spiffe_id: id_of(NOTES)?,
    };
    let mut agents = vec![("clinic/notes-api".to_owned(), notes)];
    for (i, who) in [FRONTEND, BILLING].into_iter().enumerate() {
        let mut c = mesh.agent_config(i + 1, id_of(who)?).await?;
        c.outbound = Some(OutboundConfig {
            listen: "127.0.0.1:0".parse()?,
            services: vec![service.clone()],
            ..OutboundConfig::default()
        });
        let name = format!("{}/{}", who.0, who.1);
        agents.push((name.clone(), start_agent(&name, c).await?));
    }

    eprint!("waiting for identities");
    for (name, agent) in &agents {
        let ready = tokio::time::timeout(READY_TIMEOUT, agent.identity().wait_ready()).await;
        if !matches!(ready, Ok(Some(_))) {
            let why = agent
                .identity()
                .last_error()
                .unwrap_or_else(|| "no answer".into());
            bail!(
                "agent {name} got no identity within {}s: {why}",
                READY_TIMEOUT.as_secs()
            );
        }
        eprint!(".");
    }
    eprintln!();
    print_identities(&agents);
    eprint!("waiting for notes-api to run policy {revision}");
    let deadline = tokio::time::Instant::now() + POLICY_TIMEOUT;
    loop {
        let st = agents[0].1.policy().status();
        if st.revision.as_deref() == Some(revision.as_str()) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "notes-api did not activate policy {revision} within {}s: {}",
                POLICY_TIMEOUT.as_secs(),
                st.last_error.unwrap_or_else(|| "no error reported".into())
            );
        }
        eprint!(".");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!();
    println!(
        "users: clinic/frontend calls as dr-ada (clinician, MFA) for TREAT; billing/api as bill-bo (billing) for HPAYMT"
    );

    let callers: Vec<(String, reqwest::Client)> = agents[1..]
        .iter()
        .map(|(name, agent)| {
            let out = agent
                .outbound_addr()
                .context("caller agent has no outbound listener")?;
            let (token, purpose) = if name.starts_with("clinic/") {
                (
                    demo_policy.token("dr-ada", &["clinician"], &["pwd", "otp"])?,
                    "TREAT",
                )
            } else {
                (
                    demo_policy.token("bill-bo", &["billing"], &["pwd"])?,
                    "HPAYMT",
                )
            };
            Ok((name.clone(), demo::client_via(out, &token, purpose)?))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut tallies = vec![demo::Tally::default(); callers.len()];

    if a.once {
        for n in 1..=ONCE_REQUESTS {
            for ((name, client), tally) in callers.iter().zip(tallies.iter_mut()) {
                let what = demo::call(client, n, tally).await;
                println!("{name} -> notes-api GET /patients/{n}/notes: {what}");
            }
        }
        print_tallies(&callers, &tallies);
        let sent = u64::from(ONCE_REQUESTS) * callers.len() as u64;
        flows::show_recent(&cp, sent).await?;
        drop(callers);
        shutdown(agents, cp).await;
        return Ok(());
    }
    println!(
        "mesh is up: traffic every second, totals every 10 s, renewals as they happen. Ctrl-C stops."
    );
    follow(&agents, &callers, &mut tallies).await;
    print_tallies(&callers, &tallies);
    println!("stopping");
    drop(callers);
    shutdown(agents, cp).await;
    Ok(())
}

/// Callers first (their pooled connections to notes-api close with them), then the
/// server's agent, then the control plane.
async fn shutdown(
    mut agents: Vec<(String, RunningAgent)>,
    cp: wardmesh_control_plane::RunningControlPlane,
) {
    while let Some((name, agent)) = agents.pop() {
        let t = std::time::Instant::now();
        agent.shutdown().await;
        tracing::debug!(agent = %name, took_ms = t.elapsed().as_millis() as u64, "agent stopped");
    }
    cp.shutdown().await;
}

struct Mesh<'a> {
    cp: &'a wardmesh_control_plane::RunningControlPlane,
    home: &'a std::path::Path,
    url: &'a str,
    bundle: &'a std::path::Path,
    admin_port: u16,
}

impl Mesh<'_> {
    /// An agent config with a fresh join token for `id` and the i-th admin port.
    async fn agent_config(&self, i: usize, id: SpiffeId) -> anyhow::Result<AgentConfig> {
        let op = Operator {
            name: "wardctl-up".into(),
            role: Role::SecurityAdmin,
        };
        let token = self
            .cp
            .operator
            .create_join_token(
                &op,
                CreateJoinTokenRequest {
                    spiffe_id: id.to_string(),
                    ttl_seconds: Some(300),
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("creating a join token for {id}: {e}"))?;
        let mut ac = AgentConfig::new(
            self.url,
            self.bundle,
            AttestationConfig::JoinToken {
                token: SecretString::new(token.token),
            },
        );
        let port = match self.admin_port {
            0 => 0,
            p => p
                .checked_add(u16::try_from(i)?)
                .context("--admin-port too high for the demo agents")?,
        };
        ac.admin_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        // Each agent spools its flow records on disk before shipping them.
        ac.telemetry = Some(TelemetryConfig::new(self.home.join("spool").join(format!(
            "{}-{}",
            id.namespace().unwrap_or("ns"),
            id.service_account().unwrap_or("sa")
        ))));
        Ok(ac)
    }
}

async fn start_agent(name: &str, cfg: AgentConfig) -> anyhow::Result<RunningAgent> {
    wardmesh_agent::app::start(cfg, prometheus::Registry::new())
        .await
        .with_context(|| format!("starting the agent for {name}"))
}

fn print_tallies(callers: &[(String, reqwest::Client)], tallies: &[demo::Tally]) {
    let cells: Vec<Vec<String>> = callers
        .iter()
        .zip(tallies)
        .map(|((name, _), t)| {
            vec![
                name.clone(),
                t.allowed.to_string(),
                t.denied.to_string(),
                t.failed.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["CALLER -> notes-api", "ALLOWED", "DENIED", "FAILED"],
            &cells
        )
    );
}

fn print_identities(agents: &[(String, RunningAgent)]) {
    let cells: Vec<Vec<String>> = agents
        .iter()
        .map(|(name, agent)| match agent.identity().current() {
            Some(s) => vec![
                name.clone(),
                s.spiffe_id.to_string(),
                rfc3339(s.not_after),
                s.authority_id.clone(),
                agent.admin_addr().to_string(),
            ],
            None => vec![
                name.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                agent.admin_addr().to_string(),
            ],
        })
        .collect();
    print!(
        "{}",
        table(
            &["SERVICE", "SPIFFE ID", "CERT EXPIRES", "AUTHORITY", "ADMIN"],
            &cells
        )
    );
}

/// Sends a request per caller every second, prints totals every 10 s and each agent's
/// renewals and trust-bundle updates, until Ctrl-C.
async fn follow(
    agents: &[(String, RunningAgent)],
    callers: &[(String, reqwest::Client)],
    tallies: &mut [demo::Tally],
) {
    let mut watchers: Vec<Watcher> = agents
        .iter()
        .map(|(name, a)| {
            let rx = a.workload_state();
            let seen = rx
                .borrow()
                .as_ref()
                .map(|s| (s.serial_hex().to_owned(), s.bundle.revision));
            (name.clone(), rx, seen)
        })
        .collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u32 = 0;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = tick.tick() => {
                n = n.wrapping_add(1);
                for ((_, client), tally) in callers.iter().zip(tallies.iter_mut()) {
                    demo::call(client, n % 50 + 1, tally).await;
                }
                if n.is_multiple_of(10) {
                    print_tallies(callers, tallies);
                }
            }
            idx = next_change(&mut watchers) => {
                let Some(i) = idx else { return };
                let (name, rx, seen) = &mut watchers[i];
                let Some(s) = rx.borrow().clone() else { continue };
                let now = rfc3339(OffsetDateTime::now_utc());
                let serial = s.serial_hex().to_owned();
                if seen.as_ref().map(|(ser, _)| ser) != Some(&serial) {
                    println!("{now}  {name}: renewed, certificate {serial} valid until {} (authority {})",
                        rfc3339(s.not_after), s.authority_id);
                } else if seen.as_ref().map(|(_, rev)| *rev) != Some(s.bundle.revision) {
                    println!("{now}  {name}: trust bundle revision {} ({} roots)", s.bundle.revision, s.bundle.roots.len());
                }
                *seen = Some((serial, s.bundle.revision));
            }
        }
    }
}

type Watcher = (
    String,
    tokio::sync::watch::Receiver<Option<Arc<wardmesh_agent::identity::WorkloadState>>>,
    Option<(String, u64)>,
);

async fn next_change(watchers: &mut [Watcher]) -> Option<usize> {
    let futs = watchers
        .iter_mut()
        .enumerate()
        .map(|(i, (_, rx, _))| Box::pin(async move { rx.changed().await.ok().map(|()| i) }));
    futures_util::future::select_all(futs).await.0
}
