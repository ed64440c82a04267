use std::{net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::{encoding::text::encode, registry::Registry};

use super::{CountedTunnel, Traffic, Visit};
use crate::claims::{ClaimState, TunnelKey};

fn granted(id: u32, token: &str, tunnel: &str, port: u16) -> CountedTunnel {
    CountedTunnel { id, key: TunnelKey::of(token, tunnel), port, url: None }
}

fn peer() -> SocketAddr {
    "192.0.2.7:50000".parse().unwrap()
}

/// Counts bytes into `visit` as its splice would.
fn carry(visit: &Visit, to_local: u64, to_visitor: u64) {
    visit.progress().add_tcp_to_stream(to_local);
    visit.progress().add_stream_to_tcp(to_visitor);
}

/// The metrics page of `traffic`'s byte counters, read as a scrape reads them.
fn scrape(traffic: &Traffic) -> String {
    let mut registry = Registry::with_prefix("burrow");
    registry.register("bytes", "", traffic.all_bytes.clone());
    registry.register("tunnel_bytes", "", traffic.bytes.clone());
    traffic.catch_up();
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    text
}

fn sample(page: &str, series: &str) -> Option<u64> {
    page.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn key(token: &str, tunnel: &str) -> TunnelKey {
    TunnelKey::of(token, tunnel)
}

/// (name, state) of each tunnel listed while the claims table holds `claimed`.
fn listed(traffic: &Traffic, claimed: &[(TunnelKey, ClaimState)]) -> Vec<(String, &'static str)> {
    traffic.tunnels(claimed).into_iter().map(|t| (t.name, t.state)).collect()
}

#[test]
fn a_tunnel_serves_parks_and_goes_and_its_counts_carry_over_to_the_next_session() {
    let traffic = Arc::new(Traffic::default());
    let mut first = traffic.open_session(1, vec![granted(0, "alice", "web", 20001), granted(1, "alice", "ssh", 20002)]);
    let visit = traffic.visit(1, 0, peer());
    assert_eq!(traffic.visitors().iter().map(|v| (v.tunnel.as_str(), v.port)).collect::<Vec<_>>(), [("web", 20001)]);
    carry(&visit, 10, 20);
    drop(visit);
    assert!(traffic.visitors().is_empty());
    let (web, ssh) = (key("alice", "web"), key("alice", "ssh"));
    let both = [(web.clone(), ClaimState::Serving), (ssh.clone(), ClaimState::Serving)];
    assert_eq!(listed(&traffic, &both), [("ssh".into(), "serving"), ("web".into(), "serving")]);

    first.ended();
    let parked = [(web.clone(), ClaimState::Parked)];
    assert_eq!(listed(&traffic, &parked), [("web".into(), "parked")]);
    drop(traffic.visit(1, 0, peer()));
    assert!(traffic.visitors().is_empty(), "the ended session's connection routes no visitor");

    let second = traffic.open_session(2, vec![granted(0, "alice", "web", 20001)]);
    assert_eq!(traffic.reconnects.get(), 1);
    let serving = [(web.clone(), ClaimState::Serving)];
    let view = traffic.tunnels(&serving).into_iter().find(|t| t.name == "web").unwrap();
    assert_eq!(
        (view.state, view.visitors_total, view.bytes_visitor_to_local, view.bytes_local_to_visitor),
        ("serving", 1, 10, 20)
    );
    drop(first);
    let moved = [(web.clone(), ClaimState::Parked), (web, ClaimState::Serving)];
    assert_eq!(listed(&traffic, &moved), [("web".into(), "serving")], "serving outranks parked");
    drop(second);
    assert!(listed(&traffic, &[]).is_empty());
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
    carry(&traffic.visit(1, 0, peer()), 5, 5);
    drop(session);
    traffic.forget_idle(Duration::ZERO, &[(key("bob", "db"), ClaimState::Parked)]);
    assert!(page(&registry).contains("tunnel=\"db\""), "kept while a claim holds it");
    traffic.forget_idle(Duration::from_secs(3600), &[]);
    assert!(page(&registry).contains("tunnel=\"db\""), "kept while its reservation would be");

    traffic.forget_idle(Duration::ZERO, &[]);
    assert!(!page(&registry).contains("tunnel=\"db\""));
    drop(traffic.open_session(2, vec![granted(0, "bob", "db", 20003)]));
    assert_eq!(traffic.reconnects.get(), 0, "a forgotten tunnel is new again");
}

#[test]
fn open_visitors_bytes_count_as_they_move_and_exactly_once_at_their_close() {
    let traffic = Arc::new(Traffic::default());
    let _session = traffic.open_session(1, vec![granted(0, "carol", "web", 20004)]);
    let web = |traffic: &Traffic| {
        let view = traffic.tunnels(&[(key("carol", "web"), ClaimState::Serving)]).into_iter().next().unwrap();
        (view.bytes_visitor_to_local, view.bytes_local_to_visitor)
    };
    let tunnel = "burrow_tunnel_bytes_total{token=\"carol\",tunnel=\"web\",direction=\"visitor_to_local\"}";
    let all = "burrow_bytes_total{direction=\"local_to_visitor\"}";

    let visit = traffic.visit(1, 0, peer());
    carry(&visit, 100, 2000);
    assert_eq!(web(&traffic), (100, 2000), "read while the visitor is open");
    let page = scrape(&traffic);
    assert_eq!((sample(&page, tunnel), sample(&page, all)), (Some(100), Some(2000)), "{page}");
    let listed = traffic.visitors();
    assert_eq!((listed[0].bytes_visitor_to_local, listed[0].bytes_local_to_visitor), (100, 2000));

    carry(&visit, 1, 1);
    assert_eq!(web(&traffic), (101, 2001), "a second read adds only what moved since the first");
    drop(visit);
    assert_eq!(web(&traffic), (101, 2001), "the close adds nothing already counted");
    let page = scrape(&traffic);
    assert_eq!((sample(&page, tunnel), sample(&page, all)), (Some(101), Some(2001)), "{page}");

    // A visitor whose session ended as it arrived has no tunnel; the relay's totals count it.
    let stray = traffic.visit(9, 0, peer());
    carry(&stray, 3, 4);
    drop(stray);
    assert_eq!(web(&traffic), (101, 2001));
    assert_eq!(sample(&scrape(&traffic), all), Some(2005));
}

#[test]
fn a_token_churning_fresh_names_keeps_a_bounded_number_of_idle_tunnels() {
    let traffic = Arc::new(Traffic::default());
    let mut session = traffic.open_session(1, vec![granted(0, "alice", "t0", 20000)]);
    for i in 1..=2 * super::IDLE_KEPT_PER_TOKEN as u32 {
        session.add(granted(i, "alice", &format!("t{i}"), 20000));
        session.remove(i - 1);
    }
    let kept = traffic.state().tunnels.len();
    // Counted when a tunnel is added: the one removed after it is idle on top.
    assert_eq!(kept, super::IDLE_KEPT_PER_TOKEN + 2, "the idle ones, the one removed last and the one served");
    let served = key("alice", &format!("t{}", 2 * super::IDLE_KEPT_PER_TOKEN));
    assert!(traffic.state().tunnels.contains_key(&served));
    assert!(!traffic.state().tunnels.contains_key(&key("alice", "t0")), "the oldest is forgotten");
}
