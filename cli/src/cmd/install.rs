//! `wardctl install`: print the Kubernetes manifests for `kubectl apply -f -`, rendered
//! from deploy/base with this mesh's CA (sealed keys only, never the offline root key)
//! and the webhook's caBundle filled in.

pub(crate) mod render;
pub(crate) mod yaml;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use wardmesh_identity::ca::CaDir;

use crate::args::Global;
use render::{InstallInputs, render};

/// The control-plane image `install` uses unless told otherwise.
pub const DEFAULT_CONTROL_PLANE_IMAGE: &str = concat!(
    "ghcr.io/wardmesh/wardmesh-control-plane:",
    env!("CARGO_PKG_VERSION")
);

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Two control-plane replicas sharing PostgreSQL (requires --postgres-url).
    #[arg(long, requires = "postgres_url")]
    pub ha: bool,
    /// PostgreSQL URL for --ha (stored in the wardmesh-store Secret); ignored without --ha.
    #[arg(long, env = "WARDMESH_POSTGRES_URL", hide_env_values = true)]
    pub postgres_url: Option<String>,
    /// CA directory to install (default <home>/ca).
    #[arg(long)]
    pub ca_dir: Option<PathBuf>,
    /// Also render the wardmesh-seal-key Secret from this file (default: leave that
    /// Secret to you, so the sealing key can come from another source).
    #[arg(long)]
    pub include_seal_key: bool,
    /// Sealing key file for --include-seal-key (default <home>/seal.key).
    #[arg(long)]
    pub seal_key_file: Option<PathBuf>,
    /// Control-plane image.
    #[arg(long, default_value = DEFAULT_CONTROL_PLANE_IMAGE)]
    pub control_plane_image: String,
    /// Agent image the injector adds to pods.
    #[arg(long, default_value = wardmesh_control_plane::injector::DEFAULT_AGENT_IMAGE)]
    pub agent_image: String,
}

pub fn run(g: &Global, a: InstallArgs) -> anyhow::Result<()> {
    let dir = CaDir::new(a.ca_dir.clone().unwrap_or_else(|| g.home.join("ca")));
    let (ca_files, roots_pem) = read_ca(&dir)?;
    let seal_key = if a.include_seal_key {
        let path = a
            .seal_key_file
            .clone()
            .unwrap_or_else(|| g.home.join("seal.key"));
        Some(std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?)
    } else {
        eprintln!(
            "note: create the sealing key Secret separately:\n  kubectl -n {} create secret generic {} --from-file=seal.key={}",
            render::NAMESPACE,
            render::SEAL_SECRET,
            g.home.join("seal.key").display()
        );
        None
    };
    let docs = render(&InstallInputs {
        ca_files,
        roots_pem,
        control_plane_image: a.control_plane_image,
        agent_image: a.agent_image,
        postgres_url: if a.ha { a.postgres_url } else { None },
        seal_key,
    })?;
    print!("{}", yaml::to_stream(&docs)?);
    Ok(())
}

/// The CA files the control plane needs, by path relative to the CA directory, and the
/// trusted roots. The offline root key (`root.key.sealed`) stays on this machine.
fn read_ca(dir: &CaDir) -> anyhow::Result<(BTreeMap<String, Vec<u8>>, String)> {
    let (state, _) = dir.status().with_context(|| {
        format!(
            "no CA in {}; create one with `wardctl ca init` first",
            dir.path().display()
        )
    })?;
    let mut files = BTreeMap::new();
    let read = |rel: &str| {
        let p = dir.path().join(rel);
        std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
    };
    files.insert("ca.json".to_owned(), read("ca.json")?);
    let mut roots = String::new();
    for id in &state.trusted {
        for f in ["root.pem", "intermediate.pem", "intermediate.key.sealed"] {
            let rel = format!("authorities/{id}/{f}");
            if dir.path().join(&rel).exists() {
                files.insert(rel.clone(), read(&rel)?);
            }
        }
        let root = files
            .get(&format!("authorities/{id}/root.pem"))
            .with_context(|| format!("authority {id} has no root.pem"))?;
        roots.push_str(&String::from_utf8_lossy(root));
    }
    Ok((files, roots))
}
