//! The system under test: an embedded control plane (in this process, like `wardctl
//! up`) and two `wardmesh-agent` processes on loopback, started from TOML configs the
//! way an operator would run them. The client agent's outbound listener takes the
//! load generator's plain HTTP (Host `backend.bench`, explicit mode) and calls the
//! server agent over mTLS; the server agent authorizes every request and forwards it
//! to the backend.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use wardmesh_control_plane::operator::Operator;
use wardmesh_control_plane::{ControlPlaneConfig, RunningControlPlane};
use wardmesh_identity::SpiffeId;
use wardmesh_identity::keygen::generate_csr;
use wardmesh_identity::seal::{SealKey, write_private};
use wardmesh_proto::operator::{CreateJoinTokenRequest, Role};

use super::procs::{Procs, Spec, free_ports, loopback};
use crate::http1;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What authorizes requests at the server agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyChoice {
    /// The agent's allow-list (`allow = [client]`), what every agent supports today.
    AllowList,
    /// The shipped clinic policy (policies/clinic), built, signed and given to the
    /// server agent in a `[policy]` section (needs an agent that has the section).
    Clinic,
}

/// Which features the agents reported in `/config_dump`.
#[derive(Debug, Clone, Default)]
pub struct Features {
    pub policy: String,
    pub telemetry: String,
}

#[derive(Debug)]
pub struct Mesh {
    rt: tokio::runtime::Runtime,
    cp: Option<RunningControlPlane>,
    /// The client agent's outbound (plain HTTP proxy) listener.
    pub outbound: SocketAddr,
    /// The server agent's inbound (mTLS) listener.
    pub inbound: SocketAddr,
    pub client_pid: u32,
    pub server_pid: u32,
    pub features: Features,
    /// Files for `handshakes`: trust bundle, an SVID chain for the client identity, its key.
    pub bundle: PathBuf,
    pub hs_chain: PathBuf,
    pub hs_key: PathBuf,
}

impl Mesh {
    pub fn start(
        procs: &mut Procs,
        agent: &Path,
        dir: &Path,
        cpus: &str,
        backend: SocketAddr,
        policy: PolicyChoice,
    ) -> anyhow::Result<Self> {
        let home = dir.join("cp");
        std::fs::create_dir_all(&home)?;
        let seal = SealKey::generate();
        write_private(&home.join("seal.key"), seal.to_hex().as_bytes())?;
        crate::issuance::init_ca(&home.join("ca"), &seal)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let cfg = ControlPlaneConfig::local(&home, "127.0.0.1:0".parse()?);
        let cp = rt
            .block_on(wardmesh_control_plane::start(
                &cfg,
                Arc::new(prometheus::Registry::new()),
            ))
            .context("starting the control plane")?;
        let url = format!("https://127.0.0.1:{}", cp.addr.port());
        let snapshot = cp.ca.current();
        let bundle = dir.join("bundle.pem");
        std::fs::write(&bundle, &snapshot.ca.bundle_pem)?;
        let td = snapshot.trust_domain().clone();
        let client_id = SpiffeId::workload(&td, "clinic", "frontend")?;
        let server_id = SpiffeId::workload(&td, "clinic", "records")?;

        // An SVID for the handshake benchmark's client, signed directly by the CA.
        let kc = generate_csr(&client_id)?;
        let issued = snapshot.ca.signer.sign_csr(
            kc.csr_pem.as_bytes(),
            &client_id,
            Duration::from_secs(3600),
            time::OffsetDateTime::now_utc(),
        )?;
        let hs_chain = dir.join("hs-chain.pem");
        let hs_key = dir.join("hs-key.der");
        std::fs::write(&hs_chain, &issued.chain_pem)?;
        write_private(&hs_key, &kc.key.serialize_der())?;

        let ports = free_ports(6)?;
        let (c_in, c_out, c_admin) = (loopback(ports[0]), loopback(ports[1]), loopback(ports[2]));
        let (s_in, s_out, s_admin) = (loopback(ports[3]), loopback(ports[4]), loopback(ports[5]));
        let policy_section = match policy {
            PolicyChoice::AllowList => String::new(),
            PolicyChoice::Clinic => clinic_policy_section(dir)?,
        };
        let server_toml = format!(
            "allow = [\"{client_id}\"]\n{policy_section}\n[inbound]\nlisten = \"{s_in}\"\napp = \"{backend}\"\n\
             [outbound]\nlisten = \"{s_out}\"\n"
        );
        let client_toml = format!(
            "[inbound]\nlisten = \"{c_in}\"\n[outbound]\nlisten = \"{c_out}\"\n\
             [[outbound.services]]\nname = \"{host}\"\naddress = \"{host}:80\"\n\
             agent = \"{s_in}\"\nspiffe_id = \"{server_id}\"\n",
            host = http1::HOST
        );
        let op = Operator {
            name: "wardmesh-bench".into(),
            role: Role::SecurityAdmin,
        };
        let mut pids = Vec::new();
        for (name, id, toml, admin) in [
            ("agent-server", &server_id, server_toml, s_admin),
            ("agent-client", &client_id, client_toml, c_admin),
        ] {
            let token = rt
                .block_on(cp.operator.create_join_token(
                    &op,
                    CreateJoinTokenRequest {
                        spiffe_id: id.to_string(),
                        ttl_seconds: Some(600),
                    },
                ))
                .map_err(|e| anyhow::anyhow!("creating a join token for {id}: {e:?}"))?;
            let config = dir.join(format!("{name}.toml"));
            std::fs::write(&config, toml)?;
            let log = dir.join(format!("{name}.log"));
            let pid = procs.spawn(Spec {
                name,
                cpus: Some(cpus),
                program: agent,
                args: vec![
                    "run".into(),
                    "--control-plane".into(),
                    url.clone(),
                    "--trust-bundle".into(),
                    bundle.display().to_string(),
                    "--admin-addr".into(),
                    admin.to_string(),
                    "--instance-id".into(),
                    format!("bench-{name}"),
                    "--config".into(),
                    config.display().to_string(),
                ],
                env: vec![("WARDMESH_JOIN_TOKEN".into(), token.token)],
                log: Some(&log),
            })?;
            pids.push(pid);
        }
        let mut mesh = Self {
            rt,
            cp: Some(cp),
            outbound: c_out,
            inbound: s_in,
            client_pid: pids[1],
            server_pid: pids[0],
            features: Features::default(),
            bundle,
            hs_chain,
            hs_key,
        };
        for (admin, name) in [(s_admin, "agent-server"), (c_admin, "agent-client")] {
            wait_ready(admin, READY_TIMEOUT).with_context(|| {
                format!(
                    "{name} did not become ready; see {}",
                    dir.join(format!("{name}.log")).display()
                )
            })?;
        }
        let dump = http_get(s_admin, "/config_dump")?.1;
        mesh.features = features(&dump, policy);
        Ok(mesh)
    }

