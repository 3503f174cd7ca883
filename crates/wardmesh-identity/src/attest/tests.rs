//! Attestation tests: projected service-account tokens signed with real keys (ES256 from
//! rcgen/ring, RS256 from the openssl CLI, EdDSA) and verified against a JWKS, as the API
//! server would publish it; join tokens.

use jsonwebtoken::{EncodingKey, Header};
use rcgen::KeyPair;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::*;
use crate::testutil::{openssl, stderr, stdout};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// A signing key and the JWK that publishes it.
struct SigningKey {
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

fn es256(kid: &str) -> SigningKey {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p256");
    let point = key.public_key_raw(); // 0x04 || x || y
    assert_eq!(point.len(), 65);
    SigningKey {
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("ec pem"),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..]),
        }),
    }
}

fn eddsa(kid: &str) -> SigningKey {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
    SigningKey {
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_pem(key.serialize_pem().as_bytes()).expect("ed pem"),
        // No "alg": the verifier infers EdDSA from the key type.
        jwk: json!({
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "kid": kid,
            "x": b64(key.public_key_raw()),
        }),
    }
}

/// RS256, the Kubernetes default, with a key from `openssl genpkey`.
fn rs256(kid: &str) -> SigningKey {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = openssl(
        tmp.path(),
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "sa.key",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = openssl(tmp.path(), &["rsa", "-in", "sa.key", "-noout", "-modulus"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let modulus = stdout(&out);
    let n = hex::decode(modulus.trim().trim_start_matches("Modulus=")).expect("hex modulus");
    let pem = std::fs::read(tmp.path().join("sa.key")).expect("key");
    SigningKey {
        alg: Algorithm::RS256,
        encoding: EncodingKey::from_rsa_pem(&pem).expect("rsa pem"),
        jwk: json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": b64(&n), "e": "AQAB",
        }),
    }
}

fn jwks(keys: &[&SigningKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

fn verifier(keys: &[&SigningKey]) -> SaTokenVerifier {
    SaTokenVerifier::new(ISSUER, &jwks(keys), TrustDomain::default()).expect("verifier")
}

/// The claims of a projected token as the kubelet requests it for a pod.
fn claims(ns: &str, sa: &str) -> Value {
    let now = unix_now();
    json!({
        "aud": ["wardmesh"],
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "iss": ISSUER,
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "kubernetes.io": {
            "namespace": ns,
            "serviceaccount": { "name": sa, "uid": "5b2e8f4e-8c2c-4a43-9d3b-0d6a3c1e2f10" },
            "pod": { "name": format!("{sa}-7d9f8c-x2x4q"), "uid": "a1b2c3d4-0000-4000-8000-000000000001" },
        },
    })
}

fn sign(key: &SigningKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key.encoding).expect("sign token")
}

fn edit(mut claims: Value, f: impl FnOnce(&mut Value)) -> Value {
    f(&mut claims);
    claims
}

fn expected(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://wardmesh.local/ns/{ns}/sa/{sa}")).expect("id")
}

#[test]
fn valid_tokens_prove_their_service_account() {
    let es = es256("es-1");
    let ed = eddsa("ed-1");
    let v = verifier(&[&es, &ed]);
    let token = sign(&es, Some("es-1"), &claims("clinic", "notes-api"));
    assert_eq!(v.verify(&token), Ok(expected("clinic", "notes-api")));

    // Surrounding data the kubelet adds changes nothing; the ID comes from the claims.
    let token = sign(&ed, Some("ed-1"), &claims("billing", "invoice-worker"));
    assert_eq!(v.verify(&token), Ok(expected("billing", "invoice-worker")));

    // Without a kid, every key of the token's algorithm is tried.
    let token = sign(&es, None, &claims("clinic", "notes-api"));
    assert_eq!(v.verify(&token), Ok(expected("clinic", "notes-api")));

    // Several audiences, one of them ours.
    let token = sign(
        &es,
        Some("es-1"),
        &edit(claims("clinic", "notes-api"), |c| {
            c["aud"] = json!(["https://kubernetes.default.svc", "wardmesh"]);
        }),
    );
    assert_eq!(v.verify(&token), Ok(expected("clinic", "notes-api")));

    // A custom trust domain flows into the ID.
    let td = TrustDomain::new("prod.example").expect("td");
    let v = SaTokenVerifier::new(ISSUER, &jwks(&[&es]), td).expect("verifier");
    let token = sign(&es, Some("es-1"), &claims("clinic", "notes-api"));
    assert_eq!(
        v.verify(&token).expect("valid").to_string(),
        "spiffe://prod.example/ns/clinic/sa/notes-api"
    );
}

#[test]
fn rs256_tokens_from_an_openssl_key_verify() {
    let rs = rs256("rsa-2024");
    let es = es256("es-1");
    let v = verifier(&[&es, &rs]);
    let token = sign(&rs, Some("rsa-2024"), &claims("clinic", "notes-api"));
    assert_eq!(v.verify(&token), Ok(expected("clinic", "notes-api")));
    // RS256 token claiming the EC key's kid: no RS256 key by that id.
    let token = sign(&rs, Some("es-1"), &claims("clinic", "notes-api"));
    assert_eq!(
        v.verify(&token),
        Err(AttestError::UnknownKey("es-1".into()))
    );
}

#[test]
fn expired_and_premature_tokens_are_refused() {
    let es = es256("k1");
    let v = verifier(&[&es]);
    let now = unix_now();
    let expired = edit(claims("clinic", "notes-api"), |c| {
        c["iat"] = json!(now - 7200);
        c["nbf"] = json!(now - 7200);
        c["exp"] = json!(now - 3600);
    });
    assert_eq!(
        v.verify(&sign(&es, Some("k1"), &expired)),
        Err(AttestError::Expired)
    );

    // Small clock skew is tolerated…
    let just_expired = edit(claims("clinic", "notes-api"), |c| c["exp"] = json!(now - 5));
    assert!(v.verify(&sign(&es, Some("k1"), &just_expired)).is_ok());

    // …a token from the future is not.
    let future = edit(claims("clinic", "notes-api"), |c| {
        c["nbf"] = json!(now + 3600);
        c["exp"] = json!(now + 7200);
    });
    assert_eq!(
        v.verify(&sign(&es, Some("k1"), &future)),
        Err(AttestError::NotYetValid)
    );

    let no_exp = edit(claims("clinic", "notes-api"), |c| {
        c.as_object_mut().expect("object").remove("exp");
    });
    assert_eq!(
        v.verify(&sign(&es, Some("k1"), &no_exp)),
        Err(AttestError::MissingClaims)
    );
}

#[test]
fn wrong_audience_or_issuer_is_refused() {
    let es = es256("k1");
    let v = verifier(&[&es]);
    for aud in [json!(["https://kubernetes.default.svc"]), json!("vault")] {
        let c = edit(claims("clinic", "notes-api"), |c| c["aud"] = aud);
        assert_eq!(
            v.verify(&sign(&es, Some("k1"), &c)),
            Err(AttestError::Audience)
        );
    }
    let no_aud = edit(claims("clinic", "notes-api"), |c| {
        c.as_object_mut().expect("object").remove("aud");
    });
    assert_eq!(
        v.verify(&sign(&es, Some("k1"), &no_aud)),
        Err(AttestError::MissingClaims)
    );

    let c = edit(claims("clinic", "notes-api"), |c| {
        c["iss"] = json!("https://evil.example");
    });
    assert_eq!(
        v.verify(&sign(&es, Some("k1"), &c)),
        Err(AttestError::Issuer(ISSUER.into()))
    );
}

#[test]
fn tokens_from_unknown_keys_are_refused() {
    let published = es256("k1");
    let attacker = es256("k1");
    let v = verifier(&[&published]);
    let c = claims("clinic", "notes-api");

    assert_eq!(
        v.verify(&sign(&attacker, Some("k-unknown"), &c)),
        Err(AttestError::UnknownKey("k-unknown".into()))
    );
    assert_eq!(
        v.verify(&sign(&attacker, Some("k1"), &c)),
        Err(AttestError::Signature)
    );
    assert_eq!(
        v.verify(&sign(&attacker, None, &c)),
        Err(AttestError::Signature)
    );
    // An EdDSA token when only ES256 keys are published.
    let ed = eddsa("k1");
    assert_eq!(
        v.verify(&sign(&ed, Some("k1"), &c)),
        Err(AttestError::UnknownKey("k1".into()))
    );
}

#[test]
fn tampered_tokens_are_refused() {
    let es = es256("k1");
    let v = verifier(&[&es]);
    let token = sign(&es, Some("k1"), &claims("clinic", "notes-api"));
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);

    // Claims swapped for another service account's, signature kept.
    let forged_claims = b64(claims("kube-system", "admin").to_string().as_bytes());
    let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    assert_eq!(v.verify(&forged), Err(AttestError::Signature));

    // Signature stripped.
    let stripped = format!("{}.{}.", parts[0], parts[1]);
    assert!(v.verify(&stripped).is_err());
}

#[test]
fn unsigned_and_symmetric_tokens_are_refused() {
    let es = es256("k1");
    let v = verifier(&[&es]);
    let payload = b64(claims("clinic", "notes-api").to_string().as_bytes());

    // alg "none": the classic bypass, with and without an empty signature.
    let none = format!("eyJhbGciOiJub25lIn0.{payload}.");
    assert_eq!(v.verify(&none), Err(AttestError::Algorithm("none".into())));
    let none_typ = format!(
        "{}.{payload}.",
        b64(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#)
    );
    assert_eq!(
        v.verify(&none_typ),
        Err(AttestError::Algorithm("none".into()))
    );

    // HS256 keyed with the published public key (algorithm confusion) or anything else.
    let point = es.jwk["x"].as_str().expect("x").as_bytes().to_vec();
    for secret in [point, b"shared-secret".to_vec()] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let token = jsonwebtoken::encode(
            &header,
            &claims("clinic", "notes-api"),
            &EncodingKey::from_secret(&secret),
        )
        .expect("hs256");
        assert_eq!(
            v.verify(&token),
            Err(AttestError::Algorithm("HS256".into()))
        );
    }

    // Other known but unaccepted algorithms are named too.
    let rs512 = format!("{}.{payload}.AAAA", b64(br#"{"alg":"RS512","kid":"k1"}"#));
    assert_eq!(
        v.verify(&rs512),
        Err(AttestError::Algorithm("RS512".into()))
    );
}

#[test]
fn claims_must_agree_and_name_a_service_account() {
    let es = es256("k1");
    let v = verifier(&[&es]);

    // sub says one service account, kubernetes.io another.
    let c = edit(claims("clinic", "notes-api"), |c| {
        c["sub"] = json!("system:serviceaccount:kube-system:admin");
    });
    assert_eq!(
        v.verify(&sign(&es, Some("k1"), &c)),
        Err(AttestError::InconsistentClaims {
            sub: "system:serviceaccount:kube-system:admin".into()
        })
    );
    let c = edit(claims("clinic", "notes-api"), |c| {
        c["kubernetes.io"]["namespace"] = json!("kube-system");
    });
    assert!(matches!(
        v.verify(&sign(&es, Some("k1"), &c)),
        Err(AttestError::InconsistentClaims { .. })
    ));

    // A plain OIDC token of the same issuer, without the kubernetes.io claims.
    let c = edit(claims("clinic", "notes-api"), |c| {
        c.as_object_mut().expect("object").remove("kubernetes.io");
    });
    assert_eq!(
        v.verify(&sign(&es, Some("k1"), &c)),
        Err(AttestError::MissingClaims)
    );
    let c = edit(claims("clinic", "notes-api"), |c| {
        c["kubernetes.io"]
            .as_object_mut()
            .expect("object")
            .remove("serviceaccount");
    });
    assert_eq!(
        v.verify(&sign(&es, Some("k1"), &c)),
        Err(AttestError::MissingClaims)
    );
    let c = edit(claims("clinic", "notes-api"), |c| {
        c.as_object_mut().expect("object").remove("sub");
    });
    assert_eq!(
        v.verify(&sign(&es, Some("k1"), &c)),
        Err(AttestError::MissingClaims)
    );

    // Consistent, but not a valid SPIFFE path segment.
    for (ns, sa) in [("a/b", "sa"), ("ns", "sa b"), ("ns", ".."), ("", "sa")] {
        let c = claims(ns, sa);
        assert_eq!(
            v.verify(&sign(&es, Some("k1"), &c)),
            Err(AttestError::BadName),
            "{ns:?}/{sa:?}"
        );
    }
}

#[test]
fn garbage_and_oversize_tokens_are_refused() {
    let es = es256("k1");
    let v = verifier(&[&es]);
    for junk in [
        "",
        "garbage",
        "a.b",
        "a.b.c",
        "....",
        "eyJhbGciOiJFUzI1NiJ9.%%%.xx",
    ] {
        assert!(
            matches!(v.verify(junk), Err(AttestError::Malformed(_))),
            "{junk:?}: {:?}",
            v.verify(junk)
        );
    }
    let huge = format!(
        "{}.{}.sig",
        b64(br#"{"alg":"ES256","kid":"k1"}"#),
        "A".repeat(MAX_TOKEN_BYTES)
    );
    assert_eq!(v.verify(&huge), Err(AttestError::TooLarge));

    // A real token padded with claims past the limit is refused before parsing.
    let padded = edit(claims("clinic", "notes-api"), |c| {
        c["padding"] = json!("x".repeat(MAX_TOKEN_BYTES));
    });
    assert_eq!(
        v.verify(&sign(&es, Some("k1"), &padded)),
        Err(AttestError::TooLarge)
    );
}

#[test]
fn bad_jwks_are_refused() {
    let bad = |jwks: &str| SaTokenVerifier::new(ISSUER, jwks, TrustDomain::default());
    assert!(matches!(bad("not json"), Err(AttestError::BadJwks(_))));
    assert_eq!(
        bad(r#"{"keys":[]}"#).unwrap_err(),
        AttestError::BadJwks("no keys".into())
    );
    // A P-384 key: not an algorithm we accept.
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("p384");
    let point = p384.public_key_raw();
    let jwk = json!({"keys": [{
        "kty": "EC", "crv": "P-384", "kid": "k384",
        "x": b64(&point[1..49]), "y": b64(&point[49..]),
    }]});
    assert!(matches!(
        bad(&jwk.to_string()),
        Err(AttestError::BadJwks(_))
    ));
    let with_alg = json!({"keys": [{
        "kty": "EC", "crv": "P-384", "kid": "k384", "alg": "ES384",
        "x": b64(&point[1..49]), "y": b64(&point[49..]),
    }]});
    assert!(matches!(
        bad(&with_alg.to_string()),
        Err(AttestError::BadJwks(_))
    ));
    // A symmetric key has no place in an issuer's public key set.
    let oct = json!({"keys": [{"kty": "oct", "k": b64(b"secret"), "kid": "h"}]});
    assert!(matches!(
        bad(&oct.to_string()),
        Err(AttestError::BadJwks(_))
    ));
}

#[test]
fn join_tokens_are_random_and_hashed() {
    let (a, ha) = new_join_token();
    let (b, hb) = new_join_token();
    assert_ne!(a, b);
    assert_ne!(ha, hb);
    assert_eq!(hash_secret(&a), ha);
    assert_eq!(
        hash_secret(&format!("  {a}\n")),
        ha,
        "pasted with whitespace"
    );
    assert_eq!(ha.len(), 64);
    assert!(ha.bytes().all(|c| c.is_ascii_hexdigit()));
    assert!(a.starts_with("wmjt_"));
    assert!(looks_like_join_token(&a));
    assert!(!looks_like_join_token("wmjt_short"));
    assert!(!looks_like_join_token("hello"));
    assert!(!looks_like_join_token(&a[5..]), "prefix required");
    assert!(
        !looks_like_join_token(&format!("{a}AAAA")),
        "exactly 32 bytes"
    );
    assert!(!ha.contains(&a[5..]));
}
