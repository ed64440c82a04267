#!/usr/bin/env python3
"""UDP through each tunnel: iperf3 -u throughput and loss beside direct, and the round trips a
game-like stream of small datagrams sees on a lossy path.

iperf (any user, all on 127.0.0.1): `iperf3 -u` with 1100-byte datagrams (one fits one QUIC
datagram even on a 1200-byte path), at 200 Mbit/s and at the highest rate each system
carries (under 1 % lost and at least 90 % of the rate received, in two 3-s probes in a row),
found by a short search (doubling from 100 Mbit/s, then halving the interval 3 times); at each
rate the median of --runs runs of --seconds, the systems taking turns within each run.
iperf3 takes its control connection over TCP and its data over UDP on the same port number,
so each tunnel system gets a TCP and a UDP tunnel on one public port.

game (root: network namespaces): 64-byte datagrams, 60 a second for 20 s, from a visitor to a
UDP echo (bench/udp_game.py), each timed until its echo, on lossy.py's path (faults/netsim.sh
namespaces under the prefix `budp`) with 20 ms delay and 1 % loss each way on the
relay<->agent link. The visitor runs beside the relay and the echo beside the agent; direct is
the same stream from the agent's host to an echo beside the relay, across the same link.
An echo more than 1 s late counts as lost.

Systems: direct, burrow (relay and agent from --bin-dir) and rathole-udp (rathole 0.5's
`type = "udp"` services over its TLS transport, from --peers-dir). Systems take turns within
each run.

    python3 bench/udp.py [--only iperf,game] [--systems direct,burrow,rathole-udp] [--runs 3]
                         [--seconds 5] [--bin-dir DIR] [--peers-dir DIR] [--out FILE]

Writes bench/results/udp.json.
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import harness
import udp_systems

OUT = harness.RESULTS / "udp.json"
PREFIX = "budp"
RELAY_IP = "10.80.0.1"
HOME_IP = "10.80.3.2"
DATAGRAM = 1100
# iperf3's own sockets, both ends: with the default 208 KiB a busy machine's scheduling stalls
# drop datagrams at the measuring tool itself, direct as much as through a tunnel.
SOCKET_BUFFER = "4M"
FIXED_MBPS = 200
SEARCH = {"start": 100, "limit": 6400, "steps": 3, "max_loss_pct": 1.0, "seconds": 3}
GAME = {"seconds": 20, "rate": 60, "size": 64, "delay_ms": 20, "loss_pct": 1}
# In the fresh namespaces any number is free; in the relay's range (20000-29999).
GAME_ECHO_PORT, GAME_PUBLIC_PORT = 5300, 21053
SYSTEMS = ("direct", "burrow", "rathole-udp")
GAME_PROBE = Path(__file__).resolve().parent / "udp_game.py"


def iperf3_udp(port, mbps, seconds, length=DATAGRAM, retries=1):
    """{sent_mbps, received_mbps, loss_pct, jitter_ms} of one `iperf3 -u` run to 127.0.0.1:port;
    a run that fails is tried again once (iperf3's server can refuse a test right after one ends)."""
    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-u", "-b", f"{mbps}M", "-t", str(seconds),
            "-l", str(length), "-w", SOCKET_BUFFER, "-J", "--connect-timeout", "10000"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    try:
        return iperf3_summary(json.loads(done.stdout or "{}"))
    except RuntimeError as e:
        if not retries:
            raise
        print(f"{e}; trying again", file=sys.stderr, flush=True)
        # The server takes a moment to finish the previous test; retrying at once finds it busy.
        time.sleep(2)
        return iperf3_udp(port, mbps, seconds, length, retries - 1)


def iperf3_summary(out):
    """The figures of an `iperf3 -u -J` report; RuntimeError for a failed run."""
    if "error" in out or "sum_received" not in out.get("end", {}):
        raise RuntimeError(f"iperf3 -u failed: {out.get('error', 'no summary')}")
    sent, received = out["end"]["sum_sent"], out["end"]["sum_received"]
    return {"sent_mbps": sent["bits_per_second"] / 1e6, "received_mbps": received["bits_per_second"] / 1e6,
            "loss_pct": received["lost_percent"], "jitter_ms": received["jitter_ms"]}


def carried(run, mbps, max_loss_pct):
    """Whether an iperf3 -u run at `mbps` was carried: under `max_loss_pct` lost, and sent
    and received at nearly that rate (past what iperf3 itself can send, nothing is lost
    because the rate is never reached)."""
    return run["loss_pct"] < max_loss_pct and run["received_mbps"] >= 0.9 * mbps


def highest_rate(carries, start, limit, steps):
    """The highest whole Mbit/s rate that `carries(rate)`: doubling from `start` up to
    `limit`, then `steps` halvings of the interval. 0 when even the lowest rate tried fails."""
    good, bad, rate = 0, None, start
    while rate <= limit:
        if carries(rate):
            good, rate = rate, rate * 2
        else:
            bad = rate
            break
    if bad is None:
        return good
    for _ in range(steps):
        mid = (good + bad) // 2
        if mid in (good, bad):
            break
        if carries(mid):
            good = mid
        else:
            bad = mid
    return good


def median_runs(runs):
    """The median over runs of each figure every run has, beside the runs."""
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    return {**{k: statistics.median(r[k] for r in runs) for k in keys}, "runs": runs}


@contextlib.contextmanager
def iperf_through(name):
    """System `name` carrying an iperf3 server of its own; yields the port visitors use."""
    server_port = udp_systems.free_tcp_and_udp_port(40000, 49999)
    server = harness.Process(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(server_port), "--forceflush"])
    try:
        server.line(rf"Server listening on {server_port}")
        server.drain()
        system = udp_systems.start(name, {"iperf": (server_port, ("tcp", "udp"))})
        try:
            yield system.public["iperf"]
        finally:
            system.stop()
    finally:
        server.stop()


