//! The flow table over loopback sockets: delivery, the wait for a flow's stream, and what is
//! counted when a packet cannot cross.

use std::{net::SocketAddr, time::Duration};

use super::{pending::PER_FLOW, *};

const STEP: Duration = Duration::from_secs(5);

/// A flow's socket connected to `service`.
async fn flow_to(service: SocketAddr) -> anyhow::Result<Arc<Local>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(service).await?;
    socket.writable().await?;
    Ok(Arc::new(Local { socket, datagrams: Arc::default(), progress: Arc::default() }))
}

async fn received(service: &UdpSocket) -> anyhow::Result<Vec<u8>> {
    let mut buffer = [0u8; 100];
    let len = tokio::time::timeout(STEP, service.recv(&mut buffer)).await??;
    Ok(buffer[..len].to_vec())
}

#[tokio::test]
async fn datagrams_reach_their_flow_and_early_ones_wait_for_its_stream() -> anyhow::Result<()> {
    let stats = Stats::default();
    let flows = Flows::new(stats.clone());
    let (first, second) = (UdpSocket::bind("127.0.0.1:0").await?, UdpSocket::bind("127.0.0.1:0").await?);
    let first_flow = flow_to(first.local_addr()?).await?;
    let registered = flows.register(70, &first_flow).expect("a new id");
    flows.deliver(&datagram::encode(70, b"first"));
    assert_eq!(received(&first).await?, b"first");

    flows.deliver(&datagram::encode(71, b"early"));
    flows.deliver(&datagram::encode(71, b"early too"));
    flows.deliver(&Bytes::from_static(&[0]));
    let second_flow = flow_to(second.local_addr()?).await?;
    let _second = flows.register(71, &second_flow).expect("a new id");
    assert_eq!(received(&second).await?, b"early", "delivered when its stream came, in order");
    assert_eq!(received(&second).await?, b"early too");
    assert!(flows.register(71, &second_flow).is_none(), "an id in use is refused");
    assert_eq!(stats.snapshot().udp_unknown_flow, 0, "a liveness probe is no stray");

    let (packets, progress) = (first_flow.datagrams.view(), first_flow.progress.moved());
    assert_eq!((packets.to_local, progress.1), (1, 5), "packets and bytes to the local service");
    drop(registered);
    for _ in 0..PER_FLOW + 2 {
        flows.deliver(&datagram::encode(70, b"late"));
    }
    assert_eq!(stats.snapshot().udp_unknown_flow, 2, "an ended flow's datagrams wait as strays, bounded");
    assert_eq!(first_flow.datagrams.view().to_local, 1);
    Ok(())
}

#[tokio::test]
async fn a_closed_local_port_drops_packets_but_not_the_flow() -> anyhow::Result<()> {
    let flows = Flows::new(Stats::default());
    let gone = UdpSocket::bind("127.0.0.1:0").await?;
    let port = gone.local_addr()?;
    drop(gone);
    let flow = flow_to(port).await?;
    let _registered = flows.register(1, &flow).expect("a new id");
    for _ in 0..3 {
        flows.deliver(&datagram::encode(1, b"anyone?"));
    }
    let packets = flow.datagrams.view();
    assert_eq!(packets.to_local + packets.local_unreachable, 3, "{packets:?}");
    assert!(packets.local_unreachable >= 1, "the port unreachable is seen at a later send: {packets:?}");
    flows.deliver(&datagram::encode(1, b"still there"));
    assert_eq!(flow.datagrams.view().to_local + flow.datagrams.view().local_unreachable, 4, "the flow goes on");
    Ok(())
}
