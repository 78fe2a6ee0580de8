//! The Docker Engine, through bollard: the few calls workloads need, each with a deadline and a
//! typed error.

use claw_api::workload::LogLine;
use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::VolumeCreateRequest;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStatsResponse, ContainerSummary,
    NetworkCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StatsOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::query_parameters::{
    CreateImageOptions, DownloadFromContainerOptions, ListVolumesOptions, RemoveVolumeOptions,
    UploadToContainerOptions,
};
use futures::StreamExt as _;

use super::progress::Progress;

/// The empty image volumes are read and written through.
const VOLUME_HELPER: &str = "clawbernetes/volume-helper:1";
/// How long copying a volume's archive may take.
const ARCHIVE_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// Default Engine socket.
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Deadline for one quick Engine call (inspect, list, create, start).
const CALL_DEADLINE: Duration = Duration::from_secs(30);
/// Deadline for pulling an image.
const PULL_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// Why the Engine could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EngineError {
    /// The Engine is not reachable.
    #[error("the Docker Engine is unavailable: {0}")]
    Unavailable(String),
    /// The container or image does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The Engine refused because of the object's state (name in use, not running).
    #[error("{0}")]
    Conflict(String),
    /// The call ran past its deadline.
    #[error("the Docker Engine did not answer within {0:?}")]
    Timeout(Duration),
    /// Any other Engine failure.
    #[error("Docker: {0}")]
    Failed(String),
}

impl From<bollard::errors::Error> for EngineError {
    fn from(error: bollard::errors::Error) -> Self {
        use bollard::errors::Error as E;
        match error {
            E::DockerResponseServerError {
                status_code: 404,
                message,
            } => Self::NotFound(message),
            E::DockerResponseServerError {
                status_code: 409 | 304,
                message,
            } => Self::Conflict(message),
            E::DockerResponseServerError {
                status_code,
                message,
            } => Self::Failed(format!("{status_code}: {message}")),
            E::SocketNotFoundError(path) => Self::Unavailable(format!("no socket at {path}")),
            E::IOError { err } => Self::Unavailable(err.to_string()),
            E::HyperResponseError { err } => Self::Unavailable(err.to_string()),
            E::HyperLegacyError { err } => Self::Unavailable(err.to_string()),
            E::RequestTimeoutError => Self::Timeout(CALL_DEADLINE),
            other => Self::Failed(other.to_string()),
        }
    }
}

async fn within<T>(
    deadline: Duration,
    call: impl Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, EngineError> {
    match tokio::time::timeout(deadline, call).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(EngineError::Timeout(deadline)),
    }
}

/// What a program run inside a container produced.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ExecOutput {
    pub(crate) exit_code: Option<i64>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) truncated: bool,
    pub(crate) timed_out: bool,
}

/// A connection to the Engine. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Engine {
    docker: Docker,
    socket: String,
}

impl Engine {
    /// Prepares a client for `socket` (default: `DOCKER_HOST` when it is `unix://…`, else
    /// `/var/run/docker.sock`). Nothing is dialled until the first call.
    pub(crate) fn connect(socket: Option<&str>) -> Result<Self, EngineError> {
        let socket = socket.map_or_else(
            || {
                std::env::var("DOCKER_HOST")
                    .ok()
                    .and_then(|h| h.strip_prefix("unix://").map(str::to_owned))
                    .unwrap_or_else(|| DEFAULT_SOCKET.to_owned())
            },
            |s| s.trim_start_matches("unix://").to_owned(),
        );
        let docker = Docker::connect_with_unix(
            &socket,
            CALL_DEADLINE.as_secs(),
            bollard::API_DEFAULT_VERSION,
        )?;
        Ok(Self { docker, socket })
    }

    /// The Engine's version, or why it cannot be reached.
    pub(crate) async fn version(&self) -> Result<String, EngineError> {
        if !std::path::Path::new(&self.socket).exists() {
            return Err(EngineError::Unavailable(format!(
                "no socket at {}",
                self.socket
            )));
        }
        let version = within(CALL_DEADLINE, self.docker.version()).await?;
        Ok(version.version.unwrap_or_else(|| "unknown".to_owned()))
    }

