//! Agents started in-process against a [`TestCp`], with their data plane on ephemeral
//! loopback ports, plus the small servers data-plane tests put behind them: an HTTP app
//! that echoes what it received, and a TCP echo.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::Registry;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use wardmesh_agent::app::RunningAgent;
use wardmesh_agent::config::{AgentConfig, AttestationConfig, SecretString};
use wardmesh_agent::discovery::ServiceEntry;
use wardmesh_agent::identity::WorkloadState;
use wardmesh_agent::proxy::{InboundConfig, OutboundConfig};
use wardmesh_agent::telemetry::TelemetryConfig;
use wardmesh_identity::SpiffeId;

use crate::TestCp;

/// A running agent and the registry its metrics go to.
#[derive(Debug)]
pub struct TestAgent {
    pub agent: RunningAgent,
    pub id: SpiffeId,
    pub registry: Registry,
}

/// The data-plane config tests start from: both listeners on `127.0.0.1:0`, short
/// timeouts so failure tests finish quickly, nothing allowed, flow telemetry spooled
/// under the control plane's home.
pub fn test_config(cp: &TestCp, id: &str, token: String) -> AgentConfig {
    let name = id.rsplit('/').next().unwrap_or("agent");
    let tag = rand_tag();
    let bundle = cp.home.join(format!("bundle-{name}-{tag:x}.pem"));
    std::fs::write(&bundle, cp.bundle_pem()).unwrap();
    let mut cfg = AgentConfig::new(
        cp.url.clone(),
        bundle,
        AttestationConfig::JoinToken {
            token: SecretString::new(token),
        },
    );
    cfg.admin_addr = "127.0.0.1:0".parse().unwrap();
    cfg.sync_wait_seconds = 5;
    cfg.inbound = Some(InboundConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        handshake_timeout_ms: 3_000,
        header_read_timeout_ms: 2_000,
        upstream_timeout_ms: 3_000,
        drain_timeout_ms: 3_000,
        ..InboundConfig::default()
    });
    cfg.outbound = Some(OutboundConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        connect_timeout_ms: 3_000,
        upstream_timeout_ms: 5_000,
        drain_timeout_ms: 3_000,
        ..OutboundConfig::default()
    });
    // Every test agent records flows, as a deployed one does.
    cfg.telemetry = Some(TelemetryConfig::new(
        cp.home.join(format!("spool-{name}-{tag:x}")),
    ));
    cfg
}

fn rand_tag() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    u64::from(std::process::id()) << 32 | N.fetch_add(1, Ordering::Relaxed)
}

impl TestAgent {
    /// Creates a join token for `id`, starts an agent with [`test_config`] changed by
    /// `configure`, and waits (≤ 20 s) for its first certificate.
    pub async fn start(cp: &TestCp, id: &str, configure: impl FnOnce(&mut AgentConfig)) -> Self {
        let token = cp.join_token(id).await;
        let mut cfg = test_config(cp, id, token);
        configure(&mut cfg);
        let registry = Registry::new();
        let agent = wardmesh_agent::app::start(cfg, registry.clone())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(20), agent.identity().wait_ready())
            .await
            .expect("identity within 20 s")
            .expect("identity");
        Self {
            agent,
            id: SpiffeId::parse(id).unwrap(),
            registry,
        }
    }

    pub fn inbound(&self) -> SocketAddr {
        self.agent.inbound_addr().expect("inbound listener")
    }

    pub fn outbound(&self) -> SocketAddr {
        self.agent.outbound_addr().expect("outbound listener")
    }

    pub fn state(&self) -> Arc<WorkloadState> {
        self.agent.identity().current().expect("identity")
    }

    /// The value of a counter or gauge (or a histogram's sample count) whose labels
    /// include `labels`; 0 when absent.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.registry, name, labels)
    }

    pub async fn shutdown(self) {
        self.agent.shutdown().await;
    }
}

/// See [`TestAgent::metric`].
pub fn metric(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus::proto::MetricType;
    let mut total = 0.0;
    for family in registry.gather() {
        if family.name() != name {
            continue;
        }
        for m in family.get_metric() {
            let matches = labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            });
            if !matches {
                continue;
            }
            total += match family.get_field_type() {
                MetricType::COUNTER => m.get_counter().get_value(),
                MetricType::GAUGE => m.get_gauge().get_value(),
                MetricType::HISTOGRAM => m.get_histogram().get_sample_count() as f64,
                _ => 0.0,
            };
        }
    }
    total
}

/// A static service entry for an agent's outbound config.
pub fn service(name: &str, address: &str, agent: SocketAddr, spiffe_id: &SpiffeId) -> ServiceEntry {
    ServiceEntry {
        name: name.into(),
        address: address.into(),
        agent: Some(agent.to_string()),
        spiffe_id: spiffe_id.clone(),
    }
}

/// An HTTP/1.1 app that answers every request with 200 and a JSON echo:
/// `{"method", "path", "version", "headers": {name: [values]}}`. `/sleep/<ms>` waits that
/// long first.
#[derive(Debug)]
pub struct EchoApp {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl EchoApp {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        echo(req)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for EchoApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/".to_owned(), |p| p.to_string());
    let version = format!("{:?}", req.version());
    if let Some(ms) = path
        .strip_prefix("/sleep/")
        .and_then(|s| s.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let out = json!({
        "method": method,
        "path": path,
        "version": version,
        "headers": headers,
        "body_len": body.len(),
    });
    let mut resp = Response::new(Full::new(Bytes::from(out.to_string())));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(resp)
}

/// A TCP server that echoes every byte back, on each connection, until EOF.
pub async fn tcp_echo() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, task)
}
