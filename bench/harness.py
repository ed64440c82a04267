#!/usr/bin/env python3
"""burrow's benchmark harness: every figure measured directly and through burrow in one run.

Run it with `bench/run` (which installs iperf3, wrk and nginx and builds the release
binaries). Everything talks to 127.0.0.1, or to addresses inside network namespaces the
harness creates itself; every loop is bounded in count and time. On 2 cores, `bench/run`
takes about 9 minutes and `bench/run --peers` about 20; `--only` and `--systems` take a
subset, and `--runs 1 --seconds 2` a quick look.
"""

import argparse
import json
import os
import platform
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# Re-exported: bench/scale.py, bench/soak.py and the figures of other modules take them from here.
from load import HOLD_SETTLE, held_connections_rss, iperf, percentiles, sequential_connects, wrk  # noqa: F401
from procstat import cpu_seconds, rss_mib  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
RELEASE = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
# Where relay and agent come from; --bin-dir points elsewhere to compare builds.
BIN = RELEASE
RESULTS = ROOT / "bench" / "results"
# All of the harness's load comes from 127.0.0.1 with one token, so the per-address and
# per-token caps (defences for public relays) are lifted for the relay under test.
ONE_ADDRESS_LOAD = {
    "BURROW_RELAY_MAX_VISITORS_PER_IP": "1000000",
    "BURROW_RELAY_MAX_UNAUTHENTICATED_PER_ADDRESS": "1000000",
    "BURROW_RELAY_MAX_SESSIONS_PER_TOKEN": "1000000",
    "BURROW_RELAY_MAX_TUNNELS_PER_TOKEN": "1000000",
}


class Process:
    """A child process whose stdout is read line by line for readiness markers, or which says
    it is ready in a `--ready-file` (relay and agent)."""

    def __init__(self, argv, env=None, netns=None, quiet=False, stdin=False, ready_file=False):
        self.ready_dir = tempfile.TemporaryDirectory(prefix="burrow-ready-") if ready_file else None
        if ready_file:
            argv = argv + ["--ready-file", str(Path(self.ready_dir.name) / "ready.json")]
        if netns:
            argv = ["ip", "netns", "exec", netns] + argv
        self.argv = argv
        # Output nobody reads goes to a file: a full pipe would stall the child.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=self.log if quiet else subprocess.PIPE,
            stderr=self.log,
            text=True,
            env={**os.environ, **(env or {})},
        )

    @property
    def pid(self):
        return self.proc.pid

    def line(self, pattern, timeout=30):
        """Returns the first stdout match of `pattern`, waiting at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                self.log.seek(0)
                raise RuntimeError(f"{self.argv} exited: {self.log.read()[-2000:]}")
            match = regex.search(line)
            if match:
                return match
        raise TimeoutError(f"no line matching {pattern!r} from {self.argv}")

    def ready(self, until=lambda ready: True, timeout=30):
        """The JSON object of the process's ready file once it exists and passes `until`,
        waiting at most `timeout` seconds; fails at once if the process exits first."""
        path = Path(self.ready_dir.name) / "ready.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # The binaries write the file whole and rename it into place, so any file seen
            # is complete.
            if path.exists():
                ready = json.loads(path.read_text())
                if until(ready):
                    return ready
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{self.argv} exited: {self.log.read()[-2000:]}")
            time.sleep(0.01)
        raise TimeoutError(f"no ready file from {self.argv} within {timeout} s")

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def drain(self):
        """Keeps reading stdout into the log once no more markers are needed, so a chatty
        child never blocks on a full pipe."""

        def copy():
            for line in self.proc.stdout:
                self.log.write(line)

        threading.Thread(target=copy, daemon=True).start()
        return self

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Burrow:
    """A relay and an agent (release binaries) exposing the given local ports as TCP tunnels."""

    RELAY_ARGS = []
    TUNNEL_OPTIONS = []
    AGENT_ARGS = []
    # The address in the relay's ready file that the agent dials.
    RELAY_ADDRESS = "quic"

    def __init__(self, tunnels, netns_relay=None, netns_agent=None, relay_ip="127.0.0.1"):
        self.dir = tempfile.TemporaryDirectory(prefix="burrow-bench-")
        data = Path(self.dir.name)
        self.relay = Process(
            [str(BIN / "relay"), "--listen", f"{relay_ip}:0", "--public-bind", "127.0.0.1", "--admin-listen", "off",
             "--data-dir", str(data / "relay")] + self.RELAY_ARGS,
            env={"RUST_LOG": "warn", **ONE_ADDRESS_LOAD}, netns=netns_relay, quiet=True, ready_file=True,
        )
        relay = self.relay.ready()
        port = port_of(relay[self.RELAY_ADDRESS])
        fingerprint, token = relay["fingerprint"], relay["token"]
        config = data / "agent.toml"
        lines = [f'relay = "{relay_ip}:{port}"', f'fingerprint = "{fingerprint}"']
        for name, local in tunnels.items():
            lines += ["[[tunnels]]", f'name = "{name}"', f"local = {local}"]
            lines += [option.format(name=name) for option in self.TUNNEL_OPTIONS]
        config.write_text("\n".join(lines) + "\n")
        self.agent = Process([str(BIN / "agent"), "--config", str(config)] + self.AGENT_ARGS,
                             env={"BURROW_TOKEN": token, "RUST_LOG": "warn"}, netns=netns_agent,
                             quiet=True, ready_file=True)
        # Every link up too: figures such as the relay's idle memory must see the whole session.
        online = self.agent.ready(until=lambda ready: {t["name"] for t in ready["tunnels"]} >= set(tunnels)
                                  and ready.get("links_up", 0) >= ready.get("links_wanted", 0))
        self.public = {t["name"]: self.public_port(t) for t in online["tunnels"]}

    @staticmethod
    def public_port(tunnel):
        """Where the benchmark's clients reach `tunnel` (one entry of the agent's ready file)."""
        return tunnel["port"]

    @property
    def pids(self):
        return [self.relay.pid, self.agent.pid]

    def stop(self):
        self.agent.stop()
        self.relay.stop()
        self.dir.cleanup()


class BurrowTcp(Burrow):
    """As Burrow, but the agent's links to the relay are TLS 1.3 over TCP with HTTP/2 streams
    (`--transport tcp`, the fallback where UDP is blocked), to the relay's TCP agent port."""

    AGENT_ARGS = ["--transport", "tcp"]
    RELAY_ADDRESS = "tcp"


