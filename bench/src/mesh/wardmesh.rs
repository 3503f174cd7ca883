//! The system under test: an embedded control plane (in this process, like `wardctl
//! up`) and pairs of `wardmesh-agent` processes on loopback, started from TOML configs
//! the way an operator would run them. A pair's client agent takes the load
//! generator's plain HTTP on its outbound listener (Host `backend.bench`, explicit mode)
//! and calls the pair's server agent over mTLS; the server agent authenticates the end
//! user (bearer JWT), authorizes every request (the clinic policy or the allow-list),
//! writes the request's flow record to its spool and forwards to the backend.
//!
//! The measured pair runs the issue's target configuration; the other pairs differ in
//! one setting each, so their difference is that setting's cost (the spool's cost on
//! the request path). Each pair's server has its own SPIFFE ID, so the flow records of
//! one pair can be counted in the control plane's store.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine as _;
use wardmesh_control_plane::operator::Operator;
use wardmesh_control_plane::{ControlPlaneConfig, RunningControlPlane};
use wardmesh_identity::SpiffeId;
use wardmesh_identity::keygen::generate_csr;
use wardmesh_identity::seal::{SealKey, write_private};
use wardmesh_proto::operator::{CreateJoinTokenRequest, Role};

use super::procs::{Procs, Spec, free_ports, loopback};
use crate::http1;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a pair may take to answer its first 200 (policy context with the pseudonym
/// key from the control plane, JWKS loaded).
const FIRST_200_TIMEOUT: Duration = Duration::from_secs(30);
/// The throwaway OIDC issuer whose token every benchmark request carries.
const ISSUER: &str = "https://idp.bench.wardmesh.local";
const AUDIENCE: &str = "wardmesh";
const IDP_KID: &str = "bench-idp";
/// Key id of the policy-bundle signing key (the `kid` of `.signatures.json`).
const POLICY_KEY_ID: &str = "wardmesh-bench";
/// The route every server agent declares; the harness's request path matches it.
pub const ROUTE: &str = "/patients/{patient}/notes";

/// What authorizes requests at the server agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyChoice {
    /// The shipped clinic policy (policies/clinic), built, signed and given to the server
    /// agent as a local bundle (`[policy] bundle`), with end users from bearer JWTs
    /// (`[oidc]`): a clinician with MFA reading notes for TREAT.
    Clinic,
    /// The agent's allow-list (`allow = [client]`): no policy engine, no end user.
    AllowList,
}

/// Flow telemetry of the measured pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TelemetryChoice {
    /// `[telemetry] spool_dir` on both agents; the route is PHI (fail-closed: the record
    /// is fsynced before the response leaves).
    On,
    /// No `[telemetry]`; the route is declared without `phi` (a PHI route needs telemetry).
    Off,
}

/// Extra pairs measured beside the main one, each differing in one setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SpoolVariant {
    /// Same as the main pair with telemetry off (route not PHI): the spool's whole cost.
    NoTelemetry,
    /// Same as the main pair with the route not PHI: records are queued for the next
    /// group commit instead of fsynced before the response.
    NonPhi,
    /// No extra pair.
    None,
}

impl SpoolVariant {
    /// The path's name in the tables.
    pub fn path_name(self) -> &'static str {
        match self {
            Self::NoTelemetry => "wm-no-telemetry",
            Self::NonPhi => "wm-non-phi",
            Self::None => "",
        }
    }
}

/// How one agent pair is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairConfig {
    pub policy: PolicyChoice,
    pub telemetry: bool,
    /// The route is declared `phi = true` (needs `telemetry`).
    pub phi: bool,
}

impl PairConfig {
    pub fn describe(&self) -> String {
        format!(
            "{}; telemetry {}; route {} {}",
            match self.policy {
                PolicyChoice::Clinic => "clinic policy + JWT",
                PolicyChoice::AllowList => "allow-list",
            },
            if self.telemetry { "on" } else { "off" },
            ROUTE,
            if self.phi {
                "PHI (fsync before response)"
            } else {
                "not PHI"
            }
        )
    }
}

