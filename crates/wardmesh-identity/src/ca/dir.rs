//! The CA directory: the on-disk home of the authorities and the rotation state.
//!
//! ```text
//! <dir>/ca.json                                  trust domain, active authority, trusted set, revision
//! <dir>/authorities/<id>/root.pem
//! <dir>/authorities/<id>/root.key.sealed         absent when the root is external (--from)
//! <dir>/authorities/<id>/intermediate.pem
//! <dir>/authorities/<id>/intermediate.key.sealed
//! ```
//!
//! Every change writes new files first and replaces `ca.json` last (atomic rename), so a
//! crash leaves either the old or the new state, never half of one. The control plane
//! only reads the directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::KeyPair;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{CaLifetimes, Signer, generate_authority};
use crate::seal::{SealError, SealKey, write_private};
use crate::spiffe::TrustDomain;
use crate::svid::{certs_from_pem, certs_to_pem, fingerprint};

const STATE_FILE: &str = "ca.json";
const ROOT_KEY_PURPOSE: &str = "wardmesh-root-key";
const INT_KEY_PURPOSE: &str = "wardmesh-intermediate-key";

#[derive(Debug, thiserror::Error)]
pub enum CaDirError {
    #[error("{0} already holds a CA (ca.json exists); use `wardctl ca rotate` to change it")]
    AlreadyInitialised(PathBuf),
    #[error("{0} holds no CA (no ca.json); run `wardctl ca init --dir {0}` first")]
    NotInitialised(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid CA state file: {reason}")]
    BadState { path: PathBuf, reason: String },
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("{path}: {reason}")]
    BadCert { path: PathBuf, reason: String },
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("{0}")]
    Rotation(String),
}

/// `ca.json`: which authorities exist, which one signs and which roots agents trust.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaState {
    pub trust_domain: TrustDomain,
    /// The authority whose intermediate signs new leaves.
    pub active: String,
    /// Authorities whose roots are in the trust bundle (always includes `active`).
    pub trusted: Vec<String>,
    /// Increases on every change; agents compare it to know their bundle is current.
    pub revision: u64,
}

/// Where `wardctl ca init --from` takes an external root and intermediate.
#[derive(Debug, Clone)]
pub struct ImportSource {
    pub root_pem: String,
    pub intermediate_pem: String,
    pub intermediate_key_pem: String,
}

/// Public facts about one authority, for `wardctl ca status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuthorityInfo {
    pub id: String,
    pub root_subject: String,
    pub root_fingerprint: String,
    pub root_not_after: String,
    pub intermediate_subject: String,
    pub intermediate_fingerprint: String,
    pub intermediate_not_after: String,
    pub root_key_held: bool,
    pub active: bool,
}

/// Everything the control plane needs, validated.
#[derive(Debug, Clone)]
pub struct LoadedCa {
    pub state: CaState,
    pub signer: Arc<Signer>,
    pub bundle: Vec<CertificateDer<'static>>,
    pub bundle_pem: String,
    pub authorities: Vec<AuthorityInfo>,
}

#[derive(Debug, Clone)]
pub struct CaDir {
    root: PathBuf,
}

