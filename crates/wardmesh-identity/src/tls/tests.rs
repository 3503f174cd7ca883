//! TLS tests: real handshakes over loopback TCP between the crate's rustls configs (and
//! the `openssl s_client` binary), with SVIDs issued by a real CA.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{KeyPair, SanType};
use rustls::pki_types::ServerName;
use rustls::{AlertDescription, CertificateError, ClientConfig, ProtocolVersion, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::ca::{CaDir, CaLifetimes, LoadedCa};
use crate::seal::SealKey;
use crate::svid::{SvidError, certs_from_pem};
use crate::testutil::{
    HOUR, TestCa, TestSvid, bundle, id, issue_with, now, openssl, plain_leaf_params, stderr,
    stdout, write,
};

const CLIENT: &str = "spiffe://wardmesh.local/ns/clinic/sa/frontend";
const SERVER: &str = "spiffe://wardmesh.local/ns/clinic/sa/notes-api";
const CONTROL_PLANE: &str = "spiffe://wardmesh.local/control-plane";
const GREETING: &[u8] = b"hello over mtls\n";

/// What one side of a finished handshake saw.
#[derive(Debug)]
struct Seen {
    peer: Result<SpiffeId, TlsError>,
    alpn: Option<Vec<u8>>,
    version: Option<ProtocolVersion>,
}

fn seen(conn: &rustls::CommonState) -> Seen {
    Seen {
        peer: peer_spiffe_id(conn.peer_certificates()),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        version: conn.protocol_version(),
    }
}

/// Accepts one connection; after the handshake, tells the client who it is talking to
/// and closes cleanly.
async fn serve_once(cfg: ServerConfig) -> (SocketAddr, JoinHandle<io::Result<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = TlsAcceptor::from(Arc::new(cfg));
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let s = seen(tls.get_ref().1);
        let line = match &s.peer {
            Ok(peer) => format!("hello {peer}\n"),
            Err(_) => "hello anonymous\n".to_owned(),
        };
        tls.write_all(GREETING).await?;
        tls.write_all(line.as_bytes()).await?;
        tls.shutdown().await?;
        Ok(s)
    });
    (addr, task)
}

/// Connects, completes the handshake and reads what the server says until it closes.
async fn connect(cfg: ClientConfig, addr: SocketAddr, name: &str) -> io::Result<Seen> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    let mut tls = TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await?;
    let s = seen(tls.get_ref().1);
    let mut got = Vec::new();
    tls.read_to_end(&mut got).await?;
    if !got.starts_with(GREETING) {
        return Err(io::Error::other(format!(
            "unexpected data from server: {:?}",
            String::from_utf8_lossy(&got)
        )));
    }
    Ok(s)
}

/// A full client/server exchange over 127.0.0.1; returns (server, client) views.
async fn handshake(
    server: ServerConfig,
    client: ClientConfig,
    name: &str,
) -> (io::Result<Seen>, io::Result<Seen>) {
    let limit = Duration::from_secs(20);
    let (addr, server_task) = serve_once(server).await;
    let client = tokio::time::timeout(limit, connect(client, addr, name))
        .await
        .expect("client timed out");
    let server = tokio::time::timeout(limit, server_task)
        .await
        .expect("server timed out")
        .expect("server task panicked");
    (server, client)
}

/// The rustls error behind a failed side, which must have failed.
fn tls_error(side: &io::Result<Seen>) -> &rustls::Error {
    match side {
        Ok(s) => panic!("expected a TLS failure, but the handshake succeeded: {s:?}"),
        Err(e) => e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .unwrap_or_else(|| panic!("not a rustls error: {e:?}")),
    }
}

fn assert_unknown_issuer(err: &rustls::Error) {
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "expected UnknownIssuer, got {err:?}"
    );
}

fn assert_alert(side: &io::Result<Seen>) {
    assert!(
        matches!(tls_error(side), rustls::Error::AlertReceived(_)),
        "expected a fatal alert from the peer, got {side:?}"
    );
}

fn ok(side: io::Result<Seen>) -> Seen {
    side.unwrap_or_else(|e| panic!("handshake failed: {e:?}"))
}

fn mesh_pair(server: &Svid, client: &Svid, b: &TrustBundle) -> (ServerConfig, ClientConfig) {
    (
        mesh_server_config(server, b).expect("server config"),
        mesh_client_config(client, b).expect("client config"),
    )
}

