//! OPA bundle files: the `.tar.gz` layout `opa build -t wasm` writes (`/policy.wasm`,
//! `/data.json`, `/.manifest`, the Rego sources, and `/.signatures.json` once signed),
//! read with size limits so a hostile archive cannot exhaust memory.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};

/// Largest accepted bundle archive (compressed).
pub const MAX_BUNDLE_BYTES: usize = 32 * 1024 * 1024;
/// Largest accepted file inside a bundle (decompressed).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Largest accepted sum of all files (decompressed): the zip-bomb guard.
pub const MAX_TOTAL_BYTES: u64 = 128 * 1024 * 1024;
/// Most files a bundle may hold.
pub const MAX_FILES: usize = 4096;

/// The bundle manifest file.
pub const MANIFEST_FILE: &str = ".manifest";
/// The signatures file (OPA's bundle-signing scheme).
pub const SIGNATURES_FILE: &str = ".signatures.json";
/// The data document.
pub const DATA_FILE: &str = "data.json";
/// The wasm module `opa build -t wasm` writes.
pub const WASM_FILE: &str = "policy.wasm";

/// Errors reading or writing a bundle archive.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle is {size} bytes; the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("bundle file {name} exceeds the per-file limit of {limit} bytes")]
    FileTooLarge { name: String, limit: u64 },
    #[error("bundle files exceed {limit} bytes in total once decompressed")]
    TotalTooLarge { limit: u64 },
    #[error("bundle holds more than {limit} files")]
    TooManyFiles { limit: usize },
    #[error("bundle is not a readable .tar.gz: {0}")]
    Archive(#[source] std::io::Error),
    #[error("bundle entry {name:?} has an unsafe path (absolute outside the root, `..`, or empty)")]
    UnsafePath { name: String },
    #[error("bundle entry {name} appears twice")]
    DuplicateFile { name: String },
    #[error("bundle entry {name} is a {kind}; only regular files and directories are allowed")]
    UnsupportedEntry { name: String, kind: String },
    #[error("bundle has no {0} file")]
    MissingFile(&'static str),
    #[error("bundle {file} is not valid: {reason}")]
    InvalidFile { file: &'static str, reason: String },
}

/// `.manifest`: revision, the data roots the bundle owns, and the wasm entrypoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub revision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roots: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wasm: Vec<WasmResolver>,
    /// Anything else OPA writes (`rego_version`, `metadata`, …), kept as is.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// One `wasm` entry of the manifest: which module answers which entrypoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WasmResolver {
    pub entrypoint: String,
    pub module: String,
}

impl Manifest {
    /// Parses `.manifest`.
    pub fn parse(bytes: &[u8]) -> Result<Self, BundleError> {
        serde_json::from_slice(bytes).map_err(|e| BundleError::InvalidFile {
            file: MANIFEST_FILE,
            reason: e.to_string(),
        })
    }
}

/// The files of a bundle, by path relative to the bundle root (`policy.wasm`,
/// `.manifest`, `clinic/authz.rego`, …).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct BundleFiles {
    files: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for BundleFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names and sizes: the contents (a megabyte-sized module) are no use in a log.
        f.debug_map()
            .entries(self.files.iter().map(|(k, v)| (k, v.len())))
            .finish()
    }
}

