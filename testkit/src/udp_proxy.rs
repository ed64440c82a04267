//! A stand-in for the NAT router between an agent and the relay.

use std::net::SocketAddr;

/// A UDP forwarder between one agent and the relay, standing in for a NAT router: it can
/// go silent (a crashed agent, a dead path: nothing is closed, packets just stop), or move
/// the agent's traffic to a new outside port, as a NAT that remaps a flow does.
pub struct UdpProxy {
    pub addr: SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    rebind: tokio::sync::mpsc::UnboundedSender<()>,
}

impl UdpProxy {
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let addr = front.local_addr()?;
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (rebind, mut rebinds) = tokio::sync::mpsc::unbounded_channel::<()>();
        let silent = cut.clone();
        let mut back = outside_socket(upstream).await?;
        tokio::spawn(async move {
            let (mut from_agent, mut from_relay) = (vec![0u8; 65536], vec![0u8; 65536]);
            let mut agent = None;
            let passing = || !silent.load(std::sync::atomic::Ordering::Relaxed);
            loop {
                tokio::select! {
                    Some(()) = rebinds.recv() => match outside_socket(upstream).await {
                        // The old socket closes: packets still sent to it are lost, as at a NAT.
                        Ok(fresh) => back = fresh,
                        Err(_) => break,
                    },
                    Ok((n, peer)) = front.recv_from(&mut from_agent) => {
                        agent = Some(peer);
                        if passing() {
                            back.send(&from_agent[..n]).await.ok();
                        }
                    }
                    Ok(n) = back.recv(&mut from_relay) => {
                        if let (Some(peer), true) = (agent, passing()) {
                            front.send_to(&from_relay[..n], peer).await.ok();
                        }
                    }
                    else => break,
                }
            }
        });
        Ok(Self { addr, cut, rebind })
    }

    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// From the next packet on, the relay sees the agent at a new address.
    pub fn rebind(&self) {
        self.rebind.send(()).ok();
    }
}

async fn outside_socket(upstream: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(upstream).await?;
    Ok(socket)
}