def measure_iperf(systems, runs, seconds):
    """Per system, its highest rate carried, then runs at 200 Mbit/s and at that rate, the
    systems taking turns within each run."""
    with contextlib.ExitStack() as stack:
        ports = {name: stack.enter_context(iperf_through(name)) for name in systems}
        results, samples = {}, {name: {} for name in systems}
        for name, port in ports.items():
            print(f"udp iperf: {name}: searching the highest rate carried ...", file=sys.stderr, flush=True)
            # A rate passes when two probes in a row carry it: one lucky probe on a busy machine
            # would set a rate that the measured runs then fail.
            results[name] = {"highest_mbps": highest_rate(
                lambda mbps: all(carried(iperf3_udp(port, mbps, SEARCH["seconds"]), mbps, SEARCH["max_loss_pct"])
                                 for _ in range(2)),
                SEARCH["start"], SEARCH["limit"], SEARCH["steps"])}
        for i in range(runs):
            for name, port in ports.items():
                print(f"udp iperf run {i + 1}/{runs}: {name} ...", file=sys.stderr, flush=True)
                for label, mbps in ((f"at_{FIXED_MBPS}", FIXED_MBPS), ("at_highest", results[name]["highest_mbps"])):
                    if mbps:
                        samples[name].setdefault(label, []).append(iperf3_udp(port, mbps, seconds))
        for name, by_rate in samples.items():
            for label, rate_runs in by_rate.items():
                mbps = FIXED_MBPS if label != "at_highest" else results[name]["highest_mbps"]
                results[name][label] = {"mbps": mbps, **median_runs(rate_runs)}
        return results


def game_summary(sent, rtts_ms):
    """Round-trip percentiles of the echoed datagrams and the share that never came back."""
    back = sorted(r for r in rtts_ms if r is not None)
    if not back:
        return {"sent": sent, "loss_pct": 100.0}
    return {"sent": sent, "loss_pct": 100.0 * (sent - len(back)) / sent, "p50_ms": statistics.median(back),
            "p99_ms": back[min(len(back) - 1, int(len(back) * 0.99))], "max_ms": back[-1]}


def play(netns, host, port):
    argv = ["ip", "netns", "exec", netns, sys.executable, str(GAME_PROBE), "play", host, str(port),
            str(GAME["seconds"]), str(GAME["rate"]), str(GAME["size"])]
    out = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True,
                                    timeout=GAME["seconds"] + 60).stdout)
    return game_summary(out["sent"], out["rtts_ms"])