    /// Stops the control plane (the agents are stopped by [`Procs`]).
    pub fn shutdown(mut self) {
        if let Some(cp) = self.cp.take() {
            self.rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(10), cp.shutdown()).await;
            });
        }
    }
}

/// The `[policy]` section for the clinic policy: built from policies/clinic, signed with a
/// throwaway ES256 key whose public half the agent gets.
fn clinic_policy_section(dir: &Path) -> anyhow::Result<String> {
    let src = crate::policy_eval::clinic_dir();
    let built = wardmesh_policy::build_bundle(&src, "bench-clinic")
        .with_context(|| format!("building {}", src.display()))?;
    let key = wardmesh_policy::SigningKey::generate(
        wardmesh_policy::SignatureAlgorithm::Es256,
        "wardmesh-bench",
    )?;
    let signed = wardmesh_policy::sign_bundle(&built, &key)?;
    let bundle = dir.join("clinic-bundle.tar.gz");
    let public = dir.join("clinic-policy.pub.pem");
    let cache = dir.join("policy-cache");
    std::fs::create_dir_all(&cache)?;
    std::fs::write(&bundle, signed)?;
    std::fs::write(&public, key.verifying_key().to_spki_pem())?;
    Ok(format!(
        "\n[policy]\nbundle = \"{}\"\npublic_key = \"{}\"\nmode = \"enforce\"\ncache_dir = \"{}\"\n",
        bundle.display(),
        public.display(),
        cache.display()
    ))
}

/// What the server agent's `/config_dump` says about authorization and telemetry.
fn features(dump: &str, asked: PolicyChoice) -> Features {
    let v: serde_json::Value = serde_json::from_str(dump).unwrap_or_default();
    let find = |keys: &[&str]| {
        keys.iter().find_map(|k| {
            [&v, &v["config"]]
                .into_iter()
                .find_map(|o| o.get(*k).filter(|x| !x.is_null()).cloned())
        })
    };
    let policy = match find(&["policy"]) {
        Some(p) => {
            let rev = ["revision", "active_revision", "bundle_revision"]
                .iter()
                .find_map(|k| p.get(*k).and_then(|r| r.as_str().map(str::to_owned)));
            let mode = p.get("mode").and_then(|m| m.as_str()).unwrap_or("?");
            format!(
                "clinic wasm ({mode}{})",
                rev.map(|r| format!(", revision {r}")).unwrap_or_default()
            )
        }
        None if asked == PolicyChoice::Clinic => "clinic asked, agent shows no policy".into(),
        None => {
            let n = v["config"]["allow"].as_array().map_or(0, Vec::len);
            format!("allow-list ({n} id)")
        }
    };
    let telemetry = match find(&["telemetry", "spool", "flows"]) {
        Some(_) => "on".into(),
        None => "off (agent has none)".into(),
    };
    Features { policy, telemetry }
}

fn wait_ready(admin: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match http_get(admin, "/ready") {
            Ok((200, _)) => return Ok(()),
            Ok((s, body)) => last = format!("{s} {}", body.trim()),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    anyhow::bail!("not ready after {limit:?}: {last}")
}

/// A blocking `GET` with `Connection: close`; (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.take(4 * 1024 * 1024).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .context("no HTTP status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
