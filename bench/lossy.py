#!/usr/bin/env python3
"""Downloads through each tunnel over a lossy relay<->agent link (50 ms RTT, 1 % loss each way).

The path is faults/netsim.sh's simulated internet under its own prefix (`blossy`), so it
never meets the fault suite's namespaces: the relay runs in blossy-relay, the agent and the
iperf3 server in blossy-home behind the NAT, and the home uplink gets `impair --delay 25
--loss 1`, which drops wire-sized packets at random (GSO is off on every veth) and holds each
one 25 ms each way. The visitor's iperf3 client runs beside the relay, on its 127.0.0.1,
where every system binds its public ports (as bench/burst.py does): only the relay<->agent
link is impaired, so that hop costs every system the same.

"one" is one visitor's download (`iperf3 -R`), "eight" the total of eight at once
(`iperf3 -R -P 8`). Systems take turns within each run, so slow drift of a busy machine
spreads over all of them.

    python3 bench/lossy.py [--peers] [--runs N] [--seconds S] [--bin-dir DIR] [--peers-dir DIR]

Needs root. Writes bench/results/lossy.json.
"""

import argparse
import concurrent.futures
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import harness

NETSIM = harness.ROOT / "faults" / "netsim.sh"
PREFIX = "blossy"
RELAY_IP = "10.80.0.1"
DELAY_MS = 25
LOSS_PCT = 1
SECONDS = 20
# The kernel's TCP congestion control for the TCP tunnels' connections over the lossy link:
# Linux's default. A new namespace inherits the host's default, and may not pick another
# by sysctl unless the host allows it, so it is set on the routes of both ends. With BBR,
# which ignores random loss, TCP tunnels carry about 50 times more on this path.
TCP_CONGESTION_CONTROL = "cubic"
OUT = harness.RESULTS / "lossy.json"
IPERF_PORT = 5201
# A plain TCP flow beside the tunnel, for --check fairness.
TCP_PORT = 5202


def netsim(*args, check=True, prefix=PREFIX):
    return subprocess.run(["bash", str(NETSIM), *args], env={**os.environ, "NETSIM_PREFIX": prefix},
                          capture_output=True, text=True, timeout=120, check=check)


def iperf3(netns, host, port, seconds, parallel=1, reverse=True, retries=1):
    """iperf3's JSON report of a client in `netns`; a run that fails is tried again once."""
    argv = ["ip", "netns", "exec", netns, "iperf3", "-c", host, "-p", str(port), "-t", str(seconds),
            "-P", str(parallel), "-J", "--connect-timeout", "10000"] + (["-R"] if reverse else [])
    try:
        out = json.loads(subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout or "{}")
    except subprocess.TimeoutExpired:
        out = {"error": f"no result within {seconds + 60} s"}
    if "error" in out or "end" not in out:
        error = out.get("error", "no output")
        if not retries:
            raise RuntimeError(f"iperf3 to {host}:{port} from {netns} failed: {error}")
        print(f"iperf3 to {host}:{port} failed ({error}); trying again", file=sys.stderr, flush=True)
        time.sleep(2)
        return iperf3(netns, host, port, seconds, parallel, reverse, retries - 1)
    return out


def download_mbps(port, seconds, parallel):
    """Mbit/s received by iperf3 visitors beside the relay, downloading (-R) from the local
    server through the tunnel at 127.0.0.1:port."""
    out = iperf3(f"{PREFIX}-relay", "127.0.0.1", port, seconds, parallel)
    return out["end"]["sum_received"]["bits_per_second"] / 1e6


def systems_to_measure(peers, burrow):
    systems = {"burrow": burrow}
    if peers:
        import peers as peer_classes

        systems["burrow_tcp"] = harness.BurrowTcp
        systems["rathole-tls"] = peer_classes.RatholeTls
        systems["bore"] = peer_classes.Bore
    return systems


