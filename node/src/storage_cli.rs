//! `clawnode volume` and `clawnode backup`: the node's named volumes and their backups.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Subcommand;
use claw_api::NoParams;
use claw_api::storage::{
    Backup, BackupCreate, BackupCreateParams, BackupDelete, BackupImport, BackupKeys, BackupList,
    BackupRef, BackupRestore, ImportParams, KeyBackupParams, RestoreParams, Volume, VolumeCreate,
    VolumeCreateParams, VolumeDelete, VolumeList, VolumeRef, VolumeSnapshot,
};
use clawnode::{DataDir, NodeConfig};

use crate::{GlobalArgs, ops, print_json, print_table};

/// `clawnode volume …`.
#[derive(Debug, Subcommand)]
pub(crate) enum VolumeCommand {
    /// Create a named volume on the node (workloads mount it with volume_mounts).
    Create {
        /// The volume's name (1 to 32 of a-z, 0-9 and '-').
        name: String,
        /// Limit it to this many MiB: it becomes its own filesystem of that size (needs a node
        /// running as root with loop devices).
        #[arg(long, value_name = "MIB")]
        size_mib: Option<u64>,
    },
    /// The node's volumes and the workloads that mount them.
    List,
    /// Delete a volume and its data.
    Delete {
        /// The volume.
        name: String,
    },
    /// Back the volume up now, on this node.
    Snapshot {
        /// The volume.
        name: String,
    },
}