fn no_cert_client(b: &TrustBundle) -> ClientConfig {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(b).expect("verifier")))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg
}

// ---------------------------------------------------------------- mesh mTLS

#[tokio::test]
async fn mesh_mtls_handshake_exchanges_spiffe_ids() {
    let ca = TestCa::new("wardmesh.local");
    let (server, client) = (ca.issue(SERVER), ca.issue(CLIENT));
    let (s, c) = mesh_pair(&server.svid(), &client.svid(), &ca.bundle());
    let (server_side, client_side) = handshake(s, c, "notes-api.mesh").await;
    let (server_side, client_side) = (ok(server_side), ok(client_side));

    assert_eq!(server_side.peer.as_ref().expect("client id"), &id(CLIENT));
    assert_eq!(client_side.peer.as_ref().expect("server id"), &id(SERVER));
    for side in [&server_side, &client_side] {
        assert_eq!(side.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(side.version, Some(ProtocolVersion::TLSv1_3));
    }
}

#[tokio::test]
async fn mesh_falls_back_to_http1_alpn_and_svid_reports_its_identity() {
    let ca = TestCa::new("wardmesh.local");
    let (server, client) = (ca.issue(SERVER), ca.issue(CLIENT));
    let client_svid = client.svid();
    assert_eq!(client_svid.spiffe_id(), &id(CLIENT));
    assert_eq!(client_svid.not_after(), client.issued.not_after);
    assert_eq!(client_svid.chain.len(), 2);
    let (s, mut c) = mesh_pair(&server.svid(), &client_svid, &ca.bundle());
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    let (server_side, client_side) = handshake(s, c, "x.mesh").await;
    assert_eq!(ok(server_side).alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(ok(client_side).alpn.as_deref(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn mesh_server_rejects_a_client_from_another_ca() {
    let ca = TestCa::new("wardmesh.local");
    let rogue = TestCa::new("wardmesh.local"); // same trust domain, different root
    let server = ca.issue(SERVER);
    let client = rogue.issue(CLIENT);
    let s = mesh_server_config(&server.svid(), &ca.bundle()).expect("server");
    // The client trusts the real CA, so only the server's check can stop it.
    let c = mesh_client_config(&client.svid(), &ca.bundle()).expect("client");
    let (server_side, client_side) = handshake(s, c, "x.mesh").await;
    assert_unknown_issuer(tls_error(&server_side));
    assert!(matches!(
        tls_error(&client_side),
        rustls::Error::AlertReceived(AlertDescription::UnknownCA)
    ));
}

#[tokio::test]
async fn mesh_server_rejects_a_client_from_another_trust_domain() {
    let ca = TestCa::new("wardmesh.local");
    let foreign = TestCa::new("partner.example");
    let server = ca.issue(SERVER);
    let client = foreign.issue("spiffe://partner.example/ns/clinic/sa/frontend");

    // Foreign root not trusted: refused by the chain check.
    let s = mesh_server_config(&server.svid(), &ca.bundle()).expect("server");
    let c = mesh_client_config(&client.svid(), &ca.bundle()).expect("client");
    let (server_side, client_side) = handshake(s, c, "x.mesh").await;
    assert_unknown_issuer(tls_error(&server_side));
    assert_alert(&client_side);

    // Foreign root in the bundle (say, by mistake): the chain verifies, and the
    // SPIFFE rule still refuses an ID outside our trust domain.
    let both = bundle(&ca.td, &[&ca.root_der, &foreign.root_der]);
    let s = mesh_server_config(&server.svid(), &both).expect("server");
    let c = mesh_client_config(&client.svid(), &both).expect("client");
    let (server_side, client_side) = handshake(s, c, "x.mesh").await;
    match tls_error(&server_side) {
        rustls::Error::General(m) => {
            assert!(m.contains("not in trust domain wardmesh.local"), "{m}");
        }
        other => panic!("expected the trust-domain rule to fire, got {other:?}"),
    }
    assert_alert(&client_side);
}

#[tokio::test]
async fn mesh_client_rejects_a_server_from_another_trust_domain() {
    let ca = TestCa::new("wardmesh.local");
    let foreign = TestCa::new("partner.example");
    let server = foreign.issue("spiffe://partner.example/ns/clinic/sa/notes-api");
    let client = ca.issue(CLIENT);
    let both = bundle(&ca.td, &[&ca.root_der, &foreign.root_der]);
    let s = mesh_server_config(&server.svid(), &both).expect("server");
    let c = mesh_client_config(&client.svid(), &both).expect("client");
    let (server_side, client_side) = handshake(s, c, "x.mesh").await;
    match tls_error(&client_side) {
        rustls::Error::General(m) => assert!(m.contains("not in trust domain"), "{m}"),
        other => panic!("expected the trust-domain rule to fire, got {other:?}"),
    }
    assert_alert(&server_side);
}

#[tokio::test]
async fn mesh_rejects_expired_leaves_on_either_side() {
    let ca = TestCa::new("wardmesh.local");
    // Issued three hours ago for one hour: expired two hours ago.
    let past = now() - time::Duration::hours(3);
    let expired_client = ca.issue_at(CLIENT, HOUR, past);
    assert!(expired_client.issued.not_after < now());
    let server = ca.issue(SERVER);
    let (s, c) = mesh_pair(&server.svid(), &expired_client.svid(), &ca.bundle());
    let (server_side, client_side) = handshake(s, c, "x.mesh").await;
    assert!(
        matches!(
            tls_error(&server_side),
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{server_side:?}"
    );
    assert_alert(&client_side);

    let expired_server = ca.issue_at(SERVER, HOUR, past);
    let client = ca.issue(CLIENT);
    let (s, c) = mesh_pair(&expired_server.svid(), &client.svid(), &ca.bundle());
    let (server_side, client_side) = handshake(s, c, "x.mesh").await;
    assert!(
        matches!(
            tls_error(&client_side),
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{client_side:?}"
    );
    assert_alert(&server_side);
}

#[tokio::test]
async fn mesh_client_rejects_a_server_without_an_svid() {
    let ca = TestCa::new("wardmesh.local");
    // A perfectly valid certificate from our own intermediate, but with a DNS name and
    // no SPIFFE URI: not an identity in the mesh.
    let key = KeyPair::generate().expect("key");
    let params = plain_leaf_params(vec![SanType::DnsName(
        "notes-api.clinic.svc".try_into().expect("ia5"),
    )]);
    let cert = params
        .signed_by(&key, &ca.intermediate_issuer())
        .expect("sign");
    let chain = vec![cert.der().clone(), ca.signer.intermediate_der().clone()];

    // Svid refuses it outright…
    assert!(matches!(
        Svid::new(chain.clone(), key.serialize_der()),
        Err(TlsError::Svid(SvidError::UriSanCount(0)))
    ));

    // …and a server that serves it anyway is refused by mesh clients.
    let verifier = SpiffeClientVerifier::new(&ca.bundle(), false).expect("verifier");
    let s = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain, PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .expect("server config");
    let client = ca.issue(CLIENT);
    let c = mesh_client_config(&client.svid(), &ca.bundle()).expect("client");
    let (server_side, client_side) = handshake(s, c, "notes-api.clinic.svc").await;
    match tls_error(&client_side) {
        rustls::Error::General(m) => {
            assert!(m.contains("not an X509-SVID"), "{m}");
            assert!(m.contains("0 URI SANs"), "{m}");
        }
        other => panic!("expected the SVID rule to fire, got {other:?}"),
    }
    assert_alert(&server_side);
}

#[tokio::test]
async fn mesh_server_requires_a_client_certificate() {
    let ca = TestCa::new("wardmesh.local");
    let server = ca.issue(SERVER);
    let s = mesh_server_config(&server.svid(), &ca.bundle()).expect("server");
    let (server_side, client_side) = handshake(s, no_cert_client(&ca.bundle()), "x.mesh").await;
    assert!(
        matches!(
            tls_error(&server_side),
            rustls::Error::NoCertificatesPresented
        ),
        "{server_side:?}"
    );
    assert!(matches!(
        tls_error(&client_side),
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired)
    ));
}

#[tokio::test]
async fn mesh_server_refuses_tls12() {
    let ca = TestCa::new("wardmesh.local");
    let (server, client) = (ca.issue(SERVER), ca.issue(CLIENT));
    let client_svid = client.svid();
    let s = mesh_server_config(&server.svid(), &ca.bundle()).expect("server");
    let c = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("tls12 is built in")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(
            SpiffeServerVerifier::new(&ca.bundle()).expect("verifier"),
        ))
        .with_client_auth_cert(client_svid.chain.clone(), client_svid.key())
        .expect("client auth");
    let (server_side, client_side) = handshake(s, c, "x.mesh").await;
    assert!(
        matches!(tls_error(&server_side), rustls::Error::PeerIncompatible(_)),
        "{server_side:?}"
    );
    assert!(
        matches!(
            tls_error(&client_side),
            rustls::Error::AlertReceived(AlertDescription::ProtocolVersion)
        ),
        "{client_side:?}"
    );
}

// ---------------------------------------------------------------- root rotation

fn trust(loaded: &LoadedCa) -> TrustBundle {
    TrustBundle {
        trust_domain: loaded.state.trust_domain.clone(),
        roots: loaded.bundle.clone(),
        revision: loaded.state.revision,
    }
}

fn issue_from(loaded: &LoadedCa, spiffe_id: &str) -> TestSvid {
    issue_with(&loaded.signer, spiffe_id, HOUR, now())
}

#[tokio::test]
async fn root_rotation_keeps_both_generations_talking() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = CaDir::new(tmp.path().join("ca"));
    let seal = SealKey::generate();
    dir.init(
        &crate::testutil::td("wardmesh.local"),
        &seal,
        now(),
        CaLifetimes::default(),
    )
    .expect("init");
    let before = dir.load(&seal, now()).expect("load");
    dir.rotate_prepare(&seal, now(), CaLifetimes::default())
        .expect("prepare");
    let prepared = dir.load(&seal, now()).expect("load");
    dir.rotate_activate().expect("activate");
    let activated = dir.load(&seal, now()).expect("load");
    assert_ne!(
        before.signer.authority_id(),
        activated.signer.authority_id()
    );

    // Workloads still on the old authority, and ones already reissued by the new one.
    let old_server = issue_from(&before, SERVER);
    let old_client = issue_from(&before, CLIENT);
    let new_server = issue_from(&activated, SERVER);
    let new_client = issue_from(&activated, CLIENT);
    let both = trust(&prepared);
    assert_eq!(both.roots.len(), 2);
    assert_eq!(trust(&activated).roots, both.roots);

    // Agents with [old, new] talk across generations in both directions.
    for (server, client) in [
        (&old_server, &new_client),
        (&new_server, &old_client),
        (&old_server, &old_client),
        (&new_server, &new_client),
    ] {
        let (s, c) = mesh_pair(&server.svid(), &client.svid(), &both);
        let (server_side, client_side) = handshake(s, c, "x.mesh").await;
        assert_eq!(ok(server_side).peer.expect("client id"), id(CLIENT));
        assert_eq!(ok(client_side).peer.expect("server id"), id(SERVER));
    }

    // An agent still holding the pre-rotation bundle [old] accepts an old leaf but not
    // a new one: which is why the new root must be distributed before activation.
    let old_only = trust(&before);
    let (s, c) = mesh_pair(&old_server.svid(), &old_client.svid(), &old_only);
    let (server_side, client_side) = handshake(s, c, "x.mesh").await;
    assert!(ok(server_side).peer.is_ok() && ok(client_side).peer.is_ok());
    let s = mesh_server_config(&new_server.svid(), &both).expect("server");
    let c = mesh_client_config(&old_client.svid(), &old_only).expect("client");
    let (_server_side, client_side) = handshake(s, c, "x.mesh").await;
    assert_unknown_issuer(tls_error(&client_side));

    // After retire, the bundle holds only the new root: old leaves are refused.
    dir.rotate_retire().expect("retire");
    let retired = dir.load(&seal, now()).expect("load");
    let new_only = trust(&retired);
    assert_eq!(new_only.roots, vec![both.roots[1].clone()]);

    let s = mesh_server_config(&old_server.svid(), &both).expect("server");
    let c = mesh_client_config(&new_client.svid(), &new_only).expect("client");
    let (server_side, client_side) = handshake(s, c, "x.mesh").await;
    assert_unknown_issuer(tls_error(&client_side));
    assert_alert(&server_side);

    let s = mesh_server_config(&new_server.svid(), &new_only).expect("server");
    let c = mesh_client_config(&old_client.svid(), &both).expect("client");
    let (server_side, _client_side) = handshake(s, c, "x.mesh").await;
    assert_unknown_issuer(tls_error(&server_side));

    let (s, c) = mesh_pair(&new_server.svid(), &new_client.svid(), &new_only);
    let (server_side, client_side) = handshake(s, c, "x.mesh").await;
    assert_eq!(ok(server_side).peer.expect("client id"), id(CLIENT));
    assert_eq!(ok(client_side).peer.expect("server id"), id(SERVER));
}

// ---------------------------------------------------------------- control plane

fn control_plane_svid(ca: &TestCa) -> Svid {
    let key = KeyPair::generate().expect("key");
    let issued = ca
        .signer
        .sign_local_key(&key, &id(CONTROL_PLANE), HOUR, now(), &["localhost".into()])
        .expect("issue");
    Svid::new(
        certs_from_pem(&issued.chain_pem).expect("chain"),
        key.serialize_der(),
    )
    .expect("svid")
}

#[tokio::test]
async fn control_plane_accepts_clients_with_and_without_certificates() {
    let ca = TestCa::new("wardmesh.local");
    let cp = control_plane_svid(&ca);
    let b = ca.bundle();

    // An operator or bootstrapping agent: no client certificate.
    let s = control_plane_server_config(&cp, &b).expect("server");
    let c = control_plane_client_config(&b, None).expect("client");
    let (server_side, client_side) = handshake(s, c, "localhost").await;
    let server_side = ok(server_side);
    assert!(matches!(server_side.peer, Err(TlsError::NoPeerCertificate)));
    assert_eq!(server_side.version, Some(ProtocolVersion::TLSv1_3));
    let client_side = ok(client_side);
    assert_eq!(client_side.peer.expect("server id"), id(CONTROL_PLANE));
    assert_eq!(client_side.alpn.as_deref(), Some(&b"h2"[..]));

    // An agent with its SVID.
    let agent = ca.issue(CLIENT);
    let s = control_plane_server_config(&cp, &b).expect("server");
    let c = control_plane_client_config(&b, Some(&agent.svid())).expect("client");
    let (server_side, client_side) = handshake(s, c, "localhost").await;
    assert_eq!(ok(server_side).peer.expect("agent id"), id(CLIENT));
    assert_eq!(ok(client_side).peer.expect("cp id"), id(CONTROL_PLANE));
}

#[tokio::test]
async fn control_plane_still_verifies_a_presented_certificate() {
    let ca = TestCa::new("wardmesh.local");
    let rogue = TestCa::new("wardmesh.local");
    let cp = control_plane_svid(&ca);
    let intruder = rogue.issue(CLIENT);
    let s = control_plane_server_config(&cp, &ca.bundle()).expect("server");
    let c = control_plane_client_config(&ca.bundle(), Some(&intruder.svid())).expect("client");
    let (server_side, client_side) = handshake(s, c, "localhost").await;
    assert_unknown_issuer(tls_error(&server_side));
    assert_alert(&client_side);
}

#[tokio::test]
async fn control_plane_client_verifies_the_server_by_dns_name() {
    let ca = TestCa::new("wardmesh.local");
    let cp = control_plane_svid(&ca);
    let s = control_plane_server_config(&cp, &ca.bundle()).expect("server");
    let c = control_plane_client_config(&ca.bundle(), None).expect("client");
    let (server_side, client_side) = handshake(s, c, "wardmesh.example.com").await;
    assert!(
        matches!(
            tls_error(&client_side),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{client_side:?}"
    );
    assert_alert(&server_side);

    // A mesh SVID (URI SAN only) cannot serve the control plane to name-checking clients.
    let plain = ca.issue(SERVER);
    let s = control_plane_server_config(&plain.svid(), &ca.bundle()).expect("server");
    let c = control_plane_client_config(&ca.bundle(), None).expect("client");
    let (_server_side, client_side) = handshake(s, c, "localhost").await;
    assert!(matches!(
        tls_error(&client_side),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    ));

    // A client trusting another CA refuses the control plane.
    let other = TestCa::new("wardmesh.local");
    let s = control_plane_server_config(&cp, &ca.bundle()).expect("server");
    let c = control_plane_client_config(&other.bundle(), None).expect("client");
    let (_server_side, client_side) = handshake(s, c, "localhost").await;
    assert_unknown_issuer(tls_error(&client_side));
}

// ---------------------------------------------------------------- openssl s_client

/// Runs `openssl s_client` against `addr` with stdin closed; `-ign_eof` keeps it
/// reading until the server closes.
async fn s_client(
    dir: std::path::PathBuf,
    addr: SocketAddr,
    extra: Vec<String>,
) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let connect = addr.to_string();
        let mut args = vec![
            "s_client",
            "-connect",
            &connect,
            "-tls1_3",
            "-CAfile",
            "root.pem",
            "-verify_return_error",
            "-alpn",
            "h2",
            "-ign_eof",
        ];
        args.extend(extra.iter().map(String::as_str));
        openssl(&dir, &args)
    })
    .await
    .expect("s_client task")
}

#[tokio::test]
async fn openssl_s_client_against_a_mesh_server() {
    let ca = TestCa::new("wardmesh.local");
    let server = ca.issue(SERVER);
    let client = ca.issue(CLIENT);
    let tmp = tempfile::tempdir().expect("tempdir");
    write(tmp.path(), "root.pem", &ca.root_pem);
    write(tmp.path(), "intermediate.pem", &ca.intermediate_pem);
    write(tmp.path(), "client.pem", &client.leaf_pem());
    write(tmp.path(), "client.key", &client.key.serialize_pem());

    // With the client's SVID (leaf, its intermediate and key).
    let cfg = mesh_server_config(&server.svid(), &ca.bundle()).expect("server");
    let (addr, task) = serve_once(cfg).await;
    let with_cert = [
        "-cert",
        "client.pem",
        "-cert_chain",
        "intermediate.pem",
        "-key",
        "client.key",
    ]
    .map(String::from)
    .to_vec();
    let out = s_client(tmp.path().to_owned(), addr, with_cert).await;
    let server_side = task.await.expect("server task");
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
    assert!(text.contains("ALPN protocol: h2"), "{text}");
    assert!(text.contains(&format!("hello {CLIENT}")), "{text}");
    assert_eq!(ok(server_side).peer.expect("client id"), id(CLIENT));

    // Without a client certificate the server refuses the connection.
    let cfg = mesh_server_config(&server.svid(), &ca.bundle()).expect("server");
    let (addr, task) = serve_once(cfg).await;
    let out = s_client(tmp.path().to_owned(), addr, Vec::new()).await;
    let server_side = task.await.expect("server task");
    assert!(matches!(
        tls_error(&server_side),
        rustls::Error::NoCertificatesPresented
    ));
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{all}");
    assert!(!all.contains("hello"), "{all}");
    assert!(all.contains("certificate required"), "{all}");
}

// ---------------------------------------------------------------- building blocks

#[test]
fn peer_spiffe_id_needs_an_svid_leaf() {
    assert!(matches!(
        peer_spiffe_id(None),
        Err(TlsError::NoPeerCertificate)
    ));
    assert!(matches!(
        peer_spiffe_id(Some(&[])),
        Err(TlsError::NoPeerCertificate)
    ));
    let ca = TestCa::new("wardmesh.local");
    let leaf = ca.issue(SERVER).issued.leaf;
    assert_eq!(peer_spiffe_id(Some(&[leaf])).expect("id"), id(SERVER));
    assert!(matches!(
        peer_spiffe_id(Some(std::slice::from_ref(&ca.root_der))),
        Err(TlsError::Svid(SvidError::IsCa))
    ));
}

#[test]
fn configs_refuse_bad_bundles_and_keys() {
    let ca = TestCa::new("wardmesh.local");
    let svid = ca.issue(SERVER).svid();
    let empty = bundle(&ca.td, &[]);
    assert!(matches!(
        mesh_server_config(&svid, &empty),
        Err(TlsError::EmptyBundle)
    ));
    assert!(matches!(
        mesh_client_config(&svid, &empty),
        Err(TlsError::EmptyBundle)
    ));
    assert!(matches!(
        control_plane_client_config(&empty, None),
        Err(TlsError::EmptyBundle)
    ));
    let junk = bundle(&ca.td, &[&CertificateDer::from(vec![0x30, 0x00])]);
    assert!(matches!(junk.root_store(), Err(TlsError::BadRoot(_))));

    assert!(matches!(
        Svid::new(Vec::new(), Vec::new()),
        Err(TlsError::Svid(SvidError::Empty))
    ));

    // A chain with somebody else's key: rustls notices the mismatch.
    let issued = ca.issue(SERVER);
    let other_key = KeyPair::generate().expect("key");
    let mismatched = Svid::new(
        certs_from_pem(&issued.issued.chain_pem).expect("chain"),
        other_key.serialize_der(),
    )
    .expect("svid parses");
    assert!(matches!(
        mesh_server_config(&mismatched, &ca.bundle()),
        Err(TlsError::Config(rustls::Error::InconsistentKeys(_)))
    ));
    assert!(matches!(
        mesh_client_config(&mismatched, &ca.bundle()),
        Err(TlsError::Config(rustls::Error::InconsistentKeys(_)))
    ));
}
