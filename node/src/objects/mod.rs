//! Fleet objects with no registry: deployments, jobs, cron jobs, autoscalers, configs, secrets,
//! services, ingress rules, policies, namespaces and API keys are records signed by a fleet operator, versioned
//! by revision, gossiped to every member and kept in each member's store, so that any member
//! answers for them.
//!
//! Every object, whether this node signed it, gossip brought it or a peer's `object.sync` page
//! did, passes the same rules before it is kept ([`FleetObjects::admit`]): a fleet-object
//! envelope with a valid signature, for this node's network, signed by one of the operators this
//! node's config lists, with a well-formed name and spec; the store then keeps it only when it
//! supersedes the revision kept, so a replayed older revision changes nothing. A member that was
//! away catches up from each peer it connects to and, every few intervals, from one at random.

mod api_keys;
mod deployments;
mod jobs;
mod namespaces;
mod policies;
mod services;
mod values;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use claw_api::Command as _;
pub use claw_api::objects::FleetObject;
use claw_api::objects::{
    ObjectPage, ObjectPutAnswer, ObjectSync, PutParams, SYNC_PAGE_OBJECTS, SyncParams,
};
use claw_attestation::{PayloadKind, VerifiedEnvelope, Verifier, VerifyError};
use claw_mesh::{
    ErrorCode, InvokeFailure, InvokeRequest, MeshError, MeshHandle, PeerId, TopicKind,
};
use tokio::sync::mpsc;
pub use values::{Values, ValuesError};

use crate::access::AccessPolicy;
use crate::store::{ObjectKind, ObjectPut, ObjectRecord, Store};
use crate::{DataDir, now_ms};

/// Largest spec an object carries, as JSON text.
pub const MAX_SPEC_BYTES: usize = 32 * 1024;
/// Most base-64 text one `object.sync` page carries.
const SYNC_PAGE_CHARS: usize = 2 * 1024 * 1024;
/// Longest base-64 envelope taken from a sync page.
const MAX_ENVELOPE_CHARS: usize = 4 * (MAX_SPEC_BYTES + 4096) / 3;
/// How long a peer's `object.sync` page may take.
const SYNC_DEADLINE: Duration = Duration::from_secs(5);
/// A peer is synced from at most this often.
const RESYNC_AFTER_MS: u64 = 60_000;
/// Gossiped objects and connections waiting for the service; beyond this they are dropped (the
/// periodic sync brings what was missed).
const INBOX: usize = 256;

/// Why a signed object was not kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The envelope failed verification or is not a fleet object.
    #[error("{0}")]
    Envelope(#[from] VerifyError),
    /// It belongs to another network.
    #[error("the object belongs to network {0:?}")]
    Network(String),
    /// Its signer is not one of this node's fleet operators.
    #[error("{0} is not a fleet operator here")]
    NotOperator(PeerId),
    /// Its name, revision or spec is malformed.
    #[error("malformed object: {0}")]
    Malformed(String),
    /// It would bring back a revoked API key.
    #[error("API key {0:?} is revoked and stays revoked")]
    Unrevoked(String),
}

enum Inbound {
    Gossip(Box<VerifiedEnvelope>),
    Connected(PeerId),
}

struct Inner {
    dir: Arc<DataDir>,
    store: Store,
    access: AccessPolicy,
    verifier: Verifier,
    mesh: OnceLock<MeshHandle>,
    /// Local writes, one at a time, so that two never take the same revision.
    writes: tokio::sync::Mutex<()>,
    inbox: mpsc::Sender<Inbound>,
    inbox_rx: Mutex<Option<mpsc::Receiver<Inbound>>>,
    /// When each peer was last synced from, Unix ms.
    synced: Mutex<HashMap<PeerId, u64>>,
}

/// This member's fleet objects. Cheap to clone.
#[derive(Clone)]
pub struct FleetObjects {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FleetObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetObjects").finish_non_exhaustive()
    }
}

fn failure(code: ErrorCode, message: impl Into<String>) -> InvokeFailure {
    InvokeFailure::new(code, message)
}

