//! A UDP tunnel's lines on the console: the payload that crosses now, its packets and what
//! was dropped and why, then its open flows, one line each.

use crate::{
    human,
    snapshot::{ConnectionView, UdpView},
    stats::DatagramsView,
};

/// Open flows shown per UDP tunnel; the inspector lists more.
const FLOWS: usize = 3;

/// Lines for UDP tunnel `name`, indented past the name column of width `width`.
pub(super) fn lines(lines: &mut Vec<String>, (name, width): (&str, usize), udp: &UdpView, flows: &[ConnectionView]) {
    let room =
        udp.max_payload.map_or("UDP payload size known once online".into(), |n| format!("UDP payload up to {n} bytes"));
    let packets = &udp.packets;
    lines.push(format!(
        "  {:<width$}  {room} · packets in {} · out {}{}",
        "",
        packets.to_local,
        packets.to_visitor,
        dropped(packets)
    ));
    let open: Vec<_> = flows.iter().filter(|c| c.tunnel == name && c.state == "open").collect();
    for flow in open.iter().take(FLOWS) {
        let packets = flow.flow.unwrap_or_default();
        lines.push(format!(
            "  {:<width$}  flow {} · in {} pkts {} · out {} pkts {}{} · {}",
            "",
            flow.visitor,
            packets.to_local,
            human::bytes(flow.to_local),
            packets.to_visitor,
            human::bytes(flow.to_visitor),
            dropped(&packets),
            human::duration_ms(flow.duration_ms),
        ));
    }
    if open.len() > FLOWS {
        lines.push(format!("  {:<width$}  … and {} more flows (see the inspector)", "", open.len() - FLOWS));
    }
}

/// ` · 3 dropped (2 oversize, 1 local unreachable)`, or nothing when none were.
fn dropped(packets: &DatagramsView) -> String {
    if packets.dropped() == 0 {
        return String::new();
    }
    let reasons: Vec<_> = [
        (packets.oversize, "oversize"),
        (packets.queue_full, "queue full"),
        (packets.local_unreachable, "local unreachable"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, why)| format!("{n} {why}"))
    .collect();
    format!(" · {} dropped ({})", packets.dropped(), reasons.join(", "))
}
