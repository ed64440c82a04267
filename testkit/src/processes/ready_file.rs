//! Where a launched binary writes its `--ready-file`, and waiting for it.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use serde::de::DeserializeOwned;

use super::{Binary, binary::STARTUP};

/// How often the file's existence is checked while waiting: the wait ends within this of
/// the rename that creates it.
const LOOK_EVERY: Duration = Duration::from_millis(10);

/// A path in a fresh private directory, removed with this value.
pub struct ReadyFile {
    dir: tempfile::TempDir,
}

impl ReadyFile {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self { dir: tempfile::tempdir()? })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("ready.json")
    }

    /// The file's contents once `process` has written them. Fails at once if the process
    /// exits first (quoting its stderr), and after [`STARTUP`] at the latest.
    pub async fn wait<T: DeserializeOwned>(&self, process: &mut Binary) -> anyhow::Result<T> {
        self.wait_until(process, |_: &T| true).await
    }

    /// The file's contents once they pass `test`: an agent rewrites its file when its
    /// tunnels change.
    pub async fn wait_until<T: DeserializeOwned>(
        &self,
        process: &mut Binary,
        test: impl Fn(&T) -> bool,
    ) -> anyhow::Result<T> {
        let path = self.path();
        let mut look = tokio::time::interval(LOOK_EVERY);
        let waiting = async {
            loop {
                look.tick().await;
                if let Some(contents) = read_if_there::<T>(&path)?
                    && test(&contents)
                {
                    return Ok(contents);
                }
                if !process.running() {
                    process.stderr_to_the_end(STARTUP).await?;
                    anyhow::bail!("the process exited before its ready file said so");
                }
            }
        };
        let waited = tokio::time::timeout(STARTUP, waiting)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no such ready file {} within {STARTUP:?}", path.display())));
        waited.with_context(|| format!("stderr:\n{}", process.stderr_text()))
    }
}

fn read_if_there<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(burrow_common::ready::read(path)?))
}

#[cfg(test)]
mod tests {
    use burrow_common::ready::AgentReady;
    use tokio::process::Command;

    use super::*;

    #[tokio::test]
    async fn a_process_that_exits_without_its_file_fails_the_wait_at_once() -> anyhow::Result<()> {
        let file = ReadyFile::new()?;
        let mut process = Binary::start(Command::new("sh").args(["-c", "echo gave up >&2"]))?;
        let waited = tokio::time::timeout(STARTUP / 2, file.wait::<AgentReady>(&mut process)).await?;
        let error = format!("{:#}", waited.err().context("no file was written")?);
        assert!(error.contains("exited before its ready file") && error.contains("gave up"), "{error}");
        Ok(())
    }

    #[tokio::test]
    async fn the_wait_returns_the_file_once_it_passes_the_test() -> anyhow::Result<()> {
        let file = ReadyFile::new()?;
        let mut process = Binary::start(Command::new("sleep").arg("30"))?;
        let first = AgentReady {
            pid: 1,
            inspector: None,
            tunnels: Vec::new(),
            relay: None,
            links_up: 0,
            links_wanted: 0,
            transport: String::new(),
        };
        burrow_common::ready::write(&file.path(), &first)?;
        assert_eq!(file.wait::<AgentReady>(&mut process).await?, first);
        let later = AgentReady { pid: 2, ..first };
        let path = file.path();
        let writer = async {
            tokio::task::yield_now().await;
            burrow_common::ready::write(&path, &later)
        };
        let (waited, written) = tokio::join!(file.wait_until(&mut process, |r: &AgentReady| r.pid == 2), writer);
        written?;
        assert_eq!(waited?, later);
        Ok(())
    }
}