impl CaDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    fn state_path(&self) -> PathBuf {
        self.root.join(STATE_FILE)
    }

    fn authority_dir(&self, id: &str) -> PathBuf {
        self.root.join("authorities").join(id)
    }

    pub fn is_initialised(&self) -> bool {
        self.state_path().exists()
    }

    /// Creates a new root and intermediate for `td`.
    pub fn init(
        &self,
        td: &TrustDomain,
        seal: &SealKey,
        now: OffsetDateTime,
        lifetimes: CaLifetimes,
    ) -> Result<CaState, CaDirError> {
        if self.is_initialised() {
            return Err(CaDirError::AlreadyInitialised(self.root.clone()));
        }
        let id = self.write_generated(td, seal, now, lifetimes)?;
        let state = CaState {
            trust_domain: td.clone(),
            active: id.clone(),
            trusted: vec![id],
            revision: 1,
        };
        self.write_state(&state)?;
        Ok(state)
    }

    /// Imports an external root and an intermediate (with its key) signed by it.
    pub fn import(
        &self,
        td: &TrustDomain,
        seal: &SealKey,
        src: &ImportSource,
        now: OffsetDateTime,
    ) -> Result<CaState, CaDirError> {
        if self.is_initialised() {
            return Err(CaDirError::AlreadyInitialised(self.root.clone()));
        }
        let key =
            KeyPair::from_pem(&src.intermediate_key_pem).map_err(|e| CaDirError::BadCert {
                path: PathBuf::from("intermediate key"),
                reason: format!("not a PEM PKCS#8 private key: {e}"),
            })?;
        validate_pair(
            &src.root_pem,
            &src.intermediate_pem,
            &key,
            Path::new("--from"),
            now,
        )?;
        let id = authority_id(&src.intermediate_pem)?;
        let dir = self.authority_dir(&id);
        mkdir(&dir)?;
        write_public(&dir.join("root.pem"), &src.root_pem)?;
        write_public(&dir.join("intermediate.pem"), &src.intermediate_pem)?;
        write_private(
            &dir.join("intermediate.key.sealed"),
            &seal.seal(INT_KEY_PURPOSE, key.serialize_pem().as_bytes()),
        )?;
        let state = CaState {
            trust_domain: td.clone(),
            active: id.clone(),
            trusted: vec![id],
            revision: 1,
        };
        self.write_state(&state)?;
        Ok(state)
    }

    /// Rotation step 1: a new root and intermediate join the trust bundle; the old
    /// intermediate keeps signing until [`CaDir::rotate_activate`].
    pub fn rotate_prepare(
        &self,
        seal: &SealKey,
        now: OffsetDateTime,
        lifetimes: CaLifetimes,
    ) -> Result<CaState, CaDirError> {
        let mut state = self.read_state()?;
        if state.trusted.len() > 1 {
            return Err(CaDirError::Rotation(format!(
                "a rotation is already in progress ({} trusted authorities); finish it with `wardctl ca rotate activate` and `retire`",
                state.trusted.len()
            )));
        }
        let id = self.write_generated(&state.trust_domain, seal, now, lifetimes)?;
        state.trusted.push(id);
        state.revision += 1;
        self.write_state(&state)?;
        Ok(state)
    }

    /// Rotation step 2: the newest trusted authority starts signing.
    pub fn rotate_activate(&self) -> Result<CaState, CaDirError> {
        let mut state = self.read_state()?;
        let newest = state
            .trusted
            .last()
            .cloned()
            .ok_or_else(|| CaDirError::Rotation("no trusted authority".into()))?;
        if newest == state.active {
            return Err(CaDirError::Rotation(
                "nothing to activate: run `wardctl ca rotate prepare` first".into(),
            ));
        }
        state.active = newest;
        state.revision += 1;
        self.write_state(&state)?;
        Ok(state)
    }

    /// Rotation step 3: every root except the active authority's leaves the bundle.
    pub fn rotate_retire(&self) -> Result<CaState, CaDirError> {
        let mut state = self.read_state()?;
        if state.trusted.len() == 1 {
            return Err(CaDirError::Rotation(
                "nothing to retire: only one authority is trusted".into(),
            ));
        }
        state.trusted = vec![state.active.clone()];
        state.revision += 1;
        self.write_state(&state)?;
        Ok(state)
    }

    pub fn read_state(&self) -> Result<CaState, CaDirError> {
        let path = self.state_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CaDirError::NotInitialised(self.root.clone()));
            }
            Err(source) => return Err(CaDirError::Io { path, source }),
        };
        let state: CaState = serde_json::from_slice(&bytes).map_err(|e| CaDirError::BadState {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if !state.trusted.contains(&state.active) {
            return Err(CaDirError::BadState {
                path,
                reason: format!("active authority {} is not trusted", state.active),
            });
        }
        Ok(state)
    }

    /// Public facts only; needs no sealing key.
    pub fn status(&self) -> Result<(CaState, Vec<AuthorityInfo>), CaDirError> {
        let state = self.read_state()?;
        let mut infos = Vec::new();
        for id in &state.trusted {
            infos.push(self.authority_info(id, &state)?);
        }
        Ok((state, infos))
    }

    /// Loads and validates the state, the trust bundle and the active signer.
    pub fn load(&self, seal: &SealKey, now: OffsetDateTime) -> Result<LoadedCa, CaDirError> {
        let (state, authorities) = self.status()?;
        let mut bundle = Vec::new();
        for id in &state.trusted {
            let path = self.authority_dir(id).join("root.pem");
            bundle.extend(read_certs(&path)?);
        }
        let dir = self.authority_dir(&state.active);
        let int_path = dir.join("intermediate.pem");
        let int_pem = read_text(&int_path)?;
        let root_pem = read_text(&dir.join("root.pem"))?;
        let key_pem = seal.open_file(INT_KEY_PURPOSE, &dir.join("intermediate.key.sealed"))?;
        let key_text = std::str::from_utf8(&key_pem).map_err(|_| CaDirError::BadCert {
            path: dir.join("intermediate.key.sealed"),
            reason: "sealed key is not PEM text".into(),
        })?;
        let key = KeyPair::from_pem(key_text).map_err(|e| CaDirError::BadCert {
            path: dir.join("intermediate.key.sealed"),
            reason: format!("not a private key: {e}"),
        })?;
        let not_after = validate_pair(&root_pem, &int_pem, &key, &int_path, now)?;
        let int_der = read_certs(&int_path)?.remove(0);
        let signer = Signer::new(
            state.active.clone(),
            state.trust_domain.clone(),
            int_der,
            key,
            not_after,
        )
        .map_err(|e| CaDirError::Generate(e.to_string()))?;
        Ok(LoadedCa {
            bundle_pem: certs_to_pem(bundle.iter()),
            bundle,
            signer: Arc::new(signer),
            state,
            authorities,
        })
    }

    fn authority_info(&self, id: &str, state: &CaState) -> Result<AuthorityInfo, CaDirError> {
        let dir = self.authority_dir(id);
        let root = read_certs(&dir.join("root.pem"))?.remove(0);
        let int = read_certs(&dir.join("intermediate.pem"))?.remove(0);
        let (rs, ra) = subject_and_expiry(&root, &dir.join("root.pem"))?;
        let (is, ia) = subject_and_expiry(&int, &dir.join("intermediate.pem"))?;
        Ok(AuthorityInfo {
            id: id.to_owned(),
            root_subject: rs,
            root_fingerprint: fingerprint(&root),
            root_not_after: ia_fmt(ra),
            intermediate_subject: is,
            intermediate_fingerprint: fingerprint(&int),
            intermediate_not_after: ia_fmt(ia),
            root_key_held: dir.join("root.key.sealed").exists(),
            active: state.active == id,
        })
    }

    fn write_generated(
        &self,
        td: &TrustDomain,
        seal: &SealKey,
        now: OffsetDateTime,
        lifetimes: CaLifetimes,
    ) -> Result<String, CaDirError> {
        let g = generate_authority(td, now, lifetimes)
            .map_err(|e| CaDirError::Generate(e.to_string()))?;
        let id = authority_id(&g.intermediate_pem)?;
        let dir = self.authority_dir(&id);
        mkdir(&dir)?;
        write_public(&dir.join("root.pem"), &g.root_pem)?;
        write_public(&dir.join("intermediate.pem"), &g.intermediate_pem)?;
        write_private(
            &dir.join("root.key.sealed"),
            &seal.seal(ROOT_KEY_PURPOSE, g.root_key.serialize_pem().as_bytes()),
        )?;
        write_private(
            &dir.join("intermediate.key.sealed"),
            &seal.seal(
                INT_KEY_PURPOSE,
                g.intermediate_key.serialize_pem().as_bytes(),
            ),
        )?;
        Ok(id)
    }

    fn write_state(&self, state: &CaState) -> Result<(), CaDirError> {
        let mut bytes = serde_json::to_vec_pretty(state).map_err(|e| CaDirError::BadState {
            path: self.state_path(),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        // 0600 is stricter than needed for public state, but one atomic writer is simpler.
        write_private(&self.state_path(), &bytes)?;
        Ok(())
    }
}

fn ia_fmt(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn authority_id(intermediate_pem: &str) -> Result<String, CaDirError> {
    let der = certs_from_pem(intermediate_pem)
        .map_err(|e| CaDirError::BadCert {
            path: PathBuf::from("intermediate"),
            reason: e.to_string(),
        })?
        .remove(0);
    Ok(fingerprint(&der)[..16].to_owned())
}

fn subject_and_expiry(
    der: &CertificateDer<'_>,
    path: &Path,
) -> Result<(String, OffsetDateTime), CaDirError> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| CaDirError::BadCert {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok((
        cert.subject().to_string(),
        cert.validity().not_after.to_datetime(),
    ))
}

/// Checks that the intermediate is a CA, signed by the root, matches `key` and is
/// current. Returns the intermediate's expiry.
fn validate_pair(
    root_pem: &str,
    int_pem: &str,
    key: &KeyPair,
    path: &Path,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, CaDirError> {
    let bad = |reason: String| CaDirError::BadCert {
        path: path.to_owned(),
        reason,
    };
    let root_der = certs_from_pem(root_pem)
        .map_err(|e| bad(format!("root: {e}")))?
        .remove(0);
    let int_der = certs_from_pem(int_pem)
        .map_err(|e| bad(format!("intermediate: {e}")))?
        .remove(0);
    let (_, root) = X509Certificate::from_der(root_der.as_ref()).map_err(|e| bad(e.to_string()))?;
    let (_, int) = X509Certificate::from_der(int_der.as_ref()).map_err(|e| bad(e.to_string()))?;
    if !root.is_ca() || !int.is_ca() {
        return Err(bad(
            "root and intermediate must both be CA certificates (basicConstraints cA=true)".into(),
        ));
    }
    root.verify_signature(None)
        .map_err(|_| bad("root is not self-signed".into()))?;
    if !root
        .validity()
        .is_valid_at(x509_parser::time::ASN1Time::from(now))
    {
        return Err(bad("root is expired or not yet valid".into()));
    }
    int.verify_signature(Some(root.public_key()))
        .map_err(|_| bad("intermediate is not signed by the root".into()))?;
    let can_sign = match int.key_usage() {
        Ok(Some(ku)) => ku.value.key_cert_sign(),
        Ok(None) => true,
        Err(e) => return Err(bad(format!("intermediate key usage: {e}"))),
    };
    if !can_sign {
        return Err(bad(
            "intermediate's key usage does not allow keyCertSign".into()
        ));
    }
    if int.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(bad(
            "intermediate private key does not match the intermediate certificate".into(),
        ));
    }
    let not_after = int.validity().not_after.to_datetime();
    if now >= not_after {
        return Err(bad(format!(
            "intermediate expired at {}",
            ia_fmt(not_after)
        )));
    }
    if now < int.validity().not_before.to_datetime() {
        return Err(bad("intermediate is not valid yet".into()));
    }
    Ok(not_after)
}

fn read_text(path: &Path) -> Result<String, CaDirError> {
    std::fs::read_to_string(path).map_err(|source| CaDirError::Io {
        path: path.to_owned(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaDirError> {
    certs_from_pem(&read_text(path)?).map_err(|e| CaDirError::BadCert {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn mkdir(path: &Path) -> Result<(), CaDirError> {
    std::fs::create_dir_all(path).map_err(|source| CaDirError::Io {
        path: path.to_owned(),
        source,
    })
}

fn write_public(path: &Path, text: &str) -> Result<(), CaDirError> {
    std::fs::write(path, text).map_err(|source| CaDirError::Io {
        path: path.to_owned(),
        source,
    })
}