/// Which features a server agent reported in `/config_dump`.
#[derive(Debug, Clone, Default)]
pub struct Features {
    pub policy: String,
    pub users: String,
    pub telemetry: String,
    pub routes: String,
    /// A wasm policy is running (a revision is active).
    pub policy_on: bool,
    /// `[telemetry]` is in the effective config.
    pub telemetry_on: bool,
}

impl Features {
    pub fn line(&self) -> String {
        format!(
            "policy: {}; end users: {}; telemetry: {}; routes: {}",
            self.policy, self.users, self.telemetry, self.routes
        )
    }
}

/// One running client agent → server agent pair.
#[derive(Debug, Clone)]
pub struct Pair {
    pub name: &'static str,
    pub config: PairConfig,
    /// The client agent's outbound (plain HTTP proxy) listener.
    pub outbound: SocketAddr,
    /// The server agent's inbound (mTLS) listener.
    pub inbound: SocketAddr,
    pub client_pid: u32,
    pub server_pid: u32,
    pub server_id: String,
    pub features: Features,
    /// Non-200 answers while waiting for the first 200 (each may or may not have left a
    /// flow record).
    pub probe_errors: u64,
}

#[derive(Debug)]
pub struct Mesh {
    rt: tokio::runtime::Runtime,
    cp: Option<RunningControlPlane>,
    /// The control plane's SQLite store.
    db: PathBuf,
    pub pairs: Vec<Pair>,
    /// The bearer token every request carries (a clinician with MFA).
    pub bearer: String,
    /// Files for `handshakes`: trust bundle, an SVID chain for the client identity, its key.
    pub bundle: PathBuf,
    pub hs_chain: PathBuf,
    pub hs_key: PathBuf,
}

/// What the store holds for one server's flows.
#[derive(Debug, Clone, Default)]
pub struct FlowCount {
    pub total: u64,
    /// Verdict `allowed` with status 200.
    pub allowed_200: u64,
    /// Records with the route template (never the raw path).
    pub on_route: u64,
    /// Records with a subject pseudonym.
    pub pseudonymised: u64,
}

/// The end-user side: a throwaway Ed25519 issuer (JWKS file) and its token.
struct Idp {
    jwks: PathBuf,
    token: String,
}

impl Idp {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kp.public_key_raw());
        let jwks = dir.join("idp-jwks.json");
        std::fs::write(
            &jwks,
            serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": IDP_KID, "alg": "EdDSA"}]})
                .to_string(),
        )?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.kid = Some(IDP_KID.into());
        let claims = serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "dr-bench",
                                        "roles": ["clinician"], "amr": ["pwd", "otp"],
                                        "iat": now, "exp": now + 3 * 3600});
        let token = jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_ed_der(&kp.serialize_der()),
        )?;
        Ok(Self { jwks, token })
    }

    fn section(&self) -> String {
        format!(
            "\n[oidc]\n[[oidc.issuers]]\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\njwks_file = \"{}\"\n",
            self.jwks.display()
        )
    }
}

/// The headers of every benchmark request (wrk and the harness's probes).
pub fn request_headers(bearer: &str) -> Vec<String> {
    vec![
        format!("Host: {}", http1::HOST),
        format!("X-Purpose-Of-Use: {}", http1::PURPOSE),
        "Accept: application/json".into(),
        format!("Authorization: Bearer {bearer}"),
    ]
}

