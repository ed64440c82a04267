//! What the counters and the connection list show as visits open and close.

use super::*;

#[test]
fn keeps_open_connections_and_the_last_closed_ones() {
    let stats = Stats::default();
    let web = stats.tunnel("web");
    let visitor = SocketAddr::from(([192, 0, 2, 1], 5000));
    let held = stats.open("web", web.clone(), visitor);
    held.progress().add_stream_to_tcp(1000);
    for i in 0..60 {
        let visit = stats.open("web", web.clone(), visitor);
        visit.progress().add_stream_to_tcp(i);
        visit.progress().add_tcp_to_stream(2 * i);
        visit.finish(VisitEnd::Closed);
    }
    let interrupted = stats.open("web", web.clone(), visitor);
    interrupted.progress().add_tcp_to_stream(5);
    drop(interrupted);

    let now = stats.snapshot();
    assert_eq!(now.connections.len(), RECENT);
    assert_eq!(now.connections[0].state, "open", "open connections come first");
    assert_eq!((now.connections[0].to_local, now.connections[0].to_visitor), (1000, 0), "bytes so far");
    assert_eq!(now.connections[1].reason.as_deref(), Some("interrupted"), "a dropped visit is not lost");
    assert_eq!(now.connections[1].to_visitor, 5, "with what it carried before");
    assert_eq!(now.connections[2].to_local, 59, "then the newest closed");
    assert_eq!(web.total.load(Relaxed), 62);
    assert_eq!(web.open.load(Relaxed), 1);
    assert_eq!(web.failed.load(Relaxed), 1);
    assert_eq!(web.to_local.load(Relaxed), (0..60).sum::<u64>(), "ended connections only");
    assert_eq!(web.to_visitor.load(Relaxed), 2 * (0..60).sum::<u64>() + 5);
}

#[test]
fn a_tunnels_bytes_include_its_open_connections_and_stay_put_when_one_closes() {
    let stats = Stats::default();
    let local = crate::config::LocalTarget { host: "127.0.0.1".into(), port: 8080 };
    let web = PublicTunnel {
        name: "web".into(),
        host: "192.0.2.9".into(),
        port: 20001,
        local,
        urls: Vec::new(),
        protocol: crate::config::Protocol::Tcp,
    };
    stats.publish(&watch::channel(Status::Connecting).0, Status::Online(vec![web]));
    let counters = stats.tunnel("web");
    let visitor = SocketAddr::from(([192, 0, 2, 1], 5000));
    let shown = |stats: &Stats| {
        let now = stats.snapshot();
        (now.tunnels[0].to_local, now.tunnels[0].to_visitor)
    };
    let earlier = stats.open("web", counters.clone(), visitor);
    earlier.progress().add_stream_to_tcp(10);
    earlier.finish(VisitEnd::Closed);
    let open = stats.open("web", counters.clone(), visitor);
    open.progress().add_stream_to_tcp(1000);
    open.progress().add_tcp_to_stream(7);
    assert_eq!(shown(&stats), (1010, 7), "bytes so far of the open connection count");
    assert_eq!(counters.to_local.load(Relaxed), 10, "the counters hold ended connections only");

    open.finish(VisitEnd::Closed);
    assert_eq!(shown(&stats), (1010, 7), "a close neither adds its bytes again nor drops them");
    assert_eq!((counters.to_local.load(Relaxed), counters.to_visitor.load(Relaxed)), (1010, 7));
}

#[test]
fn a_udp_tunnels_packets_include_its_open_flows_and_stay_put_when_one_ends() {
    let stats = Stats::default();
    let local = crate::config::LocalTarget { host: "127.0.0.1".into(), port: 51820 };
    let protocol = crate::config::Protocol::Udp;
    let vpn =
        PublicTunnel { name: "vpn".into(), host: "192.0.2.9".into(), port: 21422, local, urls: Vec::new(), protocol };
    stats.publish(&watch::channel(Status::Connecting).0, Status::Online(vec![vpn]));
    let counters = stats.tunnel("vpn");
    let visitor = SocketAddr::from(([192, 0, 2, 1], 5000));
    let packets = |stats: &Stats| stats.snapshot().tunnels[0].udp.map(|udp| udp.packets).unwrap_or_default();

    let datagrams = Arc::new(Datagrams::default());
    let flow = stats.open_flow("vpn", counters.clone(), visitor, datagrams.clone());
    datagrams.to_local();
    datagrams.to_visitor();
    datagrams.to_visitor();
    datagrams.dropped(Dropped::Oversize);
    flow.progress().add_stream_to_tcp(100);
    let open = packets(&stats);
    assert_eq!((open.to_local, open.to_visitor, open.oversize), (1, 2, 1), "an open flow's packets count");
    let listed = &stats.snapshot().connections[0];
    assert_eq!((listed.flow.map(|f| f.to_visitor), listed.to_local), (Some(2), 100), "the flow is listed");

    flow.finish(VisitEnd::Closed);
    assert_eq!(packets(&stats), open, "an ended flow's packets are neither counted twice nor lost");
    assert_eq!(counters.datagrams.view(), open);
    assert_eq!(stats.snapshot().tunnels[0].to_local, 100);
}
