//! Writing the relay's state files so a crash never leaves a torn or world-readable file.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

/// Which step on which file failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("create directory {}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("create {}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("write {}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("replace {}", path.display())]
    Replace { path: PathBuf, source: io::Error },
    #[error("read {}", path.display())]
    Read { path: PathBuf, source: io::Error },
}

/// Writes `bytes` to `path` through a temporary file and a rename, with mode 0600.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir).map_err(|source| FileError::CreateDir { path: dir.to_path_buf(), source })?;
    let tmp = temporary_sibling(path);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(|source| FileError::Create { path: tmp.clone(), source })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| FileError::Write { path: tmp.clone(), source })?;
    fs::rename(&tmp, path).map_err(|source| FileError::Replace { path: path.to_path_buf(), source })
}

/// Creates the data directory, readable by its owner only; the caller names the directory in
/// its error.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        warn_if_shared(dir);
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// The files inside are 0600 anyway; a readable directory still shows which exist.
fn warn_if_shared(dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(dir)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %dir.display(), "data directory is accessible to other users; consider chmod 700");
        }
    }
}

fn temporary_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// Reads a file that may not exist yet.
pub(crate) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, FileError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FileError::Read { path: path.to_path_buf(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_owner_only() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("nested/secret");
        write_private(&path, b"x")?;
        write_private(&path, b"yz")?;
        assert_eq!(fs::read(&path)?, b"yz");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
            assert_eq!(fs::metadata(path.parent().unwrap())?.permissions().mode() & 0o777, 0o700);
        }
        Ok(())
    }
}
