use std::{net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::{encoding::text::encode, registry::Registry};

use super::{Granted, Traffic};
use crate::reservations::TunnelKey;

fn granted(id: u32, token: &str, tunnel: &str, port: u16) -> Granted {
    Granted { id, key: TunnelKey { token: token.into(), tunnel: tunnel.into() }, port }
}

fn peer() -> SocketAddr {
    "192.0.2.7:50000".parse().unwrap()
}

/// (name, state) of each tunnel listed.
fn listed(traffic: &Traffic) -> Vec<(String, &'static str)> {
    traffic.tunnels().into_iter().map(|t| (t.name, t.state)).collect()
}

#[test]
fn a_tunnel_serves_parks_and_goes_and_its_counts_carry_over_to_the_next_session() {
    let traffic = Arc::new(Traffic::default());
    let mut first = traffic.open_session(1, vec![granted(0, "alice", "web", 20001), granted(1, "alice", "ssh", 20002)]);
    let visit = traffic.visit(1, 0, peer());
    assert_eq!(traffic.visitors().iter().map(|v| (v.tunnel.as_str(), v.port)).collect::<Vec<_>>(), [("web", 20001)]);
    visit.finished(10, 20);
    drop(visit);
    assert!(traffic.visitors().is_empty());
    assert_eq!(listed(&traffic), [("ssh".into(), "serving"), ("web".into(), "serving")]);

    first.ended(&[20001]);
    assert_eq!(listed(&traffic), [("web".into(), "parked")]);
    drop(traffic.visit(1, 0, peer()));
    assert!(traffic.visitors().is_empty(), "the ended session's connection routes no visitor");

    let second = traffic.open_session(2, vec![granted(0, "alice", "web", 20001)]);
    assert_eq!(traffic.reconnects.get(), 1);
    let web = traffic.tunnels().into_iter().find(|t| t.name == "web").unwrap();
    assert_eq!(
        (web.state, web.visitors_total, web.bytes_visitor_to_local, web.bytes_local_to_visitor),
        ("serving", 1, 10, 20)
    );
    drop(first);
    assert_eq!(listed(&traffic), [("web".into(), "serving")]);
    drop(second);
    assert!(listed(&traffic).is_empty());
}

#[test]
fn tunnels_nobody_held_for_the_ttl_are_forgotten_with_their_series() {
    let traffic = Arc::new(Traffic::default());
    let mut registry = Registry::default();
    registry.register("tunnel_bytes", "", traffic.bytes.clone());
    let page = |registry: &Registry| {
        let mut text = String::new();
        encode(&mut text, registry).unwrap();
        text
    };
    let session = traffic.open_session(1, vec![granted(0, "bob", "db", 20003)]);
    traffic.visit(1, 0, peer()).finished(5, 5);
    drop(session);
    traffic.forget_idle(Duration::from_secs(3600));
    assert!(page(&registry).contains("tunnel=\"db\""), "kept while its reservation would be");

    traffic.forget_idle(Duration::ZERO);
    assert!(!page(&registry).contains("tunnel=\"db\""));
    drop(traffic.open_session(2, vec![granted(0, "bob", "db", 20003)]));
    assert_eq!(traffic.reconnects.get(), 0, "a forgotten tunnel is new again");
}
