//! JWT validation with real keys: RS256 (a fixed test key, generated once with `openssl
//! genpkey`; RSA key generation is slow and needs a heavy crate), ES256 and EdDSA (fresh
//! from rcgen/ring). Tokens are signed with jsonwebtoken exactly as an IdP would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::refresh::retry_delay;
use super::*;

mod https;

const ISSUER: &str = "https://idp.clinic.example";
const AUDIENCE: &str = "notes-api";

/// Test-only RSA-2048 key (PKCS#8), never used anywhere else.
const RSA_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCSNw5yuq9SLuM5
eAg0+qlT64NdW4suaUFvti0mF7JxyX0A3XxQQ8/fTao+ARpPY512j4SGZl3GGfNr
MJ1bb2do9Pmtu6YxusfaEw6sbgkHtTZr2A3hYUqzpp5PhDW4DOpQH4+82lSvDjN8
Ro9n6mTGSpwfHmn2oecqUe8CHy90qo3kugyvlvlRF/i6xnzJCe66fBg+TdH2L7mO
N0zRKG08ATQHqbyrnCb70PbzM48gNq0aZWGbtiSDDgK+bb2occ2euDeffIwKESsc
mbe/UgZJQThfBcLzW/YYgTde7E5RjQxccAjVRa2yC0ZE4L4xKzkjDBpIg7AZv/rE
gifZ0ifrAgMBAAECggEAH2/9CEgBaC8ypemcAiAfBi8uKIWFUG5LJoTKAlW4BWUo
HmaA0xUxfbbKMtiz2nv1oEdNXERoRy7POq3SN5Wla1i40lT1b93UGJxeXE6wXFrn
H5rtqRbtI+FgSoKHtlH4k0+l7RoYeScZhM/7B4HLNyNVnA9DA0deV6gUNqWT44Zx
Ag+Dj/hOvToyeA1ytqCscbmnMbboz3DeT7KXTqvBBGJUaxVJ9KtmdZr8/ClyYElu
phZds3F8jx7z6WmK5pd5/KDEWeg6D1aWRGGI5nXsH5fEE6pCfz9psPj1UFV4a16j
lzMtb532D0Lxl9wxR3Oxc6CoK2sRYeHvvV+KcGncsQKBgQDKUUDvDEIzG4vrB0gr
EmefPFYe5OqAIIk/eFa0e8ZJmhdrJZxG/Z07dpmaosUy9T/Ll5GE6J9aaFMVZud0
u+NXvRY1u2kpk3KgnIRNrB95X7mdNyhcXQb++5Vl8BlpW4yM2KtyHKmWntZQ/Fxp
Ntzia+6HvaQrFbSO6bejGmZDyQKBgQC5AvVVrSTfG3Wj42vPhdjP5PBhiKiCt6AD
g2S/C0IiLTK2kANNo5RKt/ftPA6t9pvYFz0XxBcrwzUakpjv9GqM/RtUxw0wp9eA
8dpYpv6LSTPSr7K0MKrhjyW7NWZdj3/H/QEz2018FT3YQUWdYdgDxjX5qRmIThcO
MeZWKrIgEwKBgBZ65M4q/IgVPXzF+Fzg1Ka6247fPLcz5kwpIOk4/5VaC9QZ/71b
nMborLSj9WluGsKSetbbyikPgnvUTU+JOP+cwQUDZ/H4sjnqakD/KRghbMxtPozU
wVw/tB/5h7lPNNTJlnM9gBJ+X63r/JCsSerWt1BZ4A3xgXiHu6Hh4w8RAoGADAMM
KK7gKPggcC6Qzl1zUTQdA0gbILmJUxER1nGFrrBejYnWHRFUzHEbULTIgzTys1n2
5ncdxgKbjQkdkt68mEDKqHtv+Mu86ytIsN7Owf5TtgcgRCCwx4pCud/isIpjknlz
vYksg7ThWgwK2AgFPWF+GaKH/NiNGKfWu5t0Cy8CgYA4o09kQQgcSe6Xwb4HhD6C
l86Lf+PmoLyT8VqT45ilpbdXpNmAlPUpkZSsnL8bCO2gYz4cLC09y8Drk0SmPrn2
k+chsb7G+Ja9k91ie2tARBlBfFEZIfTl4FzpNXfc92UZOCgsvQs5jlnYOPQHo2oI
mkQF1QJte9BJWLixQwEuXg==
-----END PRIVATE KEY-----
";
/// Its modulus, base64url.
const RSA_N: &str = "kjcOcrqvUi7jOXgINPqpU-uDXVuLLmlBb7YtJheyccl9AN18UEPP302qPgEaT2Oddo-EhmZdxhnzazCdW29naPT5rbumMbrH2hMOrG4JB7U2a9gN4WFKs6aeT4Q1uAzqUB-PvNpUrw4zfEaPZ-pkxkqcHx5p9qHnKlHvAh8vdKqN5LoMr5b5URf4usZ8yQnuunwYPk3R9i-5jjdM0ShtPAE0B6m8q5wm-9D28zOPIDatGmVhm7Ykgw4Cvm29qHHNnrg3n3yMChErHJm3v1IGSUE4XwXC81v2GIE3XuxOUY0MXHAI1UWtsgtGROC-MSs5IwwaSIOwGb_6xIIn2dIn6w";

