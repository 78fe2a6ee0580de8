//! Host volumes, pinned when they are checked.
//!
//! Each host path is opened beneath its volume root without following any symlink (`openat2`
//! with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`), and exactly what was
//! opened is bind-mounted, through its file descriptor, onto a staging point in the node's data
//! directory. Docker mounts the staging point, which no workload can write to. A workload that
//! swaps a directory under a root for a symlink while the image is pulled therefore changes
//! nothing: the path is never looked up again.

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

use super::spec::{SpecError, VolumeSpec};

/// A volume root, as configured: the directory, and whether workloads may write under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VolumeRoot {
    /// The root, canonical.
    pub(crate) path: PathBuf,
    /// Read-write mounts are allowed under it (the operator marked it safe for workloads to
    /// write to).
    pub(crate) writable: bool,
}

/// The relative path of `host` under `root`, refusing `..`, `.` and anything not a plain name.
fn relative_under<'a>(host: &'a Path, root: &Path) -> Option<&'a Path> {
    let relative = host.strip_prefix(root).ok()?;
    relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then_some(relative)
}

/// The root `volume` lies under, and its path relative to it: refused when it lies under none,
/// or asks to write under a root workloads may only read. Nothing is opened yet.
fn root_of<'a>(
    volume: &'a VolumeSpec,
    roots: &'a [VolumeRoot],
) -> Result<(&'a VolumeRoot, &'a Path), SpecError> {
    let host = Path::new(&volume.host);
    if host
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(SpecError::Invalid(format!(
            "volume host path {:?} must not contain '.' or '..'",
            volume.host
        )));
    }
    let Some((root, relative)) = roots
        .iter()
        .find_map(|root| relative_under(host, &root.path).map(|rel| (root, rel)))
    else {
        return Err(SpecError::NotPermitted(format!(
            "volume host path {:?} is outside the node's volume roots",
            volume.host
        )));
    };
    if !volume.read_only && !root.writable {
        return Err(SpecError::NotPermitted(format!(
            "volume root {} is read-only for workloads (workloads.writable_volume_roots lists the roots they may write to)",
            root.path.display()
        )));
    }
    Ok((root, relative))
}

/// Checks every volume lies under a root that allows its mode, before anything is admitted.
pub(crate) fn check_roots(volumes: &[VolumeSpec], roots: &[VolumeRoot]) -> Result<(), SpecError> {
    for volume in volumes {
        root_of(volume, roots)?;
    }
    Ok(())
}

/// Opens directory `path` beneath one of `roots` (a writable one when `writable`), following
/// no symlink on the way: backups are written into and read from it through this descriptor.
pub(crate) fn open_dir(
    path: &str,
    roots: &[VolumeRoot],
    writable: bool,
) -> Result<OwnedFd, SpecError> {
    let volume = VolumeSpec {
        host: path.to_owned(),
        container: "/".to_owned(),
        read_only: !writable,
    };
    let fd = open_beneath(&volume, roots)?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| SpecError::Invalid(format!("{path}: {e}")))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return Err(SpecError::Invalid(format!("{path} is not a directory")));
    }
    Ok(fd)
}

/// Opens `volume`'s host path beneath its root, following no symlink on the way.
fn open_beneath(volume: &VolumeSpec, roots: &[VolumeRoot]) -> Result<OwnedFd, SpecError> {
    let (root, relative) = root_of(volume, roots)?;
    let path_flags = OFlags::PATH | OFlags::CLOEXEC;
    let root_fd = rustix::fs::open(&root.path, path_flags | OFlags::DIRECTORY, Mode::empty())
        .map_err(|e| SpecError::Invalid(format!("volume root {}: {e}", root.path.display())))?;
    if relative.as_os_str().is_empty() {
        return Ok(root_fd);
    }
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    rustix::fs::openat2(&root_fd, relative, path_flags, Mode::empty(), resolve).map_err(|e| {
        if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::XDEV {
            SpecError::NotPermitted(format!(
                "volume host path {:?} goes through a symlink",
                volume.host
            ))
        } else {
            SpecError::Invalid(format!("volume host path {:?}: {e}", volume.host))
        }
    })
}

/// A workload's pinned host volumes: staging points under the node's data directory, each a
/// bind mount of what was checked. Released (unmounted, removed) by [`release`].
#[derive(Debug)]
pub(crate) struct Pinned {
    /// The staging points, in the order of the volumes.
    pub(crate) points: Vec<PathBuf>,
}

