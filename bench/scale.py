#!/usr/bin/env python3
"""One relay holding many agents and connections.

Starts a release relay, then runs loadgen shards against it. Each shard runs its own agents
and holds its own connections, so no process needs more descriptors than the machine
allows. Reads the relay's memory and CPU from /proc at each phase, and writes
bench/results/scale.json. Run it with `bench/scale`.
"""

import argparse
import json
import math
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness

# Descriptors per held connection in a shard: visitor, agent-to-local, local server side.
FDS_PER_CONNECTION = 3
FD_MARGIN = 200


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=20000)
    parser.add_argument("--probes", type=int, default=500)
    parser.add_argument("--out", default=str(harness.RESULTS / "scale.json"))
    args = parser.parse_args()

    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    # The relay holds a socket per connection and a listener per agent's tunnel.
    connections = min(args.connections, limit - args.agents - FD_MARGIN)
    shards = max(1, math.ceil((FDS_PER_CONNECTION * connections + args.agents) / (limit - FD_MARGIN)))
    token = secrets.token_urlsafe(32)
    report = {"agents_requested": args.agents, "connections_requested": args.connections,
              "descriptor_limit": limit, "shards": shards}
    with tempfile.TemporaryDirectory(prefix="burrow-scale-") as data:
        relay = harness.Process(
            [str(harness.RELEASE / "relay"), "--listen", "127.0.0.1:0", "--public-bind", "127.0.0.1", "--admin-listen", "off",
             "--data-dir", data],
            env={"BURROW_RELAY_TOKEN": token, "RUST_LOG": "warn", **harness.ONE_ADDRESS_LOAD},
            quiet=True, ready_file=True,
        )
        loads = []
        try:
            ready = relay.ready()
            port, fingerprint = harness.port_of(ready["quic"]), ready["fingerprint"]
            report["relay_idle"] = sample(relay.pid)
            for i in range(shards):
                agents = args.agents // shards + (i < args.agents % shards)
                conns = connections // shards + (i < connections % shards)
                loads.append(harness.Process(
                    [str(harness.RELEASE / "loadgen"), "--relay", f"127.0.0.1:{port}", "--fingerprint", fingerprint,
                     "--token", token, "--agents", str(agents), "--connections", str(conns),
                     "--name-prefix", f"shard{i}"],
                    env={"RUST_LOG": "error"}, stdin=True,
                ))
            online = [json.loads(p.line(r'"event":"online"', timeout=600).string) for p in loads]
            report["agents"] = sum(e["agents"] for e in online)
            report["agents_online_s"] = max(e["seconds"] for e in online)
            report["relay_with_agents"] = sample(relay.pid)
            held = [json.loads(p.line(r'"event":"held"', timeout=600).string) for p in loads]
            report["held_connections"] = sum(e["connections"] for e in held)
            report["connections_open_s"] = max(e["seconds"] for e in held)
            time.sleep(harness.HOLD_SETTLE)  # steady state, as in the harness's memory figure
            report["relay_with_connections"] = sample(relay.pid)
            loads[0].send(f"probe {args.probes}")
            probes = json.loads(loads[0].line(r'"event":"probes"', timeout=600).string)
            report["new_connection_ms"] = {
                **{k: v for k, v in probes.items() if k != "event"},
                "added_p50": probes["tunnel_p50"] - probes["direct_p50"],
                "added_p99": probes["tunnel_p99"] - probes["direct_p99"],
            }
        finally:
            for p in loads:
                p.stop()
            relay.stop()
    report["machine"] = harness.machine()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def sample(pid):
    return {"rss_mib": harness.rss_mib(pid), "cpu_s": harness.cpu_seconds(pid)}


if __name__ == "__main__":
    sys.exit(main())
