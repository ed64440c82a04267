"""Burst of new connections over a relay<->agent link with 50 ms RTT (bench/netns).

The relay and the visitors share one namespace, the agent and the local server the other;
only the relay<->agent link is delayed. The baseline is the same burst made directly to the
local server inside the agent's namespace. Needs root and `ip`; skipped otherwise.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import harness

DELAY_MS = 25
BURST = 50
ROUNDS = 3
LINK = harness.ROOT / "bench" / "netns" / "delaylink.sh"
CLIENT = harness.ROOT / "bench" / "burst_client.py"


def available():
    return os.geteuid() == 0 and shutil.which("ip") is not None


def burst(netns, port):
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, str(CLIENT), str(port), str(BURST)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out)


def summary(samples):
    ordered = sorted(samples)
    return {"p50_ms": ordered[len(ordered) // 2], "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]}


def measure(args, tunnels=None):
    """Returns per-system p50/p99 TTFB and the direct baseline, medians over ROUNDS bursts."""
    if not available():
        print("burst: skipped (needs root and iproute2)", file=sys.stderr)
        return None
    subprocess.run(["bash", str(LINK), "deps"], check=True)
    subprocess.run(["bash", str(LINK), "down"], check=True, capture_output=True)
    subprocess.run(["bash", str(LINK), "up", str(DELAY_MS)], check=True)
    try:
        rtt = subprocess.run(["bash", str(LINK), "check"], capture_output=True, text=True, check=True).stdout
        http = harness.Process([str(harness.bench_http()), "127.0.0.1:0"], netns="brwb-agent")
        http_port = int(http.line(r"listening on \S+:(\d+)").group(1))
        http.drain()
        result = {"rtt_ms": 2 * DELAY_MS, "link_check": rtt.strip().splitlines()[-1:], "burst": BURST}
        try:
            result["direct"] = rounds(lambda: burst("brwb-agent", http_port))
            for name, start in (tunnels or {"burrow": starter(harness.Burrow)}).items():
                system = start(http_port)
                try:
                    result[name] = rounds(lambda: burst("brwb-relay", system.public["http"]))
                finally:
                    system.stop()
        finally:
            http.stop()
        return result
    finally:
        subprocess.run(["bash", str(LINK), "down"], check=True, capture_output=True)


def rounds(run):
    run()  # warm-up: first-use costs (page cache, lazy binding) are not what this measures
    samples = [summary(run()) for _ in range(ROUNDS)]
    return {k: sorted(s[k] for s in samples)[len(samples) // 2] for k in ("p50_ms", "p99_ms")}


def starter(system):
    """Starts `system` with its relay side in brwb-relay and its agent side in brwb-agent."""
    return lambda http_port: system({"http": http_port}, netns_relay="brwb-relay", netns_agent="brwb-agent",
                                    relay_ip="10.98.0.1")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="burrow alone over the 50 ms link, for tuning A/B")
    parser.add_argument("--bin-dir", default=str(harness.RELEASE))
    parser.add_argument("--out", required=True)
    cli = parser.parse_args()
    harness.BIN = Path(cli.bin_dir)
    Path(cli.out).write_text(json.dumps(measure(cli), indent=2) + "\n")