impl FleetObjects {
    /// The fleet objects of the node in `dir`, kept in `store`, signed by the operators `access`
    /// names.
    pub fn new(dir: Arc<DataDir>, store: Store, access: AccessPolicy) -> Self {
        let verifier =
            Verifier::new().with_max_clock_skew(dir.config().attestation.max_clock_skew());
        let (inbox, inbox_rx) = mpsc::channel(INBOX);
        Self {
            inner: Arc::new(Inner {
                dir,
                store,
                access,
                verifier,
                mesh: OnceLock::new(),
                writes: tokio::sync::Mutex::new(()),
                inbox,
                inbox_rx: Mutex::new(Some(inbox_rx)),
                synced: Mutex::default(),
            }),
        }
    }

    /// Connects the service to the running mesh (objects are published and synced through it).
    pub fn attach(&self, mesh: MeshHandle) {
        let _ = self.inner.mesh.set(mesh);
    }

    fn network(&self) -> &str {
        &self.inner.dir.config().network.name
    }

    /// Takes a fleet object gossip brought (verified by the mesh); kept or dropped by the
    /// service's task.
    pub fn gossiped(&self, envelope: Box<VerifiedEnvelope>) {
        if self
            .inner
            .inbox
            .try_send(Inbound::Gossip(envelope))
            .is_err()
        {
            tracing::debug!("fleet object inbox full: the periodic sync will bring it");
        }
    }

    /// A peer connected: catch up from it (at most once a minute per peer).
    pub fn peer_connected(&self, peer: PeerId) {
        let _ = self.inner.inbox.try_send(Inbound::Connected(peer));
    }

    /// Checks a verified envelope against the rules every kept object passes, and reads it.
    pub fn admit(&self, verified: &VerifiedEnvelope) -> Result<ObjectRecord, Refusal> {
        let found = verified.envelope().kind();
        if found != PayloadKind::FleetObject {
            return Err(VerifyError::WrongKind {
                expected: PayloadKind::FleetObject,
                found,
            }
            .into());
        }
        let object: FleetObject = verified.open()?;
        if object.network != self.network() {
            return Err(Refusal::Network(object.network));
        }
        let signer = verified.signer_peer_id();
        if !self.inner.access.is_operator(&signer) {
            return Err(Refusal::NotOperator(signer));
        }
        if object.revision == 0 {
            return Err(Refusal::Malformed("revisions start at 1".to_owned()));
        }
        if let Some(spec) = &object.spec
            && spec.len() > MAX_SPEC_BYTES
        {
            return Err(Refusal::Malformed(format!(
                "the spec is over {MAX_SPEC_BYTES} bytes"
            )));
        }
        match object.kind {
            ObjectKind::Deployment => deployments::check(&object.name, object.spec.as_deref())
                .map_err(|e| Refusal::Malformed(e.to_string()))?,
            kind @ (ObjectKind::Job | ObjectKind::CronJob | ObjectKind::Autoscaler) => {
                jobs::check(kind, &object.name, object.spec.as_deref())
                    .map_err(Refusal::Malformed)?;
            }
            ObjectKind::Service => {
                services::check(&object.name, object.spec.as_deref()).map_err(Refusal::Malformed)?
            }
            ObjectKind::Namespace => namespaces::check(&object.name, object.spec.as_deref())
                .map_err(Refusal::Malformed)?,
            ObjectKind::Policy => {
                policies::check(&object.name, object.spec.as_deref()).map_err(Refusal::Malformed)?
            }
            ObjectKind::Ingress => services::check_ingress(&object.name, object.spec.as_deref())
                .map_err(Refusal::Malformed)?,
            ObjectKind::ApiKey => {
                api_keys::check(&object.name, object.spec.as_deref()).map_err(Refusal::Malformed)?
            }
            kind @ (ObjectKind::Config | ObjectKind::Secret) => {
                values::check(kind, &object.name, object.spec.as_deref())
                    .map_err(Refusal::Malformed)?;
            }
        }
        let envelope = verified.envelope();
        Ok(ObjectRecord {
            kind: object.kind,
            name: object.name,
            revision: object.revision,
            spec: object.spec,
            signed_by: signer.to_string(),
            signed_at_ms: envelope.issued_at_ms(),
            digest: hex::encode(envelope.digest()),
            envelope: base64::engine::general_purpose::STANDARD.encode(envelope.to_bytes()),
        })
    }

