//! One session with the relay: dial a link, say Hello, then serve the relay's streams and
//! follow the config file until the link ends or the user stops the agent.

use std::{sync::Arc, time::Duration};

use burrow_common::{
    CloseCode, Granted, Welcome,
    link::{AnyLink, Link, LinkError, Transport},
    protocol::conversation::{AgentControl, AgentControlOn, ConversationError, HelloAnswer},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    Plan, PublicTunnel, Status, TunnelPlan,
    config::{Protocol, TransportChoice},
    dial::{Dialer, Failure},
    forward::{Target, Targets, serve_link},
    links::{self, LinksUp},
    local_http::LocalHttp,
    reload,
};

/// How a session ended.
pub(crate) enum SessionEnd {
    /// The user stopped the agent; the relay has been told.
    Stopped,
    /// Try again after a backoff; `online_for` is how long the session served, if it did.
    Retry { reason: String, online_for: Option<Duration> },
    /// Retrying cannot help; the user must change something.
    Fatal(anyhow::Error),
}

/// Runs one session to its end. While the agent has `never_online`, a refusal or a
/// certificate mismatch is a configuration error rather than a passing condition.
pub(crate) async fn run(
    plan: &Plan,
    dialer: &Dialer,
    status: &watch::Sender<Status>,
    never_online: bool,
    cancel: &CancellationToken,
) -> SessionEnd {
    // Ctrl-C must not wait out a connect attempt to an unreachable relay.
    let dialed = tokio::select! {
        _ = cancel.cancelled() => return SessionEnd::Stopped,
        dialed = dialer.dial(plan) => dialed,
    };
    let dialed = match dialed {
        Ok(dialed) => dialed,
        Err(Failure::Trust(reason)) if never_online => return SessionEnd::Fatal(anyhow::anyhow!(reason)),
        Err(Failure::Trust(reason) | Failure::Unreachable(reason)) => {
            return SessionEnd::Retry { reason, online_for: None };
        }
    };
    let link = dialed.link.clone();
    tracing::info!(transport = %dialed.why, "link to the relay up");
    plan.stats.set_link(Some((link.clone(), dialed.why.clone())));
    let targets = Arc::new(Targets::new(plan.stats.clone()));
    let links = LinksUp::new(plan);
    let end = tokio::select! {
        _ = cancel.cancelled() => SessionEnd::Stopped,
        end = register_and_serve((plan, dialer), &link, (&targets, &links), status, never_online) => end,
    };
    plan.stats.set_link(None);
    if matches!(end, SessionEnd::Stopped) {
        link.close(CloseCode::AgentExit);
    }
    // The session was its primary link's: its other links go with it.
    links.close(CloseCode::AgentExit);
    targets.end().await;
    dialed.settle().await;
    end
}

/// Says Hello on `link`, then serves the granted tunnels: the streams of the link and of the
/// further links it joins to the session, and the config file's changes on its control stream.
async fn register_and_serve(
    (plan, dialer): (&Plan, &Dialer),
    link: &AnyLink,
    (targets, links): (&Arc<Targets>, &LinksUp),
    status: &watch::Sender<Status>,
    never_online: bool,
) -> SessionEnd {
    let asked = plan.current_tunnels();
    let (welcome, mut control) = match hello(plan, link, &asked, never_online).await {
        Ok(welcomed) => welcomed,
        Err(end) => return end,
    };
    links.welcomed(usize::from(plan.links.min(welcome.links).max(1)));
    // An empty list from a relay that could not read its fleet just now ends no session.
    if let Some(roster) = plan.roster.as_ref().filter(|_| !welcome.fleet.is_empty()) {
        roster.send_replace(welcome.fleet.clone());
    }
    let mut live: Vec<(TunnelPlan, Granted)> = asked.into_iter().zip(welcome.tunnels).collect();
    // The relay names each stream's tunnel by the id it granted.
    for (tunnel, granted) in &live {
        targets.insert(granted.id, target(plan, tunnel, granted, targets));
    }
    plan.stats.publish(status, Status::Online(public(plan, &live)));
    let online_since = std::time::Instant::now();
    let ended = tokio::select! {
        ended = serve_link(link, targets) => ended,
        never = links::keep_joined((plan, dialer), (&welcome.ticket, link.transport()), targets, links) => match never {},
        never = links::move_to_quic((plan, dialer), &welcome.ticket, targets, links), if probes_quic(plan, link) => match never {},
        failed = reload::follow(plan, &mut control, targets, &mut live, status) => {
            // The relay may hold tunnels this agent no longer serves, or the reverse: start
            // over from a Hello with the current list, which the relay answers in full.
            link.close(CloseCode::AgentExit);
            return SessionEnd::Retry {
                reason: format!("a tunnel update failed ({failed:#}); reconnecting with the new list"),
                online_for: Some(online_since.elapsed()),
            };
        }
    };
    link_ended(&ended, online_since.elapsed())
}