impl BundleFiles {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, bytes: Vec<u8>) {
        self.files.insert(name.into(), bytes);
    }

    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(Vec::as_slice)
    }

    pub fn remove(&mut self, name: &str) -> Option<Vec<u8>> {
        self.files.remove(name)
    }

    /// File names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Reads a `.tar.gz` bundle, enforcing [`MAX_BUNDLE_BYTES`], [`MAX_FILE_BYTES`],
    /// [`MAX_TOTAL_BYTES`] and [`MAX_FILES`] before allocating for any entry.
    pub fn read_tar_gz(bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge {
                size: bytes.len(),
                limit: MAX_BUNDLE_BYTES,
            });
        }
        let mut archive = tar::Archive::new(GzDecoder::new(bytes));
        let mut out = Self::new();
        let mut total: u64 = 0;
        for entry in archive.entries().map_err(BundleError::Archive)? {
            let mut entry = entry.map_err(BundleError::Archive)?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type();
            if kind.is_dir() {
                continue;
            }
            if !(kind.is_file() || kind.is_contiguous()) {
                return Err(BundleError::UnsupportedEntry {
                    name: raw,
                    kind: format!("{kind:?}").to_lowercase(),
                });
            }
            let name =
                normalize(&raw).ok_or_else(|| BundleError::UnsafePath { name: raw.clone() })?;
            let declared = entry.header().size().map_err(BundleError::Archive)?;
            if declared > MAX_FILE_BYTES {
                return Err(BundleError::FileTooLarge {
                    name,
                    limit: MAX_FILE_BYTES,
                });
            }
            if out.files.len() >= MAX_FILES {
                return Err(BundleError::TooManyFiles { limit: MAX_FILES });
            }
            let mut buf = Vec::with_capacity(declared as usize);
            (&mut entry)
                .take(MAX_FILE_BYTES + 1)
                .read_to_end(&mut buf)
                .map_err(BundleError::Archive)?;
            total += buf.len() as u64;
            if buf.len() as u64 > MAX_FILE_BYTES {
                return Err(BundleError::FileTooLarge {
                    name,
                    limit: MAX_FILE_BYTES,
                });
            }
            if total > MAX_TOTAL_BYTES {
                return Err(BundleError::TotalTooLarge {
                    limit: MAX_TOTAL_BYTES,
                });
            }
            if out.files.insert(name.clone(), buf).is_some() {
                return Err(BundleError::DuplicateFile { name });
            }
        }
        Ok(out)
    }

    /// Writes the bundle as `.tar.gz` with OPA's `/name` entry paths, sorted, with fixed
    /// timestamps so the same files always give the same bytes.
    pub fn to_tar_gz(&self) -> Result<Vec<u8>, BundleError> {
        let gz = GzEncoder::new(Vec::new(), Compression::default());
        let mut builder = tar::Builder::new(gz);
        builder.mode(tar::HeaderMode::Deterministic);
        for (name, bytes) in &self.files {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            let rooted = format!("/{name}");
            let field = &mut header.as_old_mut().name;
            if rooted.len() < field.len() {
                field[..rooted.len()].copy_from_slice(rooted.as_bytes());
                header.set_cksum();
                builder
                    .append(&header, bytes.as_slice())
                    .map_err(BundleError::Archive)?;
            } else {
                // Too long for the classic field: a GNU long-name entry, relative.
                builder
                    .append_data(&mut header, name, bytes.as_slice())
                    .map_err(BundleError::Archive)?;
            }
        }
        let gz = builder.into_inner().map_err(BundleError::Archive)?;
        let mut out = gz.finish().map_err(BundleError::Archive)?;
        out.flush().map_err(BundleError::Archive)?;
        Ok(out)
    }
}

/// `/a/b.rego`, `./a/b.rego` and `a/b.rego` all name `a/b.rego`; `..`, empty and
/// backslash-separated paths are refused.
fn normalize(raw: &str) -> Option<String> {
    let trimmed = raw.trim_start_matches("./").trim_start_matches('/');
    if trimmed.is_empty() || trimmed.contains('\\') || trimmed.contains('\0') {
        return None;
    }
    let mut parts = Vec::new();
    for part in trimmed.split('/') {
        match part {
            "" | "." => continue,
            ".." => return None,
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_uses_rooted_names_and_is_deterministic() {
        let mut files = BundleFiles::new();
        files.insert("policy.wasm", vec![0, 97, 115, 109]);
        files.insert("data.json", b"{}".to_vec());
        files.insert(".manifest", b"{\"revision\":\"r1\"}".to_vec());
        let a = files.to_tar_gz().unwrap();
        let b = files.to_tar_gz().unwrap();
        assert_eq!(a, b);
        let mut archive = tar::Archive::new(GzDecoder::new(a.as_slice()));
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
            .collect();
        assert_eq!(names, ["/.manifest", "/data.json", "/policy.wasm"]);
        assert_eq!(BundleFiles::read_tar_gz(&a).unwrap(), files);
    }

    #[test]
    fn refuses_traversal_and_oversized_archives() {
        assert_eq!(normalize("/a/./b.rego").as_deref(), Some("a/b.rego"));
        assert_eq!(normalize("../etc/passwd"), None);
        assert_eq!(normalize("a/../../b"), None);
        assert_eq!(normalize("/"), None);
        let big = vec![0u8; MAX_BUNDLE_BYTES + 1];
        assert!(matches!(
            BundleFiles::read_tar_gz(&big),
            Err(BundleError::TooLarge { .. })
        ));
    }

    #[test]
    fn refuses_a_decompression_bomb_before_reading_it() {
        // One entry declaring more than the per-file limit: refused from its header.
        let gz = GzEncoder::new(Vec::new(), Compression::best());
        let mut builder = tar::Builder::new(gz);
        let mut header = tar::Header::new_gnu();
        header.set_size(MAX_FILE_BYTES + 1);
        header.set_mode(0o644);
        header.set_cksum();
        let zeros = std::io::repeat(0).take(MAX_FILE_BYTES + 1);
        builder
            .append_data(&mut header, "data.json", zeros)
            .unwrap();
        let bytes = builder.into_inner().unwrap().finish().unwrap();
        assert!(bytes.len() < MAX_BUNDLE_BYTES);
        let err = BundleFiles::read_tar_gz(&bytes).unwrap_err();
        assert!(matches!(err, BundleError::FileTooLarge { ref name, .. } if name == "data.json"));
    }
}
