//! Several QUIC links per agent session: visitors spread over them, a lost link is replaced
//! while the others carry on, a join needs the session's ticket and stays under the cap, and
//! the session's end takes every link along. Run with `cargo test -p burrow-relay --test links`.

use std::{
    collections::{HashMap, hash_map::Entry},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use burrow_common::{
    CloseCode, JoinTicket, Refusal, Secret, Welcome,
    link::{Link, LinkError, QuicLink},
    protocol::conversation::{AgentControlOn, HelloAnswer, JoinAnswer},
};
use serde_json::Value;
use testkit::*;
use tokio::{net::TcpStream, net::UdpSocket};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// What every test here starts from: a relay on a fresh data directory, and an endpoint
/// that dials links by hand.
struct Setup {
    relay: TestRelay,
    endpoint: quinn::Endpoint,
    /// The relay's data directory, removed when the test ends.
    dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let relay = TestRelay::start(dir.path()).await?;
        let endpoint = raw_agent::endpoint(LOCALHOST, relay.fingerprint, None)?;
        Ok(Self { relay, endpoint, dir })
    }

    /// An agent's plan with one TCP tunnel to an echo server, over `links` links.
    async fn plan(&self, links: u8) -> anyhow::Result<agent::Plan> {
        let mut plan = self.relay.plan(vec![tunnel("web", echo_server().await?)]);
        plan.links = links;
        Ok(plan)
    }

    /// A session opened by hand with `token` and one TCP tunnel, and its Welcome.
    async fn session(&self, token: &Secret) -> anyhow::Result<(raw_agent::RawSession, Welcome)> {
        let tunnel = raw_agent::tcp_tunnel("web");
        let (session, answer) = raw_agent::hello(&self.endpoint, self.relay.addr, token, vec![tunnel]).await?;
        let HelloAnswer::Welcome(welcome) = answer else { anyhow::bail!("not welcomed: {answer:?}") };
        Ok((session, welcome))
    }

    /// A link dialed by hand that presents `ticket`, and the relay's answer.
    async fn join(&self, ticket: &JoinTicket) -> anyhow::Result<(QuicLink, JoinAnswer)> {
        let link = QuicLink::from(self.endpoint.connect(self.relay.addr, "localhost")?.await?);
        let mut control = AgentControlOn::<QuicLink>::open(&link).await?;
        let answer = control.join(ticket).await?;
        Ok((link, answer))
    }

    /// The links `/api/agents` lists for the one session on the relay.
    async fn links_of_the_session(&self) -> anyhow::Result<Vec<Value>> {
        let agents = api(&self.relay, "agents").await?;
        let [agent] = agents.as_array().context("an array")?.as_slice() else {
            anyhow::bail!("not one session: {agents}")
        };
        Ok(agent["links"].as_array().context("links")?.clone())
    }
}

async fn closed_with(link: &QuicLink) -> anyhow::Result<LinkError> {
    tokio::time::timeout(STEP, link.closed()).await.context("the link stayed open")
}

#[tokio::test]
async fn forty_visitors_arrive_intact_spread_over_four_links() -> anyhow::Result<()> {
    let setup = Setup::start().await?;
    let (agent, tunnels) = TestAgent::start(setup.plan(4).await?).await?;
    settled(&setup.relay, "burrow_links{transport=\"quic\"}", 4.0).await?;
    assert_eq!(setup.links_of_the_session().await?.len(), 4);

    let public = public_addr(&tunnels[0]);
    let visitors = (0..40).map(|i| async move {
        let data = random_bytes(64 * 1024 + i);
        anyhow::ensure!(exchange(public, &data).await? == data, "visitor {i}'s bytes came back changed");
        anyhow::Ok(())
    });
    futures_util::future::try_join_all(visitors).await?;

    let links = setup.links_of_the_session().await?;
    let carried: Vec<u64> = links.iter().map(|link| link["visitors"].as_u64().unwrap_or(0)).collect();
    assert_eq!(carried.iter().sum::<u64>(), 40, "{links:?}");
    assert!(carried.iter().all(|&n| n >= 1), "every link carries visitors: {carried:?}");
    let page = metrics(&setup.relay).await?;
    assert_eq!(sample(&page, "burrow_link_joins_total{result=\"joined\"}"), Some(3.0));
    agent.stop().await?;
    settled(&setup.relay, "burrow_links{transport=\"quic\"}", 0.0).await?;
    setup.relay.stop().await
}

