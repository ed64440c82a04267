//! Why [`Relay::bind`](crate::Relay::bind) failed: which setting, listener or state file, so
//! a caller can react to one (another program on a port) without reading the message.

use std::{io, net::SocketAddr, path::PathBuf};

pub use crate::{config::ConfigError, files::FileError, identity::CertificateError, vhost::HttpsCertError};

/// What stopped the relay from starting; every message names the setting to change.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("create data directory {}", path.display())]
    DataDir { path: PathBuf, source: io::Error },
    /// The certificate agents pin (`tls_cert` / `tls_key`, or the generated one).
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// The QUIC stateless-reset and connection-ID keys in the data directory.
    #[error("load the QUIC keys")]
    QuicKeys(#[source] FileError),
    #[error(transparent)]
    QuicTls(#[from] burrow_common::tls::ConfigError),
    /// `listen`: the UDP port agents dial.
    #[error("bind UDP {addr} for agents (listen)")]
    Listen { addr: SocketAddr, source: io::Error },
    /// `tcp_listen`: the TCP port agents dial where UDP is blocked.
    #[error("bind TCP {addr} for agents (tcp_listen; `off` disables it)")]
    TcpListen { addr: SocketAddr, source: io::Error },
    #[error("start QUIC endpoint")]
    Endpoint(#[source] io::Error),
    #[error("load port reservations")]
    Reservations(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// `store.url`: the etcd store could not be opened, or this build has none.
    #[error("open the store (store.url = {url})")]
    Store { url: String, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("bind the admin endpoint on {addr} (admin_listen; `off` disables it)")]
    AdminListen { addr: SocketAddr, source: io::Error },
    #[error("bind http_listen = {addr} (another server on that port? `off` disables it)")]
    HttpListen { addr: SocketAddr, source: io::Error },
    #[error("bind https_listen = {addr} (another server on that port? `off` disables it)")]
    HttpsListen { addr: SocketAddr, source: io::Error },
    /// `https_cert` / `https_key`, or the generated wildcard certificate.
    #[error(transparent)]
    HttpsCertificate(#[from] HttpsCertError),
    /// The ACME account and certificates in the data directory.
    #[error("load the ACME certificates")]
    AcmeCertificates(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl BindError {
    /// Whether the shared HTTP or HTTPS port could not be bound (another server holds it, or
    /// it needs privileges); the relay could start on other ports instead.
    pub fn is_http_port_unavailable(&self) -> bool {
        matches!(self, BindError::HttpListen { .. } | BindError::HttpsListen { .. })
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;
    use crate::{Relay, RelayConfig};

    #[tokio::test]
    async fn a_taken_port_names_its_setting_and_the_http_ports_are_told_apart() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = taken.local_addr()?;
        let base = RelayConfig {
            listen: "127.0.0.1:0".parse()?,
            data_dir: dir.path().to_path_buf(),
            admin_listen: None,
            http_listen: None,
            https_listen: None,
            ..RelayConfig::default()
        };

        let admin = Relay::bind(RelayConfig { admin_listen: Some(addr), ..base.clone() }).err();
        let admin = admin.context("the admin port is taken")?;
        assert!(matches!(admin, BindError::AdminListen { .. }) && !admin.is_http_port_unavailable());
        let printed = format!("{:#}", anyhow::Error::from(admin));
        let expected = format!("bind the admin endpoint on {addr} (admin_listen; `off` disables it): ");
        assert!(printed.starts_with(&expected), "{printed}");

        let domain = Some("burrow.test".to_owned());
        let http = RelayConfig { domain: domain.clone(), http_listen: Some(addr), ..base.clone() };
        assert!(Relay::bind(http).err().is_some_and(|e| e.is_http_port_unavailable()));
        let https = RelayConfig { domain, https_listen: Some(addr), ..base };
        assert!(Relay::bind(https).err().is_some_and(|e| e.is_http_port_unavailable()));
        Ok(())
    }
}
