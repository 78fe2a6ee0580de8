//! Backups of this node's volumes: each is a tar archive of the volume's files under the data
//! directory (`backups/<id>.tar`) and a manifest this node signs (the volume, the archive's size
//! and SHA-256). A backup copied to another member is pulled by that member, piece by piece,
//! from the node that made it (`backup.read`, answered only to the member it was offered to),
//! and kept there only when it matches the signed manifest. Nothing is restored unless the
//! archive still matches the manifest and the manifest's signature holds, so a backup changed
//! on disk, or one a member forged, is refused.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use claw_api::storage::{
    Backup, BackupListing, BackupManifest, BackupRead, Chunk, KeyBackup, MAX_BACKUP_BYTES,
    MAX_BACKUPS, READ_CHUNK_BYTES, ReadParams, ReceiveParams, Volume,
};
use claw_api::{Command as _, ErrorCode, InvokeFailure};
use claw_attestation::{PayloadKind, Verifier};
use claw_mesh::{InvokeRequest, MeshHandle, PeerId};
use rand::RngCore as _;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use crate::store::{BackupRecord, Store};
use crate::workloads::Workloads;
use crate::{DataDir, now_ms};

/// Under the data directory: the archives.
const BACKUPS_DIR: &str = "backups";
/// How long one `backup.read` may take.
const READ_DEADLINE: Duration = Duration::from_secs(30);
/// How long a member may take to pull a copy.
pub const COPY_DEADLINE: Duration = Duration::from_secs(15 * 60);

fn failure(code: ErrorCode, message: impl Into<String>) -> InvokeFailure {
    InvokeFailure::new(code, message)
}

fn io_failure(what: &std::path::Path, error: &std::io::Error) -> InvokeFailure {
    failure(ErrorCode::Internal, format!("{}: {error}", what.display()))
}

struct Inner {
    dir: Arc<DataDir>,
    store: Store,
    workloads: Workloads,
    verifier: Verifier,
    mesh: OnceLock<MeshHandle>,
}

/// This node's backups. Cheap to clone.
#[derive(Clone)]
pub struct Backups {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Backups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backups").finish_non_exhaustive()
    }
}

impl Backups {
    /// The backups of the node in `dir`, recorded in `store`, of `workloads`' volumes.
    pub fn new(dir: Arc<DataDir>, store: Store, workloads: Workloads) -> Self {
        let verifier =
            Verifier::new().with_max_clock_skew(dir.config().attestation.max_clock_skew());
        Self {
            inner: Arc::new(Inner {
                dir,
                store,
                workloads,
                verifier,
                mesh: OnceLock::new(),
            }),
        }
    }

    /// Connects the service to the running mesh (copies go through it).
    pub fn attach(&self, mesh: MeshHandle) {
        let _ = self.inner.mesh.set(mesh);
    }

    fn mesh(&self) -> Result<&MeshHandle, InvokeFailure> {
        self.inner
            .mesh
            .get()
            .ok_or_else(|| failure(ErrorCode::Unavailable, "the mesh is not up"))
    }

    fn network(&self) -> &str {
        &self.inner.dir.config().network.name
    }

    fn local(&self) -> PeerId {
        self.inner.dir.identity().peer_id()
    }

    fn archive(&self, id: &str) -> PathBuf {
        self.inner
            .dir
            .root()
            .join(BACKUPS_DIR)
            .join(format!("{id}.tar"))
    }

    /// The manifest in `envelope` (base-64) and who signed it, when the signature holds and it
    /// is this network's.
    fn manifest(&self, envelope: &str) -> Result<(BackupManifest, PeerId), InvokeFailure> {
        let refused = |message: String| failure(ErrorCode::InvalidParams, message);
        if envelope.len() > 16 * 1024 {
            return Err(refused("the manifest is over the size limit".to_owned()));
        }
        let bytes = STANDARD
            .decode(envelope)
            .map_err(|e| refused(format!("the manifest is not base-64: {e}")))?;
        let verified = self
            .inner
            .verifier
            .verify_at(&bytes, None, now_ms())
            .map_err(|e| refused(format!("the manifest does not verify: {e}")))?;
        let manifest: BackupManifest = verified
            .open()
            .map_err(|e| refused(format!("not a backup manifest: {e}")))?;
        manifest.check().map_err(|e| refused(e.to_string()))?;
        if manifest.network != self.network() {
            return Err(refused(format!(
                "the backup belongs to network {:?}",
                manifest.network
            )));
        }
        Ok((manifest, verified.signer_peer_id()))
    }

