//! The quarantine guard: an established connection ends as soon as its peer lands on
//! the deny-list, not only the next one (a quarantined workload must lose access within
//! seconds, and pooled connections live for minutes).

use std::sync::Arc;

use tokio::sync::watch;
use wardmesh_identity::SpiffeId;

use crate::identity::DenyList;

/// Resolves once `peer` is on the deny-list (immediately if it already is). Never
/// resolves when the publisher is gone: the last list stays in force (fail static).
pub(crate) async fn quarantined(mut deny: watch::Receiver<Arc<DenyList>>, peer: &SpiffeId) {
    loop {
        if deny.borrow_and_update().contains(peer) {
            return;
        }
        if deny.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::*;

    fn list(rev: i64, ids: &[&SpiffeId]) -> Arc<DenyList> {
        Arc::new(DenyList {
            revision: Some(rev),
            ids: ids.iter().map(|i| (*i).clone()).collect::<HashSet<_>>(),
        })
    }

    #[tokio::test]
    async fn resolves_when_the_peer_is_added_and_not_before() {
        let peer = SpiffeId::parse("spiffe://wardmesh.local/ns/a/sa/peer").unwrap();
        let other = SpiffeId::parse("spiffe://wardmesh.local/ns/a/sa/other").unwrap();
        let (tx, rx) = watch::channel(list(1, &[]));
        let guard = tokio::spawn({
            let peer = peer.clone();
            async move { quarantined(rx, &peer).await }
        });
        tx.send_replace(list(2, &[&other]));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !guard.is_finished(),
            "another id does not end the connection"
        );
        tx.send_replace(list(3, &[&other, &peer]));
        tokio::time::timeout(Duration::from_secs(1), guard)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn already_listed_resolves_at_once_and_a_gone_publisher_never_does() {
        let peer = SpiffeId::parse("spiffe://wardmesh.local/ns/a/sa/peer").unwrap();
        let (_tx, rx) = watch::channel(list(1, &[&peer]));
        quarantined(rx, &peer).await;
        let (tx, rx) = watch::channel(list(1, &[]));
        drop(tx);
        let r = tokio::time::timeout(Duration::from_millis(50), quarantined(rx, &peer)).await;
        assert!(r.is_err());
    }
}
