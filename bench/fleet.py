#!/usr/bin/env python3
"""Claims per second through etcd, and the time etcd adds to bring an agent online.

Each run measures four setups on fresh relays and stores, one after the other:

  file, 1 relay    one relay on its file store (the default): the baseline
  file, 3 relays   three relays, each on its own file store: what three relays cost alone
  etcd, 3 relays   three relays of one fleet on a one-node etcd (in /dev/shm), the agents'
                   token in etcd (`relay token add`): a token check and a claim each
  etcd, 3 relays, token in config
                   the same with the token in the relays' config (`token`), checked
                   without the store: only the claim goes through etcd

In each, three loadgen shards start a crowd of agents (1,000), a third each, at most 64
handshakes at a time per shard; in the 3-relay setups each shard dials its own relay, so the
agents are spread evenly. Then the shards start a few more (150), one at a time each. Each
agent has one TCP tunnel, so coming online is one session and one claim of a port; with
etcd, that claim is one etcd transaction. Agents keep to the relay they dialed
(`--max-relays 1`) over one QUIC link (`--links 1`) unless told otherwise, so each claim is
made once and each agent is one handshake.

Figures per setup: claims (agents online) per second, from the shards' start to the crowd's
last agent online; each agent's time from its start to online (p50, p99), in the crowd
(with its queueing) and one at a time (what a claim itself costs); the CPU seconds the
relays and etcd spent admitting the crowd. Medians over the runs go to
bench/results/fleet.json. Run it with `bench/fleet` (which builds the release relay with the
etcd store, and loadgen).
"""

import argparse
import json
import secrets
import socket
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import etcd_node
import harness

SHARDS = 3
# Handshakes in progress at once per shard while the crowd arrives.
CROWD_HANDSHAKES = 64
BASELINE, FLEET = "file, 1 relay", "etcd, 3 relays"
FLEET_CONFIG_TOKEN = "etcd, 3 relays, token in config"


@dataclass(frozen=True)
class Setup:
    name: str
    relays: int
    etcd: bool
    # The agents' token from the relays' config (`token`), checked without the store: with
    # etcd, then only the claim goes through it.
    config_token: bool = False


SETUPS = (Setup(BASELINE, 1, False), Setup("file, 3 relays", 3, False), Setup(FLEET, 3, True),
          Setup(FLEET_CONFIG_TOKEN, 3, True, True))
CONFIG_TOKEN = "bench-" + secrets.token_urlsafe(24)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--singles", type=int, default=150,
                        help="agents started after the crowd, one at a time per shard, in all (default 150)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-relays", type=int, default=1,
                        help="relays of the fleet each agent keeps a session with (the agent's --max-relays); "
                             "an agent is online, and timed, once its dialed relay serves its tunnel")
    parser.add_argument("--links", type=int, default=1,
                        help="QUIC links per agent (the agent's --links, 4 by default there); more links are "
                             "more handshakes per agent but no more claims")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--out", default=str(harness.RESULTS / "fleet.json"))
    args = parser.parse_args()
    if not etcd_node.available():
        sys.exit("etcd is not installed (Debian: apt install etcd-server)")

    runs = []
    for run in range(args.runs):
        figures = {setup.name: measure(setup, args) for setup in SETUPS}
        print(f"run {run + 1}/{args.runs}: " + json.dumps(figures), file=sys.stderr, flush=True)
        runs.append(figures)
    report = summary(runs)
    report["settings"] = {"agents": args.agents, "singles": args.singles, "runs": args.runs, "shards": SHARDS,
                          "crowd_handshakes_per_shard": CROWD_HANDSHAKES, "max_relays": args.max_relays,
                          "links": args.links}
    report["machine"] = harness.machine()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(table(report, args.markdown))


def measure(setup, args):
    """One setup from scratch: its store and relays, a crowd of agents and then a few agents
    one at a time, torn down."""
    with tempfile.TemporaryDirectory(prefix="burrow-fleet-") as data:
        etcd = etcd_node.Etcd() if setup.etcd else None
        relays, shards = [], []
        try:
            start_relays(setup, Path(data), etcd, relays)
            figures = crowd(relays, etcd, shards, args)
            figures.update(one_at_a_time(relays, shards, args))
            return figures
        finally:
            for shard in shards:
                shard.stop()
            for relay in relays:
                relay.process.stop()
            if etcd:
                etcd.stop()


def crowd(relays, etcd, shards, args):
    """`args.agents` agents arriving together: claims per second, time to online with the
    queueing a crowd brings, and the CPU the relays and etcd spent admitting them."""
    pids = [r.process.pid for r in relays]
    cpu = sum(harness.cpu_seconds(p) for p in pids)
    etcd_cpu = harness.cpu_seconds(etcd.pid) if etcd else 0.0
    online = start_agents(relays, shards, args.agents, "crowd", CROWD_HANDSHAKES, args)
    figures = admission(online)
    figures["relay_cpu_s"] = sum(harness.cpu_seconds(p) for p in pids) - cpu
    if etcd:
        figures["etcd_cpu_s"] = harness.cpu_seconds(etcd.pid) - etcd_cpu
    return figures


def one_at_a_time(relays, shards, args):
    """`args.singles` more agents, one handshake at a time per shard, on relays that hold the
    crowd: the time to online without queueing, which is what each claim itself costs."""
    online = start_agents(relays, shards, args.singles, "single", 1, args)
    times = admission(online)
    return {"single_p50_ms": times["online_p50_ms"], "single_p99_ms": times["online_p99_ms"]}


