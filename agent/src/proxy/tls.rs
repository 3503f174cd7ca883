//! Mesh TLS for the data plane: the per-identity configs (derived once per published
//! identity, never per connection), the client handshake with its expected-identity
//! check, and the one place where TLS failures are classified into metric reasons.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, Error as TlsErr, PeerIncompatible,
    ServerConfig,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use wardmesh_identity::SpiffeId;
use wardmesh_identity::tls::{MESH_ALPN, peer_spiffe_id};

use crate::identity::{IdentityHandle, WorkloadState};
use crate::metrics::HandshakeFailure;

/// ALPN id of opaque TCP between agents (identity-only authorization, then bytes).
pub const ALPN_TCP: &[u8] = b"wardmesh-tcp";
pub const ALPN_H2: &[u8] = b"h2";

/// The configs the proxy uses for one published identity.
#[derive(Debug)]
pub(crate) struct MeshTls {
    pub(crate) state: Arc<WorkloadState>,
    /// Inbound: the identity's server config plus [`ALPN_TCP`].
    pub(crate) server: Arc<ServerConfig>,
    /// Outbound HTTP: offers only `h2` (HTTP/1.1 from the app travels as HTTP/2).
    pub(crate) client_h2: Arc<ClientConfig>,
    /// Outbound opaque TCP: offers only [`ALPN_TCP`].
    pub(crate) client_tcp: Arc<ClientConfig>,
}

impl MeshTls {
    fn derive(state: Arc<WorkloadState>) -> Self {
        let mut server = (*state.server_config).clone();
        server.alpn_protocols = MESH_ALPN
            .iter()
            .copied()
            .chain([ALPN_TCP])
            .map(<[u8]>::to_vec)
            .collect();
        // No resumption: every connection gets a full handshake, so each one is checked
        // against the current bundle and the peer's certificate validity, never a ticket
        // minted before a root was retired.
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        let client = |alpn: &[u8]| {
            let mut c = (*state.client_config).clone();
            c.alpn_protocols = vec![alpn.to_vec()];
            c.resumption = rustls::client::Resumption::disabled();
            Arc::new(c)
        };
        Self {
            server: Arc::new(server),
            client_h2: client(ALPN_H2),
            client_tcp: client(ALPN_TCP),
            state,
        }
    }
}

/// Follows the identity handle and derives [`MeshTls`] when the published state changes.
#[derive(Debug)]
pub(crate) struct TlsCache {
    identity: IdentityHandle,
    cached: Mutex<Option<Arc<MeshTls>>>,
}

impl TlsCache {
    pub(crate) fn new(identity: IdentityHandle) -> Self {
        Self {
            identity,
            cached: Mutex::new(None),
        }
    }

    pub(crate) fn identity(&self) -> &IdentityHandle {
        &self.identity
    }

    /// This workload's SPIFFE ID now; `None` before the first certificate.
    pub(crate) fn local_id(&self) -> Option<SpiffeId> {
        self.identity.current().map(|s| s.spiffe_id.clone())
    }

    /// The configs for the identity published now; `None` before the first certificate.
    pub(crate) fn current(&self) -> Option<Arc<MeshTls>> {
        let state = self.identity.current()?;
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = cached.as_ref()
            && Arc::ptr_eq(&m.state, &state)
        {
            return Some(Arc::clone(m));
        }
        let fresh = Arc::new(MeshTls::derive(state));
        *cached = Some(Arc::clone(&fresh));
        Some(fresh)
    }
}

/// Classifies a failed handshake (either side) into the closed metric reason set.
pub(crate) fn classify_io(e: &io::Error) -> HandshakeFailure {
    if e.kind() == io::ErrorKind::TimedOut {
        return HandshakeFailure::Timeout;
    }
    match e.get_ref().and_then(|inner| inner.downcast_ref::<TlsErr>()) {
        Some(tls) => classify(tls),
        None => HandshakeFailure::Other,
    }
}

/// Classifies a rustls error. Pure; the SPIFFE verifiers report "not an SVID of our
/// trust domain" as `General` / `ApplicationVerificationFailure`.
pub(crate) fn classify(e: &TlsErr) -> HandshakeFailure {
    use HandshakeFailure as H;
    match e {
        TlsErr::NoCertificatesPresented => H::NoClientCert,
        TlsErr::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => H::UnknownCa,
        TlsErr::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => H::Expired,
        TlsErr::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure
            | CertificateError::NotValidForName
            | CertificateError::NotValidForNameContext { .. }
            | CertificateError::InvalidPurpose
            | CertificateError::InvalidPurposeContext { .. }
            | CertificateError::Other(_),
        )
        | TlsErr::General(_) => H::BadIdentity,
        // The other side refused us: its alert says why.
        TlsErr::AlertReceived(AlertDescription::UnknownCA) => H::UnknownCa,
        TlsErr::AlertReceived(AlertDescription::CertificateExpired) => H::Expired,
        TlsErr::AlertReceived(AlertDescription::CertificateRequired) => H::NoClientCert,
        TlsErr::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied,
        ) => H::BadIdentity,
        TlsErr::AlertReceived(AlertDescription::ProtocolVersion)
        | TlsErr::PeerIncompatible(
            PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::ServerDoesNotSupportTls12Or13
            | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig
            | PeerIncompatible::NoCipherSuitesInCommon
            | PeerIncompatible::NoKxGroupsInCommon
            | PeerIncompatible::KeyShareExtensionRequired,
        ) => H::ProtocolVersion,
        _ => H::Other,
    }
}

