//! The verifier on logs built in memory: a clean log, each kind of damage, pruned logs.

use serde_json::json;
use time::OffsetDateTime;
use wardmesh_store::AuditEntry;
use wardmesh_store::chain::{GENESIS_HASH, entry_hash};

use super::*;
use crate::audit::AuditSigner;
use crate::audit::checkpoint::checkpoint_message;

fn log(n: i64) -> Vec<AuditEntry> {
    let mut prev = GENESIS_HASH.to_owned();
    (1..=n)
        .map(|seq| {
            let mut e = AuditEntry {
                seq,
                at: OffsetDateTime::from_unix_timestamp(1_750_000_000 + seq).unwrap(),
                kind: "identity.issued".to_owned(),
                actor: "join_token".to_owned(),
                subject: format!("spiffe://wardmesh.local/ns/a/sa/s{seq}"),
                detail: json!({ "serial": format!("{seq:04x}") }),
                prev_hash: prev.clone(),
                hash: String::new(),
            };
            e.hash = entry_hash(&e).unwrap();
            prev = e.hash.clone();
            e
        })
        .collect()
}

fn sign(signer: &AuditSigner, id: i64, e: &AuditEntry) -> Checkpoint {
    let at = OffsetDateTime::from_unix_timestamp(1_760_000_000 + id).unwrap();
    let key_id = signer.public().key_id();
    let msg = checkpoint_message(e.seq, &e.hash, wardmesh_store::chain::at_us(at), &key_id);
    Checkpoint {
        id,
        seq: e.seq,
        head_hash: e.hash.clone(),
        at,
        key_id,
        signature: signer.sign(&msg),
    }
}

fn run(
    signer: &AuditSigner,
    anchor: Option<Checkpoint>,
    cps: Vec<Checkpoint>,
    entries: &[AuditEntry],
) -> VerifyReport {
    let mut v = AuditVerifier::new(*signer.public(), anchor, cps);
    for e in entries {
        if !v.push(e) {
            break;
        }
    }
    v.finish()
}

#[test]
fn a_clean_log_verifies_with_counts() {
    let signer = AuditSigner::generate().unwrap();
    let entries = log(10);
    let cps = vec![sign(&signer, 1, &entries[3]), sign(&signer, 2, &entries[7])];
    let r = run(&signer, None, cps, &entries);
    assert!(r.ok, "{r:?}");
    assert_eq!(
        (r.entries, r.first_seq, r.last_seq, r.checkpoints_verified),
        (10, Some(1), Some(10), 2)
    );
    assert_eq!((r.last_checkpoint_seq, r.unsigned_entries), (Some(8), 2));
    assert!(
        r.message
            .starts_with("audit log OK: 10 entries (seq 1..10)"),
        "{}",
        r.message
    );
    assert!(r.message.contains("newest 2 entries"), "{}", r.message);

    let empty = run(&signer, None, vec![], &[]);
    assert!(
        empty.ok && empty.entries == 0 && empty.last_seq.is_none(),
        "{empty:?}"
    );
}