def start_agents(relays, shards, agents, prefix, handshakes, args):
    """Starts SHARDS loadgens (kept in `shards`), shard i on relay i mod the relays, and
    returns their `online` events."""
    started = []
    for i in range(SHARDS):
        count = agents // SHARDS + (i < agents % SHARDS)
        started.append(start_shard(relays[i % len(relays)], count, f"{prefix}{i}", handshakes, args))
        shards.append(started[-1])
    return [json.loads(s.line(r'"event":"online"', timeout=600).string) for s in started]


def start_relays(setup, data, etcd, relays):
    """Starts the setup's relays, each on its own loopback address, into `relays`."""
    for i in range(setup.relays):
        ip = f"127.0.0.{i + 1}"
        listen = f"{ip}:{free_udp_port(ip)}"
        # Agents come over QUIC only, and the TCP agent port would need the same number free.
        argv = [str(harness.RELEASE / "relay"), "--listen", listen, "--tcp-listen", "off", "--public-bind", ip,
                "--admin-listen", "off", "--data-dir", str(data / f"relay{i}")]
        if etcd:
            argv += ["--store", etcd.url, "--advertise", listen]
        env = {"RUST_LOG": "warn", **harness.ONE_ADDRESS_LOAD}
        if setup.config_token:
            env["BURROW_RELAY_TOKEN"] = CONFIG_TOKEN
        process = harness.Process(argv, env=env, quiet=True, ready_file=True)
        try:
            ready = process.ready()
        except BaseException:
            process.stop()
            raise
        token = CONFIG_TOKEN if setup.config_token else ready.get("token") or relays[0].token
        relays.append(Relay(process, ready["quic"], ready["fingerprint"], token))


@dataclass
class Relay:
    process: harness.Process
    address: str
    fingerprint: str
    # The token its agents use: the first token its store made (an etcd fleet makes one, at
    # its first relay).
    token: str


def start_shard(relay, agents, name_prefix, handshakes, args):
    return harness.Process(
        [str(harness.RELEASE / "loadgen"), "--relay", relay.address, "--fingerprint", relay.fingerprint,
         "--token", relay.token, "--agents", str(agents), "--connections", "0", "--name-prefix", name_prefix,
         "--handshakes", str(handshakes), "--max-relays", str(args.max_relays), "--links", str(args.links)],
        env={"RUST_LOG": "error"}, stdin=True,
    )


def free_udp_port(ip):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def admission(online):
    """Claims per second and time to online from the shards' `online` events. The shards
    start together, so the slowest one's time is the whole load's."""
    times = [ms for event in online for ms in event["online_ms"]]
    seconds = max(event["seconds"] for event in online)
    return {
        "agents": len(times),
        "seconds": seconds,
        "claims_per_s": len(times) / seconds,
        "online_p50_ms": statistics.median(times),
        "online_p99_ms": sorted(times)[min(len(times) - 1, int(len(times) * 0.99))],
    }


def summary(runs):
    """Medians per setup over the runs, and what each setup adds to the baseline."""
    median = {name: harness.medians([run[name] for run in runs]) for name in runs[0]}
    base = median[BASELINE]
    return {
        "median": median,
        "against_baseline": {name: against(base, figures) for name, figures in median.items() if name != BASELINE},
        "runs": runs,
    }


def against(base, figures):
    return {
        "claims_per_s_ratio": figures["claims_per_s"] / base["claims_per_s"],
        **{f"{key}_added_ms": figures[f"{key}_ms"] - base[f"{key}_ms"]
           for key in ("online_p50", "online_p99", "single_p50", "single_p99")},
    }


# Time to online is from an agent's start to its tunnel's claim, in the crowd and one at a time.
COLUMNS = (("claims/s", "claims_per_s", "{:,.0f}"), ("crowd p50 (ms)", "online_p50_ms", "{:.0f}"),
           ("crowd p99 (ms)", "online_p99_ms", "{:.0f}"), ("one by one p50 (ms)", "single_p50_ms", "{:.1f}"),
           ("one by one p99 (ms)", "single_p99_ms", "{:.1f}"), ("relay CPU (s)", "relay_cpu_s", "{:.2f}"),
           ("etcd CPU (s)", "etcd_cpu_s", "{:.2f}"))


def table(report, markdown=False):
    rows = [["setup"] + [title for title, _, _ in COLUMNS]]
    for name, figures in report["median"].items():
        rows.append([name] + [form.format(figures[key]) if key in figures else "-" for _, key, form in COLUMNS])
    footer = [f"{name} against {BASELINE}: {added['claims_per_s_ratio']:.2f}x the claims per second; "
              f"to bring an agent online, {added['single_p50_added_ms']:+.1f} ms at p50 and "
              f"{added['single_p99_added_ms']:+.1f} ms at p99 one at a time, {added['online_p50_added_ms']:+.0f} ms "
              f"and {added['online_p99_added_ms']:+.0f} ms in the crowd"
              for name, added in report["against_baseline"].items() if name.startswith("etcd")]
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|---|" + "---:|" * len(COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    else:
        widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
        lines = ["  ".join(cell.rjust(w) if c else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths)))
                 for row in rows]
    return "\n".join(lines + [""] + footer)


if __name__ == "__main__":
    sys.exit(main())
