//! The compiled agent, launched and known by its ready file.

use std::net::SocketAddr;

use anyhow::Context;
use burrow_common::ready::{AgentReady, TunnelReady};
use tokio::process::Command;

use super::{Binary, ReadyFile};

pub struct AgentBinary {
    pub process: Binary,
    /// What the agent's ready file said last.
    pub ready: AgentReady,
    ready_file: ReadyFile,
}

impl AgentBinary {
    /// Starts `command` (the agent with its flags) with a ready file, and returns once the
    /// agent's tunnels are online.
    pub async fn launch(command: &mut Command) -> anyhow::Result<Self> {
        let ready_file = ReadyFile::new()?;
        let mut process = Binary::start(command.arg("--ready-file").arg(ready_file.path()))?;
        let ready = ready_file.wait(&mut process).await?;
        Ok(Self { process, ready, ready_file })
    }

    /// Waits until the ready file passes `test` (the agent rewrites it when its tunnels or
    /// its links up change) and returns it.
    pub async fn until(&mut self, test: impl Fn(&AgentReady) -> bool) -> anyhow::Result<&AgentReady> {
        self.ready = self.ready_file.wait_until(&mut self.process, test).await?;
        Ok(&self.ready)
    }

    /// Waits until every link the agent's session aims for is up, as its ready file says.
    pub async fn all_links_up(&mut self) -> anyhow::Result<&AgentReady> {
        self.until(|ready| ready.links_wanted > 0 && ready.links_up == ready.links_wanted).await
    }

    /// Waits until the agent serves a tunnel named `name`; returns it.
    pub async fn tunnel(&mut self, name: &str) -> anyhow::Result<TunnelReady> {
        let ready = self.until(|ready| ready.tunnels.iter().any(|t| t.name == name)).await?;
        ready.tunnels.iter().find(|t| t.name == name).cloned().context("the tunnel is listed")
    }

    /// The public address of the first tunnel, which tests' relays publish as an IP.
    pub fn public_addr(&self) -> anyhow::Result<SocketAddr> {
        tcp_addr(self.ready.tunnels.first().context("the agent serves a tunnel")?)
    }
}

/// A tunnel's public address, when its host is an IP (as on test relays).
pub fn tcp_addr(tunnel: &TunnelReady) -> anyhow::Result<SocketAddr> {
    let ip = tunnel.host.parse().with_context(|| format!("{:?} is an IP address", tunnel.host))?;
    Ok(SocketAddr::new(ip, tunnel.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tunnel(host: &str) -> TunnelReady {
        let url = format!("tcp://{host}:20417");
        TunnelReady {
            name: "app".into(),
            local: "127.0.0.1:8080".into(),
            url,
            host: host.into(),
            port: 20417,
            urls: vec![],
        }
    }

    #[test]
    fn a_tunnel_on_an_ip_host_has_a_socket_address() -> anyhow::Result<()> {
        assert_eq!(tcp_addr(&tunnel("10.80.0.1"))?, "10.80.0.1:20417".parse()?);
        assert!(tcp_addr(&tunnel("relay.example.com")).is_err());
        Ok(())
    }
}
