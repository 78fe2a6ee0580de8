//! Storage: named volumes on a node (Docker volumes under the node's control, mounted by name
//! into its workloads), and backups of them: a volume's files as one tar archive, named by its
//! SHA-256 in a manifest the node that made it signs, kept on that node or copied to another
//! member over the mesh, and restored only when the archive still matches the digest.

use claw_attestation::{PayloadKind, SignedPayload};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Answer;
use crate::command::commands;
use crate::workload::{SpecError, is_simple_name};

/// Most bytes one backup holds.
pub const MAX_BACKUP_BYTES: u64 = 1024 * 1024 * 1024;
/// Most backups one node keeps.
pub const MAX_BACKUPS: usize = 64;
/// Most bytes one `backup.read` carries (before base-64).
pub const READ_CHUNK_BYTES: usize = 2 * 1024 * 1024;

/// Checks a volume's name: 1 to 32 of `a-z 0-9 -`.
pub fn check_volume_name(name: &str) -> Result<(), SpecError> {
    if is_simple_name(name, 32) {
        Ok(())
    } else {
        Err(SpecError::Invalid(format!(
            "volume name {name:?} must be 1 to 32 of a-z, 0-9 and '-'"
        )))
    }
}

/// Commands that name one volume: `volume.create`, `volume.delete`, `volume.snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeRef {
    /// The volume's name on this node: 1 to 32 of `a-z 0-9 -`.
    pub name: String,
}

/// `volume.create`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreateParams {
    /// The volume's name on this node: 1 to 32 of `a-z 0-9 -`.
    pub name: String,
    /// A size limit in MiB (8 to 1048576): the volume is then its own filesystem of that size,
    /// its space reserved on the host, and writes past it fail with "no space left on device".
    /// Needs a node that runs as root with loop devices; without, the volume grows while the
    /// host has room.
    #[serde(default)]
    pub size_mib: Option<u64>,
}

/// A named volume on a node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// Its name on this node.
    pub name: String,
    /// The Docker volume behind it.
    pub docker_name: String,
    /// When it was created, as Docker reports it (RFC 3339), when it does.
    #[serde(default)]
    pub created_at: Option<String>,
    /// Its size limit in MiB, when it has one (its own filesystem of that size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_mib: Option<u64>,
    /// Its active workloads (ids) that mount it.
    pub used_by: Vec<String>,
}

impl Answer for Volume {}

/// `volume.list`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeListing {
    /// This node's volumes, by name.
    pub volumes: Vec<Volume>,
}

impl Answer for VolumeListing {}

/// What the node that made a backup signs about it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupManifest {
    /// The network (fleet) it was made in.
    pub network: String,
    /// Its id: `bk-` and 12 hex digits.
    pub id: String,
    /// The volume it holds.
    pub volume: String,
    /// When it was made, Unix ms.
    pub created_ms: u64,
    /// The archive's size.
    pub size_bytes: u64,
    /// The archive's SHA-256, lowercase hex.
    pub sha256: String,
}

impl SignedPayload for BackupManifest {
    const KIND: PayloadKind = PayloadKind::BackupManifest;
}

impl BackupManifest {
    /// Checks its form.
    pub fn check(&self) -> Result<(), SpecError> {
        let hex_id = self
            .id
            .strip_prefix("bk-")
            .is_some_and(|h| h.len() == 12 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        let digest = self.sha256.len() == 64
            && self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_id || !digest || self.size_bytes > MAX_BACKUP_BYTES {
            return Err(SpecError::Invalid(
                "a backup manifest names bk-<12 hex>, a SHA-256 and at most 1 GiB".to_owned(),
            ));
        }
        check_volume_name(&self.volume)
    }
}

/// A backup a node keeps.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// What its maker signed.
    #[serde(flatten)]
    pub manifest: BackupManifest,
    /// The node that made it (the manifest's signer).
    pub source: String,
    /// The member it was copied to, when `backup.create` named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_to: Option<String>,
}

impl Answer for Backup {}

/// `backup.create`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupCreateParams {
    /// The volume to back up.
    pub volume: String,
    /// Also copy it to this member (peer id or name), which keeps it after checking the
    /// signature and the digest.
    #[serde(default)]
    pub node: Option<String>,
    /// Also write it (`<id>.tar` and `<id>.manifest`) into this directory, under one of the
    /// node's writable volume roots.
    #[serde(default)]
    pub path: Option<String>,
}

