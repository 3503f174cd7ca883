//! The canonical form and hash are a contract with every verifier ever shipped: these
//! golden values were computed independently (Python's `json.dumps(sort_keys=True,
//! separators=(",", ":"), ensure_ascii=False)` and `hashlib.sha256`) and must never change.

use serde_json::json;
use time::OffsetDateTime;

use super::*;

fn sample_detail() -> Value {
    json!({
        "zeta": [1, 2.5, null, true],
        "alpha": { "b": "x", "a": "naïve \"q\"\n\u{1}\u{7f}/\u{1F512}" },
        "Upper": -7
    })
}

const GOLDEN_CANONICAL: &str = "{\"actor\":\"control-plane\",\"at_us\":1750000000123456,\
    \"detail\":{\"Upper\":-7,\"alpha\":{\"a\":\"naïve \\\"q\\\"\\n\\u0001\u{7f}/\u{1F512}\",\
    \"b\":\"x\"},\"zeta\":[1,2.5,null,true]},\"kind\":\"identity.issued\",\"seq\":3,\
    \"subject\":\"spiffe://wardmesh.local/ns/a/sa/b\"}";

fn sample_entry(seq: i64, prev_hash: &str) -> AuditEntry {
    AuditEntry {
        seq,
        at: OffsetDateTime::from_unix_timestamp_nanos(1_750_000_000_123_456_789).unwrap(),
        kind: "identity.issued".to_owned(),
        actor: "control-plane".to_owned(),
        subject: "spiffe://wardmesh.local/ns/a/sa/b".to_owned(),
        detail: sample_detail(),
        prev_hash: prev_hash.to_owned(),
        hash: String::new(),
    }
}

#[test]
fn canonical_form_is_sorted_compact_json() {
    let canonical = canonical_entry(
        3,
        1_750_000_000_123_456,
        "identity.issued",
        "control-plane",
        "spiffe://wardmesh.local/ns/a/sa/b",
        &sample_detail(),
    );
    assert_eq!(canonical, GOLDEN_CANONICAL);
    // Time is taken in microseconds, truncated towards the past.
    let entry = sample_entry(3, GENESIS_HASH);
    assert_eq!(at_us(entry.at), 1_750_000_000_123_456);
}

#[test]
fn top_level_strings_are_escaped_like_the_detail() {
    let canonical = canonical_entry(-1, 0, "k\"\\", "a\n\u{1}ü", "s/\u{7f}", &json!({}));
    assert_eq!(
        canonical,
        "{\"actor\":\"a\\n\\u0001ü\",\"at_us\":0,\"detail\":{},\"kind\":\"k\\\"\\\\\",\
         \"seq\":-1,\"subject\":\"s/\u{7f}\"}"
    );
}

#[test]
fn hash_covers_the_previous_hash_and_the_canonical_text() {
    assert_eq!(
        chain_hash(GENESIS_HASH, GOLDEN_CANONICAL).unwrap(),
        "2b7b1ecc10b0d4eaf5e4baa46cc8dc715c0bfb4d92e7717ba49a0068c93038ff"
    );
    let prev = "ab".repeat(32);
    assert_eq!(
        chain_hash(&prev, GOLDEN_CANONICAL).unwrap(),
        "3c55f1875663e46cd94e3032c4233ee4ac946c08b5aa6efa1a86da82cf19032e"
    );
    assert_eq!(
        entry_hash(&sample_entry(3, &prev)).unwrap(),
        "3c55f1875663e46cd94e3032c4233ee4ac946c08b5aa6efa1a86da82cf19032e"
    );
    for bad in ["", "00", &"zz".repeat(32), &"AB".repeat(32)] {
        assert_eq!(chain_hash(bad, GOLDEN_CANONICAL), None, "{bad:?}");
    }
}

#[test]
fn canonical_detail_is_independent_of_key_order_and_survives_a_round_trip() {
    let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":[{"q":1,"p":2}],"x":0.1}}"#).unwrap();
    let b: Value = serde_json::from_str(r#"{"a":{"x":0.1,"y":[{"p":2,"q":1}]},"b":1}"#).unwrap();
    assert_eq!(canonical_detail(&a), canonical_detail(&b));
    assert_eq!(
        canonical_detail(&a),
        r#"{"a":{"x":0.1,"y":[{"p":2,"q":1}]},"b":1}"#
    );
    // What the store keeps reads back to the same canonical text, floats included.
    for v in [
        json!(0.1 + 0.2),
        json!(-0.0),
        json!(1e300),
        json!(123_456_789.123_456_78),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(5e-324),
    ] {
        let text = canonical_detail(&v);
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(canonical_detail(&back), text, "{v}");
    }
}

/// A valid chain of `n` entries from the genesis.
fn chain(n: i64) -> Vec<AuditEntry> {
    let mut prev = GENESIS_HASH.to_owned();
    (1..=n)
        .map(|seq| {
            let mut e = sample_entry(seq, &prev);
            e.detail = json!({ "n": seq });
            e.hash = entry_hash(&e).unwrap();
            prev = e.hash.clone();
            e
        })
        .collect()
}

fn walk(start: Option<ChainHead>, entries: &[AuditEntry]) -> Result<u64, ChainBreak> {
    let mut w = ChainWalker::new(start);
    for e in entries {
        w.push(e)?;
    }
    Ok(w.checked())
}

#[test]
fn walker_accepts_a_valid_chain_and_names_the_first_break() {
    let good = chain(6);
    assert_eq!(walk(None, &good), Ok(6));

    let mut edited = good.clone();
    edited[2].detail = json!({ "n": 99 });
    let err = walk(None, &edited).unwrap_err();
    assert!(
        matches!(&err, ChainBreak::HashMismatch { seq: 3, stored, .. } if *stored == good[2].hash),
        "{err:?}"
    );
    assert!(err.to_string().contains("content edited"), "{err}");

    let mut deleted = good.clone();
    deleted.remove(3);
    let err = walk(None, &deleted).unwrap_err();
    assert_eq!(
        err,
        ChainBreak::Gap {
            after_seq: 3,
            next_seq: 5
        }
    );
    assert_eq!(err.seq(), 5);
    assert!(err.to_string().contains("seq 4 is missing"), "{err}");

    let mut swapped = good.clone();
    swapped.swap(1, 2);
    (swapped[1].seq, swapped[2].seq) = (2, 3);
    assert!(matches!(
        walk(None, &swapped),
        Err(ChainBreak::PrevHashMismatch { seq: 2, .. })
    ));

    let mut backwards = good.clone();
    backwards[4].seq = 2;
    assert_eq!(
        walk(None, &backwards),
        Err(ChainBreak::OutOfOrder {
            after_seq: 4,
            seq: 2
        })
    );

    // A log missing its first entries does not start at the genesis.
    assert_eq!(
        walk(None, &good[2..]),
        Err(ChainBreak::Gap {
            after_seq: 0,
            next_seq: 3
        })
    );
    // …but verifies from an anchor at the cut.
    let anchor = ChainHead {
        seq: 2,
        hash: good[1].hash.clone(),
    };
    assert_eq!(walk(Some(anchor.clone()), &good[2..]), Ok(4));
    let wrong_anchor = ChainHead {
        hash: good[0].hash.clone(),
        ..anchor
    };
    assert!(matches!(
        walk(Some(wrong_anchor), &good[2..]),
        Err(ChainBreak::PrevHashMismatch { seq: 3, .. })
    ));
}