/// Whether the session looks for a way back to QUIC: it came up on TCP because QUIC did not.
fn probes_quic(plan: &Plan, link: &AnyLink) -> bool {
    link.transport() == Transport::Tcp && plan.transport == TransportChoice::Auto
}

/// Opens the control stream and asks for `tunnels`; the control stream stays open for the
/// whole session, since dropping it would finish it. A refusal ends the session.
async fn hello<L: Link>(
    plan: &Plan,
    link: &L,
    tunnels: &[TunnelPlan],
    never_online: bool,
) -> Result<(Welcome, AgentControlOn<L>), SessionEnd> {
    let specs = tunnels.iter().map(TunnelPlan::spec).collect();
    let answered = async {
        let mut control = AgentControl::open(link).await?;
        let answer = control.hello(&plan.token, specs).await?;
        Ok::<_, ConversationError>((answer, control))
    };
    match answered.await {
        Ok((HelloAnswer::Welcome(welcome), control)) => Ok((welcome, control)),
        Ok((HelloAnswer::Refused(refusal), _))
            if !refusal.is_retryable() && (never_online || !refusal.is_transient()) =>
        {
            // Kept as a value in the chain, so callers can tell refusals apart by type.
            Err(SessionEnd::Fatal(anyhow::Error::new(refusal).context("the relay refused")))
        }
        Ok((HelloAnswer::Refused(refusal), _)) => {
            Err(SessionEnd::Retry { reason: refusal.to_string(), online_for: None })
        }
        Err(e) => Err(SessionEnd::Retry { reason: format!("handshake failed: {e:#}"), online_for: None }),
    }
}

/// How a session that was online ends when its link does.
fn link_ended(ended: &LinkError, online_for: Duration) -> SessionEnd {
    match ended.peer_code() {
        Some(CloseCode::Replaced) => SessionEnd::Fatal(anyhow::anyhow!(
            "another agent with the same token and tunnel name took over these tunnels"
        )),
        Some(CloseCode::Revoked) => SessionEnd::Fatal(anyhow::anyhow!(
            "the relay's operator revoked this agent's token; ask them for a new one (relay invite NAME)"
        )),
        _ => SessionEnd::Retry { reason: format!("lost the relay: {ended}"), online_for: Some(online_for) },
    }
}

/// The session's tunnels as shown to the user.
pub(crate) fn public(plan: &Plan, live: &[(TunnelPlan, Granted)]) -> Vec<PublicTunnel> {
    live.iter()
        .map(|(tunnel, granted)| PublicTunnel {
            name: granted.name.clone(),
            host: granted.host.clone().unwrap_or_else(|| plan.relay.host.clone()),
            port: granted.port,
            local: tunnel.local.clone(),
            urls: granted.urls.clone(),
            protocol: tunnel.protocol,
        })
        .collect()
}

/// Where the streams of a granted tunnel go.
pub(crate) fn target(plan: &Plan, tunnel: &TunnelPlan, granted: &Granted, targets: &Targets) -> Target {
    let closed = CancellationToken::new();
    let http = (tunnel.protocol == Protocol::Http).then(|| {
        let ends = (closed.clone(), targets.ended.clone());
        let local = Arc::new(LocalHttp::new(&granted.name, tunnel, &plan.stats, &targets.tasks, ends));
        plan.stats.set_replayer(&granted.name, &local);
        local
    });
    Target {
        name: granted.name.clone(),
        local: tunnel.local.clone(),
        protocol: tunnel.protocol,
        counters: plan.stats.tunnel(&granted.name),
        http,
        closed,
        idle: tunnel.tcp_idle_timeout,
    }
}