/// `clawnode backup …`.
#[derive(Debug, Subcommand)]
pub(crate) enum BackupCommand {
    /// Back up a volume, and copy the backup to another member when --to names one.
    Create {
        /// The volume.
        volume: String,
        /// The member to copy it to (peer id or name).
        #[arg(long = "to")]
        to: Option<String>,
        /// Also write it into this directory (under a writable volume root).
        #[arg(long = "path")]
        path: Option<String>,
    },
    /// Take a backup written to a directory into the node's backups.
    Import {
        /// The backup's id.
        backup: String,
        /// The directory (under a volume root).
        #[arg(long)]
        path: String,
    },
    /// The backups the node keeps.
    List,
    /// Restore a backup into a new volume (after checking its signature and digest).
    Restore {
        /// The backup's id.
        backup: String,
        /// The new volume.
        #[arg(long)]
        volume: String,
        /// Limit the new volume to this many MiB (as `volume create --size-mib`).
        #[arg(long, value_name = "MIB")]
        size_mib: Option<u64>,
    },
    /// Delete a backup.
    Delete {
        /// The backup's id.
        backup: String,
    },
    /// Seal the node's identity and wallet keys to one of its admins and write them to a
    /// file (0600); only that admin's key opens it, with `backup restore-keys`.
    Keys {
        /// The admin (a peer id in the node's `[access] admins`).
        #[arg(long)]
        to: String,
        /// The file to write (it must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Open a node-key backup sealed to this node (--data-dir is the admin's) and make a new
    /// data directory from it: the backed-up node's peer id and wallet, ready for
    /// `clawnode run`. Needs no running node.
    RestoreKeys {
        /// The file `backup keys` wrote.
        file: PathBuf,
        /// The new data directory (it must hold no identity or wallet).
        #[arg(long)]
        into: PathBuf,
    },
}

fn show_volume(global: &GlobalArgs, what: &str, volume: &Volume) {
    if global.json {
        print_json(volume);
    } else {
        let size = volume
            .size_mib
            .map(|mib| format!(", {mib} MiB"))
            .unwrap_or_default();
        println!(
            "volume {} {what} ({}{size})",
            volume.name, volume.docker_name
        );
    }
}

fn show_backup(global: &GlobalArgs, what: &str, backup: &Backup) {
    if global.json {
        print_json(backup);
        return;
    }
    let manifest = &backup.manifest;
    println!(
        "backup {} {what}: volume {}, {} bytes, sha256 {}{}",
        manifest.id,
        manifest.volume,
        manifest.size_bytes,
        manifest.sha256,
        backup
            .copied_to
            .as_deref()
            .map(|peer| format!(", copied to {peer}"))
            .unwrap_or_default()
    );
}

/// `clawnode volume …`: one arm per subcommand.
pub(crate) fn volume(global: &GlobalArgs, command: VolumeCommand) -> Result<()> {
    match command {
        VolumeCommand::Create { name, size_mib } => {
            let params = VolumeCreateParams { name, size_mib };
            let volume = ops::call::<VolumeCreate>(global, &params, None, None)?;
            show_volume(global, "created", &volume);
        }
        VolumeCommand::Delete { name } => {
            let volume = ops::call::<VolumeDelete>(global, &VolumeRef { name }, None, None)?;
            show_volume(global, "deleted", &volume);
        }
        VolumeCommand::Snapshot { name } => {
            let backup = ops::call::<VolumeSnapshot>(global, &VolumeRef { name }, None, None)?;
            show_backup(global, "made", &backup);
        }
        VolumeCommand::List => {
            let listing = ops::call::<VolumeList>(global, &NoParams {}, None, None)?;
            if global.json {
                print_json(&listing);
            } else {
                let rows: Vec<Vec<String>> = listing
                    .volumes
                    .iter()
                    .map(|v| {
                        vec![
                            v.name.clone(),
                            v.docker_name.clone(),
                            v.size_mib
                                .map(|mib| format!("{mib} MiB"))
                                .unwrap_or_else(|| "-".to_owned()),
                            v.used_by.join(","),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "DOCKER VOLUME", "SIZE", "MOUNTED BY"], &rows);
            }
        }
    }
    Ok(())
}

/// `clawnode backup restore-keys`: opens `file` with the key in the global data directory
/// and makes `into` the backed-up node's data directory.
fn restore_keys(global: &GlobalArgs, file: &Path, into: &Path) -> Result<()> {
    let admin = DataDir::open(&global.data_dir)?;
    // Sealed, the file is no secret; it is small.
    let size = std::fs::metadata(file)
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    if size > 4096 {
        anyhow::bail!("{} is {size} bytes: not a node-key backup", file.display());
    }
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let (header, keys) = admin
        .identity()
        .open_node_keys(&bytes)
        .with_context(|| format!("opening {}", file.display()))?;
    let mut config = NodeConfig::default();
    config.network.name = header.network;
    let restored = DataDir::restore(into, &keys.identity, &keys.wallet, &config)
        .with_context(|| format!("restoring into {}", into.display()))?;
    if global.json {
        print_json(&serde_json::json!({
            "data_dir": restored.root(),
            "peer_id": restored.identity().peer_id().to_string(),
            "wallet": restored.wallet().address(),
            "network": restored.config().network.name,
        }));
    } else {
        println!(
            "node {} (wallet {}) restored into {}: start it with `clawnode --data-dir {} run`",
            restored.identity().peer_id(),
            restored.wallet().address(),
            restored.root().display(),
            restored.root().display()
        );
    }
    Ok(())
}

/// `clawnode backup …`: one arm per subcommand.
pub(crate) fn backup(global: &GlobalArgs, command: BackupCommand) -> Result<()> {
    match command {
        BackupCommand::Import { backup, path } => {
            let params = ImportParams { path, backup };
            let backup = ops::call::<BackupImport>(global, &params, None, None)?;
            show_backup(global, "imported", &backup);
        }
        BackupCommand::Create { volume, to, path } => {
            let params = BackupCreateParams {
                volume,
                node: to,
                path,
            };
            let backup = ops::call::<BackupCreate>(global, &params, None, None)?;
            show_backup(global, "made", &backup);
        }
        BackupCommand::Restore {
            backup,
            volume,
            size_mib,
        } => {
            let params = RestoreParams {
                backup,
                volume,
                size_mib,
            };
            let volume = ops::call::<BackupRestore>(global, &params, None, None)?;
            show_volume(global, "restored", &volume);
        }
        BackupCommand::Delete { backup } => {
            let backup = ops::call::<BackupDelete>(global, &BackupRef { backup }, None, None)?;
            show_backup(global, "deleted", &backup);
        }
        BackupCommand::Keys { to, out } => {
            let sealed = ops::call::<BackupKeys>(global, &KeyBackupParams { to }, None, None)?;
            let bytes = STANDARD
                .decode(&sealed.sealed)
                .context("the node's answer is not base-64")?;
            claw_attestation::write_secret(&out, &bytes, false)
                .with_context(|| format!("writing {}", out.display()))?;
            if global.json {
                print_json(&sealed);
            } else {
                println!(
                    "keys of node {} (wallet {}) sealed to {} in {}",
                    sealed.node,
                    sealed.wallet,
                    sealed.sealed_to,
                    out.display()
                );
            }
        }
        BackupCommand::RestoreKeys { file, into } => restore_keys(global, &file, &into)?,
        BackupCommand::List => {
            let listing = ops::call::<BackupList>(global, &NoParams {}, None, None)?;
            if global.json {
                print_json(&listing);
            } else {
                let rows: Vec<Vec<String>> = listing
                    .backups
                    .iter()
                    .map(|b| {
                        vec![
                            b.manifest.id.clone(),
                            b.manifest.volume.clone(),
                            b.manifest.size_bytes.to_string(),
                            b.source.clone(),
                        ]
                    })
                    .collect();
                print_table(&["ID", "VOLUME", "BYTES", "MADE BY"], &rows);
            }
        }
    }
    Ok(())
}