pub(super) struct TestKey {
    pub alg: Algorithm,
    pub kid: String,
    encoding: EncodingKey,
    pub jwk: Value,
}

pub(super) fn rs256(kid: &str) -> TestKey {
    TestKey {
        alg: Algorithm::RS256,
        kid: kid.into(),
        encoding: EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).unwrap(),
        jwk: json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": RSA_N, "e": "AQAB"}),
    }
}

pub(super) fn es256(kid: &str) -> TestKey {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = key.public_key_raw();
    TestKey {
        alg: Algorithm::ES256,
        kid: kid.into(),
        encoding: EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid,
                    "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..])}),
    }
}

pub(super) fn eddsa(kid: &str) -> TestKey {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    TestKey {
        alg: Algorithm::EdDSA,
        kid: kid.into(),
        encoding: EncodingKey::from_ed_pem(key.serialize_pem().as_bytes()).unwrap(),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": B64.encode(key.public_key_raw())}),
    }
}

pub(super) fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

pub(super) fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

pub(super) fn claims() -> Value {
    let t = now().unix_timestamp();
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "dr-ada",
        "iat": t - 10, "nbf": t - 10, "exp": t + 300,
        "roles": ["clinician"], "amr": ["pwd", "otp"],
    })
}

pub(super) fn sign(key: &TestKey, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    format!(
        "Bearer {}",
        jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
    )
}

fn edit(f: impl FnOnce(&mut Value)) -> Value {
    let mut c = claims();
    f(&mut c);
    c
}

/// A validator for ISSUER whose keys are `keys`, from a JWKS file.
fn validator(keys: &[&TestKey]) -> (JwtValidator, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(keys)).unwrap();
    let config = OidcConfig {
        issuers: vec![IssuerConfig::with_file(ISSUER, AUDIENCE, path)],
        ..OidcConfig::default()
    };
    (JwtValidator::new(&config).unwrap(), dir)
}