@contextlib.contextmanager
def simulated_path(impairment, tcp_congestion_control=TCP_CONGESTION_CONTROL, prefix=PREFIX):
    """The netsim path (namespaces `prefix`-*) impaired with `impairment` (netsim.sh `impair`
    arguments) and an iperf3 server beside the agent; yields its port. Namespaces are always
    torn down."""
    netsim("deps", prefix=prefix)
    netsim("down", prefix=prefix)
    try:
        netsim("up", prefix=prefix)
        for ns in ("relay", "home"):
            set_congestion_control(f"{prefix}-{ns}", tcp_congestion_control)
        if impairment:
            netsim("impair", *impairment, prefix=prefix)
        server = harness.Process(["iperf3", "-s", "-p", str(IPERF_PORT)], netns=f"{prefix}-home", quiet=True)
        try:
            wait_for_listener(f"{prefix}-home", IPERF_PORT)
            yield IPERF_PORT
        finally:
            server.stop()
    finally:
        netsim("down", check=False, prefix=prefix)


def measure(bin_dir: Path, peers: bool, runs: int, seconds: int = SECONDS, burrow=harness.Burrow,
            out: Path = OUT, tcp_congestion_control: str = TCP_CONGESTION_CONTROL) -> dict:
    """Per system, the Mbit/s of each run's "one" and "eight" downloads and their medians;
    also written to `out`. `burrow` may be a subclass of harness.Burrow with other options."""
    if os.geteuid() != 0:
        raise RuntimeError("the lossy figure needs root (network namespaces)")
    harness.BIN = Path(bin_dir)
    systems = systems_to_measure(peers, burrow)
    samples = {name: {"one": [], "eight": []} for name in systems}
    impairment = ["--delay", str(DELAY_MS), "--loss", str(LOSS_PCT)]
    with simulated_path(impairment, tcp_congestion_control) as server_port:
        for i in range(runs):
            for name, start in systems.items():
                print(f"lossy run {i + 1}/{runs}: {name} ...", file=sys.stderr, flush=True)
                one, eight = measure_system(start, server_port, seconds)
                samples[name]["one"].append(one)
                samples[name]["eight"].append(eight)
    result = {
        "settings": {"rtt_ms": 2 * DELAY_MS, "loss_pct_each_way": LOSS_PCT, "seconds": seconds, "runs": runs,
                     "tcp_congestion_control": tcp_congestion_control},
        "systems": {name: summarise(s) for name, s in samples.items()},
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def set_congestion_control(netns, algorithm):
    """Makes TCP connections leaving `netns` by its default route use `algorithm`."""
    route = subprocess.run(["ip", "netns", "exec", netns, "ip", "route", "show", "default"], capture_output=True,
                           text=True, timeout=10, check=True).stdout.split()
    if route[:2] != ["default", "via"]:
        raise RuntimeError(f"unexpected default route in {netns}: {' '.join(route)}")
    subprocess.run(["ip", "netns", "exec", netns, "ip", "route", "change", "default", "via", route[2], "dev", route[4],
                    "congctl", algorithm], check=True, timeout=10)


def wait_for_listener(netns, port, timeout=10):
    """Returns once a TCP socket listens on `port` in `netns`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listening = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Hltn", f"sport = :{port}"],
                                   capture_output=True, text=True, timeout=10).stdout
        if listening.strip():
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} in {netns} after {timeout} s")


def measure_system(start, server_port, seconds):
    system = start({"iperf": server_port}, netns_relay=f"{PREFIX}-relay", netns_agent=f"{PREFIX}-home",
                   relay_ip=RELAY_IP)
    try:
        port = system.public["iperf"]
        return download_mbps(port, seconds, 1), download_mbps(port, seconds, 8)
    finally:
        system.stop()


def summarise(samples):
    return {
        "one_mbps": samples["one"],
        "eight_mbps": samples["eight"],
        "one_median_mbps": statistics.median(samples["one"]),
        "eight_median_mbps": statistics.median(samples["eight"]),
    }


def start_burrow(server_port):
    return harness.Burrow({"iperf": server_port}, netns_relay=f"{PREFIX}-relay", netns_agent=f"{PREFIX}-home",
                          relay_ip=RELAY_IP)


def fairness(seconds=30, rate="20mbit"):
    """Mbit/s of a download through burrow and of a plain TCP upload from the agent's host to
    the relay's, side by side through one `rate` bottleneck on the home uplink (no loss)."""
    with simulated_path(["--rate", rate]) as server_port:
        relay_ns = f"{PREFIX}-relay"
        tcp_server = harness.Process(["iperf3", "-s", "-p", str(TCP_PORT)], netns=relay_ns, quiet=True)
        system = start_burrow(server_port)
        try:
            wait_for_listener(relay_ns, TCP_PORT)
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                tunnel = pool.submit(download_mbps, system.public["iperf"], seconds, 1)
                tcp = pool.submit(iperf3, f"{PREFIX}-home", RELAY_IP, TCP_PORT, seconds, reverse=False)
                return {"rate": rate, "burrow_mbps": tunnel.result(),
                        "tcp_mbps": tcp.result()["end"]["sum_received"]["bits_per_second"] / 1e6}
        finally:
            system.stop()
            tcp_server.stop()


def rtt_growth(seconds=40, grow_at=10):
    """Per-second Mbit/s of one download through burrow whose path gains 25 ms each way
    (0.2 to 50 ms RTT, no loss) `grow_at` seconds in, and the median before and after."""
    with simulated_path([]) as server_port:
        system = start_burrow(server_port)
        try:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                download = pool.submit(iperf3, f"{PREFIX}-relay", "127.0.0.1", system.public["iperf"], seconds)
                # Scheduling the change in time is the point here, not synchronisation.
                time.sleep(grow_at)
                netsim("impair", "--delay", str(DELAY_MS))
                out = download.result()
        finally:
            system.stop()
    per_second = [i["sum"]["bits_per_second"] / 1e6 for i in out["intervals"]]
    return {"per_second_mbps": [round(x, 1) for x in per_second],
            "before_mbps": statistics.median(per_second[1:grow_at]),
            "last_half_mbps": statistics.median(per_second[len(per_second) // 2:])}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", action="store_true", help="also burrow over TLS/TCP (burrow_tcp), rathole-tls and bore")
    parser.add_argument("--runs", type=int, default=2, help="runs to take medians over (default 2)")
    parser.add_argument("--seconds", type=int, default=SECONDS, help=f"each download's length (default {SECONDS})")
    parser.add_argument("--bin-dir", default=str(harness.RELEASE), help="directory holding relay and agent")
    parser.add_argument("--peers-dir", help="directory holding bore and rathole (default bench/.cache/bin)")
    parser.add_argument("--tcp-cc", default=TCP_CONGESTION_CONTROL,
                        help=f"the kernel's TCP congestion control on the path (default {TCP_CONGESTION_CONTROL})")
    parser.add_argument("--check", choices=["fairness", "rtt-growth"],
                        help="instead of the figure: burrow beside a TCP flow on a 20 Mbit/s bottleneck, "
                             "or one download whose round trip grows from 0.2 to 50 ms")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    if args.runs < 1 or args.seconds < 1:
        parser.error("--runs and --seconds must be at least 1")
    if args.peers_dir:
        import peers

        peers.PEERS = Path(args.peers_dir)
    if args.check:
        harness.BIN = Path(args.bin_dir)
        print(json.dumps(fairness() if args.check == "fairness" else rtt_growth()))
        return
    result = measure(Path(args.bin_dir), args.peers, args.runs, args.seconds, out=Path(args.out),
                     tcp_congestion_control=args.tcp_cc)
    print(json.dumps({name: {k: v for k, v in s.items() if k.endswith("median_mbps")}
                      for name, s in result["systems"].items()}, indent=2))


if __name__ == "__main__":
    main()
