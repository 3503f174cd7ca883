//! Certificates and raw TLS clients for probing an agent's inbound port: valid SVIDs
//! issued straight from the test CA, and the bad ones a real attacker or a
//! misconfigured peer would present.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wardmesh_identity::SpiffeId;
use wardmesh_identity::ca::Signer;
use wardmesh_identity::svid::certs_from_pem;
use wardmesh_identity::tls::{SpiffeServerVerifier, TrustBundle, provider};
use wardmesh_tests::TestMesh;

/// A leaf and its key, as files-to-be and as rustls material.
pub(crate) struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: KeyPair,
}

impl Leaf {
    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    pub(crate) fn chain_pem(&self) -> String {
        wardmesh_identity::svid::certs_to_pem(self.chain.iter())
    }
}

/// The mesh's active signer, loaded from its CA directory.
pub(crate) fn signer(mesh: &TestMesh) -> Arc<Signer> {
    mesh.ca_dir()
        .load(&mesh.seal, OffsetDateTime::now_utc())
        .unwrap()
        .signer
}

/// An SVID for `id` from `signer`, valid from `now - 60 s` for `ttl`.
pub(crate) fn issue(signer: &Signer, id: &str, now: OffsetDateTime, ttl: Duration) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let issued = signer
        .sign_local_key(&key, &SpiffeId::parse(id).unwrap(), ttl, now, &[])
        .unwrap();
    Leaf {
        chain: vec![issued.leaf, signer.intermediate_der().clone()],
        key,
    }
}

/// A leaf for `id` in another trust domain, signed by `mesh`'s own trusted intermediate:
/// the chain verifies, only the SPIFFE rules can refuse it. The signer refuses to
/// issue this, so the test signs with the intermediate key directly.
pub(crate) fn foreign_trust_domain(mesh: &TestMesh, id: &str) -> Leaf {
    let state = mesh.ca_dir().read_state().unwrap();
    let dir = mesh.path().join("ca/authorities").join(&state.active);
    let key_pem = mesh
        .seal
        .open_file(
            "wardmesh-intermediate-key",
            &dir.join("intermediate.key.sealed"),
        )
        .unwrap();
    let int_key = KeyPair::from_pem(std::str::from_utf8(&key_pem).unwrap()).unwrap();
    let int_der = certs_from_pem(&std::fs::read_to_string(dir.join("intermediate.pem")).unwrap())
        .unwrap()
        .remove(0);
    let issuer = Issuer::from_ca_cert_der(&int_der, int_key).unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::minutes(1);
    p.not_after = now + time::Duration::hours(1);
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &issuer).unwrap();
    Leaf {
        chain: vec![cert.der().clone(), int_der],
        key,
    }
}

/// A client config that verifies the agent's SVID against `bundle` and presents
/// `leaf` (or nothing), TLS 1.3 unless `tls12_only`.
pub(crate) fn client(bundle: &TrustBundle, leaf: Option<&Leaf>, tls12_only: bool) -> ClientConfig {
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(bundle).unwrap()));
    let mut cfg = match leaf {
        Some(l) => builder
            .with_client_auth_cert(l.chain.clone(), l.key_der())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg
}

/// One HTTP/1.1 request over raw TLS with `config`; `Ok(response text)` or `Err(why
/// there was none)`. An agent that refuses a client after a TLS 1.3 handshake shows up
/// as a read error or an empty answer.
pub(crate) async fn raw_request(
    addr: SocketAddr,
    config: ClientConfig,
    path: &str,
) -> Result<String, String> {
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::IpAddress(addr.ip().into());
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: notes.clinic\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if out.is_empty() {
            return Err("closed without an answer".into());
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .unwrap_or_else(|_| Err("no answer within 10 s".into()))
}