fn unsigned(header: &Value, claims: &Value, sig: &str) -> String {
    format!(
        "Bearer {}.{}.{sig}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    )
}

#[test]
fn valid_tokens_of_each_algorithm_give_the_policy_user() {
    let (rs, es, ed) = (rs256("rsa-1"), es256("ec-1"), eddsa("ed-1"));
    let (v, _dir) = validator(&[&rs, &es, &ed]);
    for key in [&rs, &es, &ed] {
        let user = v.validate(&sign(key, &claims()), now()).unwrap();
        assert_eq!(
            serde_json::to_value(&user).unwrap(),
            json!({"sub": "dr-ada", "roles": ["clinician"], "amr": ["pwd", "otp"],
                   "mfa": true, "iss": ISSUER}),
            "{:?}",
            key.alg
        );
    }
    // The scheme is case-insensitive and `aud` may be a list.
    let token = sign(&es, &edit(|c| c["aud"] = json!(["other", AUDIENCE])));
    let lower = token.replacen("Bearer", "bearer", 1);
    assert!(v.validate(&lower, now()).is_ok());
    // Without kid, the issuer's keys of the token's algorithm are tried.
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = None;
    let no_kid = jsonwebtoken::encode(&header, &claims(), &ed.encoding).unwrap();
    assert!(v.validate(&format!("Bearer {no_kid}"), now()).is_ok());
}

#[test]
fn bad_tokens_are_refused_with_a_stable_reason() {
    let (rs, es, ed) = (rs256("rsa-1"), es256("ec-1"), eddsa("ed-1"));
    let (v, _dir) = validator(&[&rs, &es]);
    let t = now().unix_timestamp();
    let impostor = es256("ec-1"); // same kid, other key
    let hs = EncodingKey::from_secret(b"a shared secret the attacker knows");
    let hs256 = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("ec-1".into());
        format!(
            "Bearer {}",
            jsonwebtoken::encode(&h, &claims(), &hs).unwrap()
        )
    };
    // RS256 header naming the EC key: the key's algorithm decides, not the token's.
    let confused = {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("ec-1".into());
        format!(
            "Bearer {}",
            jsonwebtoken::encode(&h, &claims(), &rs.encoding).unwrap()
        )
    };
    let good = sign(&es, &claims());
    let (gh, gp, gs) = {
        let raw = good.trim_start_matches("Bearer ");
        let p: Vec<&str> = raw.split('.').collect();
        (p[0].to_owned(), p[1].to_owned(), p[2].to_owned())
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong issuer",
            sign(&es, &edit(|c| c["iss"] = json!("https://evil.example"))),
            "unknown_issuer",
        ),
        (
            "wrong audience",
            sign(&es, &edit(|c| c["aud"] = json!("billing-api"))),
            "wrong_audience",
        ),
        (
            "no audience",
            sign(
                &es,
                &edit(|c| {
                    c.as_object_mut().unwrap().remove("aud");
                }),
            ),
            "missing_claim",
        ),
        (
            "expired",
            sign(&es, &edit(|c| c["exp"] = json!(t - 61))),
            "token_expired",
        ),
        (
            "not yet valid",
            sign(&es, &edit(|c| c["nbf"] = json!(t + 61))),
            "token_not_yet_valid",
        ),
        (
            "no exp",
            sign(
                &es,
                &edit(|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
            ),
            "missing_claim",
        ),
        (
            "no sub",
            sign(
                &es,
                &edit(|c| {
                    c.as_object_mut().unwrap().remove("sub");
                }),
            ),
            "missing_claim",
        ),
        (
            "roles not strings",
            sign(&es, &edit(|c| c["roles"] = json!([1, 2]))),
            "invalid_claim",
        ),
        (
            "alg none",
            unsigned(&json!({"alg": "none", "typ": "JWT"}), &claims(), ""),
            "alg_not_allowed",
        ),
        (
            "alg None",
            unsigned(&json!({"alg": "None"}), &claims(), ""),
            "alg_not_allowed",
        ),
        (
            "no alg",
            unsigned(&json!({"typ": "JWT"}), &claims(), "AAAA"),
            "alg_not_allowed",
        ),
        ("HS256 with a guessed secret", hs256, "alg_not_allowed"),
        ("RS256 header on an EC key", confused, "alg_not_allowed"),
        ("unknown kid", sign(&ed, &claims()), "unknown_key"),
        ("bad signature", sign(&impostor, &claims()), "bad_signature"),
        (
            "edited payload",
            format!(
                "Bearer {gh}.{}.{gs}",
                B64.encode(edit(|c| c["roles"] = json!(["admin"])).to_string())
            ),
            "bad_signature",
        ),
        (
            "crit header",
            unsigned(
                &json!({"alg": "ES256", "kid": "ec-1", "crit": ["exp"]}),
                &claims(),
                &gs,
            ),
            "malformed",
        ),
        ("two parts", format!("Bearer {gh}.{gp}"), "malformed"),
        ("four parts", format!("{good}.x"), "malformed"),
        (
            "header not base64",
            format!("Bearer !!.{gp}.{gs}"),
            "malformed",
        ),
        (
            "payload not an object",
            unsigned(&json!({"alg": "ES256", "kid": "ec-1"}), &json!([1]), &gs),
            "malformed",
        ),
        ("empty signature", format!("Bearer {gh}.{gp}."), "malformed"),
        ("basic auth", "Basic ZHI6cHc=".to_owned(), "malformed"),
        ("bearer without token", "Bearer ".to_owned(), "malformed"),
        (
            "oversized",
            sign(&es, &edit(|c| c["pad"] = json!("x".repeat(9000)))),
            "token_too_large",
        ),
    ];
    for (what, header, reason) in cases {
        let err = v.validate(&header, now()).expect_err(what);
        assert_eq!(err.reason(), reason, "{what}: {err}");
        assert!(JwtError::REASONS.contains(&err.reason()), "{what}");
        // Messages name the problem, never the token.
        let shown = err.to_string();
        assert!(
            !shown.contains(&gs) && !shown.contains(&gp),
            "{what}: {shown}"
        );
    }
}

