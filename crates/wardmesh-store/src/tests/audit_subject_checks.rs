//! Reading the audit log by subject and by a set of kinds, as the accounting of
//! disclosures does; run on both backends (see `tests.rs`).

use super::audit_checks::{checkpoint_at, head_at, store_seqs};
use super::fixtures::{T0, at, event};
use crate::{AuditQuery, Event, Store, SubjectLookupCheck};

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

/// One subject's entries stay exact however appends fall: batches of every size (SQLite
/// seals runs of 4 entries in unit tests, so these cross run edges inside a batch, at its
/// end and several at once), newest-first pages, and a prune whose cut lands inside a run.
pub(super) async fn check_audit_by_subject_across_appends_and_prune(store: Store) {
    // Entry n is about patient "p{n % 3}".
    let of = |n: i64| Event {
        kind: "phi.access".to_owned(),
        subject: format!("p{}", n % 3),
        ..event(n)
    };
    let mut n = 0;
    for size in [1, 3, 4, 9, 2, 1, 5] {
        let batch: Vec<Event> = (n + 1..=n + size).map(of).collect();
        store.append_events(&batch).await.unwrap();
        n += size;
    }
    assert_eq!(n, 25);
    let subject = |p: &str, after: i64, limit: u32, newest: bool| AuditQuery {
        subject: Some(p.to_owned()),
        after,
        limit,
        newest,
        ..AuditQuery::default()
    };
    let expect =
        |r: i64, from: i64, n: i64| (from..=n).filter(|s| s % 3 == r).collect::<Vec<i64>>();
    for (r, p) in ["p0", "p1", "p2"].iter().enumerate() {
        let r = r as i64;
        assert_eq!(
            store_seqs(&store, &subject(p, 0, 100, false)).await,
            expect(r, 1, n)
        );
        // Paged by 2, ascending: the concatenation is the whole list.
        let mut all: Vec<i64> = Vec::new();
        let mut after = 0;
        loop {
            let page = store_seqs(&store, &subject(p, after, 2, false)).await;
            let Some(&last) = page.last() else { break };
            all.extend(&page);
            after = last;
        }
        assert_eq!(all, expect(r, 1, n), "paged {p}");
        // The newest three, ascending.
        let newest = expect(r, 1, n).split_off(expect(r, 1, n).len() - 3);
        assert_eq!(store_seqs(&store, &subject(p, 0, 3, true)).await, newest);
    }

    // Prune through seq 10 (inside the third run of 4), then append more.
    let cp = store
        .append_checkpoint(&checkpoint_at(&head_at(&store, 10).await))
        .await
        .unwrap();
    let out = store.prune_audit(cp.id, at(T0 + 5000)).await.unwrap();
    assert_eq!(out.entries_removed, 10);
    for r in 0..3 {
        let p = format!("p{r}");
        assert_eq!(
            store_seqs(&store, &subject(&p, 0, 100, false)).await,
            expect(r, 11, n),
            "{p} after the prune"
        );
    }
    let batch: Vec<Event> = (26..=33).map(of).collect();
    store.append_events(&batch).await.unwrap();
    let n = 33;
    for r in 0..3 {
        let p = format!("p{r}");
        assert_eq!(
            store_seqs(&store, &subject(&p, 0, 100, false)).await,
            expect(r, 11, n),
            "{p} after appending past the prune"
        );
    }
    assert!(
        store_seqs(&store, &subject("p3", 0, 100, false))
            .await
            .is_empty()
    );
    // Nothing is missing from the lookup after the prune (SQLite checks its runs from the
    // anchor on; PostgreSQL's is an index of the database).
    let expected = match store.backend_name() {
        "sqlite" => SubjectLookupCheck::Complete,
        _ => SubjectLookupCheck::DatabaseIndex,
    };
    assert_eq!(
        store
            .first_entry_missing_from_subject_lookup()
            .await
            .unwrap(),
        expected
    );
}
