//! Data-plane metrics, registered on the registry the caller passes in.
//!
//! Every label value comes from a closed enum here (or, for `rule`, from the policy,
//! whose rule names are a bounded set the operator writes): no raw paths, no peer
//! addresses, no user IDs. A failure is classified once, where it happens, into one of
//! these enums; the same value names the metric label and the log field.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Which side of the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub const ALL: [Self; 2] = [Self::Inbound, Self::Outbound];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// The protocol a request or connection was proxied as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    Http2,
    Tcp,
}

impl Protocol {
    pub const ALL: [Self; 3] = [Self::Http1, Self::Http2, Self::Tcp];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Tcp => "tcp",
        }
    }
}

/// How a proxied request (or opaque TCP connection) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Authorized and forwarded; the upstream answered (whatever its status).
    Allowed,
    /// Refused by the authorizer.
    Denied,
    /// Forwarded without identity: a permissive inbound port or passthrough outbound.
    Passthrough,
    /// The upstream could not be reached (connection refused, no route).
    UpstreamUnavailable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream failed otherwise (reset, protocol error, TLS failure).
    UpstreamError,
    /// Outbound: no service is configured for the destination.
    UnknownDestination,
    /// Outbound: the destination's identity is quarantined.
    DestinationQuarantined,
    /// Outbound: the destination agent presented another SPIFFE ID than expected.
    WrongServerIdentity,
    /// The request itself was unusable (not a proxy request, bad target, unparsable).
    BadRequest,
    /// The client sent its request headers too slowly (slowloris guard).
    HeaderTimeout,
    /// The request headers exceeded the limit (answered 431).
    HeadersTooLarge,
    /// A fail-closed (PHI) request refused because its flow record could not be made
    /// durable (spool full or failing): no access without audit.
    AuditUnavailable,
}

impl Outcome {
    pub const ALL: [Self; 13] = [
        Self::Allowed,
        Self::Denied,
        Self::Passthrough,
        Self::UpstreamUnavailable,
        Self::UpstreamTimeout,
        Self::UpstreamError,
        Self::UnknownDestination,
        Self::DestinationQuarantined,
        Self::WrongServerIdentity,
        Self::BadRequest,
        Self::HeaderTimeout,
        Self::HeadersTooLarge,
        Self::AuditUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::Passthrough => "passthrough",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamError => "upstream_error",
            Self::UnknownDestination => "unknown_destination",
            Self::DestinationQuarantined => "destination_quarantined",
            Self::WrongServerIdentity => "wrong_server_identity",
            Self::BadRequest => "bad_request",
            Self::HeaderTimeout => "header_timeout",
            Self::HeadersTooLarge => "headers_too_large",
            Self::AuditUnavailable => "audit_unavailable",
        }
    }
}

/// Why a mesh TLS connection was refused or failed, in either direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The first bytes were not a TLS handshake (plaintext to a mesh-only port).
    NotTls,
    /// The client sent no certificate.
    NoClientCert,
    /// The peer's chain does not lead to a root of the trust bundle.
    UnknownCa,
    /// The peer's certificate is expired (or not yet valid).
    Expired,
    /// The certificate is not an SVID of our trust domain, or (outbound) not the
    /// SPIFFE ID expected for the destination.
    BadIdentity,
    /// The peer's SPIFFE ID is on the deny-list.
    Quarantined,
    /// The peer speaks only TLS versions or parameters we refuse (TLS 1.2, no common
    /// cipher suite or group).
    ProtocolVersion,
    /// No complete handshake within the deadline.
    Timeout,
    Other,
}

impl HandshakeFailure {
    pub const ALL: [Self; 9] = [
        Self::NotTls,
        Self::NoClientCert,
        Self::UnknownCa,
        Self::Expired,
        Self::BadIdentity,
        Self::Quarantined,
        Self::ProtocolVersion,
        Self::Timeout,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotTls => "not_tls",
            Self::NoClientCert => "no_client_cert",
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::BadIdentity => "bad_identity",
            Self::Quarantined => "quarantined",
            Self::ProtocolVersion => "protocol_version",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }
}

/// Why an established connection was closed by the agent rather than by either end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Termination {
    /// The peer was quarantined while connected.
    Quarantined,
    /// The peer's certificate expired while connected.
    PeerCertExpired,
    /// Shutdown: the connection outlived the drain deadline.
    DrainDeadline,
}

impl Termination {
    pub const ALL: [Self; 3] = [
        Self::Quarantined,
        Self::PeerCertExpired,
        Self::DrainDeadline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quarantined => "quarantined",
            Self::PeerCertExpired => "peer_cert_expired",
            Self::DrainDeadline => "drain_deadline",
        }
    }
}

/// The data plane's collectors. Cheap to clone (each is an `Arc` inside).
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    inbound_requests: IntCounterVec,
    outbound_requests: IntCounterVec,
    inbound_denies: IntCounterVec,
    dry_run_denies: IntCounterVec,
    unauthenticated: IntCounterVec,
    break_glass_uses: prometheus::IntCounter,
    duration: HistogramVec,
    handshake_errors: IntCounterVec,
    open_connections: IntGaugeVec,
    terminations: IntCounterVec,
}