/// Pins `volumes` for workload `id` under `staging` (`<data dir>/mounts`).
pub(crate) fn pin(
    id: &str,
    volumes: &[VolumeSpec],
    roots: &[VolumeRoot],
    staging: &Path,
) -> Result<Pinned, SpecError> {
    let dir = staging.join(id);
    let mut pinned = Pinned { points: Vec::new() };
    if volumes.is_empty() {
        return Ok(pinned);
    }
    let outcome = (|| {
        std::fs::create_dir_all(&dir)
            .map_err(|e| SpecError::Invalid(format!("staging {}: {e}", dir.display())))?;
        for (index, volume) in volumes.iter().enumerate() {
            let fd = open_beneath(volume, roots)?;
            let point = dir.join(index.to_string());
            let is_dir = rustix::fs::fstat(&fd)
                .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
                .map_err(|e| SpecError::Invalid(format!("volume {:?}: {e}", volume.host)))?;
            let made = if is_dir {
                std::fs::create_dir(&point)
            } else {
                std::fs::File::create(&point).map(drop)
            };
            made.map_err(|e| SpecError::Invalid(format!("staging {}: {e}", point.display())))?;
            let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
            rustix::mount::mount_bind(source.as_str(), &point).map_err(|e| {
                let _ = remove_point(&point);
                SpecError::NotPermitted(format!(
                    "pinning volume {:?} needs the mount privilege (run the node as root): {e}",
                    volume.host
                ))
            })?;
            pinned.points.push(point);
        }
        Ok(())
    })();
    match outcome {
        Ok(()) => Ok(pinned),
        Err(error) => {
            release(id, staging);
            Err(error)
        }
    }
}

fn remove_point(point: &Path) -> std::io::Result<()> {
    if point.is_dir() {
        std::fs::remove_dir(point)
    } else {
        std::fs::remove_file(point)
    }
}

/// Unmounts and removes workload `id`'s staging points. What is already gone is fine.
pub(crate) fn release(id: &str, staging: &Path) {
    let dir = staging.join(id);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let point = entry.path();
        let _ = rustix::mount::unmount(&point, rustix::mount::UnmountFlags::DETACH);
        let _ = remove_point(&point);
    }
    let _ = std::fs::remove_dir(&dir);
}

/// The workloads that hold staging points under `staging`.
pub(crate) fn pinned_workloads(staging: &Path) -> Vec<String> {
    std::fs::read_dir(staging)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(host: &Path, read_only: bool) -> VolumeSpec {
        VolumeSpec {
            host: host.display().to_string(),
            container: "/data".to_owned(),
            read_only,
        }
    }

    #[test]
    fn paths_are_opened_beneath_their_root_through_no_symlink() {
        let root_dir = tempfile::tempdir().unwrap();
        let root = root_dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("data")).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("escape")).unwrap();
        std::os::unix::fs::symlink(root.join("data"), root.join("inner-link")).unwrap();
        let roots = [VolumeRoot {
            path: root.clone(),
            writable: false,
        }];
        assert!(open_beneath(&volume(&root.join("data"), true), &roots).is_ok());
        for (refused, why) in [
            (outside.path().to_path_buf(), "outside"),
            (root.join("escape"), "symlink"),
            (root.join("inner-link"), "symlink"),
            (root.join("escape/x"), "symlink"),
        ] {
            let err = open_beneath(&volume(&refused, true), &roots).unwrap_err();
            assert!(
                matches!(err, SpecError::NotPermitted(ref m) if m.contains(why)),
                "{refused:?}: {err}"
            );
        }
        let err = open_beneath(&volume(&root.join("data/../data"), true), &roots).unwrap_err();
        assert!(matches!(err, SpecError::Invalid(_)), "{err}");
        // A read-write mount needs a root marked writable.
        let err = open_beneath(&volume(&root.join("data"), false), &roots).unwrap_err();
        assert!(matches!(err, SpecError::NotPermitted(ref m) if m.contains("read-only")));
        let writable = [VolumeRoot {
            path: root.clone(),
            writable: true,
        }];
        assert!(open_beneath(&volume(&root.join("data"), false), &writable).is_ok());
    }
}
