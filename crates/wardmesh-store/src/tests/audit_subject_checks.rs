//! Reading the audit log by subject and by a set of kinds, as the accounting of
//! disclosures does; run on both backends (see `tests.rs`).

use super::audit_checks::store_seqs;
use super::fixtures::{T0, at, event};
use crate::{AuditQuery, Event, Store};

/// Subject (exact), a set of kinds, and a time window, as the accounting of disclosures
/// reads them: one patient's entries of some kinds, paged by seq with an exact `limit`.
pub(super) async fn check_audit_by_subject(store: Store) {
    const P: &str = "a1b2";
    // (kind, subject) for seq 1..=10, at T0 + seq.
    let rows = [
        ("phi.access", P),
        ("phi.access", "a1b2c3"), // a longer subject with P as prefix: no match
        ("authz.deny", P),
        ("audit.disclosures.read", P),
        ("breakglass.use", P),
        ("phi.access", "A1B2"), // case matters
        ("operator.api", P),
        ("phi.access", P),
        ("identity.issued", "spiffe://wardmesh.local/ns/a/sa/s9"),
        ("breakglass.use", P),
    ];
    let events: Vec<Event> = rows
        .iter()
        .zip(1..)
        .map(|((kind, subject), n)| Event {
            kind: (*kind).to_owned(),
            subject: (*subject).to_owned(),
            ..event(n)
        })
        .collect();
    store.append_events(&events).await.unwrap();
    let released = || vec!["phi.access".to_owned(), "breakglass.use".to_owned()];
    let of = |kinds: Vec<String>| AuditQuery {
        subject: Some(P.to_owned()),
        kinds,
        limit: 100,
        ..AuditQuery::default()
    };
    assert_eq!(
        store_seqs(&store, &of(Vec::new())).await,
        [1, 3, 4, 5, 7, 8, 10],
        "no kinds: every kind"
    );
    assert_eq!(store_seqs(&store, &of(released())).await, [1, 5, 8, 10]);
    let mut with_denied = released();
    with_denied.push("authz.deny".to_owned());
    assert_eq!(
        store_seqs(&store, &of(with_denied.clone())).await,
        [1, 3, 5, 8, 10]
    );
    assert_eq!(
        store_seqs(
            &store,
            &AuditQuery {
                subject: Some("A1B2".to_owned()),
                ..of(Vec::new())
            }
        )
        .await,
        [6]
    );
    assert!(
        store_seqs(
            &store,
            &AuditQuery {
                subject: Some("a1b".to_owned()),
                ..of(Vec::new())
            }
        )
        .await
        .is_empty(),
        "exact, not a prefix"
    );
    // A time window: since inclusive, until exclusive.
    assert_eq!(
        store_seqs(
            &store,
            &AuditQuery {
                since: Some(at(T0 + 3)),
                until: Some(at(T0 + 8)),
                ..of(with_denied.clone())
            }
        )
        .await,
        [3, 5]
    );
    // Combined with the single-kind filter, both must match.
    assert_eq!(
        store_seqs(
            &store,
            &AuditQuery {
                kind: Some("breakglass.*".to_owned()),
                ..of(released())
            }
        )
        .await,
        [5, 10]
    );
    // Paging: `limit` counts matches only, so a short page is the last.
    let mut pages = Vec::new();
    let mut after = 0;
    loop {
        let page = store_seqs(
            &store,
            &AuditQuery {
                after,
                limit: 2,
                ..of(released())
            },
        )
        .await;
        let Some(&last) = page.last() else { break };
        after = last;
        let short = page.len() < 2;
        pages.push(page);
        if short {
            break;
        }
    }
    assert_eq!(pages, [vec![1, 5], vec![8, 10]]);
    // The newest matches, still ascending.
    assert_eq!(
        store_seqs(
            &store,
            &AuditQuery {
                limit: 3,
                newest: true,
                ..of(with_denied)
            }
        )
        .await,
        [5, 8, 10]
    );
    // The whole entry comes back, detail included.
    let e = store
        .audit_entries(&of(released()))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        (e.seq, e.kind.as_str(), e.subject.as_str()),
        (1, "phi.access", P)
    );
    assert_eq!(e.detail, event(1).detail);
}
