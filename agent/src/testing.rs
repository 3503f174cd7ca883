//! Test support: a real CA (`CaDir` in a tempdir, sealed keys, rotation) behind an
//! in-process [`CertificateSource`], with switches for outages and a record of every
//! call. Not a mock: every certificate is issued by `Signer::sign_csr` and verified like
//! any other.

pub(crate) mod https_cp;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tempfile::TempDir;
use time::OffsetDateTime;
use tokio::sync::watch;
use wardmesh_identity::ca::{CaDir, CaLifetimes, LoadedCa};
use wardmesh_identity::seal::SealKey;
use wardmesh_identity::{SpiffeId, TrustDomain};
use wardmesh_proto::identity::{SvidResponse, SyncRequest, SyncResponse};

use crate::clock::Clock;
use crate::identity::{CertificateSource, SourceError, WorkloadState};

pub(crate) const WORKLOAD_ID: &str = "spiffe://wardmesh.local/ns/clinic/sa/notes-api";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    Attest,
    Renew,
}

/// One attest or renew call as the CA saw it.
#[derive(Debug, Clone)]
pub(crate) struct Issuance {
    pub call: Call,
    pub at: OffsetDateTime,
    /// The issued leaf's validity; `None` when the call failed.
    pub validity: Option<(OffsetDateTime, OffsetDateTime)>,
}

struct Inner {
    loaded: LoadedCa,
    id: SpiffeId,
    ttl: Duration,
    fail_issuance: bool,
    fail_sync: bool,
    deny_list: Vec<String>,
    deny_list_revision: i64,
    log: Vec<Issuance>,
    syncs: usize,
}

/// A CA directory with its sealing key.
pub(crate) struct TestCa {
    _dir: TempDir,
    pub dir: CaDir,
    pub seal: SealKey,
}

impl TestCa {
    pub(crate) fn new(now: OffsetDateTime) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CaDir::new(tmp.path().join("ca"));
        let seal = SealKey::generate();
        dir.init(&TrustDomain::default(), &seal, now, CaLifetimes::default())
            .unwrap();
        Self {
            _dir: tmp,
            dir,
            seal,
        }
    }

    pub(crate) fn load(&self, now: OffsetDateTime) -> LoadedCa {
        self.dir.load(&self.seal, now).unwrap()
    }
}

/// The in-process certificate source. Clones share everything.
#[derive(Clone)]
pub(crate) struct CaSource {
    ca: Arc<TestCa>,
    inner: Arc<Mutex<Inner>>,
    changed: watch::Sender<u64>,
    clock: Arc<dyn Clock>,
}