    /// Makes sure `image` is present, pulling it (with progress) when it is not.
    pub(crate) async fn ensure_image(
        &self,
        image: &str,
        progress: &Progress,
    ) -> Result<(), EngineError> {
        match within(CALL_DEADLINE, self.docker.inspect_image(image)).await {
            Ok(_) => return Ok(()),
            Err(EngineError::NotFound(_)) => {}
            Err(other) => return Err(other),
        }
        progress.stage(format!("pulling {image}"));
        let (repo, tag) = split_image(image);
        let options = CreateImageOptionsBuilder::new()
            .from_image(repo)
            .tag(tag)
            .build();
        let pull = async {
            let mut stream = self.docker.create_image(Some(options), None, None);
            let mut layers: HashMap<String, (i64, i64)> = HashMap::new();
            while let Some(info) = stream.next().await {
                let info = info?;
                if let Some(detail) = info.error_detail {
                    return Err(EngineError::NotFound(format!(
                        "image {image} could not be pulled: {}",
                        detail.message.unwrap_or_default()
                    )));
                }
                if let (Some(id), Some(detail)) = (info.id, info.progress_detail)
                    && let (Some(current), Some(total)) = (detail.current, detail.total)
                {
                    layers.insert(id, (current, total));
                    let done: i64 = layers.values().map(|l| l.0).sum();
                    let total: i64 = layers.values().map(|l| l.1).sum();
                    progress.advance(
                        u64::try_from(done).unwrap_or(0),
                        u64::try_from(total).unwrap_or(0),
                    );
                }
            }
            Ok(())
        };
        match tokio::time::timeout(PULL_DEADLINE, pull).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(EngineError::NotFound(m) | EngineError::Failed(m))) => {
                Err(EngineError::NotFound(format!(
                    "image {image} is not on this node and could not be pulled: {m}"
                )))
            }
            Ok(Err(other)) => Err(other),
            Err(_) => Err(EngineError::Timeout(PULL_DEADLINE)),
        }
    }

    /// Creates and starts a container; returns its id. A container that was created but would
    /// not start is removed again.
    pub(crate) async fn create_and_start(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, EngineError> {
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        let created = within(
            CALL_DEADLINE,
            self.docker.create_container(Some(options), body),
        )
        .await?;
        if let Err(error) = within(
            CALL_DEADLINE,
            self.docker.start_container(&created.id, None),
        )
        .await
        {
            let _ = self.remove(&created.id).await;
            return Err(error);
        }
        Ok(created.id)
    }

    /// The user an image runs as (`USER` in its config); `None` when it names none (root).
    pub(crate) async fn image_user(&self, image: &str) -> Result<Option<String>, EngineError> {
        let inspected = within(CALL_DEADLINE, self.docker.inspect_image(image)).await?;
        Ok(inspected
            .config
            .and_then(|c| c.user)
            .filter(|u| !u.is_empty() && u != "root" && u != "0" && !u.starts_with("0:")))
    }

    /// Creates a bridge network `name` whose host interface is `bridge`, with `labels`.
    pub(crate) async fn create_network(
        &self,
        name: &str,
        bridge: &str,
        labels: HashMap<String, String>,
    ) -> Result<String, EngineError> {
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
            options: Some(HashMap::from([(
                "com.docker.network.bridge.name".to_owned(),
                bridge.to_owned(),
            )])),
            labels: Some(labels),
            ..NetworkCreateRequest::default()
        };
        let created = within(CALL_DEADLINE, self.docker.create_network(request)).await?;
        Ok(created.id)
    }

    /// Removes network `name`. Already gone is fine.
    pub(crate) async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        match within(CALL_DEADLINE, self.docker.remove_network(name)).await {
            Ok(()) | Err(EngineError::NotFound(_)) => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// The names of the networks that carry `label=value`, with their labels.
    pub(crate) async fn networks_labelled(
        &self,
        label: &str,
        value: &str,
    ) -> Result<Vec<(String, HashMap<String, String>)>, EngineError> {
        let filters = HashMap::from([("label", vec![format!("{label}={value}")])]);
        let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
        let networks = within(CALL_DEADLINE, self.docker.list_networks(Some(options))).await?;
        Ok(networks
            .into_iter()
            .filter_map(|n| Some((n.name?, n.labels.unwrap_or_default())))
            .collect())
    }

    /// Stops a container: SIGTERM, then SIGKILL after `timeout`. Already stopped is fine.
    pub(crate) async fn stop(&self, id: &str, timeout: Duration) -> Result<(), EngineError> {
        let secs = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(secs).build();
        match within(
            timeout + CALL_DEADLINE,
            self.docker.stop_container(id, Some(options)),
        )
        .await
        {
            Ok(()) | Err(EngineError::Conflict(_)) => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// Removes a container, forcibly. Already gone is fine.
    pub(crate) async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match within(
            CALL_DEADLINE,
            self.docker.remove_container(id, Some(options)),
        )
        .await
        {
            Ok(()) | Err(EngineError::NotFound(_)) => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// Creates volume `name` with `labels`: Docker's own storage, or a bind of directory
    /// `bind` when one is given.
    pub(crate) async fn create_volume(
        &self,
        name: &str,
        labels: HashMap<String, String>,
        bind: Option<&std::path::Path>,
    ) -> Result<(), EngineError> {
        let driver_opts = bind.map(|dir| {
            HashMap::from([
                ("type".to_owned(), "none".to_owned()),
                ("o".to_owned(), "bind".to_owned()),
                ("device".to_owned(), dir.display().to_string()),
            ])
        });
        let request = VolumeCreateRequest {
            name: Some(name.to_owned()),
            labels: Some(labels),
            driver_opts,
            ..VolumeCreateRequest::default()
        };
        within(CALL_DEADLINE, self.docker.create_volume(request)).await?;
        Ok(())
    }

    /// The volumes that carry `label=value`: name, labels and when each was created.
    pub(crate) async fn volumes_labelled(
        &self,
        label: &str,
        value: &str,
    ) -> Result<Vec<(String, HashMap<String, String>, Option<String>)>, EngineError> {
        let filters = HashMap::from([("label".to_owned(), vec![format!("{label}={value}")])]);
        let options = ListVolumesOptions {
            filters: Some(filters),
        };
        let listed = within(CALL_DEADLINE, self.docker.list_volumes(Some(options))).await?;
        Ok(listed
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| (v.name, v.labels, v.created_at))
            .collect())
    }

    /// Removes volume `name` (Docker refuses while a container uses it).
    pub(crate) async fn remove_volume(&self, name: &str) -> Result<(), EngineError> {
        let options = RemoveVolumeOptions { force: false };
        within(
            CALL_DEADLINE,
            self.docker.remove_volume(name, Some(options)),
        )
        .await
    }

    /// Makes sure of the image the node reads and writes volumes through: an empty one, made
    /// here (nothing is pulled). Its containers are created, never started.
    async fn ensure_volume_helper(&self) -> Result<(), EngineError> {
        if within(CALL_DEADLINE, self.docker.inspect_image(VOLUME_HELPER))
            .await
            .is_ok()
        {
            return Ok(());
        }
        let (repo, tag) = split_image(VOLUME_HELPER);
        let options = CreateImageOptions {
            from_src: Some("-".to_owned()),
            repo: Some(repo.to_owned()),
            tag: Some(tag.to_owned()),
            ..CreateImageOptions::default()
        };
        // An empty tar archive: two zero blocks.
        let empty = bollard::body_full(bytes::Bytes::from(vec![0u8; 1024]));
        let mut stream = self.docker.create_image(Some(options), Some(empty), None);
        let imported = tokio::time::timeout(CALL_DEADLINE, async {
            while let Some(step) = stream.next().await {
                step?;
            }
            Ok::<(), bollard::errors::Error>(())
        })
        .await
        .map_err(|_| EngineError::Timeout(CALL_DEADLINE))?;
        imported.map_err(Into::into)
    }

    /// A container, never started, that mounts volume `volume` at `/v`.
    async fn volume_holder(&self, volume: &str, read_only: bool) -> Result<String, EngineError> {
        self.ensure_volume_helper().await?;
        let body = ContainerCreateBody {
            image: Some(VOLUME_HELPER.to_owned()),
            cmd: Some(vec!["/none".to_owned()]),
            network_disabled: Some(true),
            host_config: Some(bollard::models::HostConfig {
                binds: Some(vec![format!(
                    "{volume}:/v:{}",
                    if read_only { "ro" } else { "rw" }
                )]),
                ..bollard::models::HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let created = within(
            CALL_DEADLINE,
            self.docker.create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                body,
            ),
        )
        .await?;
        Ok(created.id)
    }

    /// Writes volume `volume`'s files, as a tar archive (entries under `v/`), to `out`, at most
    /// `max_bytes`: answers its size and SHA-256.
    pub(crate) async fn export_volume(
        &self,
        volume: &str,
        out: &std::path::Path,
        max_bytes: u64,
    ) -> Result<(u64, String), EngineError> {
        use sha2::Digest as _;
        use tokio::io::AsyncWriteExt as _;
        let holder = self.volume_holder(volume, true).await?;
        let copied = async {
            let options = DownloadFromContainerOptions {
                path: "/v".to_owned(),
            };
            let mut file = tokio::fs::File::create(out)
                .await
                .map_err(|e| EngineError::Failed(format!("{}: {e}", out.display())))?;
            let mut stream = self.docker.download_from_container(&holder, Some(options));
            let (mut size, mut hash) = (0u64, sha2::Sha256::new());
            while let Some(piece) = stream.next().await {
                let piece = piece?;
                size += piece.len() as u64;
                if size > max_bytes {
                    return Err(EngineError::Failed(format!(
                        "volume {volume} is over {max_bytes} bytes"
                    )));
                }
                hash.update(&piece);
                file.write_all(&piece)
                    .await
                    .map_err(|e| EngineError::Failed(format!("{}: {e}", out.display())))?;
            }
            file.sync_all()
                .await
                .map_err(|e| EngineError::Failed(format!("{}: {e}", out.display())))?;
            Ok((size, hex::encode(hash.finalize())))
        };
        let copied = match tokio::time::timeout(ARCHIVE_DEADLINE, copied).await {
            Ok(result) => result,
            Err(_) => Err(EngineError::Timeout(ARCHIVE_DEADLINE)),
        };
        let _ = self.remove(&holder).await;
        if copied.is_err() {
            let _ = tokio::fs::remove_file(out).await;
        }
        copied
    }

    /// Unpacks `archive` (as [`Engine::export_volume`] wrote it) into volume `volume`.
    pub(crate) async fn import_volume(
        &self,
        volume: &str,
        archive: bytes::Bytes,
    ) -> Result<(), EngineError> {
        let holder = self.volume_holder(volume, false).await?;
        let options = UploadToContainerOptions {
            path: "/".to_owned(),
            ..UploadToContainerOptions::default()
        };
        let uploaded = within(
            ARCHIVE_DEADLINE,
            self.docker
                .upload_to_container(&holder, Some(options), bollard::body_full(archive)),
        )
        .await;
        let _ = self.remove(&holder).await;
        uploaded
    }

    /// Every container, running or not, that carries `label=value`.
    pub(crate) async fn list_labelled(
        &self,
        label: &str,
        value: &str,
    ) -> Result<Vec<ContainerSummary>, EngineError> {
        let filters = HashMap::from([("label", vec![format!("{label}={value}")])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        within(CALL_DEADLINE, self.docker.list_containers(Some(options))).await
    }

    /// A container's full description; `None` when it does not exist.
    pub(crate) async fn inspect(
        &self,
        id: &str,
    ) -> Result<Option<ContainerInspectResponse>, EngineError> {
        match within(CALL_DEADLINE, self.docker.inspect_container(id, None)).await {
            Ok(found) => Ok(Some(found)),
            Err(EngineError::NotFound(_)) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// The last `tail` lines (after `since`, Unix seconds), keeping at most `max_bytes` of text.
    pub(crate) async fn logs(
        &self,
        id: &str,
        tail: u32,
        since: Option<u32>,
        max_bytes: usize,
    ) -> Result<(Vec<LogLine>, bool), EngineError> {
        let mut options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&tail.to_string());
        if let Some(since) = since {
            options = options.since(i32::try_from(since).unwrap_or(i32::MAX));
        }
        let collect = async {
            let mut stream = self.docker.logs(id, Some(options.build()));
            let mut lines = Vec::new();
            let mut bytes = 0usize;
            let mut truncated = false;
            while let Some(chunk) = stream.next().await {
                let (stream, message) = match chunk? {
                    LogOutput::StdErr { message } => ("stderr", message),
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        ("stdout", message)
                    }
                    LogOutput::StdIn { .. } => continue,
                };
                let text = String::from_utf8_lossy(&message);
                for line in text.lines() {
                    bytes += line.len();
                    if bytes > max_bytes {
                        truncated = true;
                        break;
                    }
                    lines.push(LogLine {
                        stream: stream.to_owned(),
                        line: line.to_owned(),
                    });
                }
                if truncated {
                    break;
                }
            }
            Ok::<_, bollard::errors::Error>((lines, truncated))
        };
        within(CALL_DEADLINE, collect).await
    }

    /// One sample of a container's resource use.
    pub(crate) async fn stats(&self, id: &str) -> Result<ContainerStatsResponse, EngineError> {
        let options = StatsOptionsBuilder::new()
            .stream(false)
            .one_shot(false)
            .build();
        let sample = async {
            let mut stream = self.docker.stats(id, Some(options));
            match stream.next().await {
                Some(sample) => sample.map_err(EngineError::from),
                None => Err(EngineError::Failed("no stats sample".to_owned())),
            }
        };
        match tokio::time::timeout(CALL_DEADLINE, sample).await {
            Ok(result) => result,
            Err(_) => Err(EngineError::Timeout(CALL_DEADLINE)),
        }
    }

    /// Runs `argv` inside the container and collects its output, keeping at most `max_bytes` of
    /// each stream. Past `timeout` the output so far is returned, marked `timed_out`.
    pub(crate) async fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<ExecOutput, EngineError> {
        let config = CreateExecOptions {
            cmd: Some(argv.to_vec()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..CreateExecOptions::default()
        };
        let exec = within(CALL_DEADLINE, self.docker.create_exec(id, config)).await?;
        let started = within(
            CALL_DEADLINE,
            self.docker.start_exec(
                &exec.id,
                Some(StartExecOptions {
                    detach: false,
                    ..StartExecOptions::default()
                }),
            ),
        )
        .await?;
        let StartExecResults::Attached { mut output, .. } = started else {
            return Err(EngineError::Failed("exec did not attach".to_owned()));
        };
        let mut result = ExecOutput {
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            timed_out: false,
        };
        let collect = async {
            while let Some(chunk) = output.next().await {
                let (target, message) = match chunk? {
                    LogOutput::StdErr { message } => (&mut result.stderr, message),
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        (&mut result.stdout, message)
                    }
                    LogOutput::StdIn { .. } => continue,
                };
                let text = String::from_utf8_lossy(&message);
                let room = max_bytes.saturating_sub(target.len());
                if text.len() > room {
                    result.truncated = true;
                    let mut cut = room;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    target.push_str(&text[..cut]);
                } else {
                    target.push_str(&text);
                }
            }
            Ok::<_, bollard::errors::Error>(())
        };
        match tokio::time::timeout(timeout, collect).await {
            Ok(outcome) => outcome?,
            Err(_) => result.timed_out = true,
        }
        if !result.timed_out {
            let inspected = within(CALL_DEADLINE, self.docker.inspect_exec(&exec.id)).await?;
            result.exit_code = inspected.exit_code;
        }
        Ok(result)
    }
}

/// Splits `repo:tag` (a registry port is not a tag); `latest` when no tag is given. A digest
/// reference is passed whole.
fn split_image(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_into_repo_and_tag() {
        assert_eq!(split_image("busybox"), ("busybox", "latest"));
        assert_eq!(split_image("a/b:1.2"), ("a/b", "1.2"));
        assert_eq!(
            split_image("registry:5000/a/b"),
            ("registry:5000/a/b", "latest")
        );
        assert_eq!(split_image("a@sha256:00"), ("a@sha256:00", ""));
    }
}