    fn answer(&self, record: &BackupRecord) -> Result<Backup, InvokeFailure> {
        let (manifest, _) = self.manifest(&record.envelope)?;
        Ok(Backup {
            manifest,
            source: record.source.clone(),
            copied_to: record.copied_to.clone(),
        })
    }

    async fn record(&self, id: &str) -> Result<BackupRecord, InvokeFailure> {
        let key = id.to_owned();
        self.inner
            .store
            .run(move |s| s.backup(&key))
            .await?
            .ok_or_else(|| {
                failure(
                    ErrorCode::NotFound,
                    format!("no backup {id:?} on this node (backup.list lists them)"),
                )
            })
    }

    async fn room(&self) -> Result<(), InvokeFailure> {
        let kept = self.inner.store.run(|s| s.backups()).await?.len();
        if kept >= MAX_BACKUPS {
            return Err(failure(
                ErrorCode::Conflict,
                format!("this node keeps {MAX_BACKUPS} backups already: backup.delete some"),
            ));
        }
        Ok(())
    }

    /// `backup.create` and `volume.snapshot`: backs up `volume`, and copies the backup to
    /// member `node` when one is named.
    pub async fn create(
        &self,
        volume: &str,
        node: Option<&str>,
        path: Option<&str>,
    ) -> Result<Backup, InvokeFailure> {
        self.room().await?;
        let copy_to = node.map(|node| self.member(node)).transpose()?;
        let export_to = path
            .map(|path| self.inner.workloads.root_dir(path, true))
            .transpose()?;
        let mut id_bytes = [0u8; 6];
        rand::rngs::OsRng.fill_bytes(&mut id_bytes);
        let id = format!("bk-{}", hex::encode(id_bytes));
        let path = self.archive(&id);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io_failure(parent, &e))?;
        }
        let (size_bytes, sha256) = self
            .inner
            .workloads
            .export_volume(volume, &path, MAX_BACKUP_BYTES)
            .await?;
        let manifest = BackupManifest {
            network: self.network().to_owned(),
            id: id.clone(),
            volume: volume.to_owned(),
            created_ms: now_ms(),
            size_bytes,
            sha256,
        };
        let dir = Arc::clone(&self.inner.dir);
        let signed = manifest.clone();
        let envelope = self
            .inner
            .store
            .run(move |store| {
                crate::seal_next(
                    &dir,
                    store,
                    PayloadKind::BackupManifest.max_lifetime(),
                    &signed,
                )
            })
            .await?;
        let record = BackupRecord {
            envelope: STANDARD.encode(envelope.to_bytes()),
            id: id.clone(),
            source: self.local().to_string(),
            copied_to: copy_to.map(|peer| peer.to_string()),
            kept_ms: now_ms(),
        };
        {
            let record = record.clone();
            self.inner.store.run(move |s| s.put_backup(&record)).await?;
        }
        tracing::info!(backup = %id, volume, size_bytes, "backup made");
        if let Some(dir) = export_to {
            let (archive, manifest_text) = (path.clone(), record.envelope.clone());
            let id = id.clone();
            tokio::task::spawn_blocking(move || export(&dir, &id, &archive, &manifest_text))
                .await
                .map_err(|e| failure(ErrorCode::Internal, e.to_string()))??;
        }
        if let Some(peer) = copy_to {
            let params = serde_json::to_value(ReceiveParams {
                manifest: record.envelope.clone(),
            })
            .map_err(|e| failure(ErrorCode::Internal, e.to_string()))?;
            let request = InvokeRequest::new(claw_api::storage::BackupReceive::NAME, COPY_DEADLINE)
                .with_params(params);
            let copied = claw_api::storage::BackupReceive::decode(
                self.mesh()?.invoke(peer, request).await?,
            )?;
            if copied.manifest != manifest {
                return Err(failure(
                    ErrorCode::Internal,
                    format!("{peer} kept another manifest than {id}'s"),
                ));
            }
            tracing::info!(backup = %id, %peer, "backup copied");
        }
        self.answer(&record)
    }

    /// `backup.keys`: this node's identity and wallet keys sealed to `to`, which must be one of
    /// its admins. An admin may already do anything here (`system.run` included), so the
    /// backup gives no one more than they had; to every other key it is noise.
    pub fn seal_keys(
        &self,
        to: &str,
        access: &crate::access::AccessPolicy,
    ) -> Result<KeyBackup, InvokeFailure> {
        let admin: PeerId = to
            .parse()
            .map_err(|_| failure(ErrorCode::InvalidParams, format!("{to:?} is not a peer id")))?;
        if !access.is_admin(&admin) {
            return Err(failure(
                ErrorCode::Unauthorized,
                format!(
                    "{admin} is not one of this node's admins: its keys are sealed only to a peer \
                 listed in [access] admins"
                ),
            ));
        }
        let dir = &self.inner.dir;
        let sealed =
            claw_attestation::seal_node_keys(dir.identity(), dir.wallet(), self.network(), &admin)
                .map_err(|e| failure(ErrorCode::InvalidParams, e.to_string()))?;
        tracing::info!(%admin, "node keys sealed to an admin");
        Ok(KeyBackup {
            node: self.local().to_string(),
            wallet: dir.wallet().address(),
            sealed_to: admin.to_string(),
            sealed: STANDARD.encode(sealed),
        })
    }

    /// The member `node` (peer id or a name unique among members) names.
    fn member(&self, node: &str) -> Result<PeerId, InvokeFailure> {
        let members = self.mesh()?.fleet_members();
        let named: Vec<PeerId> = members
            .iter()
            .filter(|m| m.peer_id.to_string() == node || m.announcement.name == node)
            .map(|m| m.peer_id)
            .collect();
        match named.as_slice() {
            [peer] if *peer != self.local() => Ok(*peer),
            [_] => Err(failure(
                ErrorCode::InvalidParams,
                "a copy goes to another member; this node keeps the backup already",
            )),
            [] => Err(failure(
                ErrorCode::NotFound,
                format!("no member {node:?} in this node's fleet view"),
            )),
            _ => Err(failure(
                ErrorCode::InvalidParams,
                format!("{} members are named {node:?}: give a peer id", named.len()),
            )),
        }
    }

    /// `backup.list`.
    pub async fn list(&self) -> Result<BackupListing, InvokeFailure> {
        let records = self.inner.store.run(|s| s.backups()).await?;
        let mut backups = Vec::new();
        for record in &records {
            match self.answer(record) {
                Ok(backup) => backups.push(backup),
                Err(error) => {
                    tracing::warn!(backup = record.id, %error, "a kept backup does not verify")
                }
            }
        }
        Ok(BackupListing { backups })
    }

    /// `backup.delete`.
    pub async fn delete(&self, id: &str) -> Result<Backup, InvokeFailure> {
        let record = self.record(id).await?;
        let answer = self.answer(&record);
        let path = self.archive(id);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_failure(&path, &e)),
        }
        let key = id.to_owned();
        self.inner.store.run(move |s| s.remove_backup(&key)).await?;
        answer
    }

    /// `backup.restore`: into the new volume `volume` (of `size_mib`, when given), once the
    /// archive matches its signed manifest.
    pub async fn restore(
        &self,
        id: &str,
        volume: &str,
        size_mib: Option<u64>,
    ) -> Result<Volume, InvokeFailure> {
        let record = self.record(id).await?;
        let (manifest, signer) = self.manifest(&record.envelope)?;
        if signer.to_string() != record.source || manifest.id != id {
            return Err(failure(
                ErrorCode::Conflict,
                format!("backup {id}'s manifest is not the one its maker signed for it: refused"),
            ));
        }
        let path = self.archive(id);
        let archive = tokio::fs::read(&path)
            .await
            .map_err(|e| io_failure(&path, &e))?;
        let digest = hex::encode(sha2::Sha256::digest(&archive));
        if archive.len() as u64 != manifest.size_bytes || digest != manifest.sha256 {
            tracing::warn!(backup = id, "a backup does not match its signed digest");
            return Err(failure(
                ErrorCode::Conflict,
                format!(
                    "backup {id} does not match its signed digest (changed since it was made): \
                     refused"
                ),
            ));
        }
        let restored = self
            .inner
            .workloads
            .restore_volume(volume, size_mib, bytes::Bytes::from(archive))
            .await?;
        tracing::info!(backup = id, volume, "backup restored");
        Ok(restored)
    }

    /// `backup.import`: backup `id` from directory `path` (under a volume root), kept when its
    /// manifest's signature holds and the archive matches it.
    pub async fn import(&self, path: &str, id: &str) -> Result<Backup, InvokeFailure> {
        let valid_id = id
            .strip_prefix("bk-")
            .is_some_and(|h| h.len() == 12 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !valid_id {
            return Err(failure(
                ErrorCode::InvalidParams,
                "a backup id is bk-<12 hex digits>",
            ));
        }
        if let Ok(kept) = self.record(id).await {
            return self.answer(&kept);
        }
        self.room().await?;
        let dir = self.inner.workloads.root_dir(path, false)?;
        let target = self.archive(id);
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io_failure(parent, &e))?;
        }
        let (name, partial) = (id.to_owned(), target.with_extension("partial"));
        let copied = {
            let partial = partial.clone();
            tokio::task::spawn_blocking(move || import(&dir, &name, &partial))
                .await
                .map_err(|e| failure(ErrorCode::Internal, e.to_string()))?
        };
        let (envelope, size, digest) = match copied {
            Ok(copied) => copied,
            Err(error) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(error);
            }
        };
        let checked = self.manifest(&envelope).and_then(|(manifest, signer)| {
            if manifest.id != id || manifest.size_bytes != size || manifest.sha256 != digest {
                Err(failure(
                    ErrorCode::Conflict,
                    format!("backup {id} does not match its signed digest: refused"),
                ))
            } else {
                Ok(signer)
            }
        });
        let signer = match checked {
            Ok(signer) => signer,
            Err(error) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(error);
            }
        };
        tokio::fs::rename(&partial, &target)
            .await
            .map_err(|e| io_failure(&target, &e))?;
        let record = BackupRecord {
            envelope,
            id: id.to_owned(),
            source: signer.to_string(),
            copied_to: None,
            kept_ms: now_ms(),
        };
        {
            let record = record.clone();
            self.inner.store.run(move |s| s.put_backup(&record)).await?;
        }
        tracing::info!(backup = id, "backup imported");
        self.answer(&record)
    }

    /// `backup.receive`: `caller` offers a backup it made; this node pulls the archive and
    /// keeps it when it matches the manifest.
    pub async fn receive(
        &self,
        caller: PeerId,
        params: ReceiveParams,
    ) -> Result<Backup, InvokeFailure> {
        let (manifest, signer) = self.manifest(&params.manifest)?;
        if signer != caller {
            return Err(failure(
                ErrorCode::Unauthorized,
                "a member offers only backups it made itself",
            ));
        }
        let member = self
            .mesh()?
            .fleet_members()
            .iter()
            .any(|m| m.peer_id == caller);
        if !member {
            return Err(failure(
                ErrorCode::Unauthorized,
                "only a member of this node's fleet view may offer it a backup",
            ));
        }
        if let Ok(kept) = self.record(&manifest.id).await {
            return self.answer(&kept);
        }
        self.room().await?;
        let path = self.archive(&manifest.id);
        let partial = path.with_extension("partial");
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io_failure(parent, &e))?;
        }
        let pulled = self.pull(caller, &manifest, &partial).await;
        if let Err(error) = pulled {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(error);
        }
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(|e| io_failure(&path, &e))?;
        let record = BackupRecord {
            envelope: params.manifest,
            id: manifest.id.clone(),
            source: caller.to_string(),
            copied_to: None,
            kept_ms: now_ms(),
        };
        {
            let record = record.clone();
            self.inner.store.run(move |s| s.put_backup(&record)).await?;
        }
        tracing::info!(backup = manifest.id, source = %caller, "backup copy kept");
        self.answer(&record)
    }

    /// Reads backup `manifest` from `source` into `out`, checking its size and digest.
    async fn pull(
        &self,
        source: PeerId,
        manifest: &BackupManifest,
        out: &std::path::Path,
    ) -> Result<(), InvokeFailure> {
        let mesh = self.mesh()?;
        let mut file = tokio::fs::File::create(out)
            .await
            .map_err(|e| io_failure(out, &e))?;
        let (mut offset, mut hash) = (0u64, sha2::Sha256::new());
        loop {
            let params = serde_json::to_value(ReadParams {
                backup: manifest.id.clone(),
                offset,
            })
            .map_err(|e| failure(ErrorCode::Internal, e.to_string()))?;
            let request = InvokeRequest::new(BackupRead::NAME, READ_DEADLINE).with_params(params);
            let chunk: Chunk = BackupRead::decode(mesh.invoke(source, request).await?)?;
            let data = STANDARD.decode(&chunk.data).map_err(|e| {
                failure(
                    ErrorCode::InvalidParams,
                    format!("a piece is not base-64: {e}"),
                )
            })?;
            if data.len() > READ_CHUNK_BYTES || offset + data.len() as u64 > manifest.size_bytes {
                return Err(failure(
                    ErrorCode::InvalidParams,
                    "the archive is longer than its manifest says",
                ));
            }
            hash.update(&data);
            file.write_all(&data)
                .await
                .map_err(|e| io_failure(out, &e))?;
            offset += data.len() as u64;
            if chunk.eof {
                break;
            }
            if data.is_empty() {
                return Err(failure(
                    ErrorCode::InvalidParams,
                    "an empty piece before the end",
                ));
            }
        }
        file.sync_all().await.map_err(|e| io_failure(out, &e))?;
        if offset != manifest.size_bytes || hex::encode(hash.finalize()) != manifest.sha256 {
            return Err(failure(
                ErrorCode::InvalidParams,
                "the archive does not match its signed digest: not kept",
            ));
        }
        Ok(())
    }

    /// `backup.read`: a piece of a backup this node made, for the member it was copied to.
    pub async fn read(&self, caller: PeerId, params: ReadParams) -> Result<Chunk, InvokeFailure> {
        let record = self.record(&params.backup).await?;
        let offered = record.copied_to.as_deref() == Some(caller.to_string().as_str())
            && record.source == self.local().to_string();
        if !offered {
            return Err(failure(
                ErrorCode::Unauthorized,
                format!("backup {} was not offered to {caller}", params.backup),
            ));
        }
        let path = self.archive(&params.backup);
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| io_failure(&path, &e))?;
        let length = file
            .metadata()
            .await
            .map_err(|e| io_failure(&path, &e))?
            .len();
        let offset = params.offset.min(length);
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| io_failure(&path, &e))?;
        let mut data = vec![0u8; READ_CHUNK_BYTES.min((length - offset) as usize)];
        file.read_exact(&mut data)
            .await
            .map_err(|e| io_failure(&path, &e))?;
        Ok(Chunk {
            eof: offset + data.len() as u64 >= length,
            data: STANDARD.encode(&data),
        })
    }
}

