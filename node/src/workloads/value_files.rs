//! Config and secret values a workload mounts as files.
//!
//! They are written only to memory: a directory per workload under `/dev/shm` (a tmpfs, which
//! the node checks before writing anything), owned by the node and closed to other users of the
//! host, with one read-only directory per mount (mode 0555, files 0444, so any user in the
//! container reads them) that Docker binds into the container read-only.
//! Nothing of them reaches the disk, and they are removed when the workload ends (or by the
//! sweep, after a crash).

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Where the files of every node on this host live.
const SHM: &str = "/dev/shm";
/// `statfs` magic numbers of filesystems kept in memory: tmpfs and ramfs.
const MEMORY_FILESYSTEMS: &[u64] = &[0x0102_1994, 0x8584_58f6];

/// One mount's files: the directory inside the container, and each key's value.
pub(super) struct MountFiles {
    /// The directory inside the container.
    pub(super) path: String,
    /// Key (file name) and value.
    pub(super) files: Vec<(String, Zeroizing<String>)>,
}

/// The directory of node `node`'s value files.
pub(super) fn root(node: &str) -> PathBuf {
    Path::new(SHM).join(format!("clawbernetes-{node}"))
}

fn is_memory_filesystem(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|stat| {
        let kind = u64::try_from(stat.f_type).unwrap_or(0);
        MEMORY_FILESYSTEMS.contains(&kind)
    })
}

/// Writes workload `id`'s files under `root`: answers each mount's host directory and its path
/// in the container.
pub(super) fn write(
    root: &Path,
    id: &str,
    mounts: &[MountFiles],
) -> Result<Vec<(PathBuf, String)>, String> {
    let shm = root.parent().unwrap_or(root);
    if !is_memory_filesystem(shm) {
        return Err(format!(
            "{} is not a tmpfs: config and secret files are written to memory only",
            shm.display()
        ));
    }
    let fail = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(root)
        .map_err(|e| fail(root, e))?;
    // Nobody else on the host may enter it, whatever the umask made it (Docker binds the
    // mounts as root; inside the container only the mount's own modes count).
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| fail(root, e))?;
    let workload = root.join(id);
    let _ = std::fs::remove_dir_all(&workload);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&workload)
        .map_err(|e| fail(&workload, e))?;
    let mut points = Vec::new();
    for (index, mount) in mounts.iter().enumerate() {
        let dir = workload.join(index.to_string());
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&dir)
            .map_err(|e| fail(&dir, e))?;
        for (key, value) in &mount.files {
            let file = dir.join(key);
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(&file)
                .map_err(|e| fail(&file, e))?;
            out.write_all(value.as_bytes())
                .map_err(|e| fail(&file, e))?;
        }
        // The container reads them; nobody writes to them.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555))
            .map_err(|e| fail(&dir, e))?;
        points.push((dir, mount.path.clone()));
    }
    Ok(points)
}

/// Removes workload `id`'s files.
pub(super) fn remove(root: &Path, id: &str) {
    let workload = root.join(id);
    // Read-only directories first become removable.
    for entry in std::fs::read_dir(&workload).into_iter().flatten().flatten() {
        let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o700));
    }
    let _ = std::fs::remove_dir_all(workload);
}

/// The workloads with files under `root`.
pub(super) fn workloads(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.starts_with("wl-"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_to_memory_read_only_and_removed() {
        let node = format!("test-{}", std::process::id());
        let root = root(&node);
        if !is_memory_filesystem(Path::new(SHM)) {
            panic!("{SHM} is not a tmpfs on this machine: value files cannot be tested here");
        }
        let mounts = [MountFiles {
            path: "/run/secrets/db".to_owned(),
            files: vec![("password".to_owned(), Zeroizing::new("pw".to_owned()))],
        }];
        let points = write(&root, "wl-1", &mounts).unwrap();
        assert_eq!(points.len(), 1);
        let file = points[0].0.join("password");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "pw");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o444);
        assert_eq!(workloads(&root), vec!["wl-1".to_owned()]);
        remove(&root, "wl-1");
        assert!(!file.exists());
        assert!(workloads(&root).is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }
}