class BurrowHttp(Burrow):
    """As Burrow, but each tunnel is an HTTP tunnel at NAME.DOMAIN on the relay's shared HTTP
    port: the relay parses each request and the agent sends it on with its own HTTP client.
    `public` maps each name to that shared port; requests pick their tunnel with `host(name)`."""

    DOMAIN = "bench.test"
    RELAY_ARGS = ["--domain", DOMAIN, "--http-listen", "127.0.0.1:0", "--https-listen", "off"]
    TUNNEL_OPTIONS = ['protocol = "http"', 'subdomain = "{name}"']

    @staticmethod
    def public_port(tunnel):
        """The port of the tunnel's plain-HTTP address, the relay's shared HTTP port."""
        return next(port_of(url) for url in tunnel["urls"] if url.startswith("http://"))

    def host(self, name):
        return f"{name}.{self.DOMAIN}:{self.public[name]}"


def port_of(address):
    """The port at the end of `HOST:PORT` or `SCHEME://HOST:PORT`."""
    return int(address.rsplit(":", 1)[1].rstrip("/"))


def wait_for_port(port, timeout=10):
    """Returns once something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the run ---------------------------------------------------------------------------------

FIGURES = ("iperf", "http", "nginx", "connect", "memory", "burst", "lossy", "hol")
SYSTEM_ORDER = ("burrow", "rathole-tls", "rathole-noise", "bore")
# burrow with its agent's links over TLS on TCP: measured beside rathole-tls, which also
# carries its tunnels over TLS on TCP, so by default with --peers.
BURROW_SYSTEMS = {"burrow": Burrow, "burrow_tcp": BurrowTcp}


def medians(runs):
    """The median of each figure over the runs that have it."""
    keys = dict.fromkeys(k for r in runs for k in r if k != "errors")
    return {k: statistics.median(r[k] for r in runs if k in r) for k in keys}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs to take medians over (default 3)")
    parser.add_argument("--lossy-runs", type=int, default=2,
                        help="runs of the lossy and head-of-line figures (default 2)")
    parser.add_argument("--seconds", type=int, default=5, help="duration of each iperf3/wrk measurement")
    parser.add_argument("--connects", type=int, default=200, help="sequential new connections per run")
    parser.add_argument("--held", type=int, default=1000, help="open connections for the memory figure")
    parser.add_argument("--peers", action="store_true", help="also measure bore and rathole (bench/run installs them)")
    parser.add_argument("--only", type=lambda s: s.split(","), default=list(FIGURES), metavar="FIGURE,...",
                        help=f"measure only these figures, of: {','.join(FIGURES)} (default all)")
    parser.add_argument("--systems", type=lambda s: s.split(","), default=None, metavar="SYSTEM,...",
                        help="measure only these of direct,burrow,burrow_http,burrow_tcp,rathole-tls,"
                             "rathole-noise,bore (default: all that --peers selects; burrow_tcp, the agent "
                             "linked over TLS on TCP, comes with --peers or by name)")
    parser.add_argument("--no-burst", action="store_true", help="skip the burst over a 50 ms RTT link")
    parser.add_argument("--no-http-tunnel", dest="http_tunnel", action="store_false",
                        help="skip the HTTP tunnel (wrk through the relay's shared HTTP port)")
    parser.add_argument("--out", default=str(RESULTS / "latest.json"))
    parser.add_argument("--bin-dir", default=str(RELEASE), help="directory holding relay, agent and bench-http")
    args = parser.parse_args()
    unknown = set(args.only) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figure(s) {','.join(sorted(unknown))}: choose from {','.join(FIGURES)}")
    if args.no_burst:
        args.only = [f for f in args.only if f != "burst"]
    every = ["direct", "burrow"] + (["burrow_http"] if args.http_tunnel else []) + (
        ["burrow_tcp"] + list(SYSTEM_ORDER[1:]) if args.peers else [])
    if args.systems is None:
        args.systems = every
    elif set(args.systems) - set(every) - {"burrow_tcp"}:
        parser.error(f"unknown or unselected system(s) {','.join(sorted(set(args.systems) - set(every) - {'burrow_tcp'}))}: "
                     f"choose from {','.join(every)} (peers need --peers)")
    return args


def start_servers(args):
    """bench-http, iperf3 and (for the nginx figures) nginx; returns (processes, ports)."""
    http = Process([str(bench_http()), "127.0.0.1:0"])
    ports = {"http": int(http.line(r"listening on \S+:(\d+)").group(1))}
    http.drain()
    servers = [http]
    try:
        ports["iperf"] = free_port()
        servers.append(Process(["iperf3", "-s", "-p", str(ports["iperf"])], quiet=True))
        wait_for_port(ports["iperf"])
        if "nginx" in args.only:
            import nginx

            servers.append(nginx.Nginx())
            ports["nginx"] = servers[-1].port
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers, ports


def bench_http():
    """The bench-http server: from --bin-dir when it is there, else from this checkout's build."""
    return BIN / "bench-http" if (BIN / "bench-http").exists() else RELEASE / "bench-http"


