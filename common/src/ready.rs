//! The ready file (`--ready-file PATH`) both binaries write once they serve: one JSON object
//! with what a script or a test would otherwise scrape from the human banner. It appears
//! whole or not at all: it is written to a temporary file in the same directory and renamed.

use std::{
    fs,
    io::{self, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::tls::Fingerprint;

/// A serving relay, as `relay --ready-file` describes it (and `agent` for its embedded relay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayReady {
    pub pid: u32,
    /// The UDP address agents connect to.
    pub quic: SocketAddr,
    /// The TCP address agents connect to where UDP is blocked, if on.
    #[serde(default)]
    pub tcp: Option<SocketAddr>,
    /// The admin endpoint (dashboard, API, metrics), if on.
    pub admin: Option<SocketAddr>,
    /// The shared HTTP and HTTPS ports of HTTP tunnels, if on.
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub fingerprint: Fingerprint,
    /// The token created at this start (a relay with no tokens yet makes one); it is shown
    /// only here and in the banner, never again.
    pub token: Option<String>,
    pub data_dir: PathBuf,
    /// Visitors the relay holds at once, as resolved from its open files limit.
    #[serde(default)]
    pub max_visitors: Option<usize>,
}

/// An agent whose first session is online, as `agent --ready-file` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReady {
    pub pid: u32,
    /// The web inspector's URL, if it listens.
    pub inspector: Option<String>,
    pub tunnels: Vec<TunnelReady>,
    /// The relay inside this agent, when it was started without `--relay`.
    pub relay: Option<RelayReady>,
    /// The session's links up now, and how many it aims for (as many as the agent asks
    /// for, if the relay allows them); all are up once the two are equal. While the agent
    /// reconnects, `links_up` is 0 and `tunnels` are the last session's.
    #[serde(default)]
    pub links_up: usize,
    #[serde(default)]
    pub links_wanted: usize,
    /// The links' transport and why: `QUIC`, or `TCP: ...` (e.g. `TCP: no QUIC answer in
    /// 300 ms`); empty while reconnecting.
    #[serde(default)]
    pub transport: String,
}

/// One tunnel's public side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelReady {
    pub name: String,
    /// The local server, `HOST:PORT`.
    pub local: String,
    /// Where visitors go: `tcp://HOST:PORT`, or the first of `urls`.
    pub url: String,
    /// The public host and port the relay granted: where a TCP tunnel's visitors connect.
    pub host: String,
    pub port: u16,
    /// An HTTP or TLS tunnel's addresses, HTTPS first; empty for TCP.
    pub urls: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadyFileError {
    #[error("cannot write ready file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read ready file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("ready file {path} is not what was expected: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
}

/// Writes `contents` as JSON to `path`, atomically and readable by the owner only (it may
/// hold a token).
pub fn write(path: &Path, contents: &impl Serialize) -> Result<(), ReadyFileError> {
    let failed = |source| ReadyFileError::Write { path: path.to_path_buf(), source };
    let mut json = serde_json::to_vec_pretty(contents).map_err(io::Error::from).map_err(failed)?;
    json.push(b'\n');
    let tmp = temporary_sibling(path);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&tmp).and_then(|mut file| file.write_all(&json)).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        // Nothing useful is left behind by a failed write; the error below says why.
        fs::remove_file(&tmp).ok();
    }
    written.map_err(failed)
}

/// Reads a ready file written by [`write`].
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, ReadyFileError> {
    let bytes = fs::read(path).map_err(|source| ReadyFileError::Read { path: path.to_path_buf(), source })?;
    serde_json::from_slice(&bytes).map_err(|source| ReadyFileError::Parse { path: path.to_path_buf(), source })
}

/// `.NAME.tmpPID` beside `path`: same file system, so the rename is atomic, and hidden from
/// a reader that lists the directory for NAME.
fn temporary_sibling(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay() -> RelayReady {
        RelayReady {
            max_visitors: None,
            pid: 7,
            quic: "127.0.0.1:4443".parse().expect("literal address"),
            tcp: Some("127.0.0.1:4443".parse().expect("literal address")),
            admin: None,
            http: Some("127.0.0.1:8880".parse().expect("literal address")),
            https: None,
            fingerprint: Fingerprint::of(&rustls_pki_types::CertificateDer::from(vec![1, 2, 3])),
            token: Some("brw_token".into()),
            data_dir: "/var/lib/burrow".into(),
        }
    }

    #[test]
    fn a_written_file_reads_back_whole_and_owner_only() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ready.json");
        write(&path, &relay())?;
        assert_eq!(read::<RelayReady>(&path)?, relay());
        let names: Vec<_> = fs::read_dir(dir.path())?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
        assert_eq!(names, ["ready.json"], "no temporary file is left");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        }
        Ok(())
    }

    #[test]
    fn an_unwritable_place_is_an_error_naming_the_path() {
        let error = write(Path::new("/nonexistent-dir/ready.json"), &relay()).err().map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("/nonexistent-dir/ready.json")));
    }
}
