//! The quarantine deny-list as agents see it: the set of quarantined IDs and the store's
//! revision counter, published through a `watch`. Replicas sharing one PostgreSQL learn
//! of each other's changes by polling the revision.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use wardmesh_store::{Store, StoreError};

use crate::metrics::Metrics;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyList {
    pub revision: i64,
    pub ids: Arc<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct DenyListPublisher {
    tx: Arc<watch::Sender<Arc<DenyList>>>,
    metrics: Metrics,
}

impl DenyListPublisher {
    pub async fn load(store: &Store, metrics: Metrics) -> Result<Self, StoreError> {
        let (tx, _) = watch::channel(Arc::new(DenyList::default()));
        let this = Self {
            tx: Arc::new(tx),
            metrics,
        };
        this.refresh(store).await?;
        Ok(this)
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<DenyList>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<DenyList> {
        self.tx.borrow().clone()
    }

    /// Re-reads the list when the store's revision moved. Returns the revision.
    pub async fn refresh(&self, store: &Store) -> Result<i64, StoreError> {
        let rev = store.deny_list_revision().await?;
        if rev == self.current().revision && rev != 0 {
            return Ok(rev);
        }
        let ids: Vec<String> = store
            .list_quarantined()
            .await?
            .into_iter()
            .map(|q| q.spiffe_id)
            .collect();
        self.metrics.deny_list_revision.set(rev);
        self.tx.send_replace(Arc::new(DenyList {
            revision: rev,
            ids: Arc::new(ids),
        }));
        Ok(rev)
    }

    pub async fn poll(self, store: Store, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.refresh(&store).await {
                tracing::warn!(error = %e, "deny-list refresh failed; agents keep the last list");
            }
        }
    }
}
