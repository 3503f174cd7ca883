//! Remembers which tokens' signatures already verified against the current key set, so
//! a user's token is checked cryptographically once, not on every request (a signature
//! check costs 30–100 µs; the claims — `exp`, `nbf`, `aud` — are still checked every
//! time). Entries are SHA-256 digests, never tokens, and belong to one key-set
//! snapshot: a refresh that changes the keys forgets them all, so a key the IdP
//! withdrew stops validating tokens at the next request.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::keys::KeySet;

/// At most this many digests (32 bytes each); when full, the set starts over.
const CAPACITY: usize = 4096;

#[derive(Default)]
pub(super) struct VerifiedTokens {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The snapshot the digests were verified against.
    keys: Option<Arc<KeySet>>,
    digests: HashSet<[u8; 32]>,
}

pub(super) fn digest(raw: &str) -> [u8; 32] {
    Sha256::digest(raw.as_bytes()).into()
}

impl VerifiedTokens {
    /// Whether `digest` verified against exactly this snapshot.
    pub(super) fn contains(&self, keys: &Arc<KeySet>, digest: &[u8; 32]) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.keys.as_ref().is_some_and(|k| Arc::ptr_eq(k, keys)) && inner.digests.contains(digest)
    }

    pub(super) fn insert(&self, keys: &Arc<KeySet>, digest: [u8; 32]) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let same_keys = inner.keys.as_ref().is_some_and(|k| Arc::ptr_eq(k, keys));
        if !same_keys || inner.digests.len() >= CAPACITY {
            inner.digests.clear();
            inner.keys = Some(Arc::clone(keys));
        }
        inner.digests.insert(digest);
    }
}
