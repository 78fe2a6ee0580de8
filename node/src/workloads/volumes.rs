//! Named volumes: Docker volumes this node created (labelled with its peer id and the volume's
//! name), mounted by name into its workloads, and read or written whole as tar archives for
//! backups. Their data lives in Docker, so it outlives workloads and node restarts.

use std::collections::HashMap;

use claw_api::storage::{Volume, VolumeListing, check_volume_name};
use claw_api::workload::VolumeMount;

use super::sized_volumes::SizedVolumes;
use super::{LABEL_NODE, LABEL_WORKLOAD, WorkloadError, Workloads};

/// The label naming a volume's name on its node.
const LABEL_VOLUME: &str = "io.clawbernetes.volume";
/// The label giving a size-limited volume's size, MiB.
const LABEL_SIZE: &str = "io.clawbernetes.volume.size-mib";

/// One of this node's volumes, as Docker lists it.
struct OwnVolume {
    name: String,
    docker: String,
    created: Option<String>,
    /// Its size limit, when it has one.
    size_mib: Option<u64>,
}

impl OwnVolume {
    /// The volume as commands answer it, mounted by the workloads `used_by`.
    fn answer(self, used_by: Vec<String>) -> Volume {
        Volume {
            name: self.name,
            docker_name: self.docker,
            created_at: self.created,
            size_mib: self.size_mib,
            used_by,
        }
    }
}

impl Workloads {
    /// The Docker volume behind this node's volume `name`.
    fn docker_volume(&self, name: &str) -> String {
        let short = self
            .node
            .get(self.node.len().saturating_sub(12)..)
            .unwrap_or(&self.node);
        format!("claw-{short}-{name}")
    }

    /// This node's volumes, by name.
    async fn own_volumes(&self) -> Result<Vec<OwnVolume>, WorkloadError> {
        let engine = self.engine()?;
        let mut own: Vec<OwnVolume> = engine
            .volumes_labelled(LABEL_NODE, &self.node)
            .await?
            .into_iter()
            .filter_map(|(docker, labels, created)| {
                Some(OwnVolume {
                    name: labels.get(LABEL_VOLUME)?.clone(),
                    size_mib: labels.get(LABEL_SIZE).and_then(|size| size.parse().ok()),
                    docker,
                    created,
                })
            })
            .collect();
        own.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(own)
    }

    /// Mounts the filesystems of this node's size-limited volumes that are not mounted (after
    /// the host restarted), so their workloads can start.
    pub async fn mount_sized_volumes(&self) -> Result<(), WorkloadError> {
        for volume in self.own_volumes().await? {
            if volume.size_mib.is_some() {
                self.sized.mount(&volume.docker).await?;
            }
        }
        Ok(())
    }