def loopback_runs(args, systems):
    import figures

    servers, ports = start_servers(args)
    try:
        runs = []
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs} ...", file=sys.stderr, flush=True)
            tunnel = BurrowHttp if "burrow_http" in args.systems else None
            runs.append(figures.run_once(args, ports, systems, tunnel))
        return runs
    finally:
        for server in reversed(servers):
            server.stop()


def guarded(name, measure):
    """A figure measured after the loopback runs: its failure is reported and recorded, and
    does not throw away the runs already made."""
    print(f"{name} ...", file=sys.stderr, flush=True)
    try:
        return measure()
    except Exception as error:  # noqa: BLE001 - any failure of one figure is reported, not fatal
        print(f"{name} failed: {error!r}", file=sys.stderr, flush=True)
        return {"error": repr(error)}


def main():
    started = time.monotonic()
    args = parse_args()
    global BIN
    BIN = Path(args.bin_dir)

    systems = dict(BURROW_SYSTEMS)
    if args.peers:
        import peers

        systems.update(peers.SYSTEMS)
    names = [s for s in args.systems if s != "direct"]
    runs = loopback_runs(args, systems)
    result = {"machine": machine(), "systems": names, "runs": runs, "median": medians(runs),
              "settings": vars(args), "command": command()}
    chosen = {name: systems[name] for name in names if name in systems}
    if "burst" in args.only:
        import burst

        result["burst"] = guarded("burst over a 50 ms RTT link", lambda: burst.measure(
            args, {name: burst.starter(start) for name, start in chosen.items()}))
    if "lossy" in args.only:
        result["lossy"] = guarded("lossy: 50 ms RTT and 1 % loss", lambda: lossy(args))
    if "hol" in args.only:
        import hol

        result["hol"] = guarded("head-of-line: 10 bulk visitors and an interactive one, 50 ms RTT and 1 % loss",
                                lambda: hol.measure(BIN, args.peers, args.lossy_runs))
    result["elapsed_s"] = time.monotonic() - started
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    import report

    report.write(result)
    print(json.dumps(result["median"], indent=2))
    print(f"bench took {result['elapsed_s'] / 60:.1f} min", file=sys.stderr)


def command():
    """How this run was started, as a user would type it (bench/run passes its arguments on)."""
    return " ".join(["bench/run"] + [shlex.quote(arg) for arg in sys.argv[1:]])


def lossy(args):
    """The lossy figure (bench/lossy.py): None when that module is not in this checkout."""
    try:
        import lossy as module
    except ImportError:
        print("lossy: skipped (bench/lossy.py is not in this checkout)", file=sys.stderr)
        return None
    return module.measure(BIN, args.peers, args.lossy_runs)


def machine():
    def version(argv, stream="stdout"):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=ROOT)
            return getattr(done, stream).splitlines()[0].strip()
        except (OSError, IndexError, subprocess.SubprocessError):
            return "unknown"

    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "rustc": version(["rustc", "--version"]),
        "iperf3": version(["iperf3", "--version"]),
        "wrk": version(["wrk", "--version"]),
        # nginx says its version on stderr.
        "nginx": version(["nginx", "-v"], "stderr").replace("nginx version: ", ""),
        "commit": version(["git", "rev-parse", "--short", "HEAD"]),
        "date": time.strftime("%Y-%m-%d"),
    }


if __name__ == "__main__":
    # The modules the harness loads (peers, burst, figures) import `harness`: run main() in that
    # same module, so that --bin-dir's BIN is the one they see.
    import harness

    harness.main()
