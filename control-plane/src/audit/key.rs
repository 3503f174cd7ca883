//! The Ed25519 key that signs audit checkpoints: generated on first start, kept sealed
//! with the CA sealing key in the state directory, its public half published (API, a
//! plain file next to it, the startup log) so auditors can pin it.
//!
//! Public key text form: `ed25519:<base64 of the 32 raw bytes>`. The key id is the first
//! 16 hex digits of SHA-256 over the raw public key.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};
use wardmesh_identity::seal::{SealError, SealKey, write_private};

/// The sealed private key, in the state directory.
pub const SIGNING_KEY_FILE: &str = "audit-signing.key.sealed";
/// The public key in text form, in the state directory (not secret).
pub const PUBLIC_KEY_FILE: &str = "audit-signing.pub";
/// Bound into the sealed file, so no other sealed key can be swapped in for it.
const SEAL_PURPOSE: &str = "audit-signing-key";
const TEXT_PREFIX: &str = "ed25519:";

#[derive(Debug, thiserror::Error)]
pub enum AuditKeyError {
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(
        "{path} does not hold an Ed25519 audit signing key; restore it from backup, or move it \
         away to start a new key (auditors must then pin the new public key)"
    )]
    NotAKey { path: PathBuf },
    #[error("cannot generate an audit signing key: the system random source failed")]
    Generate,
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "invalid audit public key in {origin}: {reason}; expected `ed25519:<base64>` as in \
         <home>/audit-key.pub or the control plane's audit-signing.pub"
    )]
    BadPublicKey { origin: String, reason: String },
}

/// An Ed25519 public key that verifies checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditPublicKey([u8; 32]);

impl AuditPublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// Parses `ed25519:<base64>` (or bare base64); `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, AuditKeyError> {
        let bad = |reason: &str| AuditKeyError::BadPublicKey {
            origin: origin.to_owned(),
            reason: reason.to_owned(),
        };
        let text = text.trim();
        let b64 = text.strip_prefix(TEXT_PREFIX).unwrap_or(text);
        let raw = B64.decode(b64).map_err(|_| bad("not base64"))?;
        Self::from_bytes(&raw).ok_or_else(|| bad("not 32 bytes"))
    }

    /// `ed25519:<base64>`.
    pub fn to_text(&self) -> String {
        format!("{TEXT_PREFIX}{}", self.to_base64())
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    pub fn key_id(&self) -> String {
        let digest = hex::encode(Sha256::digest(self.0));
        digest[..16].to_owned()
    }

    /// Whether `signature_b64` is this key's signature over `message`.
    pub fn verifies(&self, message: &[u8], signature_b64: &str) -> bool {
        let Ok(sig) = B64.decode(signature_b64) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, self.0)
            .verify(message, &sig)
            .is_ok()
    }
}

/// The private signing key. `Debug` shows only the key id.
pub struct AuditSigner {
    pair: Ed25519KeyPair,
    public: AuditPublicKey,
}

impl std::fmt::Debug for AuditSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSigner")
            .field("key_id", &self.public.key_id())
            .finish_non_exhaustive()
    }
}

impl AuditSigner {
    /// A new key held only in memory (tests).
    pub fn generate() -> Result<Self, AuditKeyError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| AuditKeyError::Generate)?;
        Self::from_pkcs8(pkcs8.as_ref(), Path::new("<generated>"))
    }

    /// Opens `<state_dir>/audit-signing.key.sealed`, creating it on first start, and
    /// (re)writes the public key file next to it. Several processes starting at once on
    /// one state directory end up with the same key: the file is created only if absent.
    pub fn load_or_create(state_dir: &Path, seal: &SealKey) -> Result<Self, AuditKeyError> {
        let path = state_dir.join(SIGNING_KEY_FILE);
        if !path.exists() {
            create_if_absent(state_dir, &path, seal)?;
        }
        let pkcs8 = seal.open_file(SEAL_PURPOSE, &path)?;
        let signer = Self::from_pkcs8(&pkcs8, &path)?;
        write_public(&state_dir.join(PUBLIC_KEY_FILE), &signer.public)?;
        Ok(signer)
    }

    fn from_pkcs8(pkcs8: &[u8], path: &Path) -> Result<Self, AuditKeyError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| AuditKeyError::NotAKey {
            path: path.to_owned(),
        })?;
        let public = AuditPublicKey::from_bytes(pair.public_key().as_ref()).ok_or_else(|| {
            AuditKeyError::NotAKey {
                path: path.to_owned(),
            }
        })?;
        Ok(Self { pair, public })
    }

    pub fn public(&self) -> &AuditPublicKey {
        &self.public
    }

    /// The signature over `message`, base64.
    pub fn sign(&self, message: &[u8]) -> String {
        B64.encode(self.pair.sign(message).as_ref())
    }
}