    /// Refuses a revision that would bring back a revoked API key: once revoked, a key stays
    /// revoked on this member whoever signs otherwise.
    async fn stays_revoked(&self, record: &ObjectRecord) -> Result<(), Refusal> {
        if record.kind != ObjectKind::ApiKey {
            return Ok(());
        }
        match self.kept(record.kind, &record.name).await {
            Ok(Some(kept)) if api_keys::unrevokes(&kept, record) => {
                Err(Refusal::Unrevoked(record.name.clone()))
            }
            _ => Ok(()),
        }
    }

    /// Admits and keeps `verified`, from `source` (for the log).
    async fn accept(&self, verified: &VerifiedEnvelope, source: &str) -> Option<ObjectPut> {
        let record = match self.admit(verified) {
            Ok(record) => record,
            Err(refusal) => {
                tracing::warn!(source, %refusal, "fleet object refused");
                return None;
            }
        };
        let key = record.key();
        let revision = record.revision;
        if let Err(refusal) = self.stays_revoked(&record).await {
            tracing::warn!(source, %refusal, "fleet object refused");
            return None;
        }
        match self.inner.store.run(move |s| s.put_object(&record)).await {
            Ok(put) => {
                match &put {
                    ObjectPut::Stored => tracing::info!(source, key, revision, "fleet object"),
                    ObjectPut::Stale { kept } => {
                        tracing::debug!(source, key, revision, kept, "stale fleet object")
                    }
                    ObjectPut::Full => {
                        tracing::warn!(source, key, "fleet object dropped: the store is full")
                    }
                }
                Some(put)
            }
            Err(error) => {
                tracing::error!(source, key, %error, "fleet object not kept");
                None
            }
        }
    }

    /// The kept revision of `kind` `name`, deleted ones included.
    async fn kept(
        &self,
        kind: ObjectKind,
        name: &str,
    ) -> Result<Option<ObjectRecord>, InvokeFailure> {
        let key = kind.key(name);
        Ok(self.inner.store.run(move |s| s.object(&key)).await?)
    }

    /// Signs the next revision of `kind` `name`, whose spec `change` makes from the kept
    /// revisions, newest first (`None` deletes it), keeps it and gossips it. Fails when this
    /// node's own key is not a fleet operator here: its objects would be refused by every
    /// member.
    async fn write(
        &self,
        kind: ObjectKind,
        name: &str,
        change: impl FnOnce(&[ObjectRecord]) -> Result<Option<String>, InvokeFailure>,
    ) -> Result<ObjectRecord, InvokeFailure> {
        let local = self.inner.access.local();
        if !self.inner.access.is_operator(&local) {
            return Err(failure(
                ErrorCode::Unauthorized,
                format!(
                    "this node ({local}) is not a fleet operator, so members would refuse the \
                     objects it signs: list it in [access] operators on every member"
                ),
            ));
        }
        let _one_writer = self.inner.writes.lock().await;
        let key = kind.key(name);
        let history = self
            .inner
            .store
            .run(move |s| s.object_history(&key))
            .await?;
        let spec = change(&history)?;
        let object = FleetObject {
            network: self.network().to_owned(),
            kind,
            name: name.to_owned(),
            revision: history.first().map_or(1, |k| k.revision + 1),
            spec,
        };
        let dir = Arc::clone(&self.inner.dir);
        let envelope = self
            .inner
            .store
            .run(move |store| {
                crate::seal_next(
                    &dir,
                    store,
                    PayloadKind::FleetObject.max_lifetime(),
                    &object,
                )
            })
            .await?;
        let verified = self
            .inner
            .verifier
            .verify(&envelope.to_bytes())
            .map_err(|e| {
                failure(
                    ErrorCode::Internal,
                    format!("the signed object does not verify: {e}"),
                )
            })?;
        let (record, put) = self.keep(&verified).await?;
        match put {
            ObjectPut::Stored => Ok(record),
            ObjectPut::Stale { kept } => Err(failure(
                ErrorCode::Conflict,
                format!(
                    "{} changed meanwhile (revision {kept}); try again",
                    record.key()
                ),
            )),
            ObjectPut::Full => Err(failure(
                ErrorCode::Conflict,
                format!(
                    "this member keeps {} objects already",
                    crate::store::MAX_OBJECTS
                ),
            )),
        }
    }