/// Opens `name` in `dir` without following a symlink: for writing (a new file) or reading.
fn open_in(
    dir: &std::os::fd::OwnedFd,
    name: &str,
    write: bool,
) -> Result<std::fs::File, InvokeFailure> {
    use rustix::fs::{Mode, OFlags};
    let flags = if write {
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL
    } else {
        OFlags::RDONLY
    } | OFlags::NOFOLLOW
        | OFlags::CLOEXEC;
    rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600))
        .map(std::fs::File::from)
        .map_err(|e| failure(ErrorCode::InvalidParams, format!("{name}: {e}")))
}

/// Writes backup `id`'s archive (copied from `archive`) and manifest into `dir`.
fn export(
    dir: &std::os::fd::OwnedFd,
    id: &str,
    archive: &std::path::Path,
    manifest: &str,
) -> Result<(), InvokeFailure> {
    use std::io::Write as _;
    let mut source = std::fs::File::open(archive).map_err(|e| io_failure(archive, &e))?;
    let mut out = open_in(dir, &format!("{id}.tar"), true)?;
    std::io::copy(&mut source, &mut out)
        .and_then(|_| out.sync_all())
        .map_err(|e| failure(ErrorCode::Internal, format!("{id}.tar: {e}")))?;
    let mut out = open_in(dir, &format!("{id}.manifest"), true)?;
    out.write_all(manifest.as_bytes())
        .and_then(|()| out.sync_all())
        .map_err(|e| failure(ErrorCode::Internal, format!("{id}.manifest: {e}")))
}