/// Generates a key and links it into place only if no file is there yet: a concurrent
/// starter that wins keeps its key and we load that one.
fn create_if_absent(state_dir: &Path, path: &Path, seal: &SealKey) -> Result<(), AuditKeyError> {
    let write_err = |source| AuditKeyError::Write {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(write_err)?;
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| AuditKeyError::Generate)?;
    let tmp = path.with_extension(format!("new{}", std::process::id()));
    write_private(&tmp, &seal.seal(SEAL_PURPOSE, pkcs8.as_ref()))?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created the audit signing key");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(write_err(e)),
    }
}

fn write_public(path: &Path, key: &AuditPublicKey) -> Result<(), AuditKeyError> {
    let text = format!("{}\n", key.to_text());
    if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    let tmp = path.with_extension(format!("new{}", std::process::id()));
    let write_err = |source| AuditKeyError::Write {
        path: path.to_owned(),
        source,
    };
    std::fs::write(&tmp, text).map_err(write_err)?;
    std::fs::rename(&tmp, path).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_sealed_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let seal = SealKey::generate();
        let first = AuditSigner::load_or_create(dir.path(), &seal).unwrap();
        let again = AuditSigner::load_or_create(dir.path(), &seal).unwrap();
        assert_eq!(first.public(), again.public());
        let sealed = std::fs::read_to_string(dir.path().join(SIGNING_KEY_FILE)).unwrap();
        assert!(sealed.contains("wardmesh-sealed-v1"), "{sealed}");
        let published = std::fs::read_to_string(dir.path().join(PUBLIC_KEY_FILE)).unwrap();
        assert_eq!(
            AuditPublicKey::parse(&published, "file").unwrap(),
            *first.public()
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".new"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // Another sealing key cannot open it, and says so.
        let err = AuditSigner::load_or_create(dir.path(), &SealKey::generate()).unwrap_err();
        assert!(err.to_string().contains("wrong sealing key"), "{err}");
    }

    #[test]
    fn signatures_verify_only_for_their_message_and_key() {
        let signer = AuditSigner::generate().unwrap();
        let other = AuditSigner::generate().unwrap();
        let sig = signer.sign(b"checkpoint");
        assert!(signer.public().verifies(b"checkpoint", &sig));
        assert!(!signer.public().verifies(b"checkpoinT", &sig));
        assert!(!other.public().verifies(b"checkpoint", &sig));
        assert!(!signer.public().verifies(b"checkpoint", "not base64!"));
        assert_eq!(signer.public().key_id().len(), 16);
        assert_ne!(signer.public().key_id(), other.public().key_id());
    }

    #[test]
    fn public_key_text_round_trips_and_bad_text_is_explained() {
        let key = *AuditSigner::generate().unwrap().public();
        assert_eq!(AuditPublicKey::parse(&key.to_text(), "t").unwrap(), key);
        assert_eq!(AuditPublicKey::parse(&key.to_base64(), "t").unwrap(), key);
        let err = AuditPublicKey::parse("ed25519:AAAA", "pinned.pub").unwrap_err();
        assert!(
            err.to_string().contains("pinned.pub: not 32 bytes"),
            "{err}"
        );
    }
}