    /// Admits `verified` (as every member does), keeps it when it is newer, and gossips it
    /// when it was kept.
    async fn keep(
        &self,
        verified: &VerifiedEnvelope,
    ) -> Result<(ObjectRecord, ObjectPut), InvokeFailure> {
        let record = self.admit(verified).map_err(|refusal| {
            let code = match refusal {
                Refusal::NotOperator(_) => ErrorCode::Unauthorized,
                _ => ErrorCode::InvalidParams,
            };
            failure(code, refusal.to_string())
        })?;
        self.stays_revoked(&record)
            .await
            .map_err(|refusal| failure(ErrorCode::Conflict, refusal.to_string()))?;
        let put = {
            let record = record.clone();
            self.inner.store.run(move |s| s.put_object(&record)).await?
        };
        if put == ObjectPut::Stored
            && let Some(mesh) = self.inner.mesh.get()
        {
            match mesh
                .publish(TopicKind::Objects, verified.envelope().to_bytes())
                .await
            {
                Ok(()) | Err(MeshError::NoPeers) => {}
                Err(error) => tracing::warn!(%error, key = record.key(), "object not gossiped"),
            }
        }
        Ok((record, put))
    }

    /// `object.put`: a signed object an operator's tool hands this member.
    pub async fn put(&self, params: PutParams) -> Result<ObjectPutAnswer, InvokeFailure> {
        if params.object.len() > MAX_ENVELOPE_CHARS {
            return Err(failure(
                ErrorCode::InvalidParams,
                "the object is over the size limit",
            ));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&params.object)
            .map_err(|e| {
                failure(
                    ErrorCode::InvalidParams,
                    format!("object is not base-64: {e}"),
                )
            })?;
        let verified = self
            .inner
            .verifier
            .verify_at(&bytes, None, now_ms())
            .map_err(|e| failure(ErrorCode::InvalidParams, e.to_string()))?;
        let (record, put) = self.keep(&verified).await?;
        tracing::info!(
            key = record.key(),
            revision = record.revision,
            ?put,
            "object handed in"
        );
        match put {
            ObjectPut::Stored => Ok(ObjectPutAnswer {
                key: record.key(),
                revision: record.revision,
                stored: true,
            }),
            ObjectPut::Stale { kept } => Ok(ObjectPutAnswer {
                key: record.key(),
                revision: kept,
                stored: false,
            }),
            ObjectPut::Full => Err(failure(
                ErrorCode::Conflict,
                format!(
                    "this member keeps {} objects already",
                    crate::store::MAX_OBJECTS
                ),
            )),
        }
    }

    /// `object.sync`: a page of the objects kept, after the key `after`.
    pub async fn page(&self, params: SyncParams) -> Result<ObjectPage, InvokeFailure> {
        let (records, more) = self
            .inner
            .store
            .run(move |s| s.objects_after(params.after.as_deref(), SYNC_PAGE_OBJECTS))
            .await?;
        let mut page = ObjectPage::default();
        let mut chars = 0;
        let count = records.len();
        for (index, record) in records.into_iter().enumerate() {
            chars += record.envelope.len();
            let last = record.key();
            page.objects.push(record.envelope);
            if chars >= SYNC_PAGE_CHARS && index + 1 < count {
                page.next = Some(last);
                return Ok(page);
            }
            if index + 1 == count && more {
                page.next = Some(last);
            }
        }
        Ok(page)
    }

