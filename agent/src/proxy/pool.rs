//! Pooled HTTP/2 connections to other agents: one multiplexed mTLS connection per
//! (agent address, expected SPIFFE ID).
//!
//! A pooled connection is reused while it is open and was made with the identity
//! published now; after a renewal or a bundle change the next request opens a fresh
//! connection with the new configs, and the old one closes once its in-flight requests
//! finish (its last `SendRequest` is dropped here, in-flight streams keep it alive).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::debug;
use wardmesh_identity::SpiffeId;

use super::tls::{self, ConnectError, MeshTls, TlsCache};
use crate::metrics::{Direction, ProxyMetrics};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    agent: String,
    expected: SpiffeId,
}

#[derive(Debug)]
struct Pooled {
    sender: http2::SendRequest<Incoming>,
    /// The identity the connection was made with.
    tls: Arc<MeshTls>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Pooled>>>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum PoolError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("HTTP/2 with the destination agent failed: {0}")]
    Http(#[from] hyper::Error),
}

#[derive(Debug)]
pub(crate) struct Pool {
    slots: Mutex<HashMap<Key, Slot>>,
    tls: Arc<TlsCache>,
    connect_timeout: Duration,
    max_header_bytes: u32,
    metrics: ProxyMetrics,
}

impl Pool {
    pub(crate) fn new(
        tls: Arc<TlsCache>,
        connect_timeout: Duration,
        max_header_bytes: usize,
        metrics: ProxyMetrics,
    ) -> Self {
        Self {
            slots: Mutex::default(),
            tls,
            connect_timeout,
            max_header_bytes: u32::try_from(max_header_bytes).unwrap_or(u32::MAX),
            metrics,
        }
    }

    /// Sends `req` to the agent at `agent`, which must be `expected`. A request the
    /// pooled connection could not even start (it had just closed) is retried once on a
    /// fresh connection; one that reached the wire is never replayed.
    pub(crate) async fn send(
        &self,
        agent: &str,
        expected: &SpiffeId,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, PoolError> {
        let key = Key {
            agent: agent.to_owned(),
            expected: expected.clone(),
        };
        let mut req = req;
        let mut retried = false;
        loop {
            let mut sender = self.sender(&key).await?;
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !retried => {
                        debug!(
                            agent,
                            "pooled connection closed before the request went out; reconnecting"
                        );
                        retried = true;
                        req = unsent;
                    }
                    _ => return Err(PoolError::Http(e.into_error())),
                },
            }
        }
    }

    /// A ready sender for `key`: the pooled one if it is usable, else a new connection.
    async fn sender(&self, key: &Key) -> Result<http2::SendRequest<Incoming>, PoolError> {
        let tls = self.tls.current().ok_or(ConnectError::NoIdentity)?;
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(slots.entry(key.clone()).or_default())
        };
        // One connect per key at a time: concurrent requests wait for it and share it.
        let mut slot = slot.lock().await;
        if let Some(p) = slot.as_ref()
            && Arc::ptr_eq(&p.tls, &tls)
            && !p.sender.is_closed()
            && p.sender.is_ready()
        {
            return Ok(p.sender.clone());
        }
        // Stale (closed, or made with an older identity): replace it.
        *slot = None;
        let stream = tls::connect(
            &key.agent,
            &key.expected,
            Arc::clone(&tls.client_h2),
            self.connect_timeout,
        )
        .await
        .inspect_err(|e| {
            if let Some(reason) = e.handshake_reason() {
                self.metrics.handshake_error(Direction::Outbound, reason);
            }
        })?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Find dead peers (a crashed pod keeps no FIN to send) instead of hanging.
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .max_header_list_size(self.max_header_bytes)
            .handshake(TokioIo::new(stream))
            .await?;
        let agent = key.agent.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(agent, error = %e, "mesh connection ended with an error");
            }
        });
        debug!(agent = %key.agent, expected = %key.expected, "new mesh connection");
        *slot = Some(Pooled {
            sender: sender.clone(),
            tls,
        });
        Ok(sender)
    }
}
