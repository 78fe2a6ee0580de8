//! Reading and writing secret key files: owner-only permissions, atomic replacement, strict sizes.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Largest secret file we are prepared to read; real ones are well under 1 KiB.
const MAX_SECRET_FILE_BYTES: u64 = 4096;

/// Why a secret key file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file does not exist.
    #[error("key file {path} does not exist")]
    Missing {
        /// The path that was looked for.
        path: PathBuf,
    },
    /// The file exists and we were asked not to replace it.
    #[error("key file {path} already exists; refusing to overwrite it")]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// Group or other users can read or write the file, so the secret may be known to others.
    #[error(
        "key file {path} has mode {mode:o}: group and other users must have no access (run `chmod 600 {path}`)"
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The contents are not a key of the expected format.
    #[error("key file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The operating system refused an operation.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl KeyFileError {
    pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Reads a secret file after checking that only its owner can access it.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, KeyFileError> {
    let file = fs::File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => KeyFileError::Missing {
            path: path.to_path_buf(),
        },
        _ => KeyFileError::io(path, e),
    })?;
    let meta = file.metadata().map_err(|e| KeyFileError::io(path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if !meta.is_file() {
        return Err(KeyFileError::corrupt(path, "not a regular file"));
    }
    if meta.len() > MAX_SECRET_FILE_BYTES {
        return Err(KeyFileError::corrupt(
            path,
            format!("{} bytes is too large for a key file", meta.len()),
        ));
    }
    let mut contents = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_SECRET_FILE_BYTES)
        .read_to_end(&mut contents)
        .map_err(|e| KeyFileError::io(path, e))?;
    Ok(contents)
}

/// Writes a secret file readable by its owner only (mode 0600).
///
/// Without `overwrite` an existing file is an error. With it, the new contents are written to a
/// temporary file beside the target and renamed over it, so a crash leaves either key, never half.
pub fn write_secret(path: &Path, contents: &[u8], overwrite: bool) -> Result<(), KeyFileError> {
    if !overwrite && path.exists() {
        return Err(KeyFileError::AlreadyExists {
            path: path.to_path_buf(),
        });
    }
    // `<name>.tmp` beside the target, so files that share a stem never share a temp file.
    let tmp = {
        let mut name = path.as_os_str().to_owned();
        name.push(".tmp");
        std::path::PathBuf::from(name)
    };
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| KeyFileError::io(&tmp, e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| KeyFileError::io(&tmp, e))?;
    drop(file);
    if !overwrite {
        // `hard_link` fails if the target appeared meanwhile, so a concurrent writer never loses
        // its key to us.
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        return linked.map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => KeyFileError::AlreadyExists {
                path: path.to_path_buf(),
            },
            _ => KeyFileError::io(path, e),
        });
    }
    fs::rename(&tmp, path).map_err(|e| KeyFileError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_are_owner_only_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_secret(&path, b"secret", false).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_secret(&path).unwrap(), b"secret");
    }

    #[test]
    fn refuses_to_overwrite_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_secret(&path, b"one", false).unwrap();
        assert!(matches!(
            write_secret(&path, b"two", false),
            Err(KeyFileError::AlreadyExists { .. })
        ));
        assert_eq!(read_secret(&path).unwrap(), b"one");
        write_secret(&path, b"two", true).unwrap();
        assert_eq!(read_secret(&path).unwrap(), b"two");
    }

    #[test]
    fn refuses_files_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_secret(&path, b"secret", false).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret(&path).unwrap_err();
        assert!(
            matches!(err, KeyFileError::InsecurePermissions { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn missing_file_is_reported_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_secret(&dir.path().join("nope")),
            Err(KeyFileError::Missing { .. })
        ));
    }
}
