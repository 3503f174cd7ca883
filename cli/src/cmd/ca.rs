//! `wardctl ca init | status | rotate`. These work on the CA directory directly (the
//! root key never needs to be online); the control plane notices changes by polling
//! the directory, and `rotate` also asks it to reload at once and waits for agents.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use time::OffsetDateTime;
use wardmesh_identity::TrustDomain;
use wardmesh_identity::ca::{CaDir, CaLifetimes, CaState, ImportSource};
use wardmesh_identity::seal::{SEAL_KEY_ENV, SealKey, write_private};
use wardmesh_proto::operator::{AgentInfo, CaStatus};
use wardmesh_proto::paths;

use crate::args::{CaCommand, CaRotateArgs, Global, Output, RotateStep};
use crate::client::Client;
use crate::output::table;

/// Agents not seen for this long are not waited for during rotation.
const STALE_AGENT: time::Duration = time::Duration::minutes(2);

fn ca_dir(g: &Global, dir: &Option<PathBuf>) -> CaDir {
    CaDir::new(dir.clone().unwrap_or_else(|| g.home.join("ca")))
}

fn seal_path(g: &Global, p: &Option<PathBuf>) -> PathBuf {
    p.clone().unwrap_or_else(|| g.home.join("seal.key"))
}

/// Loads the sealing key, or creates the key file when neither it nor the env var
/// exists (first `ca init`).
pub fn load_or_create_seal(path: &Path, create: bool) -> anyhow::Result<SealKey> {
    let from_env = std::env::var(SEAL_KEY_ENV).is_ok_and(|v| !v.is_empty());
    if from_env || path.exists() || !create {
        return SealKey::from_env_or_file(path).with_context(|| {
            format!(
                "loading the sealing key ({SEAL_KEY_ENV} or {})",
                path.display()
            )
        });
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let key = SealKey::generate();
    write_private(path, format!("{}\n", key.to_hex().as_str()).as_bytes())?;
    eprintln!(
        "created sealing key {} (mode 0600); back it up: without it the CA keys cannot be opened",
        path.display()
    );
    Ok(key)
}

pub async fn run(g: &Global, c: CaCommand) -> anyhow::Result<()> {
    match c {
        CaCommand::Init(a) => {
            let dir = ca_dir(g, &a.dir.dir);
            if dir.is_initialised() {
                bail!(
                    "{} already holds a CA; use `wardctl ca rotate` to replace it, or pick another --dir",
                    dir.path().display()
                );
            }
            let td: TrustDomain = a
                .trust_domain
                .parse()
                .with_context(|| format!("--trust-domain {:?}", a.trust_domain))?;
            let now = OffsetDateTime::now_utc();
            let state = match &a.from {
                Some(src) => {
                    let source = read_import(src)?;
                    let seal = load_or_create_seal(&seal_path(g, &a.seal_key_file), true)?;
                    dir.import(&td, &seal, &source, now)?
                }
                None => {
                    let seal = load_or_create_seal(&seal_path(g, &a.seal_key_file), true)?;
                    dir.init(&td, &seal, now, CaLifetimes::default())?
                }
            };
            println!(
                "initialised CA for trust domain {} in {} (authority {})",
                state.trust_domain,
                dir.path().display(),
                state.active
            );
            print_status(g.output, &dir)
        }
        CaCommand::Status(a) => print_status(g.output, &ca_dir(g, &a.dir)),
        CaCommand::Rotate(a) => rotate(g, a).await,
    }
}

fn read_import(src: &Path) -> anyhow::Result<ImportSource> {
    let read = |name: &str| {
        let p = src.join(name);
        std::fs::read_to_string(&p).with_context(|| format!("--from: reading {}", p.display()))
    };
    Ok(ImportSource {
        root_pem: read("root.pem")?,
        intermediate_pem: read("intermediate.pem")?,
        intermediate_key_pem: read("intermediate.key")?,
    })
}

fn print_status(out: Output, dir: &CaDir) -> anyhow::Result<()> {
    let (state, infos) = dir.status()?;
    match out {
        Output::Json => {
            let v = serde_json::json!({"state": state, "authorities": infos});
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Table => {
            println!(
                "trust domain {}  revision {}  active authority {}",
                state.trust_domain, state.revision, state.active
            );
            let cells: Vec<Vec<String>> = infos
                .iter()
                .flat_map(|a| {
                    let mark = if a.active { "*" } else { "" };
                    [
                        vec![
                            format!("{}{mark}", a.id),
                            "root".into(),
                            a.root_subject.clone(),
                            a.root_not_after.clone(),
                            a.root_fingerprint[..16].to_owned(),
                        ],
                        vec![
                            String::new(),
                            "intermediate".into(),
                            a.intermediate_subject.clone(),
                            a.intermediate_not_after.clone(),
                            a.intermediate_fingerprint[..16].to_owned(),
                        ],
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["AUTHORITY", "CERT", "SUBJECT", "EXPIRES", "SHA256"],
                    &cells
                )
            );
        }
    }
    Ok(())
}

async fn rotate(g: &Global, a: CaRotateArgs) -> anyhow::Result<()> {
    let dir = ca_dir(g, &a.dir.dir);
    let steps = match a.step {
        Some(s) => vec![s],
        None => vec![
            RotateStep::Prepare,
            RotateStep::Activate,
            RotateStep::Retire,
        ],
    };
    let waiting = a.step.is_none();
    let client = Client::new(g).ok();
    for step in steps {
        if step == RotateStep::Retire
            && !a.force
            && let Some(c) = &client
        {
            let state = dir.read_state()?;
            let stragglers =
                agents_not_matching(c, |ag| ag.cert_authority_id == state.active).await?;
            if !stragglers.is_empty() {
                bail!(
                    "{} agent(s) still hold certificates from the old authority ({}); retiring now would cut them off. Wait, or pass --force",
                    stragglers.len(),
                    stragglers.join(", ")
                );
            }
        }
        let state = apply(&dir, g, &a, step)?;
        println!(
            "{}: revision {}, active authority {}, trusted {}",
            step_name(step),
            state.revision,
            state.active,
            state.trusted.join(",")
        );
        if let Some(c) = &client {
            match c
                .post::<_, CaStatus>(paths::CA_RELOAD, &serde_json::json!({}))
                .await
            {
                Ok(s) => println!("  control plane reloaded (revision {})", s.revision),
                Err(e) => eprintln!(
                    "  note: control plane not reloaded now ({e:#}); it polls the CA directory"
                ),
            }
            if waiting {
                wait_for_agents(c, step, &state, Duration::from_secs(a.wait_seconds)).await?;
            }
        }
    }
    Ok(())
}

fn step_name(s: RotateStep) -> &'static str {
    match s {
        RotateStep::Prepare => "prepare",
        RotateStep::Activate => "activate",
        RotateStep::Retire => "retire",
    }
}

fn apply(dir: &CaDir, g: &Global, a: &CaRotateArgs, step: RotateStep) -> anyhow::Result<CaState> {
    Ok(match step {
        RotateStep::Prepare => {
            let seal = load_or_create_seal(&seal_path(g, &a.seal_key_file), false)?;
            dir.rotate_prepare(&seal, OffsetDateTime::now_utc(), CaLifetimes::default())?
        }
        RotateStep::Activate => dir.rotate_activate()?,
        RotateStep::Retire => dir.rotate_retire()?,
    })
}

async fn agents_not_matching(
    c: &Client,
    ok: impl Fn(&AgentInfo) -> bool,
) -> anyhow::Result<Vec<String>> {
    let agents: Vec<AgentInfo> = c.get(paths::AGENTS, &[]).await?;
    let now = OffsetDateTime::now_utc();
    Ok(agents
        .iter()
        .filter(|ag| now - ag.last_seen < STALE_AGENT && !ok(ag))
        .map(|ag| ag.instance_id.clone())
        .collect())
}

async fn wait_for_agents(
    c: &Client,
    step: RotateStep,
    state: &CaState,
    limit: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let pending = match step {
            RotateStep::Activate => {
                agents_not_matching(c, |ag| ag.cert_authority_id == state.active).await?
            }
            _ => agents_not_matching(c, |ag| ag.bundle_revision >= state.revision as i64).await?,
        };
        if pending.is_empty() {
            println!(
                "  all active agents converged ({:.1}s)",
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!(
                "{} agent(s) did not converge within {}s: {}; re-run the next step when they have",
                pending.len(),
                limit.as_secs(),
                pending.join(", ")
            );
        }
        eprintln!(
            "  waiting for {} agent(s): {}",
            pending.len(),
            pending.join(", ")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