/// Reads backup `id` from `dir`: its manifest (base-64 envelope), and its archive copied to
/// `out`, with the archive's size and SHA-256.
fn import(
    dir: &std::os::fd::OwnedFd,
    id: &str,
    out: &std::path::Path,
) -> Result<(String, u64, String), InvokeFailure> {
    use std::io::{Read as _, Write as _};
    let mut manifest = String::new();
    open_in(dir, &format!("{id}.manifest"), false)?
        .take(16 * 1024)
        .read_to_string(&mut manifest)
        .map_err(|e| failure(ErrorCode::InvalidParams, format!("{id}.manifest: {e}")))?;
    let mut source = open_in(dir, &format!("{id}.tar"), false)?.take(MAX_BACKUP_BYTES + 1);
    let mut file = std::fs::File::create(out).map_err(|e| io_failure(out, &e))?;
    let (mut size, mut hash, mut buffer) = (0u64, sha2::Sha256::new(), vec![0u8; 64 * 1024]);
    loop {
        let read = source
            .read(&mut buffer)
            .map_err(|e| failure(ErrorCode::InvalidParams, format!("{id}.tar: {e}")))?;
        if read == 0 {
            break;
        }
        size += read as u64;
        if size > MAX_BACKUP_BYTES {
            return Err(failure(
                ErrorCode::InvalidParams,
                "the archive is over 1 GiB",
            ));
        }
        hash.update(&buffer[..read]);
        file.write_all(&buffer[..read])
            .map_err(|e| io_failure(out, &e))?;
    }
    file.sync_all().map_err(|e| io_failure(out, &e))?;
    Ok((
        manifest.trim().to_owned(),
        size,
        hex::encode(hash.finalize()),
    ))
}