#[tokio::test]
async fn one_link_keeps_the_session_on_a_single_connection() -> anyhow::Result<()> {
    let setup = Setup::start().await?;
    let (agent, tunnels) = TestAgent::start(setup.plan(1).await?).await?;
    let data = random_bytes(100_000);
    assert_eq!(exchange(public_addr(&tunnels[0]), &data).await?, data);
    let page = settled(&setup.relay, "burrow_links{transport=\"quic\"}", 1.0).await?;
    assert_eq!(sample(&page, "burrow_link_joins_total{result=\"joined\"}"), None, "no link asked to join");
    assert_eq!(setup.links_of_the_session().await?.len(), 1);
    agent.stop().await?;
    setup.relay.stop().await
}

#[tokio::test]
async fn a_wrong_ticket_is_a_failed_guess_and_never_joins() -> anyhow::Result<()> {
    let setup = Setup::start().await?;
    let (_session, welcome) = setup.session(&setup.relay.token).await?;
    let mut wrong = welcome.ticket.0;
    wrong[0] ^= 1;

    let (link, answer) = setup.join(&JoinTicket(wrong)).await?;
    assert_eq!(answer, JoinAnswer::Refused(Refusal::UnknownSession));
    assert_eq!(closed_with(&link).await?.peer_code(), Some(CloseCode::Refused));
    let page = metrics(&setup.relay).await?;
    assert_eq!(sample(&page, "burrow_credential_checks_total{kind=\"join_ticket\"}"), Some(1.0));
    assert_eq!(sample(&page, "burrow_link_joins_total{result=\"unknown_session\"}"), Some(1.0));
    assert_eq!(sample(&page, "burrow_links{transport=\"quic\"}"), Some(1.0));
    assert_eq!(setup.links_of_the_session().await?.len(), 1);
    setup.relay.stop().await
}

#[tokio::test]
async fn the_link_cap_refuses_the_fifth_link() -> anyhow::Result<()> {
    let setup = Setup::start().await?;
    let (_session, welcome) = setup.session(&setup.relay.token).await?;
    assert_eq!(welcome.links, 4, "the relay tells its default cap");
    let mut joined = Vec::new();
    for _ in 0..3 {
        let (link, answer) = setup.join(&welcome.ticket).await?;
        assert_eq!(answer, JoinAnswer::Joined);
        joined.push(link);
    }
    let (fifth, answer) = setup.join(&welcome.ticket).await?;
    assert_eq!(answer, JoinAnswer::Refused(Refusal::LinkLimit { max: 4 }));
    assert_eq!(closed_with(&fifth).await?.peer_code(), Some(CloseCode::Refused));
    let page = settled(&setup.relay, "burrow_links{transport=\"quic\"}", 4.0).await?;
    assert_eq!(sample(&page, "burrow_link_joins_total{result=\"link_limit\"}"), Some(1.0));
    setup.relay.stop().await
}

#[tokio::test]
async fn revoking_the_token_closes_every_link() -> anyhow::Result<()> {
    let setup = Setup::start().await?;
    let store = relay::tokens::TokenStore::open(setup.dir.path());
    let token = store.add("teammate", Default::default())?;
    let (session, welcome) = setup.session(&token).await?;
    let mut joined = Vec::new();
    for _ in 0..3 {
        joined.push(setup.join(&welcome.ticket).await?.0);
    }
    settled(&setup.relay, "burrow_links{transport=\"quic\"}", 4.0).await?;

    assert!(store.revoke("teammate")?);
    for link in joined.iter().chain([&session.link]) {
        assert_eq!(closed_with(link).await?.peer_code(), Some(CloseCode::Revoked));
    }
    settled(&setup.relay, "burrow_links{transport=\"quic\"}", 0.0).await?;
    setup.relay.stop().await
}

#[tokio::test]
async fn the_primary_leaving_takes_the_joined_links_along() -> anyhow::Result<()> {
    let setup = Setup::start().await?;
    let (session, welcome) = setup.session(&setup.relay.token).await?;
    let (joined, _) = setup.join(&welcome.ticket).await?;
    settled(&setup.relay, "burrow_links{transport=\"quic\"}", 2.0).await?;

    session.link.close(CloseCode::AgentExit);
    assert_eq!(closed_with(&joined).await?.peer_code(), Some(CloseCode::AgentExit));
    settled(&setup.relay, "burrow_links{transport=\"quic\"}", 0.0).await?;
    // The ticket died with its session.
    let (_, answer) = setup.join(&welcome.ticket).await?;
    assert_eq!(answer, JoinAnswer::Refused(Refusal::UnknownSession));
    setup.relay.stop().await
}

