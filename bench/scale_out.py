#!/usr/bin/env python3
"""What a fleet costs past max_links relays: three ways to place 100,000 agents on 100 relays.

A calculation, not a measurement: per-agent and per-connection costs come from bench/scale
(BENCHMARKS.md, "Scale": 1,000 agents took the relay from 7.1 to 44.8 MiB and 0.6 s of CPU
to admit). docs/scale-out.md explains the designs; this prints their table.

    bench/scale_out.py [--relays 100] [--agents 100000] [--markdown]
"""

import argparse
from dataclasses import dataclass

# From bench/scale, one relay, 2 cores (BENCHMARKS.md).
KIB_PER_AGENT_LINK = (44.8 - 7.1) * 1024 / 1000  # session + link + its tunnel's claim
CPU_S_PER_ADMISSION = 0.6 / 1000
KEEP_ALIVE_S = 10  # the agent's default keep_alive: one PING each way per quiet link
TUNNELS_PER_AGENT = 1.5
TCP_SHARE = 0.4  # tunnels that hold a public TCP or UDP port; the rest are names
PORTS_PER_RELAY = 10_000  # the default range 20000-29999; at most ~64,000 with a wider one
ETCD_COMFORTABLE_KEYS = 2_000_000  # etcd's default 2 GiB backend, ~1 KiB per key with history


@dataclass
class Design:
    name: str
    links_per_agent: int
    # Every relay must open every TCP tunnel's port (the visitor may reach any relay).
    ports_everywhere: bool
    # Share of visitor bytes carried twice (relay to relay) because the visitor reached a
    # relay without a link to the tunnel's agent.
    forwarded: float
    dns_records: str


def designs(relays: int) -> list[Design]:
    k = 4
    return [
        Design("every agent linked to every relay", relays, True, 0.0, "one wildcard, all relays"),
        Design(f"names hashed to {k} relays, per-name DNS", k, False, 0.0, "one record set per name"),
        Design("2 links per agent, relay-to-relay forwarding", 2, True, 1 - 2 / relays, "one wildcard, all relays"),
    ]


def costs(design: Design, relays: int, agents: int) -> dict[str, str]:
    links = agents * design.links_per_agent
    per_relay = links / relays
    tunnels = agents * TUNNELS_PER_AGENT
    ports = tunnels * TCP_SHARE * (1 if design.ports_everywhere else design.links_per_agent / relays)
    # Each relay that links a tunnel keeps a held key for it in etcd.
    held_keys = tunnels * design.links_per_agent
    # One relay lost: its links move to other relays, which admit them again.
    moved = per_relay
    return {
        "links per relay": f"{per_relay:,.0f}",
        "relay memory for links (MiB)": f"{per_relay * KIB_PER_AGENT_LINK / 1024:,.0f}",
        "keep-alive packets per relay per s": f"{2 * per_relay / KEEP_ALIVE_S:,.0f}",
        "public ports per relay": f"{ports:,.0f}" + (" (over the range)" if ports > PORTS_PER_RELAY else ""),
        "etcd held keys": f"{held_keys:,.0f}" + (" (too many)" if held_keys > ETCD_COMFORTABLE_KEYS else ""),
        "links re-admitted when one relay dies": f"{moved:,.0f}",
        "CPU to re-admit them, spread (s per relay)": f"{moved * CPU_S_PER_ADMISSION / max(relays - 1, 1):.3f}",
        "visitor bytes carried twice": f"{design.forwarded:.0%}",
        "DNS": design.dns_records,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--relays", type=int, default=100)
    parser.add_argument("--agents", type=int, default=100_000)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    table = [(d.name, costs(d, args.relays, args.agents)) for d in designs(args.relays)]
    rows = list(table[0][1])
    if args.markdown:
        print("| at %d relays, %s agents | %s |" % (args.relays, f"{args.agents:,}", " | ".join(n for n, _ in table)))
        print("|---|" + "---:|" * len(table))
        for row in rows:
            print(f"| {row} | " + " | ".join(c[row] for _, c in table) + " |")
        return
    for name, cost in table:
        print(name)
        for row in rows:
            print(f"  {row:45} {cost[row]}")


if __name__ == "__main__":
    main()
