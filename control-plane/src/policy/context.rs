//! The policy context agents long-poll: the active policy pointer, consent records,
//! break-glass grants valid now, and the pseudonym key — published through a `watch`.
//!
//! Its generation is a digest of the content, not a store counter, so every replica
//! computes the same generation for the same state, and the context changes when a grant
//! expires even though nothing was written. Replicas sharing a PostgreSQL database pick
//! up each other's writes by polling (`poll`), which rebuilds only when a kind's store
//! generation moved or a grant ran out.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngCore;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::watch;
use wardmesh_identity::seal::SealKey;
use wardmesh_proto::policy::{AgentPolicyContext, BreakGlassGrant, ConsentRecord};
use wardmesh_store::{ObjectChange, ObjectWrite, Store, StoreError};
use zeroize::Zeroizing;

use super::{ACTIVE_NAME, kinds};

const PSEUDONYM_KEY_NAME: &str = "pseudonym-key";
const PSEUDONYM_SEAL_PURPOSE: &str = "wardmesh subject pseudonym key";

/// Why the context could not be (re)built.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored {kind} {name:?} does not parse: {reason}")]
    Corrupt {
        kind: &'static str,
        name: String,
        reason: String,
    },
    #[error("the pseudonym key cannot be opened: {0}")]
    Seal(#[from] wardmesh_identity::seal::SealError),
}

/// Store generations and the earliest grant expiry the current context was built at.
type Built = (Vec<i64>, Option<OffsetDateTime>);

#[derive(Debug, Clone)]
pub struct ContextPublisher {
    tx: Arc<watch::Sender<Arc<AgentPolicyContext>>>,
    key_hex: Arc<Zeroizing<String>>,
    built: Arc<Mutex<Option<Built>>>,
}

impl ContextPublisher {
    pub async fn load(
        store: &Store,
        pseudonym_key: Zeroizing<Vec<u8>>,
        now: OffsetDateTime,
    ) -> Result<Self, ContextError> {
        let (tx, _) = watch::channel(Arc::new(AgentPolicyContext::default()));
        let this = Self {
            tx: Arc::new(tx),
            key_hex: Arc::new(Zeroizing::new(hex::encode(&*pseudonym_key))),
            built: Arc::new(Mutex::new(None)),
        };
        this.refresh(store, now).await?;
        Ok(this)
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<AgentPolicyContext>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<AgentPolicyContext> {
        self.tx.borrow().clone()
    }

    /// The pseudonym of `subject` under this mesh's key (what flow records carry).
    pub fn pseudonym(&self, subject: &str) -> String {
        let key = hex::decode(self.key_hex.as_str()).unwrap_or_default();
        wardmesh_proto::flow::subject_pseudonym(&key, subject)
    }

    /// Rebuilds the context if the store changed or a grant expired since the last build.
    pub async fn refresh(&self, store: &Store, now: OffsetDateTime) -> Result<(), ContextError> {
        let mut gens = Vec::with_capacity(3);
        for kind in [kinds::ACTIVE, kinds::CONSENT, kinds::GRANT] {
            gens.push(store.object_generation(kind).await?);
        }
        let unchanged = self
            .built
            .lock()
            .map(|b| match &*b {
                Some((g, next_expiry)) => *g == gens && next_expiry.is_none_or(|e| e > now),
                None => false,
            })
            .unwrap_or(false);
        if unchanged {
            return Ok(());
        }
        let (ctx, next_expiry) = build(store, &self.key_hex, now).await?;
        if let Ok(mut b) = self.built.lock() {
            *b = Some((gens, next_expiry));
        }
        self.tx.send_if_modified(|cur| {
            if cur.generation == ctx.generation {
                return false;
            }
            tracing::info!(generation = %ctx.generation, revision = ?ctx.active.as_ref().map(|a| &a.revision), consents = ctx.consents.len(), grants = ctx.break_glass.len(), "policy context changed");
            *cur = Arc::new(ctx);
            true
        });
        Ok(())
    }

    pub async fn poll(self, store: Store, interval: Duration, clock: crate::identity::Clock) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.refresh(&store, clock()).await {
                tracing::warn!(error = %e, "policy context refresh failed; agents keep the last context");
            }
        }
    }
}

async fn build(
    store: &Store,
    key_hex: &str,
    now: OffsetDateTime,
) -> Result<(AgentPolicyContext, Option<OffsetDateTime>), ContextError> {
    let active = match store.get_object(kinds::ACTIVE, ACTIVE_NAME).await? {
        Some(o) => Some(parse(kinds::ACTIVE, &o.name, &o.value)?),
        None => None,
    };
    let mut consents = BTreeMap::new();
    for o in store.list_objects(kinds::CONSENT).await? {
        let record: ConsentRecord = parse(kinds::CONSENT, &o.name, &o.value)?;
        consents.insert(o.name, record);
    }
    let mut break_glass = Vec::new();
    let mut next_expiry: Option<OffsetDateTime> = None;
    for o in store.list_objects(kinds::GRANT).await? {
        let grant: BreakGlassGrant = parse(kinds::GRANT, &o.name, &o.value)?;
        if grant.expires_at > now {
            next_expiry = Some(next_expiry.map_or(grant.expires_at, |e| e.min(grant.expires_at)));
            break_glass.push(grant);
        }
    }
    let mut ctx = AgentPolicyContext {
        generation: String::new(),
        active,
        consents,
        break_glass,
        pseudonym_key_hex: key_hex.to_owned(),
    };
    let digest = Sha256::digest(serde_json::to_vec(&ctx).unwrap_or_default());
    ctx.generation = hex::encode(&digest[..12]);
    Ok((ctx, next_expiry))
}

fn parse<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    name: &str,
    value: &str,
) -> Result<T, ContextError> {
    serde_json::from_str(value).map_err(|e| ContextError::Corrupt {
        kind,
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

/// The mesh's pseudonym key: created (sealed with the CA sealing key) on first start and
/// kept in the store, so every replica sharing the database derives the same pseudonyms.
pub async fn load_pseudonym_key(
    store: &Store,
    seal: &SealKey,
    now: OffsetDateTime,
) -> Result<Zeroizing<Vec<u8>>, ContextError> {
    let origin = Path::new("store:mesh.secret/pseudonym-key");
    if let Some(o) = store.get_object(kinds::SECRET, PSEUDONYM_KEY_NAME).await? {
        return Ok(seal.open(PSEUDONYM_SEAL_PURPOSE, o.value.as_bytes(), origin)?);
    }
    let mut key = Zeroizing::new(vec![0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut key);
    let sealed = seal.seal(PSEUDONYM_SEAL_PURPOSE, &key);
    let change = ObjectChange {
        writes: vec![ObjectWrite::Create {
            kind: kinds::SECRET.into(),
            name: PSEUDONYM_KEY_NAME.into(),
            value: String::from_utf8_lossy(&sealed).into_owned(),
            blob: None,
        }],
        at: now,
        by: "control-plane".into(),
        audit: None,
    };
    match store.change_objects(&change).await {
        Ok(_) => Ok(key),
        // Another replica created it first: use theirs.
        Err(StoreError::Conflict(_)) => {
            match store.get_object(kinds::SECRET, PSEUDONYM_KEY_NAME).await? {
                Some(o) => Ok(seal.open(PSEUDONYM_SEAL_PURPOSE, o.value.as_bytes(), origin)?),
                None => Err(StoreError::Corrupt("the pseudonym key vanished".into()).into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}
