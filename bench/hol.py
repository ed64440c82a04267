#!/usr/bin/env python3
"""Head-of-line blocking: one interactive visitor's round trip while bulk visitors share the
tunnel, over a lossy relay<->agent link (50 ms RTT, 1 % loss each way), with the agent's
links over QUIC (burrow) and over TLS on TCP (burrow_tcp, `--transport tcp`).

The path is bench/lossy.py's (faults/netsim.sh, `impair --delay 25 --loss 1`, cubic), under
its own prefix (`bhol`). The agent, an iperf3 server and an echo server run at home; the
visitors beside the relay, on its 127.0.0.1. Per system and run: first the interactive
visitor alone for IDLE_S, then BULK visitors download at once through the tunnel (`iperf3 -R
-P 10`), and RAMP_S later the interactive visitor sends a 64-byte message to the echo server
every 100 ms for `seconds` and times each echo. Over QUIC a lost packet holds up only the
stream it carried; over one TCP connection it holds up every stream behind it, and the
interactive visitor's message also queues behind bulk data in that connection's buffers.

    python3 bench/hol.py [--peers] [--runs N] [--seconds S] [--bin-dir DIR]

Needs root. Writes bench/results/hol.json.
"""

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import harness
import lossy

PREFIX = "bhol"
BULK = 10
SECONDS = 20
IDLE_S = 5
# How long the bulk downloads run before the probe starts, to be past their first round trips.
RAMP_S = 3
INTERVAL_MS = 100
ECHO_PORT = 7007
PROBE = harness.ROOT / "bench" / "hol_probe.py"
OUT = harness.RESULTS / "hol.json"


def systems_to_measure(peers):
    systems = dict(harness.BURROW_SYSTEMS)
    if peers:
        import peers as peer_classes

        systems["rathole-tls"] = peer_classes.RatholeTls
    return systems


def probe(port, seconds):
    """The interactive visitor's round trips (ms) through the tunnel at 127.0.0.1:port."""
    argv = ["ip", "netns", "exec", f"{PREFIX}-relay", sys.executable, str(PROBE), "probe", str(port), str(seconds),
            str(INTERVAL_MS)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 90)
    if done.returncode != 0:
        raise RuntimeError(f"probe through port {port} failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


def quantiles(samples):
    ordered = sorted(samples)
    return {"p50_ms": ordered[len(ordered) // 2], "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
            "max_ms": ordered[-1], "count": len(ordered)}


def measure_system(start, iperf_port, seconds):
    system = start({"iperf": iperf_port, "echo": ECHO_PORT}, netns_relay=f"{PREFIX}-relay",
                   netns_agent=f"{PREFIX}-home", relay_ip=lossy.RELAY_IP)
    try:
        idle = probe(system.public["echo"], IDLE_S)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            bulk = pool.submit(lossy.iperf3, f"{PREFIX}-relay", "127.0.0.1", system.public["iperf"],
                               RAMP_S + seconds + 2, BULK)
            # Scheduling, not synchronisation: the probe is to meet the downloads in full flow.
            time.sleep(RAMP_S)
            loaded = probe(system.public["echo"], seconds)
            bulk_mbps = bulk.result()["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        system.stop()
    return {"idle": quantiles(idle), "loaded": quantiles(loaded), "bulk_mbps": bulk_mbps, "loaded_rtts_ms": loaded}


def summarise(runs):
    """Medians over the runs of each quantile, and the quantiles of every run's samples pooled."""
    pooled = [x for run in runs for x in run["loaded_rtts_ms"]]
    return {
        "runs": runs,
        "idle_p50_ms": statistics.median(r["idle"]["p50_ms"] for r in runs),
        **{f"loaded_{q}": statistics.median(r["loaded"][q] for r in runs) for q in ("p50_ms", "p99_ms", "max_ms")},
        "pooled": quantiles(pooled),
        "bulk_mbps": statistics.median(r["bulk_mbps"] for r in runs),
    }


def measure(bin_dir: Path, peers: bool, runs: int, seconds: int = SECONDS, out: Path = OUT,
            loss_pct: float = lossy.LOSS_PCT) -> dict:
    """Per system, the interactive visitor's round trips idle and beside the bulk downloads,
    and the downloads' total; also written to `out`."""
    if os.geteuid() != 0:
        raise RuntimeError("the head-of-line figure needs root (network namespaces)")
    harness.BIN = Path(bin_dir)
    systems = systems_to_measure(peers)
    samples = {name: [] for name in systems}
    impairment = ["--delay", str(lossy.DELAY_MS)] + (["--loss", str(loss_pct)] if loss_pct else [])
    with lossy.simulated_path(impairment, prefix=PREFIX) as iperf_port:
        echo = harness.Process([sys.executable, str(PROBE), "serve", str(ECHO_PORT)], netns=f"{PREFIX}-home")
        try:
            echo.line(r"listening")
            echo.drain()
            for i in range(runs):
                for name, start in systems.items():
                    print(f"hol run {i + 1}/{runs}: {name} ...", file=sys.stderr, flush=True)
                    samples[name].append(measure_system(start, iperf_port, seconds))
        finally:
            echo.stop()
    result = {
        "settings": {"rtt_ms": 2 * lossy.DELAY_MS, "loss_pct_each_way": loss_pct, "bulk_visitors": BULK,
                     "seconds": seconds, "interval_ms": INTERVAL_MS, "runs": runs,
                     "tcp_congestion_control": lossy.TCP_CONGESTION_CONTROL},
        "systems": {name: summarise(s) for name, s in samples.items()},
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", action="store_true", help="also rathole-tls (one TLS connection per visitor)")
    parser.add_argument("--runs", type=int, default=2, help="runs to take medians over (default 2)")
    parser.add_argument("--seconds", type=int, default=SECONDS, help=f"the probe's length (default {SECONDS})")
    parser.add_argument("--bin-dir", default=str(harness.RELEASE), help="directory holding relay and agent")
    parser.add_argument("--loss", type=float, default=lossy.LOSS_PCT,
                        help=f"random loss each way, percent (default {lossy.LOSS_PCT}; 0 shows queueing alone)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    if args.runs < 1 or args.seconds < 1:
        parser.error("--runs and --seconds must be at least 1")
    result = measure(Path(args.bin_dir), args.peers, args.runs, args.seconds, Path(args.out), args.loss)
    import report_tables

    print(report_tables.hol_table(result))


if __name__ == "__main__":
    main()
