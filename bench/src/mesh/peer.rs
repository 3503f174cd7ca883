//! The peer: the classic sidecar pair without authorization, two HAProxy processes
//! (Debian's `haproxy`, `nbthread 1` each). The client-side proxy takes plain HTTP and
//! speaks mTLS to the server-side proxy, presenting a client certificate; the server-side
//! proxy requires and verifies it, then forwards plain HTTP to the backend. Certificates
//! come from a throwaway CA made here with rcgen: ECDSA P-256, TLS 1.3 only, the same
//! crypto the agents use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

use super::procs::{Procs, Spec};
use crate::http1;

/// The two running proxies.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// Plain HTTP in (what the client dials).
    pub front: SocketAddr,
    pub front_pid: u32,
    /// mTLS in.
    pub back: SocketAddr,
    pub back_pid: u32,
}

/// Writes the CA, certificates and both configurations into `dir` and starts both
/// proxies on `cpus`.
pub fn start(
    procs: &mut Procs,
    program: &Path,
    dir: &Path,
    cpus: &str,
    front: SocketAddr,
    back: SocketAddr,
    backend: SocketAddr,
) -> anyhow::Result<Peer> {
    let certs = write_certs(dir)?;
    let common = "global\n    nbthread 1\n    maxconn 8192\n    \
        ssl-default-bind-options ssl-min-ver TLSv1.3\n    \
        ssl-default-server-options ssl-min-ver TLSv1.3\n\
        defaults\n    mode http\n    timeout connect 5s\n    timeout client 60s\n    \
        timeout server 60s\n    timeout http-keep-alive 60s\n";
    let back_cfg = format!(
        "{common}frontend mtls_in\n    bind {back} ssl crt {server} ca-file {ca} verify required alpn http/1.1\n    \
         http-request set-header X-Peer-Subject %[ssl_c_s_dn]\n    default_backend app\n\
         backend app\n    server app {backend}\n",
        server = certs.server.display(),
        ca = certs.ca.display(),
    );
    let front_cfg = format!(
        "{common}frontend plain_in\n    bind {front}\n    default_backend mtls_out\n\
         backend mtls_out\n    server next {back} ssl crt {client} ca-file {ca} verify required \
         verifyhost {host} sni str({host}) alpn http/1.1\n",
        client = certs.client.display(),
        ca = certs.ca.display(),
        host = http1::HOST,
    );
    let mut pids = Vec::new();
    for (name, cfg) in [("haproxy-back", back_cfg), ("haproxy-front", front_cfg)] {
        let path = dir.join(format!("{name}.cfg"));
        std::fs::write(&path, cfg)?;
        let check = Command::new(program)
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .context("running haproxy -c (apt-get install -y haproxy)")?;
        anyhow::ensure!(
            check.status.success(),
            "{name}: haproxy rejects its configuration: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let log = dir.join(format!("{name}.log"));
        pids.push(procs.spawn(Spec {
            name,
            cpus: Some(cpus),
            program,
            args: vec!["-db".into(), "-f".into(), path.display().to_string()],
            env: Vec::new(),
            log: Some(&log),
        })?);
    }
    Ok(Peer {
        front,
        front_pid: pids[1],
        back,
        back_pid: pids[0],
    })
}

/// `haproxy -v`, first line.
pub fn version(program: &Path) -> anyhow::Result<String> {
    let out = Command::new(program).arg("-v").output().with_context(|| {
        format!(
            "cannot run {} (apt-get install -y haproxy)",
            program.display()
        )
    })?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("haproxy")
        .trim()
        .to_owned())
}

struct CertFiles {
    ca: PathBuf,
    /// Server certificate + key (HAProxy's `crt` format).
    server: PathBuf,
    client: PathBuf,
}

fn write_certs(dir: &Path) -> anyhow::Result<CertFiles> {
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "wardmesh-bench peer CA (throwaway)");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, &ca_key);
    let leaf = |name: &str, eku: ExtendedKeyUsagePurpose| -> anyhow::Result<String> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::new(vec![name.to_owned()])?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &issuer)?;
        Ok(format!("{}{}", cert.pem(), key.serialize_pem()))
    };
    let files = CertFiles {
        ca: dir.join("peer-ca.pem"),
        server: dir.join("peer-server.pem"),
        client: dir.join("peer-client.pem"),
    };
    std::fs::write(&files.ca, ca_cert.pem())?;
    std::fs::write(
        &files.server,
        leaf(http1::HOST, ExtendedKeyUsagePurpose::ServerAuth)?,
    )?;
    std::fs::write(
        &files.client,
        leaf("client.bench", ExtendedKeyUsagePurpose::ClientAuth)?,
    )?;
    Ok(files)
}
