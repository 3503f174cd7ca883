//! Bundle signing and verification, OPA's scheme: `.signatures.json` is
//! `{"signatures": [JWT]}` where the JWT (JWS compact, `ES256` or `EdDSA`, `kid` header)
//! carries `{"files": [{"name", "hash", "algorithm": "SHA-256"}…], "keyid"}` for every
//! other file of the bundle.
//!
//! Verification is all-or-nothing: every file must be listed with a matching digest and
//! every listed file must be present, or the bundle is refused with an error naming why.
//! Agents activate only a [`VerifiedBundle`].

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::builder::DEFAULT_ENTRYPOINT;
use crate::bundle::{
    BundleError, BundleFiles, DATA_FILE, MANIFEST_FILE, Manifest, SIGNATURES_FILE, WASM_FILE,
};

mod canonical;
mod keys;

pub use canonical::file_digest;
pub use keys::{KeyError, SignatureAlgorithm, SigningKey, VerifyingKey};

const HASH_ALGORITHM: &str = "SHA-256";

/// Signing failures.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("cannot hash {0}")]
    Hash(String),
    #[error("signing failed: {0}")]
    Key(#[from] KeyError),
}

/// Why a bundle was refused. Each case is distinct so the agent, the CLI and the audit
/// log can say exactly what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(
        "bundle is not signed: it has no .signatures.json (sign it with `wardctl policy sign`)"
    )]
    Unsigned,
    #[error(".signatures.json is malformed: {0}")]
    MalformedSignatures(String),
    #[error(".signatures.json holds {0} signatures; exactly one is supported")]
    SignatureCount(usize),
    #[error("bundle signature names no key id (no `kid` header or `keyid` claim)")]
    NoKeyId,
    #[error("bundle is signed with key {0:?}, which is not a configured verification key")]
    UnknownKey(String),
    #[error("bundle signature uses algorithm {0:?}; only ES256 and EdDSA are accepted")]
    UnsupportedAlgorithm(String),
    #[error("bundle signature uses {found} but key {key_id:?} is an {expected} key")]
    AlgorithmMismatch {
        key_id: String,
        expected: SignatureAlgorithm,
        found: String,
    },
    #[error("bundle signature does not verify with key {0:?}")]
    BadSignature(String),
    #[error("bundle signature scope {found:?} is not the expected {expected:?}")]
    ScopeMismatch { expected: String, found: String },
    #[error("bundle file {name} uses hash algorithm {algorithm:?}; only SHA-256 is accepted")]
    UnsupportedHash { name: String, algorithm: String },
    #[error("bundle file {0} was modified after signing (digest mismatch)")]
    Tampered(String),
    #[error("bundle file {0} is not covered by the signature")]
    UnsignedFile(String),
    #[error("the signature lists {0}, which is missing from the bundle")]
    MissingFile(String),
    #[error("{0}")]
    Hash(String),
    #[error("bundle {file} is invalid: {reason}")]
    Invalid { file: String, reason: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct SignaturesFile {
    signatures: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct JwsHeader {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileEntry {
    name: String,
    hash: String,
    algorithm: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    files: Vec<FileEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keyid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

/// Signs `bundle` (a `.tar.gz`): replaces any `.signatures.json` with one JWT over every
/// other file. Returns the signed `.tar.gz`.
pub fn sign_bundle(bundle: &[u8], key: &SigningKey) -> Result<Vec<u8>, SignError> {
    let mut files = BundleFiles::read_tar_gz(bundle)?;
    files.remove(SIGNATURES_FILE);
    let mut entries = Vec::with_capacity(files.len());
    for (name, bytes) in files.iter() {
        entries.push(FileEntry {
            name: name.to_string(),
            hash: file_digest(name, bytes).map_err(SignError::Hash)?,
            algorithm: HASH_ALGORITHM.to_string(),
        });
    }
    let header = JwsHeader {
        alg: key.algorithm().jws_name().to_string(),
        kid: Some(key.key_id().to_string()),
        typ: Some("JWT".to_string()),
    };
    let claims = Claims {
        files: entries,
        keyid: Some(key.key_id().to_string()),
        scope: None,
    };
    let header = serde_json::to_vec(&header).map_err(|e| SignError::Hash(e.to_string()))?;
    let claims = serde_json::to_vec(&claims).map_err(|e| SignError::Hash(e.to_string()))?;
    let signing_input = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let sig = key.sign(signing_input.as_bytes())?;
    let jwt = format!("{signing_input}.{}", B64.encode(sig));
    let doc = serde_json::to_vec(&SignaturesFile {
        signatures: vec![jwt],
    })
    .map_err(|e| SignError::Hash(e.to_string()))?;
    files.insert(SIGNATURES_FILE, doc);
    Ok(files.to_tar_gz()?)
}

/// A bundle whose signature verified (or, via [`danger_accept_unsigned_bundle`], that
/// was explicitly accepted unsigned): the only thing [`crate::PolicyRuntime::load`] takes.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    manifest: Manifest,
    files: BundleFiles,
    data: serde_json::Value,
    wasm_file: String,
    signer: Option<String>,
    digest: String,
}

impl VerifiedBundle {
    /// `.manifest` `revision`.
    pub fn revision(&self) -> &str {
        &self.manifest.revision
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The module answering [`DEFAULT_ENTRYPOINT`] (or the bundle's only module).
    pub fn wasm(&self) -> &[u8] {
        self.files.get(&self.wasm_file).unwrap_or_default()
    }

    /// The data document (`{}` when the bundle has no `data.json`).
    pub fn data(&self) -> &serde_json::Value {
        &self.data
    }

    /// Key id of the signature that verified; `None` for an unsigned bundle accepted with
    /// [`danger_accept_unsigned_bundle`].
    pub fn signer(&self) -> Option<&str> {
        self.signer.as_deref()
    }

    /// Hex SHA-256 of the bundle archive, to report which bytes are active.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn files(&self) -> &BundleFiles {
        &self.files
    }
}

/// Verifies `bundle` against `keys` (by key id) and returns its contents.
pub fn verify_bundle(bundle: &[u8], keys: &[VerifyingKey]) -> Result<VerifiedBundle, VerifyError> {
    let mut files = BundleFiles::read_tar_gz(bundle)?;
    let sigs = files.remove(SIGNATURES_FILE).ok_or(VerifyError::Unsigned)?;
    let sigs: SignaturesFile = serde_json::from_slice(&sigs)
        .map_err(|e| VerifyError::MalformedSignatures(e.to_string()))?;
    let [token] = sigs.signatures.as_slice() else {
        return Err(match sigs.signatures.len() {
            0 => VerifyError::Unsigned,
            n => VerifyError::SignatureCount(n),
        });
    };
    let (key_id, claims) = verify_jwt(token, keys)?;

    let mut listed = BTreeMap::new();
    for entry in claims.files {
        let name = entry.name.trim_start_matches('/').to_string();
        if listed.insert(name.clone(), entry).is_some() {
            return Err(VerifyError::MalformedSignatures(format!(
                "{name} is listed twice"
            )));
        }
    }
    let present: BTreeSet<String> = files.names().map(str::to_string).collect();
    if let Some(extra) = present.iter().find(|n| !listed.contains_key(*n)) {
        return Err(VerifyError::UnsignedFile(extra.clone()));
    }
    for (name, entry) in &listed {
        let bytes = files
            .get(name)
            .ok_or_else(|| VerifyError::MissingFile(name.clone()))?;
        if !entry.algorithm.eq_ignore_ascii_case(HASH_ALGORITHM) {
            return Err(VerifyError::UnsupportedHash {
                name: name.clone(),
                algorithm: entry.algorithm.clone(),
            });
        }
        let want = entry.hash.to_ascii_lowercase();
        let canonical = file_digest(name, bytes).map_err(VerifyError::Hash)?;
        let raw = hex::encode(Sha256::digest(bytes));
        if want != canonical && want != raw {
            return Err(VerifyError::Tampered(name.clone()));
        }
    }
    finish(files, bundle, Some(key_id))
}

/// Accepts a bundle without checking any signature (`wardctl policy eval` on a local
/// build, or a bundle from `opa build` in a test). Agents never call this.
pub fn danger_accept_unsigned_bundle(bundle: &[u8]) -> Result<VerifiedBundle, VerifyError> {
    let mut files = BundleFiles::read_tar_gz(bundle)?;
    files.remove(SIGNATURES_FILE);
    finish(files, bundle, None)
}

fn verify_jwt(token: &str, keys: &[VerifyingKey]) -> Result<(String, Claims), VerifyError> {
    let malformed = |what: &str| VerifyError::MalformedSignatures(what.to_string());
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(
            "the signature is not a compact JWS (header.payload.signature)",
        ));
    };
    let header: JwsHeader = B64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| malformed("the JWT header is not base64url JSON"))?;
    let claims: Claims = B64
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| malformed("the JWT payload is not base64url JSON with a `files` list"))?;
    let sig = B64
        .decode(s)
        .map_err(|_| malformed("the JWT signature is not base64url"))?;

    let Some(alg) = SignatureAlgorithm::from_jws_name(&header.alg) else {
        return Err(VerifyError::UnsupportedAlgorithm(header.alg));
    };
    let key_id = header
        .kid
        .clone()
        .or_else(|| claims.keyid.clone())
        .ok_or(VerifyError::NoKeyId)?;
    let key = keys
        .iter()
        .find(|k| k.key_id() == key_id)
        .ok_or_else(|| VerifyError::UnknownKey(key_id.clone()))?;
    if key.algorithm() != alg {
        return Err(VerifyError::AlgorithmMismatch {
            key_id,
            expected: key.algorithm(),
            found: header.alg,
        });
    }
    if !key.verify(format!("{h}.{p}").as_bytes(), &sig) {
        return Err(VerifyError::BadSignature(key_id));
    }
    if let Some(scope) = claims.scope.as_deref().filter(|s| !s.is_empty()) {
        return Err(VerifyError::ScopeMismatch {
            expected: String::new(),
            found: scope.to_string(),
        });
    }
    Ok((key_id, claims))
}