    /// Volume `name` of `own` (this node's volumes), with its filesystem mounted when it has
    /// a size limit.
    async fn usable<'a>(
        &self,
        own: &'a [OwnVolume],
        name: &str,
    ) -> Result<&'a OwnVolume, WorkloadError> {
        let volume = own
            .iter()
            .find(|volume| volume.name == name)
            .ok_or_else(|| Self::not_found(name))?;
        if volume.size_mib.is_some() {
            self.sized.mount(&volume.docker).await?;
        }
        Ok(volume)
    }

    /// Docker volume → the running workloads that mount it.
    async fn volume_users(&self) -> Result<HashMap<String, Vec<String>>, WorkloadError> {
        let containers = self.engine()?.list_labelled(LABEL_NODE, &self.node).await?;
        let mut users: HashMap<String, Vec<String>> = HashMap::new();
        for container in containers {
            let running = container
                .state
                .is_some_and(|s| s == bollard::models::ContainerSummaryStateEnum::RUNNING);
            let workload = container
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_WORKLOAD))
                .cloned();
            let (true, Some(workload)) = (running, workload) else {
                continue;
            };
            for mount in container.mounts.unwrap_or_default() {
                if let Some(name) = mount.name {
                    users.entry(name).or_default().push(workload.clone());
                }
            }
        }
        Ok(users)
    }

    async fn volume(&self, name: &str) -> Result<Option<Volume>, WorkloadError> {
        let found = self
            .own_volumes()
            .await?
            .into_iter()
            .find(|own| own.name == name);
        let Some(own) = found else {
            return Ok(None);
        };
        let used_by = self
            .volume_users()
            .await?
            .remove(&own.docker)
            .unwrap_or_default();
        Ok(Some(own.answer(used_by)))
    }

    fn not_found(name: &str) -> WorkloadError {
        WorkloadError::NotFound(format!(
            "no volume {name:?} on this node (volume.list lists them)"
        ))
    }

    /// `volume.create`: in Docker's own storage, or with a size limit as its own filesystem.
    pub async fn create_volume(
        &self,
        name: &str,
        size_mib: Option<u64>,
    ) -> Result<Volume, WorkloadError> {
        check_volume_name(name)?;
        if let Some(size) = size_mib {
            SizedVolumes::check_size(size)?;
        }
        let engine = self.engine()?;
        if self.volume(name).await?.is_some() {
            return Err(WorkloadError::Conflict(format!(
                "volume {name:?} exists on this node"
            )));
        }
        let docker = self.docker_volume(name);
        let mut labels = HashMap::from([
            (LABEL_NODE.to_owned(), self.node.clone()),
            (LABEL_VOLUME.to_owned(), name.to_owned()),
        ]);
        let bind = match size_mib {
            Some(size) => {
                self.sized.create(&docker, size).await?;
                labels.insert(LABEL_SIZE.to_owned(), size.to_string());
                Some(self.sized.data_dir(&docker))
            }
            None => None,
        };
        if let Err(error) = engine.create_volume(&docker, labels, bind.as_deref()).await {
            if bind.is_some() {
                self.sized.remove(&docker).await;
            }
            return Err(error.into());
        }
        tracing::info!(volume = name, size_mib, "volume created");
        self.volume(name)
            .await?
            .ok_or_else(|| WorkloadError::Internal("the volume vanished".to_owned()))
    }

    /// `volume.list`.
    pub async fn volumes(&self) -> Result<VolumeListing, WorkloadError> {
        let mut users = self.volume_users().await?;
        let volumes = self
            .own_volumes()
            .await?
            .into_iter()
            .map(|own| {
                let used_by = users.remove(&own.docker).unwrap_or_default();
                own.answer(used_by)
            })
            .collect();
        Ok(VolumeListing { volumes })
    }

    /// `volume.delete`: refused while a workload's container (running or kept) uses it.
    pub async fn delete_volume(&self, name: &str) -> Result<Volume, WorkloadError> {
        let volume = self
            .volume(name)
            .await?
            .ok_or_else(|| Self::not_found(name))?;
        if !volume.used_by.is_empty() {
            return Err(WorkloadError::Conflict(format!(
                "volume {name:?} is mounted by {}: stop them first",
                volume.used_by.join(", ")
            )));
        }
        self.engine()?
            .remove_volume(&volume.docker_name)
            .await
            .map_err(|error| match error {
                super::EngineError::Conflict(_) => WorkloadError::Conflict(format!(
                    "volume {name:?} is still used by a stopped container: workload.stop it \
                     with remove"
                )),
                other => other.into(),
            })?;
        if volume.size_mib.is_some() {
            self.sized.remove(&volume.docker_name).await;
        }
        tracing::info!(volume = name, "volume deleted");
        Ok(volume)
    }

    /// Writes volume `name`'s files as a tar archive to `out`: its size and SHA-256.
    pub async fn export_volume(
        &self,
        name: &str,
        out: &std::path::Path,
        max_bytes: u64,
    ) -> Result<(u64, String), WorkloadError> {
        let own = self.own_volumes().await?;
        let volume = self.usable(&own, name).await?;
        Ok(self
            .engine()?
            .export_volume(&volume.docker, out, max_bytes)
            .await?)
    }

    /// Creates volume `name` (of `size_mib`, when given) from `archive` (as
    /// [`Workloads::export_volume`] wrote it); the volume is removed again when the archive
    /// does not unpack, or does not fit.
    pub async fn restore_volume(
        &self,
        name: &str,
        size_mib: Option<u64>,
        archive: bytes::Bytes,
    ) -> Result<Volume, WorkloadError> {
        let volume = self.create_volume(name, size_mib).await?;
        let engine = self.engine()?;
        if let Err(error) = engine.import_volume(&volume.docker_name, archive).await {
            let _ = self.delete_volume(name).await;
            return Err(error.into());
        }
        Ok(volume)
    }

    /// Directory `path` under one of the node's volume roots (a writable one when `writable`),
    /// opened without following symlinks.
    pub fn root_dir(
        &self,
        path: &str,
        writable: bool,
    ) -> Result<std::os::fd::OwnedFd, WorkloadError> {
        Ok(super::mounts::open_dir(path, &self.roots, writable)?)
    }

    /// The binds of `mounts`: each names one of this node's volumes.
    pub(super) async fn volume_binds(
        &self,
        mounts: &[VolumeMount],
    ) -> Result<Vec<String>, WorkloadError> {
        if mounts.is_empty() {
            return Ok(Vec::new());
        }
        let own = self.own_volumes().await?;
        let mut binds = Vec::with_capacity(mounts.len());
        for mount in mounts {
            let volume = self.usable(&own, &mount.volume).await?;
            binds.push(format!(
                "{}:{}:{}",
                volume.docker,
                mount.path,
                if mount.read_only { "ro" } else { "rw" }
            ));
        }
        Ok(binds)
    }
}
