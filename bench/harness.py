#!/usr/bin/env python3
"""burrow's benchmark harness: every figure measured directly and through burrow in one run.

Run it with `bench/run` (which installs iperf3 and wrk and builds the release binaries);
`bench/run --help` lists the options. Everything talks to 127.0.0.1, or to addresses inside
network namespaces the harness creates itself; every loop is bounded in count and time.
"""

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"
# Where relay and agent come from; --bin-dir points elsewhere to compare builds.
BIN = RELEASE
RESULTS = ROOT / "bench" / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
HOLD_SETTLE = 2.0
# All of the harness's load comes from 127.0.0.1 with one token, so the per-address and
# per-token caps (defences for public relays) are lifted for the relay under test.
ONE_ADDRESS_LOAD = {
    "BURROW_RELAY_MAX_VISITORS_PER_IP": "1000000",
    "BURROW_RELAY_MAX_UNAUTHENTICATED_PER_ADDRESS": "1000000",
    "BURROW_RELAY_MAX_SESSIONS_PER_TOKEN": "1000000",
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


def cpu_seconds(pid):
    """User + system CPU time of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Burrow:
    """A relay and an agent (release binaries) exposing the given local ports as TCP tunnels."""

    RELAY_ARGS = []
    TUNNEL_OPTIONS = []

    def __init__(self, tunnels, netns_relay=None, netns_agent=None, relay_ip="127.0.0.1"):
        self.dir = tempfile.TemporaryDirectory(prefix="burrow-bench-")
        data = Path(self.dir.name)
        self.relay = Process(
            [str(BIN / "relay"), "--listen", f"{relay_ip}:0", "--public-bind", "127.0.0.1", "--admin-listen", "off",
             "--data-dir", str(data / "relay")] + self.RELAY_ARGS,
            env={"RUST_LOG": "warn", **ONE_ADDRESS_LOAD}, netns=netns_relay, quiet=True, ready_file=True,
        )
        relay = self.relay.ready()
        port = port_of(relay["quic"])
        fingerprint, token = relay["fingerprint"], relay["token"]
        config = data / "agent.toml"
        lines = [f'relay = "{relay_ip}:{port}"', f'fingerprint = "{fingerprint}"']
        for name, local in tunnels.items():
            lines += ["[[tunnels]]", f'name = "{name}"', f"local = {local}"]
            lines += [option.format(name=name) for option in self.TUNNEL_OPTIONS]
        config.write_text("\n".join(lines) + "\n")
        self.agent = Process([str(BIN / "agent"), "--config", str(config)],
                             env={"BURROW_TOKEN": token, "RUST_LOG": "warn"}, netns=netns_agent,
                             quiet=True, ready_file=True)
        online = self.agent.ready(until=lambda ready: {t["name"] for t in ready["tunnels"]} >= set(tunnels))
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


# --- measurements -------------------------------------------------------------------------


def iperf(port, seconds, reverse=False, parallel=1, retries=1):
    """Throughput in Gbit/s of iperf3 against 127.0.0.1:port. A run whose control connection
    fails is tried again once, and said so: on a busy machine that happens now and then."""
    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J", "-P", str(parallel)]
    if reverse:
        argv.append("-R")
    out = json.loads(subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout)
    if "error" in out:
        if not retries:
            raise RuntimeError(f"iperf3 against port {port} failed: {out['error']}")
        print(f"iperf3 against port {port} failed ({out['error']}); trying again", file=sys.stderr, flush=True)
        time.sleep(2)
        return iperf(port, seconds, reverse, parallel, retries - 1)
    return out["end"]["sum_received"]["bits_per_second"] / 1e9


def wrk(port, path, seconds, pids=(), host=None):
    """req/s, p50 and p99 latency (ms), and CPU per request (µs) of `pids` under wrk -t2 -c50;
    `host` replaces the Host header (an HTTP tunnel's name)."""
    argv = ["wrk", "-t2", "-c50", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}{path}"]
    if host:
        argv += ["-H", f"Host: {host}"]
    before = sum(cpu_seconds(p) for p in pids)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    cpu = sum(cpu_seconds(p) for p in pids) - before
    total = int(re.search(r"(\d+) requests in", out).group(1))
    if total == 0:
        raise RuntimeError(f"wrk completed no request against port {port}{path}:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors", out)
    if errors:
        raise RuntimeError(f"wrk saw errors: {out}")
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": wrk_latency(out, "50%"),
        "p99_ms": wrk_latency(out, "99%"),
        "cpu_us_per_req": cpu / total * 1e6 if pids else None,
    }


def wrk_latency(out, percentile):
    value, unit = re.search(rf"{percentile}\s+([\d.]+)(us|ms|s)", out).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def request(host="bench"):
    return f"GET /1k HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def read_response(sock):
    """Reads one /1k response (headers + 1024-byte body)."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 1024:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed mid-response")
        data += chunk


def sequential_connects(port, count):
    """p50 and p99 (ms) of connect + request + full response, one new connection at a time."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request())
            read_response(sock)
        times.append((time.perf_counter() - started) * 1e3)
    return percentiles(times)


def percentiles(samples):
    ordered = sorted(samples)
    return {"p50_ms": statistics.median(ordered), "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]}


def held_connections_rss(port, count, pids, host="bench"):
    """RSS (MiB) of each pid with `count` open, verified connections through the tunnel."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(request(host))
            socks.append(sock)
        for sock in socks:
            read_response(sock)
        # Steady state: the connections are held idle, and freed transfer memory has been
        # returned (the allocator purges after 1 s).
        time.sleep(HOLD_SETTLE)
        return [rss_mib(p) for p in pids]
    finally:
        for sock in socks:
            sock.close()


# --- one run --------------------------------------------------------------------------------


def measure_path(r, label, args, http_port, iperf_port, pids=()):
    """Every throughput and latency figure against the given ports, keyed `<figure>_<label>`."""
    r[f"iperf_up_gbps_{label}"] = iperf(iperf_port, args.seconds)
    r[f"iperf_down_gbps_{label}"] = iperf(iperf_port, args.seconds, reverse=True)
    r[f"iperf_p4_gbps_{label}"] = iperf(iperf_port, args.seconds, parallel=4)
    measure_wrk(r, label, args, http_port, pids)
    for key, value in sequential_connects(http_port, args.connects).items():
        r[f"connect_{key}_{label}"] = value


def measure_wrk(r, label, args, port, pids, host=None):
    for size in ("1k", "1m"):
        for key, value in wrk(port, f"/{size}", args.seconds, pids, host).items():
            if value is not None:
                r[f"http_{size}_{key}_{label}"] = value


def measure_relay_memory(r, label, args, relay, port, host="bench"):
    """The relay's RSS with `args.held` open connections, and what each adds to the idle RSS
    read before the load."""
    held = held_connections_rss(port, args.held, [relay], host)[0]
    r[f"relay_rss_held_mib_{label}"] = held
    r[f"relay_kib_per_held_connection_{label}"] = (held - r[f"relay_rss_idle_mib_{label}"]) * 1024 / args.held


def run_once(args, http_port, iperf_port, systems):
    r = {}
    measure_path(r, "direct", args, http_port, iperf_port)
    for name, start in systems.items():
        system = start({"http": http_port, "iperf": iperf_port})
        try:
            r[f"relay_rss_idle_mib_{name}"] = rss_mib(system.pids[0])
            measure_path(r, name, args, system.public["http"], system.public["iperf"], system.pids)
            measure_relay_memory(r, name, args, system.pids[0], system.public["http"])
        finally:
            system.stop()
        if name == "burrow" and args.http_tunnel:
            measure_http_tunnel(r, args, http_port)
    return r


def measure_http_tunnel(r, args, http_port):
    """The wrk and relay memory figures through an HTTP tunnel, keyed `<figure>_burrow_http`.
    No iperf: an HTTP tunnel carries HTTP, not raw TCP."""
    system = BurrowHttp({"web": http_port})
    try:
        port, host = system.public["web"], system.host("web")
        r["relay_rss_idle_mib_burrow_http"] = rss_mib(system.relay.pid)
        measure_wrk(r, "burrow_http", args, port, system.pids, host)
        measure_relay_memory(r, "burrow_http", args, system.relay.pid, port, host)
    finally:
        system.stop()


def medians(runs):
    keys = runs[0].keys()
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs to take medians over (default 3)")
    parser.add_argument("--seconds", type=int, default=5, help="duration of each iperf3/wrk measurement")
    parser.add_argument("--connects", type=int, default=200, help="sequential new connections per run")
    parser.add_argument("--held", type=int, default=1000, help="open connections for the memory figure")
    parser.add_argument("--peers", action="store_true", help="also measure bore and rathole (bench/run installs them)")
    parser.add_argument("--no-burst", action="store_true", help="skip the burst over a 50 ms RTT link")
    parser.add_argument("--no-http-tunnel", dest="http_tunnel", action="store_false",
                        help="skip the HTTP tunnel (wrk through the relay's shared HTTP port)")
    parser.add_argument("--out", default=str(RESULTS / "latest.json"))
    parser.add_argument("--bin-dir", default=str(RELEASE), help="directory holding relay and agent")
    args = parser.parse_args()
    global BIN
    BIN = Path(args.bin_dir)

    systems = {"burrow": Burrow}
    if args.peers:
        import peers

        systems.update(peers.SYSTEMS)
    http = Process([str(RELEASE / "bench-http"), "127.0.0.1:0"])
    http_port = int(http.line(r"listening on \S+:(\d+)").group(1))
    http.drain()
    iperf_port = free_port()
    iperf_server = Process(["iperf3", "-s", "-p", str(iperf_port)], quiet=True)
    wait_for_port(iperf_port)
    try:
        runs = []
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs} ...", file=sys.stderr, flush=True)
            runs.append(run_once(args, http_port, iperf_port, systems))
    finally:
        iperf_server.stop()
        http.stop()
    names = list(systems)
    if args.http_tunnel:
        names.insert(names.index("burrow") + 1, "burrow_http")
    result = {"machine": machine(), "systems": names, "runs": runs, "median": medians(runs),
              "settings": vars(args)}
    if not args.no_burst:
        import burst

        print("burst over a 50 ms RTT link ...", file=sys.stderr, flush=True)
        result["burst"] = burst.measure(args, {name: burst.starter(start) for name, start in systems.items()})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    import report

    report.write(result)
    print(json.dumps(result["median"], indent=2))


def machine():
    def version(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "unknown"

    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "rustc": version(["rustc", "--version"]),
        "iperf3": version(["iperf3", "--version"]),
        "wrk": version(["wrk", "--version"]),
        "date": time.strftime("%Y-%m-%d"),
    }


if __name__ == "__main__":
    main()