#[test]
fn leeway_bounds_exp_and_nbf() {
    let es = es256("ec-1");
    let (v, _dir) = validator(&[&es]);
    let t = now().unix_timestamp();
    let token = sign(
        &es,
        &edit(|c| {
            c["exp"] = json!(t);
            c["nbf"] = json!(t);
        }),
    );
    let at = |secs: i64| v.validate(&token, now() + time::Duration::seconds(secs));
    assert!(at(0).is_ok());
    assert!(at(59).is_ok(), "within the default 60 s leeway after exp");
    assert_eq!(at(60), Err(JwtError::Expired));
    assert!(at(-60).is_ok(), "within the leeway before nbf");
    assert_eq!(at(-61), Err(JwtError::NotYetValid));
}

#[test]
fn mfa_roles_and_amr_are_read_as_documented() {
    let m = |amr: &[&str]| amr_means_mfa(&amr.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert!(m(&["pwd", "otp"]));
    assert!(m(&["mfa"]));
    assert!(m(&["hwk"]));
    assert!(!m(&["pwd"]));
    assert!(!m(&["pwd", "pin"]));
    assert!(!m(&["face"]));
    assert!(!m(&[]));

    let es = es256("ec-1");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[&es])).unwrap();
    let mut ic = IssuerConfig::with_file(ISSUER, AUDIENCE, &path);
    ic.roles_claim = "realm_access.roles".into();
    let v = JwtValidator::new(&OidcConfig {
        issuers: vec![ic],
        ..OidcConfig::default()
    })
    .unwrap();
    let user = v
        .validate(
            &sign(
                &es,
                &edit(|c| {
                    c["realm_access"] = json!({"roles": ["billing", "auditor"]});
                    c.as_object_mut().unwrap().remove("amr");
                }),
            ),
            now(),
        )
        .unwrap();
    assert_eq!(user.roles, ["billing", "auditor"]);
    assert!(user.amr.is_empty() && !user.mfa);
    // Roles as one space-separated string, as some IdPs write them.
    let user = v
        .validate(
            &sign(
                &es,
                &edit(|c| c["realm_access"] = json!({"roles": "billing auditor"})),
            ),
            now(),
        )
        .unwrap();
    assert_eq!(user.roles, ["billing", "auditor"]);
}

#[test]
fn jwks_keeps_usable_signing_keys_only() {
    let (rs, es) = (rs256("rsa-1"), es256("ec-1"));
    let doc = json!({"keys": [
        rs.jwk,
        es.jwk,
        {"kty": "RSA", "use": "enc", "kid": "enc", "n": RSA_N, "e": "AQAB"},
        {"kty": "RSA", "kid": "short", "n": B64.encode([0xc5u8; 128]), "e": "AQAB"},
        {"kty": "RSA", "alg": "PS256", "kid": "pss", "n": RSA_N, "e": "AQAB"},
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        {"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"},
        {"kty": "OKP", "crv": "X25519", "kid": "x25519", "x": B64.encode([1u8; 32])},
        {"kid": "no-kty"},
    ]});
    let set = KeySet::from_jwks(doc.to_string().as_bytes()).unwrap();
    assert_eq!(set.key_ids(), ["rsa-1", "ec-1"]);
    let none = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).to_string();
    assert_eq!(
        KeySet::from_jwks(none.as_bytes()).unwrap_err(),
        keys::JwksError::NoUsableKey(1)
    );
    assert!(KeySet::from_jwks(b"{\"keys\": 3}").is_err());
    assert!(KeySet::from_jwks(&vec![b' '; keys::MAX_JWKS_BYTES + 1]).is_err());
}