/// Why a mesh connection to a destination agent could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("this agent has no workload certificate yet")]
    NoIdentity,
    #[error("cannot connect to {addr}: {source}")]
    Unavailable { addr: String, source: io::Error },
    #[error("no mesh connection to {addr} within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("mesh TLS handshake with {addr} failed ({}): {detail}", reason.as_str())]
    Handshake {
        addr: String,
        reason: HandshakeFailure,
        detail: String,
    },
    #[error("{addr} presented {got}, expected {expected}")]
    WrongIdentity {
        addr: String,
        expected: SpiffeId,
        got: String,
    },
}

impl ConnectError {
    /// The metric reason, when the failure was a TLS one.
    pub(crate) fn handshake_reason(&self) -> Option<HandshakeFailure> {
        match self {
            Self::Handshake { reason, .. } => Some(*reason),
            Self::WrongIdentity { .. } => Some(HandshakeFailure::BadIdentity),
            Self::Timeout { .. } => Some(HandshakeFailure::Timeout),
            Self::NoIdentity | Self::Unavailable { .. } => None,
        }
    }
}

/// Opens mTLS to `addr` with `config` and checks that the server is `expected`. TCP
/// connect and handshake share `timeout`.
pub(crate) async fn connect(
    addr: &str,
    expected: &SpiffeId,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ConnectError::Unavailable {
                addr: addr.to_owned(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let peer: SocketAddr = tcp
            .peer_addr()
            .map_err(|source| ConnectError::Unavailable {
                addr: addr.to_owned(),
                source,
            })?;
        // Names play no part in mesh verification (the SPIFFE ID does); an IP server
        // name also keeps SNI off the wire.
        let name = ServerName::IpAddress(peer.ip().into());
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| ConnectError::Handshake {
                addr: addr.to_owned(),
                reason: classify_io(&e),
                detail: e.to_string(),
            })?;
        let got = peer_spiffe_id(tls.get_ref().1.peer_certificates());
        match got {
            Ok(id) if &id == expected => Ok(tls),
            Ok(id) => Err(ConnectError::WrongIdentity {
                addr: addr.to_owned(),
                expected: expected.clone(),
                got: id.to_string(),
            }),
            Err(e) => Err(ConnectError::WrongIdentity {
                addr: addr.to_owned(),
                expected: expected.clone(),
                got: format!("no usable identity ({e})"),
            }),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(ConnectError::Timeout {
                addr: addr.to_owned(),
                timeout,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        use HandshakeFailure as H;
        let cases: Vec<(TlsErr, H)> = vec![
            (TlsErr::NoCertificatesPresented, H::NoClientCert),
            (CertificateError::UnknownIssuer.into(), H::UnknownCa),
            (CertificateError::BadSignature.into(), H::UnknownCa),
            (CertificateError::Expired.into(), H::Expired),
            (CertificateError::NotValidYet.into(), H::Expired),
            (
                TlsErr::General("peer spiffe://evil.example/x is not in trust domain".into()),
                H::BadIdentity,
            ),
            (
                CertificateError::ApplicationVerificationFailure.into(),
                H::BadIdentity,
            ),
            (
                PeerIncompatible::SupportedVersionsExtensionRequired.into(),
                H::ProtocolVersion,
            ),
            (
                PeerIncompatible::NoCipherSuitesInCommon.into(),
                H::ProtocolVersion,
            ),
            (CertificateError::Revoked.into(), H::Other),
            (TlsErr::DecryptError, H::Other),
            (
                TlsErr::AlertReceived(AlertDescription::UnknownCA),
                H::UnknownCa,
            ),
            (
                TlsErr::AlertReceived(AlertDescription::CertificateRequired),
                H::NoClientCert,
            ),
            (
                TlsErr::AlertReceived(AlertDescription::DecodeError),
                H::Other,
            ),
        ];
        for (err, want) in cases {
            assert_eq!(classify(&err), want, "{err:?}");
            let io = io::Error::new(io::ErrorKind::InvalidData, err);
            assert_eq!(classify_io(&io), want);
        }
        assert_eq!(
            classify_io(&io::Error::new(io::ErrorKind::TimedOut, "t")),
            H::Timeout
        );
        assert_eq!(
            classify_io(&io::Error::from(io::ErrorKind::ConnectionReset)),
            H::Other
        );
    }
}
