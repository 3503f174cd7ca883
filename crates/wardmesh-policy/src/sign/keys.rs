//! Bundle signing keys: Ed25519 (`EdDSA`) or ECDSA P-256 (`ES256`), PKCS#8 private keys
//! and SubjectPublicKeyInfo public keys in PEM, as `openssl genpkey` writes them.

use std::fmt;

use ring::rand::SystemRandom;
use ring::signature::{
    self, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (the 32-byte key follows).
const ED25519_SPKI_PREFIX: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER prefix of an ECDSA P-256 SubjectPublicKeyInfo (the 65-byte point follows).
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// JWS algorithms a bundle signature may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureAlgorithm {
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl SignatureAlgorithm {
    /// The JWS `alg` name.
    pub fn jws_name(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }

    pub fn from_jws_name(name: &str) -> Option<Self> {
        match name {
            "ES256" => Some(Self::Es256),
            "EdDSA" => Some(Self::EdDsa),
            _ => None,
        }
    }
}

impl fmt::Display for SignatureAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.jws_name())
    }
}

/// Key loading problems.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no PKCS#8 private key (-----BEGIN PRIVATE KEY-----) found in the PEM input")]
    NoPrivateKey,
    #[error("no public key (-----BEGIN PUBLIC KEY-----) found in the PEM input")]
    NoPublicKey,
    #[error("the private key is neither Ed25519 nor ECDSA P-256 (PKCS#8)")]
    UnsupportedPrivateKey,
    #[error("the public key is neither Ed25519 nor uncompressed ECDSA P-256")]
    UnsupportedPublicKey,
    #[error("key id must be non-empty printable text")]
    KeyId,
    #[error("generating a key failed")]
    Generate,
}

enum Pair {
    Ed25519(Ed25519KeyPair),
    Ecdsa(EcdsaKeyPair),
}

/// A private key that signs bundles, with the key id (`kid`) verifiers look it up by.
pub struct SigningKey {
    key_id: String,
    pair: Pair,
    pkcs8: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

fn check_key_id(key_id: &str) -> Result<(), KeyError> {
    if key_id.is_empty() || key_id.len() > 256 || key_id.chars().any(char::is_control) {
        return Err(KeyError::KeyId);
    }
    Ok(())
}

impl SigningKey {
    /// A fresh random key.
    pub fn generate(algorithm: SignatureAlgorithm, key_id: &str) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let doc = match algorithm {
            SignatureAlgorithm::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng),
            SignatureAlgorithm::Es256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            }
        }
        .map_err(|_| KeyError::Generate)?;
        Self::from_pkcs8_der(doc.as_ref(), key_id)
    }

    /// Loads a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8_pem(pem: &str, key_id: &str) -> Result<Self, KeyError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|_| KeyError::NoPrivateKey)?;
        Self::from_pkcs8_der(der.secret_pkcs8_der(), key_id)
    }

    /// Loads a PKCS#8 DER private key.
    pub fn from_pkcs8_der(der: &[u8], key_id: &str) -> Result<Self, KeyError> {
        check_key_id(key_id)?;
        let pair = if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            Pair::Ed25519(k)
        } else if let Ok(k) =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
        {
            Pair::Ecdsa(k)
        } else {
            return Err(KeyError::UnsupportedPrivateKey);
        };
        Ok(Self {
            key_id: key_id.to_string(),
            pair,
            pkcs8: der.to_vec(),
        })
    }

    /// The private key as PKCS#8 PEM (to store it; handle with care).
    pub fn to_pkcs8_pem(&self) -> String {
        pem_encode("PRIVATE KEY", &self.pkcs8)
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn algorithm(&self) -> SignatureAlgorithm {
        match self.pair {
            Pair::Ed25519(_) => SignatureAlgorithm::EdDsa,
            Pair::Ecdsa(_) => SignatureAlgorithm::Es256,
        }
    }

    /// The matching public key, with the same key id.
    pub fn verifying_key(&self) -> VerifyingKey {
        let public = match &self.pair {
            Pair::Ed25519(k) => k.public_key().as_ref().to_vec(),
            Pair::Ecdsa(k) => k.public_key().as_ref().to_vec(),
        };
        VerifyingKey {
            key_id: self.key_id.clone(),
            algorithm: self.algorithm(),
            public,
        }
    }

    pub(crate) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.pair {
            Pair::Ed25519(k) => Ok(k.sign(message).as_ref().to_vec()),
            Pair::Ecdsa(k) => k
                .sign(&SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Generate),
        }
    }
}

impl Drop for SigningKey {
    fn drop(&mut self) {
        self.pkcs8.iter_mut().for_each(|b| *b = 0);
    }
}

/// A public key that verifies bundle signatures, named by key id.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    key_id: String,
    algorithm: SignatureAlgorithm,
    /// Raw Ed25519 key or uncompressed P-256 point.
    public: Vec<u8>,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("key_id", &self.key_id)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

impl VerifyingKey {
    /// Loads a SubjectPublicKeyInfo PEM public key (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_spki_pem(pem: &str, key_id: &str) -> Result<Self, KeyError> {
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
            .map_err(|_| KeyError::NoPublicKey)?;
        Self::from_spki_der(der.as_ref(), key_id)
    }

    /// Loads a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8], key_id: &str) -> Result<Self, KeyError> {
        check_key_id(key_id)?;
        let (algorithm, public) = if let Some(k) = der
            .strip_prefix(ED25519_SPKI_PREFIX)
            .filter(|k| k.len() == 32)
        {
            (SignatureAlgorithm::EdDsa, k)
        } else if let Some(k) = der
            .strip_prefix(P256_SPKI_PREFIX)
            .filter(|k| k.len() == 65 && k[0] == 4)
        {
            (SignatureAlgorithm::Es256, k)
        } else {
            return Err(KeyError::UnsupportedPublicKey);
        };
        Ok(Self {
            key_id: key_id.to_string(),
            algorithm,
            public: public.to_vec(),
        })
    }

    /// The public key as SubjectPublicKeyInfo PEM.
    pub fn to_spki_pem(&self) -> String {
        let prefix = match self.algorithm {
            SignatureAlgorithm::EdDsa => ED25519_SPKI_PREFIX,
            SignatureAlgorithm::Es256 => P256_SPKI_PREFIX,
        };
        pem_encode("PUBLIC KEY", &[prefix, &self.public].concat())
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }

    pub(crate) fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        let alg: &dyn signature::VerificationAlgorithm = match self.algorithm {
            SignatureAlgorithm::EdDsa => &signature::ED25519,
            SignatureAlgorithm::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
        };
        signature::UnparsedPublicKey::new(alg, &self.public)
            .verify(message, sig)
            .is_ok()
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
