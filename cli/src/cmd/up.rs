//! `wardctl up`: a whole mesh in one process on loopback — the embedded control plane
//! (SQLite in <home>), and one agent per demo service, each attesting with a join token
//! and keeping its identity renewed. `--once` stops after everything is up and shown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use time::OffsetDateTime;
use wardmesh_agent::app::RunningAgent;
use wardmesh_agent::config::{AgentConfig, AttestationConfig, SecretString};
use wardmesh_control_plane::ControlPlaneConfig;
use wardmesh_control_plane::operator::Operator;
use wardmesh_identity::TrustDomain;
use wardmesh_identity::ca::{CaDir, CaLifetimes};
use wardmesh_proto::operator::{CreateJoinTokenRequest, Role};

use super::ca::load_or_create_seal;
use crate::args::{Global, UpArgs};
use crate::output::{rfc3339, table};

/// The demo workloads: (namespace, service account).
const DEMO_SERVICES: &[(&str, &str)] = &[("clinic", "frontend"), ("clinic", "notes-api")];
const READY_TIMEOUT: Duration = Duration::from_secs(30);

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

    let mut cfg = ControlPlaneConfig::local(home, a.listen);
    cfg.leaf_ttl = Duration::from_secs(a.leaf_ttl_seconds);
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
    let op = Operator {
        name: "wardctl-up".into(),
        role: Role::SecurityAdmin,
    };

    let mut agents: Vec<(String, RunningAgent)> = Vec::new();
    for (i, (ns, sa)) in DEMO_SERVICES.iter().enumerate() {
        let id = format!("spiffe://{td}/ns/{ns}/sa/{sa}");
        let token = cp
            .operator
            .create_join_token(
                &op,
                CreateJoinTokenRequest {
                    spiffe_id: id.clone(),
                    ttl_seconds: Some(300),
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("creating a join token for {id}: {e}"))?;
        let mut ac = AgentConfig::new(
            url.clone(),
            bundle_path.clone(),
            AttestationConfig::JoinToken {
                token: SecretString::new(token.token),
            },
        );
        let port = if a.admin_port == 0 {
            0
        } else {
            a.admin_port + i as u16
        };
        ac.admin_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let agent = wardmesh_agent::app::start(ac, prometheus::Registry::new())
            .await
            .with_context(|| format!("starting the agent for {ns}/{sa}"))?;
        agents.push((format!("{ns}/{sa}"), agent));
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

    if a.once {
        for (_, agent) in agents {
            agent.shutdown().await;
        }
        cp.shutdown().await;
        return Ok(());
    }
    println!("mesh is up; renewals are shown as they happen. Ctrl-C stops.");
    follow(&agents).await;
    println!("stopping");
    for (_, agent) in agents {
        agent.shutdown().await;
    }
    cp.shutdown().await;
    Ok(())
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

/// Prints each agent's renewals and trust-bundle updates until Ctrl-C.
async fn follow(agents: &[(String, RunningAgent)]) {
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
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
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
