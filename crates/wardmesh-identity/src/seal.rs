//! Encryption at rest for CA private keys: AES-256-GCM envelopes.
//!
//! A sealed file is JSON `{"format":"wardmesh-sealed-v1","alg":"AES-256-GCM","nonce":..,
//! "ciphertext":..}` (base64). The file's purpose (e.g. `intermediate-key`) is bound in as
//! associated data, so a sealed root key cannot be swapped in for an intermediate key.

use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

const FORMAT: &str = "wardmesh-sealed-v1";
const ALG: &str = "AES-256-GCM";

/// The environment variable that may hold the sealing key (64 hex characters).
pub const SEAL_KEY_ENV: &str = "WARDMESH_CA_SEAL_KEY";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "sealing key in {origin} is invalid: expected 64 hex characters (32 bytes); create one with `wardctl ca init`, which writes a key file"
    )]
    BadKey { origin: String },
    #[error(
        "{path} is not a wardmesh sealed file ({reason}); it is corrupted or not the file you meant — restore it from backup"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "cannot decrypt {path}: wrong sealing key, or the file was modified; check --seal-key-file / {SEAL_KEY_ENV}"
    )]
    WrongKey { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A 256-bit key that seals CA private keys. Never logged: `Debug` prints only a marker.
#[derive(Clone)]
pub struct SealKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

impl SealKey {
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        Self(k)
    }

    /// Parses 64 hex characters (surrounding whitespace ignored).
    pub fn from_hex(text: &str, origin: &str) -> Result<Self, SealError> {
        let bad = || SealError::BadKey {
            origin: origin.to_owned(),
        };
        let bytes = Zeroizing::new(hex::decode(text.trim()).map_err(|_| bad())?);
        let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| bad())?;
        Ok(Self(Zeroizing::new(arr)))
    }

    pub fn from_file(path: &Path) -> Result<Self, SealError> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| SealError::Read {
                    path: path.to_owned(),
                    source,
                })?,
            );
        Self::from_hex(&text, &path.display().to_string())
    }

    /// The key from `WARDMESH_CA_SEAL_KEY` if set, else from `file`.
    pub fn from_env_or_file(file: &Path) -> Result<Self, SealError> {
        match std::env::var(SEAL_KEY_ENV) {
            Ok(v) if !v.is_empty() => Self::from_hex(&v, SEAL_KEY_ENV),
            _ => Self::from_file(file),
        }
    }

    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.as_ref()))
    }

    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Vec<u8> {
        let cipher = Aes256Gcm::new(self.0.as_ref().into());
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext,
            aad: purpose.as_bytes(),
        };
        // Encryption only fails for inputs beyond AES-GCM's ~64 GiB limit.
        let ciphertext = cipher
            .encrypt(Nonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        let env = Envelope {
            format: FORMAT.to_owned(),
            alg: ALG.to_owned(),
            purpose: purpose.to_owned(),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(ciphertext),
        };
        let mut out = serde_json::to_vec_pretty(&env).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Opens a sealed blob; `path` only names the source in errors.
    pub fn open(
        &self,
        purpose: &str,
        sealed: &[u8],
        path: &Path,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let corrupt = |reason: &str| SealError::Corrupt {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let env: Envelope =
            serde_json::from_slice(sealed).map_err(|_| corrupt("not a sealed JSON envelope"))?;
        if env.format != FORMAT || env.alg != ALG {
            return Err(corrupt("unknown format or algorithm"));
        }
        if env.purpose != purpose {
            return Err(corrupt(&format!(
                "it holds a {:?}, expected a {purpose:?}",
                env.purpose
            )));
        }
        let nonce = B64
            .decode(&env.nonce)
            .map_err(|_| corrupt("nonce is not base64"))?;
        if nonce.len() != 12 {
            return Err(corrupt("nonce has the wrong length"));
        }
        let ciphertext = B64
            .decode(&env.ciphertext)
            .map_err(|_| corrupt("ciphertext is not base64"))?;
        let cipher = Aes256Gcm::new(self.0.as_ref().into());
        let payload = Payload {
            msg: &ciphertext,
            aad: purpose.as_bytes(),
        };
        cipher
            .decrypt(Nonce::from_slice(&nonce), payload)
            .map(Zeroizing::new)
            .map_err(|_| SealError::WrongKey {
                path: path.to_owned(),
            })
    }

    pub fn open_file(&self, purpose: &str, path: &Path) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let sealed = std::fs::read(path).map_err(|source| SealError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.open(purpose, &sealed, path)
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    format: String,
    alg: String,
    purpose: String,
    nonce: String,
    ciphertext: String,
}

/// Writes `bytes` to `path` atomically (temp file + rename) with mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SealError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| SealError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_purpose_binding() {
        let key = SealKey::generate();
        let sealed = key.seal("intermediate-key", b"secret pkcs8");
        let p = Path::new("x.key.sealed");
        assert_eq!(
            key.open("intermediate-key", &sealed, p).unwrap().as_slice(),
            b"secret pkcs8"
        );
        assert!(matches!(
            key.open("root-key", &sealed, p),
            Err(SealError::Corrupt { .. })
        ));
        assert!(!String::from_utf8_lossy(&sealed).contains("secret"));
    }

    #[test]
    fn wrong_key_and_corruption_are_distinct_errors() {
        let key = SealKey::generate();
        let other = SealKey::generate();
        let sealed = key.seal("k", b"data");
        let p = Path::new("f");
        assert!(matches!(
            other.open("k", &sealed, p),
            Err(SealError::WrongKey { .. })
        ));
        let mut flipped: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
        let ct = flipped["ciphertext"].as_str().unwrap().to_owned();
        let mut raw = B64.decode(ct).unwrap();
        raw[0] ^= 1;
        flipped["ciphertext"] = B64.encode(raw).into();
        let tampered = serde_json::to_vec(&flipped).unwrap();
        assert!(matches!(
            key.open("k", &tampered, p),
            Err(SealError::WrongKey { .. })
        ));
        assert!(matches!(
            key.open("k", b"garbage", p),
            Err(SealError::Corrupt { .. })
        ));
    }

    #[test]
    fn key_parsing_and_debug_redaction() {
        let key = SealKey::generate();
        let again = SealKey::from_hex(&key.to_hex(), "test").unwrap();
        assert_eq!(again.to_hex().as_str(), key.to_hex().as_str());
        assert!(SealKey::from_hex("abcd", "test").is_err());
        assert!(SealKey::from_hex(&"zz".repeat(32), "test").is_err());
        assert_eq!(format!("{key:?}"), "SealKey(<redacted>)");
    }

    #[test]
    fn key_files_load_and_bad_ones_say_which_file() {
        let tmp = tempfile::tempdir().unwrap();
        let key = SealKey::generate();
        let good = tmp.path().join("seal.key");
        // As an operator writes it: hex and a trailing newline.
        std::fs::write(&good, format!("{}\n", key.to_hex().as_str())).unwrap();
        let loaded = SealKey::from_file(&good).unwrap();
        assert_eq!(loaded.to_hex().as_str(), key.to_hex().as_str());
        let sealed = key.seal("p", b"payload");
        assert_eq!(
            loaded.open("p", &sealed, &good).unwrap().as_slice(),
            b"payload"
        );

        let origin = |p: &Path| p.display().to_string();
        for (name, text) in [
            ("short.key", "abcd".to_owned()),
            ("long.key", "ab".repeat(33)),
            ("nothex.key", "zz".repeat(32)),
            ("empty.key", String::new()),
            ("pem.key", "-----BEGIN PRIVATE KEY-----\n".to_owned()),
        ] {
            let p = tmp.path().join(name);
            std::fs::write(&p, text).unwrap();
            match SealKey::from_file(&p) {
                Err(SealError::BadKey { origin: o }) => assert_eq!(o, origin(&p)),
                other => panic!("{name}: expected BadKey, got {other:?}"),
            }
        }
        let missing = tmp.path().join("missing.key");
        assert!(matches!(
            SealKey::from_file(&missing),
            Err(SealError::Read { path, .. }) if path == missing
        ));
        // The error text never echoes the key material.
        let leaky = tmp.path().join("leaky.key");
        std::fs::write(&leaky, format!("{}ff", key.to_hex().as_str())).unwrap();
        let msg = SealKey::from_file(&leaky).unwrap_err().to_string();
        assert!(!msg.contains(key.to_hex().as_str()), "{msg}");
    }

    #[test]
    fn write_private_is_owner_only_and_replaces_atomically() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.key.sealed");
        write_private(&p, b"first").unwrap();
        write_private(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.key.sealed")]);
        assert!(matches!(
            write_private(&tmp.path().join("no/such/dir/f"), b"x"),
            Err(SealError::Write { .. })
        ));
    }

    #[test]
    fn sealed_envelope_fields_are_checked() {
        let key = SealKey::generate();
        let sealed = key.seal("k", b"data");
        let p = Path::new("f");
        let mut v: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
        assert_eq!(v["purpose"], "k");
        for (field, value) in [
            ("format", "wardmesh-sealed-v2"),
            ("alg", "AES-128-GCM"),
            ("nonce", "not base64!"),
            ("nonce", "AAAA"),
            ("ciphertext", "not base64!"),
        ] {
            let original = v[field].clone();
            v[field] = value.into();
            let bytes = serde_json::to_vec(&v).unwrap();
            assert!(
                matches!(key.open("k", &bytes, p), Err(SealError::Corrupt { .. })),
                "{field}={value}"
            );
            v[field] = original;
        }
        // Two seals of the same data differ (fresh nonce each time).
        assert_ne!(key.seal("k", b"data"), sealed);
    }
}