impl ProxyMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = |dir: &str| {
            IntCounterVec::new(
                Opts::new(
                    format!("wardmesh_{dir}_requests_total"),
                    format!(
                        "{dir} requests (HTTP) and connections (opaque TCP) by protocol and outcome."
                    ),
                ),
                &["protocol", "outcome"],
            )
        };
        let m = Self {
            inbound_requests: requests("inbound")?,
            outbound_requests: requests("outbound")?,
            inbound_denies: IntCounterVec::new(
                Opts::new(
                    "wardmesh_inbound_denies_total",
                    "Inbound requests refused by authorization, by policy rule.",
                ),
                &["rule"],
            )?,
            dry_run_denies: IntCounterVec::new(
                Opts::new(
                    "wardmesh_inbound_dry_run_denies_total",
                    "Inbound requests a dry-run policy would have refused (they went through), by rule.",
                ),
                &["rule"],
            )?,
            unauthenticated: IntCounterVec::new(
                Opts::new(
                    "wardmesh_inbound_unauthenticated_total",
                    "Inbound requests refused with 401 for an invalid bearer token, by reason.",
                ),
                &["reason"],
            )?,
            break_glass_uses: prometheus::IntCounter::new(
                "wardmesh_inbound_break_glass_uses_total",
                "Inbound requests allowed while the user held a break-glass grant.",
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "wardmesh_request_duration_seconds",
                    "Time from request received to response headers sent, by direction.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ]),
                &["direction"],
            )?,
            handshake_errors: IntCounterVec::new(
                Opts::new(
                    "wardmesh_tls_handshake_errors_total",
                    "Mesh TLS connections refused or failed, by direction and reason.",
                ),
                &["direction", "reason"],
            )?,
            open_connections: IntGaugeVec::new(
                Opts::new(
                    "wardmesh_open_connections",
                    "Connections currently open on the agent's listeners, by direction.",
                ),
                &["direction"],
            )?,
            terminations: IntCounterVec::new(
                Opts::new(
                    "wardmesh_connections_terminated_total",
                    "Established connections the agent closed, by direction and reason.",
                ),
                &["direction", "reason"],
            )?,
        };
        // Pre-create every series so dashboards and tests see zeros, not absences.
        for p in Protocol::ALL {
            for o in Outcome::ALL {
                m.inbound_requests
                    .with_label_values(&[p.as_str(), o.as_str()]);
                m.outbound_requests
                    .with_label_values(&[p.as_str(), o.as_str()]);
            }
        }
        for d in Direction::ALL {
            m.duration.with_label_values(&[d.as_str()]);
            m.open_connections.with_label_values(&[d.as_str()]);
            for r in HandshakeFailure::ALL {
                m.handshake_errors
                    .with_label_values(&[d.as_str(), r.as_str()]);
            }
            for t in Termination::ALL {
                m.terminations.with_label_values(&[d.as_str(), t.as_str()]);
            }
        }
        registry.register(Box::new(m.inbound_requests.clone()))?;
        registry.register(Box::new(m.outbound_requests.clone()))?;
        registry.register(Box::new(m.inbound_denies.clone()))?;
        registry.register(Box::new(m.dry_run_denies.clone()))?;
        registry.register(Box::new(m.unauthenticated.clone()))?;
        registry.register(Box::new(m.break_glass_uses.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.handshake_errors.clone()))?;
        registry.register(Box::new(m.open_connections.clone()))?;
        registry.register(Box::new(m.terminations.clone()))?;
        Ok(m)
    }

    /// Counts one finished request and observes its duration.
    pub fn request(
        &self,
        dir: Direction,
        protocol: Protocol,
        outcome: Outcome,
        elapsed: std::time::Duration,
    ) {
        let counter = match dir {
            Direction::Inbound => &self.inbound_requests,
            Direction::Outbound => &self.outbound_requests,
        };
        counter
            .with_label_values(&[protocol.as_str(), outcome.as_str()])
            .inc();
        self.duration
            .with_label_values(&[dir.as_str()])
            .observe(elapsed.as_secs_f64());
    }

    pub fn deny(&self, rule: &str) {
        self.inbound_denies.with_label_values(&[rule]).inc();
    }

    pub fn dry_run_deny(&self, rule: &str) {
        self.dry_run_denies.with_label_values(&[rule]).inc();
    }

    pub fn unauthenticated(&self, reason: &str) {
        self.unauthenticated.with_label_values(&[reason]).inc();
    }

    pub fn break_glass_use(&self) {
        self.break_glass_uses.inc();
    }

    pub fn handshake_error(&self, dir: Direction, reason: HandshakeFailure) {
        self.handshake_errors
            .with_label_values(&[dir.as_str(), reason.as_str()])
            .inc();
    }

    pub fn terminated(&self, dir: Direction, reason: Termination) {
        self.terminations
            .with_label_values(&[dir.as_str(), reason.as_str()])
            .inc();
    }

    /// Counts an open connection until the guard drops.
    pub fn open_connection(&self, dir: Direction) -> ConnectionGuard {
        let gauge = self.open_connections.with_label_values(&[dir.as_str()]);
        gauge.inc();
        ConnectionGuard(gauge)
    }
}

/// Decrements `wardmesh_open_connections` when the connection's task ends.
#[derive(Debug)]
pub struct ConnectionGuard(IntGauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
