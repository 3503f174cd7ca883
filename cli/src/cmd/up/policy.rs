//! The demo's policy and end users: the clinic Rego library (embedded in wardctl, so
//! `wardctl up` works from any directory) built into a bundle signed with a demo key
//! kept in the home directory, and a throwaway OIDC issuer whose tokens the demo
//! callers present (a clinician with MFA, a billing clerk).

use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use wardmesh_agent::jwt::{IssuerConfig, OidcConfig};
use wardmesh_agent::policy::{PolicyConfig, PolicyKeyConfig};
use wardmesh_control_plane::config::PolicyKey;
use wardmesh_identity::seal::write_private;
use wardmesh_policy::{SignatureAlgorithm, SigningKey, build_bundle, sign_bundle};

const CLINIC_REGO: &str = include_str!("../../../../policies/clinic/authz.rego");
const CLINIC_DATA: &str = include_str!("../../../../policies/clinic/data.json");
const KEY_ID: &str = "wardctl-up-demo";
const ISSUER: &str = "https://idp.demo.wardmesh.local";
const AUDIENCE: &str = "wardmesh";

pub struct DemoPolicy {
    dir: PathBuf,
    key: SigningKey,
    public_key: PathBuf,
    idp_key: Vec<u8>,
    jwks: PathBuf,
}

impl DemoPolicy {
    /// Writes the clinic sources, loads or creates the signing key, creates the issuer.
    pub fn prepare(home: &Path) -> anyhow::Result<Self> {
        let dir = home.join("policy");
        let clinic = dir.join("clinic");
        std::fs::create_dir_all(&clinic)
            .with_context(|| format!("creating {}", clinic.display()))?;
        std::fs::write(clinic.join("authz.rego"), CLINIC_REGO)?;
        std::fs::write(clinic.join("data.json"), CLINIC_DATA)?;
        let key_file = dir.join("demo-signing.pem");
        let key = if key_file.exists() {
            let pem = std::fs::read_to_string(&key_file)?;
            SigningKey::from_pkcs8_pem(&pem, KEY_ID)
                .with_context(|| format!("loading {}", key_file.display()))?
        } else {
            let k = SigningKey::generate(SignatureAlgorithm::EdDsa, KEY_ID)?;
            write_private(&key_file, k.to_pkcs8_pem().as_bytes())?;
            k
        };
        let public_key = dir.join("demo-signing.pub.pem");
        std::fs::write(&public_key, key.verifying_key().to_spki_pem())?;
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kp.public_key_raw());
        let jwks = dir.join("demo-idp-jwks.json");
        std::fs::write(
            &jwks,
            serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "demo", "alg": "EdDSA"}]})
                .to_string(),
        )?;
        Ok(Self {
            dir,
            key,
            public_key,
            idp_key: kp.serialize_der(),
            jwks,
        })
    }

    /// The control plane's verification key.
    pub fn cp_key(&self) -> PolicyKey {
        PolicyKey {
            key_id: KEY_ID.into(),
            file: self.public_key.clone(),
        }
    }

    /// An agent's `[policy]`: the same key, a module cache in the home directory.
    pub fn agent_config(&self) -> PolicyConfig {
        PolicyConfig {
            public_keys: vec![PolicyKeyConfig {
                key_id: KEY_ID.into(),
                file: self.public_key.clone(),
            }],
            cache_dir: Some(self.dir.join("module-cache")),
            ..PolicyConfig::default()
        }
    }

    pub fn oidc(&self) -> OidcConfig {
        OidcConfig {
            issuers: vec![IssuerConfig::with_file(ISSUER, AUDIENCE, self.jwks.clone())],
            ..OidcConfig::default()
        }
    }

    /// The clinic bundle, signed; its revision names its content.
    pub fn bundle(&self) -> anyhow::Result<(String, Vec<u8>)> {
        let digest = Sha256::digest(format!("{CLINIC_REGO}\0{CLINIC_DATA}"));
        let revision = format!("clinic-{}", &hex_prefix(&digest)[..12]);
        let bytes = build_bundle(&self.dir.join("clinic"), &revision)?;
        Ok((revision, sign_bundle(&bytes, &self.key)?))
    }

    /// A bearer token for a demo user (valid 24 h).
    pub fn token(&self, sub: &str, roles: &[&str], amr: &[&str]) -> anyhow::Result<String> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.kid = Some("demo".into());
        let claims = serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "roles": roles,
                                        "amr": amr, "iat": now, "exp": now + 86_400});
        Ok(jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_ed_der(&self.idp_key),
        )?)
    }
}

fn hex_prefix(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}