#[test]
fn each_kind_of_damage_is_named_at_the_first_bad_entry() {
    let signer = AuditSigner::generate().unwrap();
    let good = log(10);
    let cps = || vec![sign(&signer, 1, &good[7])];

    let mut edited = good.clone();
    edited[4].detail = json!({ "serial": "ffff" });
    let r = run(&signer, None, cps(), &edited);
    assert_eq!(r.damage, Some(Damage::HashMismatch { seq: 5 }));
    assert!(
        !r.ok && r.message.contains("hash mismatch at seq 5"),
        "{}",
        r.message
    );

    let mut deleted = good.clone();
    deleted.remove(4);
    let r = run(&signer, None, cps(), &deleted);
    assert_eq!(
        r.damage,
        Some(Damage::Gap {
            after_seq: 4,
            next_seq: 6
        })
    );
    assert!(r.message.contains("gap after seq 4"), "{}", r.message);

    let mut swapped = good.clone();
    swapped.swap(2, 3);
    (swapped[2].seq, swapped[3].seq) = (3, 4);
    let r = run(&signer, None, cps(), &swapped);
    assert_eq!(r.damage, Some(Damage::PrevHashMismatch { seq: 3 }));

    let mut forged = cps();
    forged[0].signature = signer.sign(b"something else");
    let r = run(&signer, None, forged, &good);
    assert!(
        matches!(&r.damage, Some(Damage::SignatureInvalid { seq: 8, checkpoint_id: 1, reason }) if reason.contains("does not verify")),
        "{r:?}"
    );

    let other = AuditSigner::generate().unwrap();
    let r = run(&signer, None, vec![sign(&other, 1, &good[7])], &good);
    assert!(
        matches!(&r.damage, Some(Damage::SignatureInvalid { reason, .. }) if reason.contains("not the pinned key")),
        "{r:?}"
    );

    // Everything re-hashed after an edit: the chain holds, the signed checkpoint does not.
    let mut rewritten = good.clone();
    rewritten[1].detail = json!({ "serial": "0000" });
    let mut prev = GENESIS_HASH.to_owned();
    for e in &mut rewritten {
        e.prev_hash = prev;
        e.hash = entry_hash(e).unwrap();
        prev = e.hash.clone();
    }
    let r = run(&signer, None, cps(), &rewritten);
    assert_eq!(
        r.damage,
        Some(Damage::CheckpointMismatch {
            seq: 8,
            checkpoint_id: 1
        })
    );

    let r = run(&signer, None, cps(), &good[..6]);
    assert_eq!(
        r.damage,
        Some(Damage::Truncated {
            checkpoint_seq: 8,
            last_seq: 6
        })
    );
    assert!(
        r.message.contains("entries after seq 6 were deleted"),
        "{}",
        r.message
    );
}

#[test]
fn a_pruned_log_verifies_from_its_signed_anchor() {
    let signer = AuditSigner::generate().unwrap();
    let good = log(10);
    let anchor = sign(&signer, 2, &good[5]);
    let cps = vec![
        sign(&signer, 1, &good[2]),
        anchor.clone(),
        sign(&signer, 3, &good[8]),
    ];
    let r = run(&signer, Some(anchor.clone()), cps.clone(), &good[6..]);
    assert!(r.ok, "{r:?}");
    assert_eq!(
        (r.anchor_seq, r.first_seq, r.entries),
        (Some(6), Some(7), 4)
    );
    assert_eq!(
        r.checkpoints_verified, 2,
        "the anchor's own checkpoint and seq 9"
    );

    // Entries missing right after the anchor.
    let r = run(&signer, Some(anchor.clone()), cps.clone(), &good[7..]);
    assert_eq!(
        r.damage,
        Some(Damage::Gap {
            after_seq: 6,
            next_seq: 8
        })
    );

    // A forged anchor hiding deleted entries.
    let mut fake = anchor;
    fake.seq = 7;
    fake.head_hash = good[6].hash.clone();
    let r = run(&signer, Some(fake), cps, &good[7..]);
    assert!(
        matches!(r.damage, Some(Damage::SignatureInvalid { seq: 7, .. })),
        "{r:?}"
    );
}

#[test]
fn a_missing_subject_lookup_entry_is_damage_after_the_chain() {
    let signer = AuditSigner::generate().unwrap();
    let entries = log(6);
    let verify = |entries: &[AuditEntry], missing: Option<i64>| {
        let mut v = AuditVerifier::new(*signer.public(), None, vec![]);
        for e in entries {
            if !v.push(e) {
                break;
            }
        }
        v.subject_lookup(missing);
        v.finish()
    };
    assert!(verify(&entries, None).ok);
    let r = verify(&entries, Some(4));
    assert_eq!(r.damage, Some(Damage::SubjectLookupMissing { seq: 4 }));
    assert!(
        !r.ok && r.message.contains("by-subject lookup"),
        "{}",
        r.message
    );
    // A broken chain is reported first: it is the earlier, graver finding.
    let mut edited = entries.clone();
    edited[1].actor = "someone-else".to_owned();
    let r = verify(&edited, Some(4));
    assert_eq!(r.damage, Some(Damage::HashMismatch { seq: 2 }));
}
