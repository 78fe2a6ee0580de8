//! Size-limited volumes. Docker's local volumes have no size limit unless its data root sits
//! on a filesystem with project quotas, which most hosts lack; so a volume created with a size
//! is its own filesystem: an ext4 image of exactly that size in the node's data directory,
//! loop-mounted by the node, and bound into containers by a Docker volume. A write past the
//! size fails in the container with "no space left on device", and the host's disk is never
//! filled past it.
//!
//! The Docker volume binds the `data` directory *inside* the mounted image. When the image is
//! not mounted (after the host restarts), that directory does not exist, so Docker refuses to
//! start a container on the volume rather than letting it write, unbounded, into the empty
//! mount point. The node mounts its images again when it starts and before each use.
//!
//! Making filesystems and mounting them needs root and loop devices; a node without them says
//! so when asked for a size, and plain volumes work as before.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::WorkloadError;

/// The directory under the data directory that holds the images and their mount points.
const IMAGES_DIR: &str = "volumes";
/// Smallest size: ext4's own metadata needs a few MiB.
pub(super) const MIN_SIZE_MIB: u64 = 8;
/// Largest size (1 TiB).
pub(super) const MAX_SIZE_MIB: u64 = 1024 * 1024;
/// How long one mkfs, mount or umount may take.
const TOOL_DEADLINE: Duration = Duration::from_secs(60);

/// The images of one node's size-limited volumes.
#[derive(Debug, Clone)]
pub(super) struct SizedVolumes {
    dir: PathBuf,
}

fn unavailable(why: impl std::fmt::Display) -> WorkloadError {
    WorkloadError::Unavailable(format!(
        "a volume size limit needs the node to make and loop-mount a filesystem (root, loop \
         devices, mkfs.ext4): {why}"
    ))
}

fn internal(what: &str, error: impl std::fmt::Display) -> WorkloadError {
    WorkloadError::Internal(format!("{what}: {error}"))
}

/// Runs `program args` to its end within [`TOOL_DEADLINE`]: its error output when it fails.
fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let started = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                let stderr: String = stderr.trim().chars().take(400).collect();
                return Err(format!("{program} failed ({status}): {stderr}"));
            }
            Ok(None) if started.elapsed() > TOOL_DEADLINE => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{program} took over {TOOL_DEADLINE:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("{program}: {e}")),
        }
    }
}

/// Whether `path` is a mount point, by the kernel's mount table.
fn mounted(path: &Path) -> Result<bool, WorkloadError> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| internal("reading the mount table", e))?;
    // Field 5 is the mount point, with space, tab, newline and backslash escaped in octal.
    let wanted = path
        .to_string_lossy()
        .replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012");
    Ok(table
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_str())))
}

impl SizedVolumes {
    /// The images under `data_dir`.
    pub(super) fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join(IMAGES_DIR),
        }
    }

    fn image(&self, docker_name: &str) -> PathBuf {
        self.dir.join(format!("{docker_name}.ext4"))
    }

    fn mount_point(&self, docker_name: &str) -> PathBuf {
        self.dir.join(docker_name)
    }

    /// The directory the Docker volume binds: inside the mounted image only.
    pub(super) fn data_dir(&self, docker_name: &str) -> PathBuf {
        self.mount_point(docker_name).join("data")
    }

    /// Checks `size_mib` against the bounds.
    pub(super) fn check_size(size_mib: u64) -> Result<(), WorkloadError> {
        if (MIN_SIZE_MIB..=MAX_SIZE_MIB).contains(&size_mib) {
            Ok(())
        } else {
            Err(WorkloadError::Invalid(format!(
                "a volume's size is {MIN_SIZE_MIB} to {MAX_SIZE_MIB} MiB"
            )))
        }
    }

    /// Makes the filesystem of volume `docker_name`, `size_mib` MiB (checked by
    /// [`SizedVolumes::check_size`]) with its space reserved on the host, and mounts it. Undone
    /// when any step fails.
    pub(super) async fn create(
        &self,
        docker_name: &str,
        size_mib: u64,
    ) -> Result<(), WorkloadError> {
        let this = self.clone();
        let name = docker_name.to_owned();
        tokio::task::spawn_blocking(move || {
            let made = this.create_blocking(&name, size_mib);
            if made.is_err() {
                this.remove_blocking(&name);
            }
            made
        })
        .await
        .map_err(|e| internal("making the volume's filesystem", e))?
    }

    fn create_blocking(&self, docker_name: &str, size_mib: u64) -> Result<(), WorkloadError> {
        if !rustix::process::geteuid().is_root() {
            return Err(unavailable("the node does not run as root"));
        }
        if !Path::new("/dev/loop-control").exists() {
            return Err(unavailable("this host has no loop devices"));
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| internal("the volumes directory", e))?;
        let image = self.image(docker_name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&image)
            .map_err(|e| internal("creating the volume's image", e))?;
        // Reserve the space, so the host's disk cannot run out under a volume that is not full.
        rustix::fs::fallocate(
            &file,
            rustix::fs::FallocateFlags::empty(),
            0,
            size_mib << 20,
        )
        .map_err(|e| {
            WorkloadError::Conflict(format!(
                "the host cannot reserve {size_mib} MiB for the volume: {e}"
            ))
        })?;
        drop(file);
        run(
            "mkfs.ext4",
            &[
                "-q".as_ref(),
                "-F".as_ref(),
                "-m".as_ref(),
                "0".as_ref(),
                // Keep the reservation: discarding would punch the file full of holes.
                "-E".as_ref(),
                "nodiscard".as_ref(),
                image.as_os_str(),
            ],
        )
        .map_err(unavailable)?;
        self.mount_blocking(docker_name)?;
        std::fs::create_dir(self.data_dir(docker_name))
            .map_err(|e| internal("the volume's data directory", e))?;
        Ok(())
    }

    fn mount_blocking(&self, docker_name: &str) -> Result<(), WorkloadError> {
        let point = self.mount_point(docker_name);
        if mounted(&point)? {
            return Ok(());
        }
        std::fs::create_dir_all(&point).map_err(|e| internal("the volume's mount point", e))?;
        run(
            "mount",
            &[
                "-o".as_ref(),
                "loop,nosuid,nodev".as_ref(),
                self.image(docker_name).as_os_str(),
                point.as_os_str(),
            ],
        )
        .map_err(unavailable)?;
        tracing::info!(volume = docker_name, "volume filesystem mounted");
        Ok(())
    }

    /// Mounts volume `docker_name`'s filesystem when it is not mounted.
    pub(super) async fn mount(&self, docker_name: &str) -> Result<(), WorkloadError> {
        let this = self.clone();
        let name = docker_name.to_owned();
        tokio::task::spawn_blocking(move || this.mount_blocking(&name))
            .await
            .map_err(|e| internal("mounting the volume's filesystem", e))?
    }

    fn remove_blocking(&self, docker_name: &str) {
        let point = self.mount_point(docker_name);
        if mounted(&point).unwrap_or(false)
            && let Err(error) = rustix::mount::unmount(&point, rustix::mount::UnmountFlags::empty())
        {
            tracing::warn!(volume = docker_name, %error, "volume filesystem not unmounted");
            return;
        }
        let _ = std::fs::remove_dir(&point);
        let _ = std::fs::remove_file(self.image(docker_name));
    }

    /// Unmounts and deletes volume `docker_name`'s filesystem, once Docker let the volume go.
    pub(super) async fn remove(&self, docker_name: &str) {
        let this = self.clone();
        let name = docker_name.to_owned();
        let _ = tokio::task::spawn_blocking(move || this.remove_blocking(&name)).await;
    }
}
