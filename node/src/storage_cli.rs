//! `clawnode volume` and `clawnode backup`: the node's named volumes and their backups.

use anyhow::Result;
use clap::Subcommand;
use claw_api::NoParams;
use claw_api::storage::{
    Backup, BackupCreate, BackupCreateParams, BackupDelete, BackupImport, BackupList, BackupRef,
    BackupRestore, ImportParams, RestoreParams, Volume, VolumeCreate, VolumeDelete, VolumeList,
    VolumeRef, VolumeSnapshot,
};

use crate::{GlobalArgs, ops, print_json, print_table};

/// `clawnode volume …`.
#[derive(Debug, Subcommand)]
pub(crate) enum VolumeCommand {
    /// Create a named volume on the node (workloads mount it with volume_mounts).
    Create {
        /// The volume's name (1 to 32 of a-z, 0-9 and '-').
        name: String,
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
    },
    /// Delete a backup.
    Delete {
        /// The backup's id.
        backup: String,
    },
}

fn show_volume(global: &GlobalArgs, what: &str, volume: &Volume) {
    if global.json {
        print_json(volume);
    } else {
        println!("volume {} {what} ({})", volume.name, volume.docker_name);
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
        VolumeCommand::Create { name } => {
            let volume = ops::call::<VolumeCreate>(global, &VolumeRef { name }, None, None)?;
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
                    .map(|v| vec![v.name.clone(), v.docker_name.clone(), v.used_by.join(",")])
                    .collect();
                print_table(&["NAME", "DOCKER VOLUME", "MOUNTED BY"], &rows);
            }
        }
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
        BackupCommand::Restore { backup, volume } => {
            let params = RestoreParams { backup, volume };
            let volume = ops::call::<BackupRestore>(global, &params, None, None)?;
            show_volume(global, "restored", &volume);
        }
        BackupCommand::Delete { backup } => {
            let backup = ops::call::<BackupDelete>(global, &BackupRef { backup }, None, None)?;
            show_backup(global, "deleted", &backup);
        }
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