    /// Catches up from `peer`: reads its pages and keeps what passes the rules. Returns how
    /// many objects were newer than this member's.
    pub async fn catch_up(&self, peer: PeerId) -> Result<usize, InvokeFailure> {
        let mesh = self
            .inner
            .mesh
            .get()
            .ok_or_else(|| failure(ErrorCode::Unavailable, "the mesh is not up"))?;
        let source = peer.to_string();
        let mut after: Option<String> = None;
        let mut newer = 0;
        // A peer holds at most as many objects as a member keeps: more pages than that is a
        // peer that never ends.
        for _ in 0..=(crate::store::MAX_OBJECTS / SYNC_PAGE_OBJECTS + 1) {
            let params = serde_json::to_value(SyncParams {
                after: after.clone(),
            })
            .map_err(|e| failure(ErrorCode::Internal, e.to_string()))?;
            let request = InvokeRequest::new(ObjectSync::NAME, SYNC_DEADLINE).with_params(params);
            let page = ObjectSync::decode(mesh.invoke(peer, request).await?)?;
            for text in page.objects.iter().take(SYNC_PAGE_OBJECTS) {
                if text.len() > MAX_ENVELOPE_CHARS {
                    tracing::warn!(%peer, "object.sync: an envelope over the size limit");
                    continue;
                }
                let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text) else {
                    tracing::warn!(%peer, "object.sync: an envelope that is not base-64");
                    continue;
                };
                let verified = match self.inner.verifier.verify_at(&bytes, None, now_ms()) {
                    Ok(verified) => verified,
                    Err(error) => {
                        tracing::warn!(%peer, %error, "object.sync: an invalid envelope");
                        continue;
                    }
                };
                if self.accept(&verified, &source).await == Some(ObjectPut::Stored) {
                    newer += 1;
                }
            }
            match page.next {
                // Keys must move forward, or a peer could keep this loop on one page.
                Some(next) if after.as_ref().is_none_or(|a| next > *a) => after = Some(next),
                _ => break,
            }
        }
        Ok(newer)
    }

    /// Keeps gossiped objects and catches up from peers as they connect, and from one connected
    /// peer every `every`, until the inbox closes. Runs once: a second call returns at once.
    pub async fn run(self, every: Duration) {
        let taken = self
            .inner
            .inbox_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut inbox) = taken else {
            return;
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                inbound = inbox.recv() => match inbound {
                    Some(Inbound::Gossip(verified)) => {
                        self.accept(&verified, "gossip").await;
                    }
                    Some(Inbound::Connected(peer)) => self.sync_from(peer, false).await,
                    None => return,
                },
                _ = tick.tick() => {
                    if let Some(peer) = self.random_peer().await {
                        self.sync_from(peer, true).await;
                    }
                }
            }
        }
    }

    async fn random_peer(&self) -> Option<PeerId> {
        let peers = self.inner.mesh.get()?.connected_peers().await.ok()?;
        if peers.is_empty() {
            return None;
        }
        let index = usize::try_from(now_ms()).unwrap_or(0) % peers.len();
        peers.get(index).copied()
    }

    async fn sync_from(&self, peer: PeerId, periodic: bool) {
        let now = now_ms();
        {
            let mut synced = self
                .inner
                .synced
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !periodic
                && synced
                    .get(&peer)
                    .is_some_and(|at| now < at + RESYNC_AFTER_MS)
            {
                return;
            }
            // One entry per connected peer at most: forget the ones synced long ago.
            synced.retain(|_, at| now < *at + 10 * RESYNC_AFTER_MS);
            synced.insert(peer, now);
        }
        match self.catch_up(peer).await {
            Ok(0) => {}
            Ok(newer) => tracing::info!(%peer, newer, "caught up on fleet objects"),
            // Peers that are not members (a bridge) have no objects to give.
            Err(error) if error.code == ErrorCode::UnknownCommand => {}
            Err(error) => tracing::debug!(%peer, %error, "fleet object sync failed"),
        }
    }
}