fn finish(
    files: BundleFiles,
    bundle: &[u8],
    signer: Option<String>,
) -> Result<VerifiedBundle, VerifyError> {
    let manifest = Manifest::parse(
        files
            .get(MANIFEST_FILE)
            .ok_or(BundleError::MissingFile(MANIFEST_FILE))?,
    )?;
    let data = match files.get(DATA_FILE) {
        Some(bytes) => serde_json::from_slice(bytes).map_err(|e| VerifyError::Invalid {
            file: DATA_FILE.into(),
            reason: e.to_string(),
        })?,
        None => serde_json::Value::Object(Default::default()),
    };
    if !data.is_object() {
        return Err(VerifyError::Invalid {
            file: DATA_FILE.into(),
            reason: "the data document must be a JSON object".into(),
        });
    }
    let module = manifest
        .wasm
        .iter()
        .find(|w| w.entrypoint == DEFAULT_ENTRYPOINT)
        .or_else(|| manifest.wasm.first())
        .map(|w| w.module.trim_start_matches('/').to_string())
        .unwrap_or_else(|| WASM_FILE.to_string());
    if files.get(&module).is_none() {
        return Err(BundleError::MissingFile(WASM_FILE).into());
    }
    Ok(VerifiedBundle {
        manifest,
        files,
        data,
        wasm_file: module,
        signer,
        digest: hex::encode(Sha256::digest(bundle)),
    })
}