impl CaSource {
    pub(crate) fn new(clock: Arc<dyn Clock>, ttl: Duration) -> Self {
        let ca = TestCa::new(clock.now());
        let loaded = ca.load(clock.now());
        Self {
            ca: Arc::new(ca),
            inner: Arc::new(Mutex::new(Inner {
                loaded,
                id: SpiffeId::parse(WORKLOAD_ID).unwrap(),
                ttl,
                fail_issuance: false,
                fail_sync: false,
                deny_list: Vec::new(),
                deny_list_revision: 0,
                log: Vec::new(),
                syncs: 0,
            })),
            changed: watch::channel(0).0,
            clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    pub(crate) fn set_fail_issuance(&self, fail: bool) {
        self.lock().fail_issuance = fail;
    }

    pub(crate) fn set_fail_sync(&self, fail: bool) {
        self.lock().fail_sync = fail;
    }

    pub(crate) fn issuances(&self) -> Vec<Issuance> {
        self.lock().log.clone()
    }

    pub(crate) fn syncs(&self) -> usize {
        self.lock().syncs
    }

    pub(crate) fn bundle_pem(&self) -> String {
        self.lock().loaded.bundle_pem.clone()
    }

    pub(crate) fn ca(&self) -> &TestCa {
        &self.ca
    }

    pub(crate) fn active_authority(&self) -> String {
        self.lock().loaded.state.active.clone()
    }

    /// Rotation step 1 (new root joins the bundle) or, with `activate`, step 2 (the new
    /// intermediate signs); agents learn either through sync.
    pub(crate) fn rotate(&self, activate: bool) {
        let now = self.clock.now();
        if activate {
            self.ca.dir.rotate_activate().unwrap();
        } else {
            self.ca
                .dir
                .rotate_prepare(&self.ca.seal, now, CaLifetimes::default())
                .unwrap();
        }
        self.lock().loaded = self.ca.load(now);
        self.notify();
    }

    pub(crate) fn quarantine(&self, id: &str) {
        {
            let mut inner = self.lock();
            inner.deny_list.push(id.to_owned());
            inner.deny_list_revision += 1;
        }
        self.notify();
    }

    /// Signs `csr_pem` for the configured workload, as the control plane would.
    pub(crate) fn issue(&self, call: Call, csr_pem: &str) -> Result<SvidResponse, SourceError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        if inner.fail_issuance {
            inner.log.push(Issuance {
                call,
                at: now,
                validity: None,
            });
            return Err(SourceError::Unavailable("injected outage".into()));
        }
        let issued = inner
            .loaded
            .signer
            .sign_csr(csr_pem.as_bytes(), &inner.id, inner.ttl, now)
            .map_err(|e| SourceError::Rejected {
                status: 400,
                code: "bad_csr".into(),
                message: e.to_string(),
            })?;
        inner.log.push(Issuance {
            call,
            at: now,
            validity: Some((issued.not_before, issued.not_after)),
        });
        Ok(SvidResponse {
            spiffe_id: issued.spiffe_id.to_string(),
            chain_pem: issued.chain_pem,
            trust_domain: inner.loaded.state.trust_domain.to_string(),
            trust_bundle_pem: inner.loaded.bundle_pem.clone(),
            bundle_revision: inner.loaded.state.revision,
            authority_id: issued.authority_id,
            not_after: issued.not_after,
        })
    }

    /// The sync answer now, and whether `req` is behind it.
    pub(crate) fn sync_now(&self, req: &SyncRequest) -> Result<(SyncResponse, bool), SourceError> {
        let mut inner = self.lock();
        inner.syncs += 1;
        if inner.fail_sync {
            return Err(SourceError::Unavailable("injected outage".into()));
        }
        let resp = SyncResponse {
            trust_domain: inner.loaded.state.trust_domain.to_string(),
            trust_bundle_pem: inner.loaded.bundle_pem.clone(),
            bundle_revision: inner.loaded.state.revision,
            active_authority_id: inner.loaded.state.active.clone(),
            deny_list: inner.deny_list.clone(),
            deny_list_revision: inner.deny_list_revision,
        };
        let behind = req.bundle_revision < resp.bundle_revision
            || req.deny_list_revision < resp.deny_list_revision
            || req.cert_authority_id.as_deref() != Some(resp.active_authority_id.as_str());
        Ok((resp, behind))
    }

    /// The long poll: answers when behind, on a change, or after the wait.
    pub(crate) async fn long_poll(&self, req: &SyncRequest) -> Result<SyncResponse, SourceError> {
        let mut changed = self.changed.subscribe();
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(u64::from(req.wait_seconds));
        loop {
            let (resp, behind) = self.sync_now(req)?;
            if behind {
                return Ok(resp);
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return Ok(resp) },
                () = tokio::time::sleep_until(deadline) => return Ok(resp),
            }
        }
    }
}

impl CertificateSource for CaSource {
    async fn attest(&self, csr_pem: &str) -> Result<SvidResponse, SourceError> {
        self.issue(Call::Attest, csr_pem)
    }

    async fn renew(
        &self,
        current: &WorkloadState,
        csr_pem: &str,
    ) -> Result<SvidResponse, SourceError> {
        if current.spiffe_id != self.lock().id {
            return Err(SourceError::Rejected {
                status: 403,
                code: "forbidden".into(),
                message: "renewal for another identity".into(),
            });
        }
        self.issue(Call::Renew, csr_pem)
    }

    async fn sync(
        &self,
        _current: &WorkloadState,
        req: &SyncRequest,
    ) -> Result<SyncResponse, SourceError> {
        self.long_poll(req).await
    }
}

/// A plain HTTP/1.1 answer.
#[derive(Debug)]
pub(crate) struct HttpReply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// One request over a fresh TCP connection (`Connection: close`), read to the end.
pub(crate) async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> HttpReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    HttpReply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}