/// A NAT router in front of the relay that gives each of the agent's sockets its own
/// outside socket, and can silence one of them as a dead path does.
struct Router {
    addr: SocketAddr,
    /// Each flow's outside address (the one the relay sees), and whether it is cut.
    flows: Arc<Mutex<HashMap<SocketAddr, Arc<AtomicBool>>>>,
}

impl Router {
    async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let flows: Arc<Mutex<HashMap<SocketAddr, Arc<AtomicBool>>>> = Arc::default();
        let outside = flows.clone();
        tokio::spawn(async move {
            let mut by_agent: HashMap<SocketAddr, (Arc<UdpSocket>, Arc<AtomicBool>)> = HashMap::new();
            let mut packet = vec![0u8; 65536];
            while let Ok((n, agent)) = front.recv_from(&mut packet).await {
                let (back, cut) = match by_agent.entry(agent) {
                    Entry::Occupied(flow) => flow.into_mut(),
                    Entry::Vacant(new) => {
                        let Ok(back) = UdpSocket::bind("127.0.0.1:0").await else { break };
                        let (Ok(()), Ok(seen_as)) = (back.connect(upstream).await, back.local_addr()) else { break };
                        let (back, cut) = (Arc::new(back), Arc::new(AtomicBool::new(false)));
                        outside.lock().expect("no panic holds it").insert(seen_as, cut.clone());
                        tokio::spawn(relay_to_agent(back.clone(), front.clone(), agent, cut.clone()));
                        new.insert((back, cut))
                    }
                };
                if !cut.load(Ordering::Relaxed) {
                    back.send(&packet[..n]).await.ok();
                }
            }
        });
        Ok(Self { addr, flows })
    }

    /// Drops every packet of the flow the relay sees from `outside`, both ways.
    fn cut(&self, outside: SocketAddr) -> anyhow::Result<()> {
        let flows = self.flows.lock().expect("no panic holds it");
        flows.get(&outside).context("no such flow")?.store(true, Ordering::Relaxed);
        Ok(())
    }
}

async fn relay_to_agent(back: Arc<UdpSocket>, front: Arc<UdpSocket>, agent: SocketAddr, cut: Arc<AtomicBool>) {
    let mut packet = vec![0u8; 65536];
    while let Ok(n) = back.recv(&mut packet).await {
        if !cut.load(Ordering::Relaxed) {
            front.send_to(&packet[..n], agent).await.ok();
        }
    }
}

#[tokio::test]
async fn a_lost_link_is_dialed_again_and_the_other_visitors_carry_on() -> anyhow::Result<()> {
    let setup = Setup::start().await?;
    let router = Router::start(setup.relay.addr).await?;
    let mut plan = setup.plan(4).await?;
    plan.relay.port = router.addr.port();
    // A cut path is noticed within a second and a half; the other links keep theirs alive.
    (plan.keep_alive, plan.idle_timeout) = (Duration::from_millis(200), Duration::from_millis(1500));
    let (agent, tunnels) = TestAgent::start(plan).await?;
    settled(&setup.relay, "burrow_links{transport=\"quic\"}", 4.0).await?;

    let public = public_addr(&tunnels[0]);
    let mut visitors = Vec::new();
    for i in 0..12u8 {
        let mut visitor = TcpStream::connect(public).await?;
        assert_eq!(round_trip(&mut visitor, &[i; 1000]).await?, [i; 1000]);
        visitors.push(visitor);
    }
    let links = setup.links_of_the_session().await?;
    let lost = links.iter().find(|link| link["primary"] == false).context("a joined link")?;
    let lost_visitors = lost["open_visitors"].as_u64().context("open visitors")?;
    assert!(lost_visitors >= 1, "the link to cut carries visitors: {links:?}");
    router.cut(lost["remote"].as_str().context("remote")?.parse()?)?;

    settled(&setup.relay, "burrow_links{transport=\"quic\"}", 3.0).await?;
    settled(&setup.relay, "burrow_link_joins_total{result=\"joined\"}", 4.0).await?;
    settled(&setup.relay, "burrow_links{transport=\"quic\"}", 4.0).await?;
    let mut carried_on = 0;
    for (i, visitor) in (0..12u8).zip(&mut visitors) {
        if round_trip(visitor, &[i; 1000]).await.is_ok_and(|echo| echo == [i; 1000]) {
            carried_on += 1;
        }
    }
    assert_eq!(carried_on, 12 - lost_visitors, "only the lost link's visitors are cut off");
    let data = random_bytes(50_000);
    assert_eq!(exchange(public, &data).await?, data, "new visitors get through");
    agent.stop().await?;
    setup.relay.stop().await
}
