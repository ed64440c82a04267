//! The console's lines for one snapshot: session, relay, path to the relay, inspector, tunnels
//! (a UDP tunnel's with its flows) and the last connections. Pure text, so it is tested
//! without a terminal.

use std::{fmt::Write, net::IpAddr};

use super::{flows, rates::Rates};
use crate::{
    human,
    report::Setup,
    requests::RequestSummary,
    snapshot::{ConnectionView, FleetSessionView, PathView, SessionState, Snapshot},
};

/// Connections shown; the inspector lists more.
const CONNECTIONS: usize = 5;
/// HTTP requests shown; the inspector lists more.
const REQUESTS: usize = 5;
/// Tunnels shown, so the view fits a terminal; the inspector lists them all.
const TUNNELS: usize = 8;

/// ANSI colours, or none (`NO_COLOR`).
#[derive(Clone, Copy)]
pub(crate) struct Paint(pub(crate) bool);

impl Paint {
    fn with(self, code: &str, text: &str) -> String {
        if self.0 { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
    }
}

pub(crate) fn render(now: &Snapshot, rates: &Rates, setup: &Setup, paint: Paint) -> Vec<String> {
    let mut lines = vec![
        format!("{} {}   {}", paint.with("1", "burrow agent"), now.version, paint.with("2", "(Ctrl-C to quit)")),
        String::new(),
        format!("Session     {}", session(&now.state, paint)),
        format!("Relay       {}", relay(now, setup)),
        format!("Path        {}", path(now.path.as_ref(), rates)),
    ];
    for member in &now.fleet {
        lines.push(format!("Also via    {}", fleet_session(member, paint)));
    }
    if let Some(url) = &setup.inspector {
        lines.push(format!("Inspector   {url}"));
    }
    lines.push(String::new());
    tunnels(&mut lines, now, rates, &setup.also_on, paint);
    lines.push(String::new());
    if !now.requests.is_empty() {
        requests(&mut lines, &now.requests, paint);
        lines.push(String::new());
    }
    connections(&mut lines, &now.connections, paint);
    lines
}

fn session(state: &SessionState, paint: Paint) -> String {
    match state {
        SessionState::Connecting { for_ms, retry, last_error } => {
            let waiting = paint.with("33", &format!("connecting to the relay… {}", human::duration_ms(*for_ms)));
            match last_error {
                Some(why) => format!("{waiting} (retry {retry}; last attempt: {why})"),
                None => waiting,
            }
        }
        SessionState::Online { for_ms } => {
            format!("{} for {}", paint.with("1;32", "online"), human::duration_ms(*for_ms))
        }
        SessionState::Reconnecting { in_ms, attempt, reason } => {
            let wait = human::duration_ms(in_ms.div_ceil(1000) * 1000);
            format!("{} (attempt {attempt}): {reason}", paint.with("1;33", &format!("reconnecting in {wait}")))
        }
        SessionState::Stopped { error: None } => paint.with("1", "stopped"),
        SessionState::Stopped { error: Some(why) } => paint.with("1;31", &format!("stopped: {why}")),
    }
}

/// A session with another relay of the fleet, on one line: which relay, its state, its links.
fn fleet_session(member: &FleetSessionView, paint: Paint) -> String {
    let mut text = format!("{} · {}", member.relay, session(&member.state, paint));
    if matches!(member.state, SessionState::Online { .. }) {
        write!(text, " · {} · links {}/{}", member.transport, member.links_up, member.links_wanted).ok();
    }
    text
}

fn relay(now: &Snapshot, setup: &Setup) -> String {
    let mut text = if setup.embedded {
        "inside this agent (public ports on all interfaces)".to_string()
    } else {
        now.relay.clone()
    };
    if let Some(path) = &now.path
        && !setup.embedded
        && path.remote.to_string() != now.relay
    {
        write!(text, " ({})", path.remote).ok();
    }
    text
}

fn path(path: Option<&PathView>, rates: &Rates) -> String {
    let Some(path) = path else {
        return "not connected".into();
    };
    let rtt = if path.rtt_ms < 10.0 { format!("{:.1}ms", path.rtt_ms) } else { format!("{:.0}ms", path.rtt_ms) };
    let (up, down) = rates.path();
    format!(
        "{} · links {}/{} · rtt {rtt} · lost {} of {} packets · cwnd {} · up {} · down {}",
        path.transport,
        path.links_up,
        path.links_wanted,
        path.lost_packets,
        path.sent_packets,
        human::bytes(path.congestion_window),
        human::rate(up),
        human::rate(down)
    )
}

fn tunnels(lines: &mut Vec<String>, now: &Snapshot, rates: &Rates, also_on: &[IpAddr], paint: Paint) {
    let (tunnels, stopped) = (&now.tunnels, matches!(now.state, SessionState::Stopped { .. }));
    lines.push(paint.with("1", "Tunnels"));
    if tunnels.is_empty() && stopped {
        lines.push("  (none)".into());
    } else if tunnels.is_empty() {
        lines.push("  (none yet: waiting for the relay to grant them)".into());
    }
    let width = tunnels.iter().map(|t| t.name.chars().count()).max().unwrap_or(0);
    for tunnel in tunnels.iter().take(TUNNELS) {
        let url = paint.with("1;36", &tunnel.url);
        lines.push(format!("  {:<width$}  {url} -> {}", tunnel.name, tunnel.local));
        for url in &tunnel.also {
            lines.push(format!("  {:<width$}  also at {url}", ""));
        }
        // The LAN addresses of the embedded relay serve its public ports; HTTP tunnels are
        // reached by name.
        let scheme = if tunnel.udp.is_some() { "udp://" } else { "tcp://" };
        if let Some(port) = tunnel.url.strip_prefix(scheme).and_then(|u| u.rsplit(':').next()) {
            for ip in also_on {
                let ip = if ip.is_ipv6() { format!("[{ip}]") } else { ip.to_string() };
                lines.push(format!("  {:<width$}  also at {scheme}{ip}:{port}", ""));
            }
        }
        let (to_local, to_visitor) = rates.tunnel(&tunnel.name);
        let failed = if tunnel.failed > 0 { format!(" · {} failed", tunnel.failed) } else { String::new() };
        // A UDP tunnel's visitors are its flows.
        let flows = if tunnel.udp.is_some() { " flows" } else { "" };
        lines.push(format!(
            "  {:<width$}  {}{flows} open · {} total{failed} · in {} ({}) · out {} ({})",
            "",
            tunnel.open,
            tunnel.total,
            human::bytes(tunnel.to_local),
            human::rate(to_local),
            human::bytes(tunnel.to_visitor),
            human::rate(to_visitor),
        ));
        if let Some(udp) = &tunnel.udp {
            flows::lines(lines, (&tunnel.name, width), udp, &now.connections);
        }
    }
    if now.udp_unknown_flow > 0 {
        lines.push(format!("  {} UDP packets from the relay found no flow and were dropped", now.udp_unknown_flow));
    }
    if tunnels.len() > TUNNELS {
        lines.push(format!("  … and {} more (see the inspector)", tunnels.len() - TUNNELS));
    }
}

/// The last HTTP requests, like ngrok's console: what was asked, how it was answered, how long
/// it took.
fn requests(lines: &mut Vec<String>, requests: &[RequestSummary], paint: Paint) {
    lines.push(
        paint.with("1", &format!("{:<26}{:<12}{:<8}{:>10}{:>10}", "HTTP requests", "tunnel", "status", "took", "out")),
    );
    for r in requests.iter().take(REQUESTS) {
        let mut asked = format!("{} {}", r.method, r.path);
        if asked.chars().count() > 24 {
            asked = asked.chars().take(23).chain(['…']).collect();
        }
        let status = match (r.status, &r.error) {
            (_, Some(why)) => paint.with("31", &format!("{} {why}", r.status.map_or("-".into(), |s| s.to_string()))),
            (Some(status), None) if status >= 400 => paint.with("33", &status.to_string()),
            (Some(status), None) => status.to_string(),
            (None, None) => paint.with("36", "…"),
        };
        let took = r.duration_ms.map_or("…".into(), human::duration_ms);
        let replayed = if r.replay_of.is_some() { "  (replay)" } else { "" };
        lines.push(format!(
            "  {asked:<24}{:<12}{status:<8}{took:>10}{:>10}{replayed}",
            r.tunnel,
            human::bytes(r.response_bytes)
        ));
    }
}

fn connections(lines: &mut Vec<String>, connections: &[ConnectionView], paint: Paint) {
    let header = format!(
        "{:<26}{:<12}{:<12}{:<10}{:>10}{:>10}  state",
        "Connections", "tunnel", "opened", "duration", "in", "out"
    );
    lines.push(paint.with("1", &header));
    // A UDP tunnel's flows are listed under it.
    let connections: Vec<_> = connections.iter().filter(|c| c.flow.is_none()).collect();
    if connections.is_empty() {
        lines.push("  (none yet)".into());
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default();
    for c in connections.iter().take(CONNECTIONS) {
        let ago = format!("{} ago", human::duration_ms(now_ms.saturating_sub(c.opened_at_ms)));
        let state = match (c.state.as_str(), &c.reason) {
            ("open", _) => paint.with("36", "open"),
            (_, Some(why)) => paint.with("31", &format!("{}: {why}", c.state)),
            (state, None) => state.to_string(),
        };
        lines.push(format!(
            "  {:<24}{:<12}{:<12}{:<10}{:>10}{:>10}  {state}",
            c.visitor.to_string(),
            c.tunnel,
            ago,
            human::duration_ms(c.duration_ms),
            human::bytes(c.to_local),
            human::bytes(c.to_visitor),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        snapshot::{ConnectionView, TunnelView, UdpView},
        stats::DatagramsView,
    };

    #[test]
    fn the_view_names_state_url_counts_and_connections() {
        let now = Snapshot {
            version: "0.1.0".into(),
            relay: "relay.example.com:4443".into(),
            state: SessionState::Reconnecting { in_ms: 2_100, attempt: 2, reason: "lost the relay: timed out".into() },
            path: None,
            tunnels: vec![TunnelView {
                also: Vec::new(),
                name: "web".into(),
                url: "tcp://relay.example.com:20001".into(),
                local: "127.0.0.1:8080".into(),
                open: 1,
                total: 12,
                failed: 1,
                to_local: 4200,
                to_visitor: 12 * 1024 * 1024,
                udp: None,
            }],
            connections: vec![ConnectionView {
                id: 7,
                tunnel: "web".into(),
                visitor: "198.51.100.4:41000".parse().unwrap(),
                opened_at_ms: 0,
                duration_ms: 61_000,
                state: "open".into(),
                to_local: 300,
                to_visitor: 3 * 1024 * 1024,
                reason: None,
                flow: None,
            }],
            requests: vec![RequestSummary {
                id: 3,
                tunnel: "app".into(),
                visitor: None,
                replay_of: None,
                started_at: 0,
                method: "POST".into(),
                path: "/api/orders".into(),
                status: Some(201),
                duration_ms: Some(12),
                request_bytes: 40,
                response_bytes: 2048,
                error: None,
            }],
            udp_unknown_flow: 0,
            fleet: vec![FleetSessionView {
                relay: "r2.example.com:4443".into(),
                state: SessionState::Online { for_ms: 61_000 },
                links_up: 4,
                links_wanted: 4,
                transport: "QUIC".into(),
            }],
        };
        let setup = Setup { embedded: false, also_on: Vec::new(), inspector: Some("http://127.0.0.1:4040".into()) };
        let text = render(&now, &Rates::default(), &setup, Paint(false)).join("\n");
        for shown in [
            "Session     reconnecting in 3s (attempt 2): lost the relay: timed out",
            "Relay       relay.example.com:4443",
            "Path        not connected",
            "Also via    r2.example.com:4443 · online for 1m 01s · QUIC · links 4/4",
            "Inspector   http://127.0.0.1:4040",
            "web  tcp://relay.example.com:20001 -> 127.0.0.1:8080",
            "1 open · 12 total · 1 failed · in 4.1 KiB (0 B/s) · out 12.0 MiB (0 B/s)",
            "198.51.100.4:41000      web",
            "300 B   3.0 MiB  open",
            "POST /api/orders        app         201",
        ] {
            assert!(text.contains(shown), "{shown:?} missing from\n{text}");
        }
        assert!(!text.contains('\x1b'), "no colour when painting is off");
    }

    #[test]
    fn a_udp_tunnel_shows_its_payload_room_drops_and_open_flows() {
        let packets = DatagramsView { to_local: 40, to_visitor: 38, oversize: 2, queue_full: 0, local_unreachable: 1 };
        let flow = |id: u64, visitor: &str, state: &str| ConnectionView {
            id,
            tunnel: "vpn".into(),
            visitor: visitor.parse().unwrap(),
            opened_at_ms: 0,
            duration_ms: 65_000,
            state: state.into(),
            to_local: 3000,
            to_visitor: 2500,
            reason: None,
            flow: Some(DatagramsView { to_local: 20, to_visitor: 19, ..DatagramsView::default() }),
        };
        let now = Snapshot {
            version: "0.1.0".into(),
            relay: "relay.example.com:4443".into(),
            state: SessionState::Online { for_ms: 1000 },
            path: None,
            tunnels: vec![TunnelView {
                name: "vpn".into(),
                url: "udp://relay.example.com:21422".into(),
                also: Vec::new(),
                local: "127.0.0.1:51820".into(),
                open: 1,
                total: 2,
                failed: 0,
                to_local: 6000,
                to_visitor: 5000,
                udp: Some(UdpView { packets, max_payload: Some(1198) }),
            }],
            connections: vec![flow(2, "198.51.100.4:41000", "open"), flow(1, "198.51.100.5:41000", "closed")],
            requests: Vec::new(),
            udp_unknown_flow: 4,
            fleet: Vec::new(),
        };
        let setup = Setup { embedded: false, also_on: Vec::new(), inspector: None };
        let text = render(&now, &Rates::default(), &setup, Paint(false)).join("\n");
        for shown in [
            "vpn  udp://relay.example.com:21422 -> 127.0.0.1:51820",
            "1 flows open · 2 total · in 5.9 KiB",
            "UDP payload up to 1198 bytes · packets in 40 · out 38 · 3 dropped (2 oversize, 1 local unreachable)",
            "flow 198.51.100.4:41000 · in 20 pkts 2.9 KiB · out 19 pkts 2.4 KiB · 1m 05s",
            "4 UDP packets from the relay found no flow",
        ] {
            assert!(text.contains(shown), "{shown:?} missing from\n{text}");
        }
        assert!(!text.contains("198.51.100.5"), "only open flows are listed under the tunnel\n{text}");
    }
}
