//! The lock every change to `tokens.json` is made under. `relay token add` and `revoke` run
//! as separate processes, each reading the file, changing it and writing it back: without a
//! lock, an add that read the file before a revoke wrote it would write the revoked token
//! back.

use std::{
    fs::{File, OpenOptions},
    path::{Path, PathBuf},
};

use anyhow::Context;
use rustix::fs::{FlockOperation, flock};

use crate::files;

/// An exclusive `flock` on the lock file beside the token file, released when dropped
/// (closing the file releases it, even if the process dies).
pub(super) struct ChangeLock {
    _file: File,
}

impl ChangeLock {
    /// Waits for the lock on `<tokens>.lock`, creating it (and the data directory) if needed.
    pub(super) fn acquire(tokens: &Path) -> anyhow::Result<Self> {
        let path = lock_path(tokens);
        if let Some(dir) = path.parent() {
            files::create_private_dir(dir).with_context(|| format!("create directory {}", dir.display()))?;
        }
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&path).with_context(|| format!("open {}", path.display()))?;
        flock(&file, FlockOperation::LockExclusive).with_context(|| format!("lock {}", path.display()))?;
        Ok(Self { _file: file })
    }
}

fn lock_path(tokens: &Path) -> PathBuf {
    let mut name = tokens.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    tokens.with_file_name(name)
}