impl Mesh {
    /// Starts the control plane and one pair per entry of `pairs`, in order; clinic
    /// servers one after another (the first compiles the policy into the shared module
    /// cache), then the rest. Returns once every pair has answered a 200.
    pub fn start(
        procs: &mut Procs,
        agent: &Path,
        dir: &Path,
        cpus: &str,
        backend: SocketAddr,
        pairs: &[(&'static str, PairConfig)],
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
        let db = home.join("wardmesh.db");
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

        let idp = Idp::new(dir)?;
        let policy_section = if pairs.iter().any(|(_, c)| c.policy == PolicyChoice::Clinic) {
            clinic_policy_section(dir)?
        } else {
            String::new()
        };
        let op = Operator {
            name: "wardmesh-bench".into(),
            role: Role::SecurityAdmin,
        };
        let join_token = |id: &SpiffeId| {
            rt.block_on(cp.operator.create_join_token(
                &op,
                CreateJoinTokenRequest {
                    spiffe_id: id.to_string(),
                    ttl_seconds: Some(600),
                },
            ))
            .map(|t| t.token)
            .map_err(|e| anyhow::anyhow!("creating a join token for {id}: {e:?}"))
        };
        let spawn_agent =
            |procs: &mut Procs, name: &str, id: &SpiffeId, toml: String, admin: SocketAddr| {
                let config = dir.join(format!("{name}.toml"));
                std::fs::write(&config, toml)?;
                let log = dir.join(format!("{name}.log"));
                procs.spawn(Spec {
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
                    env: vec![("WARDMESH_JOIN_TOKEN".into(), join_token(id)?)],
                    log: Some(&log),
                })
            };

        let mut started = Vec::new();
        for (i, &(name, pc)) in pairs.iter().enumerate() {
            anyhow::ensure!(
                !pc.phi || pc.telemetry,
                "{name}: a PHI route needs telemetry"
            );
            let server_id = SpiffeId::workload(&td, "clinic", &format!("records-{i}"))?;
            let ports = free_ports(6)?;
            let (c_in, c_out, c_admin) =
                (loopback(ports[0]), loopback(ports[1]), loopback(ports[2]));
            let (s_in, s_out, s_admin) =
                (loopback(ports[3]), loopback(ports[4]), loopback(ports[5]));
            let telemetry = |who: &str| {
                if pc.telemetry {
                    format!(
                        "\n[telemetry]\nspool_dir = \"{}\"\n",
                        dir.join(format!("spool-{name}-{who}")).display()
                    )
                } else {
                    String::new()
                }
            };
            let (policy, oidc) = match pc.policy {
                PolicyChoice::Clinic => (policy_section.as_str(), idp.section()),
                PolicyChoice::AllowList => ("", String::new()),
            };
            let server_toml = format!(
                "allow = [\"{client_id}\"]\n\n[inbound]\nlisten = \"{s_in}\"\napp = \"{backend}\"\n\n\
                 [[inbound.routes]]\ntemplate = \"{ROUTE}\"\nsubject = \"patient\"\nphi = {phi}\n\n\
                 [outbound]\nlisten = \"{s_out}\"\n{policy}{oidc}{tel}",
                phi = pc.phi,
                tel = telemetry("server"),
            );
            let client_toml = format!(
                "[inbound]\nlisten = \"{c_in}\"\n\n[outbound]\nlisten = \"{c_out}\"\n\n\
                 [[outbound.services]]\nname = \"{host}\"\naddress = \"{host}:80\"\n\
                 agent = \"{s_in}\"\nspiffe_id = \"{server_id}\"\n{tel}",
                host = http1::HOST,
                tel = telemetry("client"),
            );
            let server_name = format!("{name}-server");
            let server_pid = spawn_agent(procs, &server_name, &server_id, server_toml, s_admin)?;
            if pc.policy == PolicyChoice::Clinic {
                // The first clinic server compiles the policy into the shared cache.
                wait_ready(s_admin, READY_TIMEOUT).with_context(|| not_ready(dir, &server_name))?;
            }
            let client_name = format!("{name}-client");
            let client_pid = spawn_agent(procs, &client_name, &client_id, client_toml, c_admin)?;
            started.push((
                name,
                pc,
                server_id,
                (c_out, c_admin, client_pid),
                (s_in, s_admin, server_pid),
            ));
        }
        let mut mesh = Self {
            rt,
            cp: Some(cp),
            db,
            pairs: Vec::new(),
            bearer: idp.token,
            bundle,
            hs_chain,
            hs_key,
        };
        let headers = request_headers(&mesh.bearer);
        for (name, pc, server_id, (c_out, c_admin, client_pid), (s_in, s_admin, server_pid)) in
            started
        {
            for (admin, who) in [(s_admin, "server"), (c_admin, "client")] {
                wait_ready(admin, READY_TIMEOUT)
                    .with_context(|| not_ready(dir, &format!("{name}-{who}")))?;
            }
            let dump = http_request(s_admin, "/config_dump", &[])?.1;
            let features = features(&dump);
            check_features(name, &pc, &features)?;
            let probe_errors =
                wait_first_200(c_out, &headers, FIRST_200_TIMEOUT).with_context(|| {
                    format!("{name}: no 200 through the pair; see {}", dir.display())
                })?;
            mesh.pairs.push(Pair {
                name,
                config: pc,
                outbound: c_out,
                inbound: s_in,
                client_pid,
                server_pid,
                server_id: server_id.to_string(),
                features,
                probe_errors,
            });
        }
        Ok(mesh)
    }

    /// The pair named `name`.
    pub fn pair(&self, name: &str) -> Option<&Pair> {
        self.pairs.iter().find(|p| p.name == name)
    }

    /// What the control plane's store holds for flows to `server_id` (read-only, beside
    /// the running control plane: SQLite in WAL mode).
    pub fn flows(&self, server_id: &str) -> anyhow::Result<FlowCount> {
        let c = rusqlite::Connection::open_with_flags(
            &self.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening {}", self.db.display()))?;
        c.busy_timeout(Duration::from_secs(5))?;
        let (total, allowed_200, on_route, pseudonymised): (i64, i64, i64, i64) = c.query_row(
            "SELECT COUNT(*), \
                    COALESCE(SUM(verdict = 'allowed' AND status = 200), 0), \
                    COALESCE(SUM(route = ?2), 0), \
                    COALESCE(SUM(subject_pseudonym IS NOT NULL), 0) \
             FROM flows WHERE destination = ?1",
            rusqlite::params![server_id, ROUTE],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(FlowCount {
            total: n(total),
            allowed_200: n(allowed_200),
            on_route: n(on_route),
            pseudonymised: n(pseudonymised),
        })
    }

    /// Waits until the store holds at least `want` flows for `server_id` and the count
    /// has not moved for a second, at most `limit`; the last count.
    pub fn wait_flows(
        &self,
        server_id: &str,
        want: u64,
        limit: Duration,
    ) -> anyhow::Result<FlowCount> {
        let deadline = Instant::now() + limit;
        let mut last = self.flows(server_id)?;
        let mut still_since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let now = self.flows(server_id)?;
            if now.total != last.total {
                still_since = Instant::now();
            }
            last = now;
            let settled = still_since.elapsed() >= Duration::from_secs(1);
            if (last.total >= want && settled) || Instant::now() >= deadline {
                return Ok(last);
            }
        }
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

fn not_ready(dir: &Path, name: &str) -> String {
    format!(
        "{name} did not become ready; see {}",
        dir.join(format!("{name}.log")).display()
    )
}

/// The `[policy]` section for the clinic policy: built from policies/clinic, signed with a
/// throwaway ES256 key whose public half the agent gets; compiled modules cached.
fn clinic_policy_section(dir: &Path) -> anyhow::Result<String> {
    let src = crate::policy_eval::clinic_dir();
    let built = wardmesh_policy::build_bundle(&src, "bench-clinic")
        .with_context(|| format!("building {}", src.display()))?;
    let key = wardmesh_policy::SigningKey::generate(
        wardmesh_policy::SignatureAlgorithm::Es256,
        POLICY_KEY_ID,
    )?;
    let signed = wardmesh_policy::sign_bundle(&built, &key)?;
    let bundle = dir.join("clinic-bundle.tar.gz");
    let public = dir.join("clinic-policy.pub.pem");
    let cache = dir.join("policy-cache");
    std::fs::create_dir_all(&cache)?;
    std::fs::write(&bundle, signed)?;
    std::fs::write(&public, key.verifying_key().to_spki_pem())?;
    Ok(format!(
        "\n[policy]\nbundle = \"{}\"\nmode = \"enforce\"\ncache_dir = \"{}\"\n\n\
         [[policy.public_keys]]\nkey_id = \"{POLICY_KEY_ID}\"\nfile = \"{}\"\n",
        bundle.display(),
        cache.display(),
        public.display()
    ))
}

/// What a server agent's `/config_dump` says about authorization, end users, telemetry
/// and routes.
pub fn features(dump: &str) -> Features {
    let v: serde_json::Value = serde_json::from_str(dump).unwrap_or_default();
    let p = &v["policy"];
    let (policy, policy_on) = match p["revision"].as_str() {
        Some(rev) => (
            format!(
                "clinic wasm ({}, revision {rev}, from {})",
                p["mode"].as_str().unwrap_or("?"),
                p["source"].as_str().unwrap_or("?")
            ),
            true,
        ),
        None => {
            let n = v["config"]["allow"].as_array().map_or(0, Vec::len);
            (format!("allow-list ({n} id)"), false)
        }
    };
    let users = match v["oidc"].as_array() {
        Some(issuers) if !issuers.is_empty() => {
            let keys: usize = issuers
                .iter()
                .map(|i| i["key_ids"].as_array().map_or(0, Vec::len))
                .sum();
            format!("JWT ({} issuer, {keys} key)", issuers.len())
        }
        _ => "none".into(),
    };
    let t = &v["config"]["telemetry"];
    let (telemetry, telemetry_on) = if t.is_object() {
        (
            format!(
                "on (spool, durable = {})",
                t["durable"].as_str().unwrap_or("?")
            ),
            true,
        )
    } else {
        ("off".into(), false)
    };
    let routes = v["config"]["inbound"]["routes"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    format!(
                        "{}{}",
                        r["template"].as_str().unwrap_or("?"),
                        if r["phi"].as_bool() == Some(true) {
                            " (PHI)"
                        } else {
                            ""
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "none".into());
    Features {
        policy,
        users,
        telemetry,
        routes,
        policy_on,
        telemetry_on,
    }
}

/// The server agent must run what was asked for: otherwise the run measures something else.
fn check_features(name: &str, asked: &PairConfig, f: &Features) -> anyhow::Result<()> {
    anyhow::ensure!(
        f.policy_on == (asked.policy == PolicyChoice::Clinic),
        "{name}: asked for {:?}, /config_dump shows policy: {}",
        asked.policy,
        f.policy
    );
    anyhow::ensure!(
        f.telemetry_on == asked.telemetry,
        "{name}: asked for telemetry {}, /config_dump shows {}",
        asked.telemetry,
        f.telemetry
    );
    anyhow::ensure!(
        asked.policy != PolicyChoice::Clinic || f.users.starts_with("JWT"),
        "{name}: the clinic policy needs end users, /config_dump shows oidc: {}",
        f.users
    );
    Ok(())
}

/// Sends the benchmark request through `outbound` until it answers 200; returns how many
/// answers before it were not 200.
fn wait_first_200(
    outbound: SocketAddr,
    headers: &[String],
    limit: Duration,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + limit;
    let mut answered = 0;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match http_request(outbound, http1::PATH, headers) {
            Ok((200, _)) => return Ok(answered),
            Ok((s, body)) => {
                answered += 1;
                last = format!("{s} {}", body.trim());
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    anyhow::bail!("not 200 after {limit:?}: last answer {last}")
}

fn wait_ready(admin: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match http_request(admin, "/ready", &[]) {
            Ok((200, _)) => return Ok(()),
            Ok((s, body)) => last = format!("{s} {}", body.trim()),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    anyhow::bail!("not ready after {limit:?}: {last}")
}

/// A blocking `GET` with `Connection: close` and `headers` (default `Host: localhost`);
/// (status, body).
pub fn http_request(
    addr: SocketAddr,
    path: &str,
    headers: &[String],
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = format!("GET {path} HTTP/1.1\r\n");
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:"))
    {
        head.push_str("Host: localhost\r\n");
    }
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    s.write_all(head.as_bytes())?;
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