def measure_game_once(name):
    relay_ns, home_ns = f"{PREFIX}-relay", f"{PREFIX}-home"
    if name == "direct":
        echo = harness.Process([sys.executable, str(GAME_PROBE), "echo", RELAY_IP, str(GAME_ECHO_PORT)], netns=relay_ns)
        try:
            echo.line("listening")
            echo.drain()
            return play(home_ns, RELAY_IP, GAME_ECHO_PORT)
        finally:
            echo.stop()
    echo = harness.Process([sys.executable, str(GAME_PROBE), "echo", "127.0.0.1", str(GAME_ECHO_PORT)], netns=home_ns)
    try:
        echo.line("listening")
        echo.drain()
        system = udp_systems.start(name, {"game": (GAME_ECHO_PORT, ("udp",))}, netns_relay=relay_ns,
                                   netns_agent=home_ns, relay_ip=RELAY_IP, public_port=GAME_PUBLIC_PORT)
        try:
            return play(relay_ns, "127.0.0.1", system.public["game"])
        finally:
            system.stop()
    finally:
        echo.stop()


def measure_game(systems, runs):
    if os.geteuid() != 0:
        raise RuntimeError("the game figure needs root (network namespaces)")
    import lossy

    samples = {name: [] for name in systems}
    impairment = ["--delay", str(GAME["delay_ms"]), "--loss", str(GAME["loss_pct"])]
    with lossy.simulated_path(impairment, prefix=PREFIX):
        for i in range(runs):
            for name in systems:
                print(f"udp game run {i + 1}/{runs}: {name} ...", file=sys.stderr, flush=True)
                samples[name].append(measure_game_once(name))
    return {name: median_runs(runs) for name, runs in samples.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", type=lambda s: s.split(","), default=["iperf", "game"], metavar="iperf,game")
    parser.add_argument("--systems", type=lambda s: s.split(","), default=list(SYSTEMS), metavar=",".join(SYSTEMS))
    parser.add_argument("--runs", type=int, default=3, help="runs to take medians over (default 3)")
    parser.add_argument("--seconds", type=int, default=5, help="each iperf3 run's length (default 5)")
    parser.add_argument("--bin-dir", default=str(harness.RELEASE), help="directory holding relay and agent")
    parser.add_argument("--peers-dir", help="directory holding rathole (default bench/.cache/bin)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    if set(args.only) - {"iperf", "game"} or set(args.systems) - set(SYSTEMS) or args.runs < 1 or args.seconds < 1:
        parser.error("see --help for --only, --systems, --runs and --seconds")
    harness.BIN = Path(args.bin_dir)
    if args.peers_dir:
        import peers

        peers.PEERS = Path(args.peers_dir)
    result = {"settings": {"datagram_bytes": DATAGRAM, "fixed_mbps": FIXED_MBPS, "search": SEARCH, "game": GAME,
                           "runs": args.runs, "seconds": args.seconds}}
    if "iperf" in args.only:
        result["iperf"] = measure_iperf(args.systems, args.runs, args.seconds)
    if "game" in args.only:
        result["game"] = measure_game(args.systems, args.runs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


def table(result):
    """The figures as Markdown tables."""
    lines = []
    if "iperf" in result:
        lines += [f"| iperf3 -u, {DATAGRAM}-byte datagrams | received at {FIXED_MBPS} Mbit/s | loss at {FIXED_MBPS} "
                  "| highest rate carried | received there | loss there |", "|---|---|---|---|---|---|"]
        for name, r in result["iperf"].items():
            fixed, top = r.get(f"at_{FIXED_MBPS}", {}), r.get("at_highest", {})
            lines.append(f"| {name} | {fixed.get('received_mbps', 0):.0f} Mbit/s | {fixed.get('loss_pct', 0):.2f} % "
                         f"| {r['highest_mbps']} Mbit/s | {top.get('received_mbps', 0):.0f} Mbit/s "
                         f"| {top.get('loss_pct', 0):.2f} % |")
    if "game" in result:
        if lines:
            lines.append("")
        lines += ["| game stream, 20 ms each way, 1 % loss each way | RTT p50 | p99 | max | lost |", "|---|---|---|---|---|"]
        for name, r in result["game"].items():
            lines.append(f"| {name} | {r.get('p50_ms', 0):.1f} ms | {r.get('p99_ms', 0):.1f} ms "
                         f"| {r.get('max_ms', 0):.1f} ms | {r['loss_pct']:.2f} % |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