/// `backup.import`: take a backup written to a directory (by `backup.create` with `path`) into
/// this node's backups, after checking its signature and digest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportParams {
    /// The directory, under one of the node's volume roots.
    pub path: String,
    /// The backup's id.
    pub backup: String,
}

/// `backup.list`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupListing {
    /// The backups this node keeps, oldest first.
    pub backups: Vec<Backup>,
}

impl Answer for BackupListing {}

/// `backup.restore`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreParams {
    /// The backup's id.
    pub backup: String,
    /// The new volume to restore it into (it must not exist).
    pub volume: String,
    /// Its size limit in MiB, when it should have one (as `volume.create`).
    #[serde(default)]
    pub size_mib: Option<u64>,
}

/// Commands that name one backup.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRef {
    /// The backup's id.
    pub backup: String,
}

/// `backup.receive`: a member offers this node a backup it made; this node reads it with
/// `backup.read` and keeps it when it matches the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiveParams {
    /// The signed manifest, base-64.
    pub manifest: String,
}

/// `backup.read`: a piece of a backup's archive, for the member it was offered to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    /// The backup's id.
    pub backup: String,
    /// Where to read from.
    pub offset: u64,
}

/// A piece of an archive.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    /// At most 2 MiB of it, base-64.
    pub data: String,
    /// Whether it ends the archive.
    pub eof: bool,
}

impl Answer for Chunk {}

/// `backup.keys`: this node's keys sealed to one of its admins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyBackupParams {
    /// The admin to seal them to: a peer id listed in the node's `[access] admins`.
    pub to: String,
}

/// A node-key backup: the node's identity and wallet keys, sealed to one admin's key. Only
/// that admin's key opens it (`clawnode backup restore-keys`); to anyone else it is noise.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyBackup {
    /// The node whose keys it holds.
    pub node: String,
    /// That node's wallet address.
    pub wallet: String,
    /// The admin it is sealed to.
    pub sealed_to: String,
    /// The sealed backup, base-64 (a few hundred bytes).
    pub sealed: String,
}

impl Answer for KeyBackup {}

commands! {
    /// `volume.create`.
    VolumeCreate = "volume.create", Operate, VolumeCreateParams => Volume,
        "Create a named volume on this node, optionally size-limited, which workloads mount by name (volume_mounts)";
    /// `volume.list`.
    VolumeList = "volume.list", Read, crate::NoParams => VolumeListing,
        "This node's volumes and the workloads that mount them";
    /// `volume.delete`.
    VolumeDelete = "volume.delete", Operate, VolumeRef => Volume,
        "Delete a volume and its data (refused while a workload mounts it)";
    /// `volume.snapshot`.
    VolumeSnapshot = "volume.snapshot", Operate, VolumeRef => Backup,
        "A point-in-time backup of a volume, kept on this node";
    /// `backup.create`.
    BackupCreate = "backup.create", Operate, BackupCreateParams => Backup,
        "Back up a volume, signed with its digest, and optionally copy it to another member";
    /// `backup.list`.
    BackupList = "backup.list", Read, crate::NoParams => BackupListing,
        "The backups this node keeps";
    /// `backup.restore`.
    BackupRestore = "backup.restore", Operate, RestoreParams => Volume,
        "Restore a backup into a new volume, after checking its signature and digest";
    /// `backup.delete`.
    BackupDelete = "backup.delete", Operate, BackupRef => Backup,
        "Delete a backup this node keeps";
    /// `backup.import`.
    BackupImport = "backup.import", Operate, ImportParams => Backup,
        "Take a backup from a directory under a volume root, after checking its signature and digest";
    /// `backup.receive`.
    BackupReceive = "backup.receive", Read, ReceiveParams => Backup,
        "Take a copy of a backup the calling member made (asked by that member)";
    /// `backup.keys`.
    BackupKeys = "backup.keys", Admin, KeyBackupParams => KeyBackup,
        "Seal this node's identity and wallet keys to one of its admins, to restore the node elsewhere (volume backups never hold them)";
    /// `backup.read`.
    BackupRead = "backup.read", Read, ReadParams => Chunk,
        "A piece of a backup's archive (only for the member it was offered to)";
}