#[test]
fn config_reads_toml_and_names_the_bad_issuer() {
    let toml_text = r#"
        leeway_seconds = 30
        [[issuers]]
        issuer = "https://idp.clinic.example"
        audiences = ["notes-api"]
        jwks_url = "https://idp.clinic.example/.well-known/jwks.json"
        ca_file = "/etc/wardmesh/idp-ca.pem"
        roles_claim = "realm_access.roles"
    "#;
    let c: OidcConfig = toml::from_str(toml_text).unwrap();
    assert_eq!(c.leeway_seconds, 30);
    let ic = &c.issuers[0];
    assert_eq!((ic.refresh_seconds, ic.min_refresh_seconds), (300, 10));
    c.validate().unwrap();

    let bad = |f: &dyn Fn(&mut IssuerConfig), want: &str| {
        let mut c = c.clone();
        f(&mut c.issuers[0]);
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains(want) && err.contains("idp.clinic.example"),
            "{err}"
        );
    };
    bad(&|i| i.audiences.clear(), "audiences");
    bad(
        &|i| i.jwks_url = Some("http://idp.clinic.example/jwks".into()),
        "https",
    );
    bad(&|i| i.jwks_file = Some("/x".into()), "not both");
    bad(&|i| i.jwks_url = None, "set jwks_url or jwks_file");
    bad(&|i| i.min_refresh_seconds = 0, "min_refresh_seconds");
    let mut twice = c.clone();
    twice.issuers.push(c.issuers[0].clone());
    assert!(twice.validate().unwrap_err().to_string().contains("twice"));
    assert!(
        toml::from_str::<OidcConfig>("[[issuers]]\nissuer = \"x\"\naudience = [\"a\"]").is_err(),
        "typos are errors"
    );

    // A missing JWKS file is a startup error naming the file.
    let c = OidcConfig {
        issuers: vec![IssuerConfig::with_file(
            ISSUER,
            AUDIENCE,
            "/nonexistent/jwks.json",
        )],
        ..OidcConfig::default()
    };
    let err = JwtValidator::new(&c).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/jwks.json"), "{err}");
}

#[test]
fn reload_backs_off_after_failures_up_to_the_refresh_interval() {
    let mut ic = IssuerConfig::with_url(ISSUER, AUDIENCE, "https://idp.example/jwks");
    ic.refresh_seconds = 300;
    ic.min_refresh_seconds = 10;
    let secs = |f| retry_delay(f, &ic).as_secs();
    assert_eq!(secs(0), 300);
    assert_eq!(
        [secs(1), secs(2), secs(3), secs(5), secs(6)],
        [10, 20, 40, 160, 300]
    );
    assert_eq!(secs(u32::MAX), 300);
}

#[test]
fn a_verified_token_is_remembered_but_expiry_and_withdrawn_keys_still_count() {
    let (ed, other) = (eddsa("ed-1"), eddsa("ed-2"));
    let (v, _dir) = validator(&[&ed, &other]);
    let token = sign(&ed, &claims());
    assert!(v.validate(&token, now()).is_ok());
    assert!(v.validate(&token, now()).is_ok(), "the remembered token");
    // Claims are checked on every use: the remembered token expires like any other.
    let later = now() + time::Duration::seconds(3600);
    assert!(matches!(v.validate(&token, later), Err(JwtError::Expired)));
    // A tampered copy is not the remembered token.
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert!(v.validate(&forged, now()).is_err());
    // The IdP withdraws the key: the token that verified before is refused now.
    let issuer = &v.inner.issuers[0];
    issuer.install(KeySet::from_jwks(jwks(&[&other]).as_bytes()).unwrap());
    assert!(v.validate(&token, now()).is_err());
}
