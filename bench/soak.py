#!/usr/bin/env python3
"""Soak: one relay and one agent (release builds) under steady mixed load for N minutes.

The load: short connections at a steady rate (connect, a small echo, close), a few
long-lived interactive connections making a small round trip every second, and a bulk
transfer every 30 s (20 MB each way, checked by SHA-256). Every 10 s it samples the relay's
and the agent's memory (VmRSS), open descriptors and threads, and from the relay's /metrics
the open visitors and, when the relay exports it, its runtime task count. It writes
bench/results/soak/soak-<time>.csv and prints, for each figure, its value at the end of
warm-up, at the end and at most, and a FLAT or GROWING verdict (rule in `verdict`). It exits
non-zero on any failed connection, wrong byte, figure not judged FLAT, or visitor left open
after the load stops. Run it with `bench/soak`; `--record` also writes the summary into
BENCHMARKS.md.
"""

import argparse
import csv
import hashlib
import os
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import harness

OUT = harness.RESULTS / "soak"
BENCHMARKS = harness.ROOT / "BENCHMARKS.md"
START, END = "<!-- soak: written by bench/soak.py --record -->", "<!-- end of soak -->"
# Figures judged for growth, with the absolute slack each may grow by on top of 10%:
# allocator pages, a few descriptors or threads in use at the moment of a sample.
FIGURES = {
    "relay_rss_mib": 1.0,
    "relay_fds": 4,
    "relay_threads": 2,
    "agent_rss_mib": 1.0,
    "agent_fds": 4,
    "agent_threads": 2,
    "relay_visitors": 4,
    "relay_runtime_tasks": 16,
}
LOAD = ("short", "interactive", "bulk")
OUTCOMES = ("ok", "failed", "corrupt")
WARM_UP_MAX_S = 120


class Corrupt(Exception):
    """Bytes came back different from those sent."""


def recv_exact(sock, size):
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


# --- local servers ----------------------------------------------------------------------------


class Server:
    """A loopback TCP server running `handler(conn)` on a thread per connection."""

    def __init__(self, handler):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        with conn:
            try:
                self.handler(conn)
            except OSError:
                pass  # the client's failure is what the load counts

    def close(self):
        self.sock.close()


def echo(conn):
    while data := conn.recv(65536):
        conn.sendall(data)


def bulk(conn):
    """Reads a length and that many bytes, answers their SHA-256, then sends as many fresh
    bytes followed by their SHA-256."""
    size = int.from_bytes(recv_exact(conn, 8), "big")
    received = hashlib.sha256()
    remaining = size
    while remaining:
        chunk = conn.recv(min(remaining, 1 << 20))
        if not chunk:
            return
        received.update(chunk)
        remaining -= len(chunk)
    conn.sendall(received.digest())
    payload = os.urandom(size)
    conn.sendall(payload)
    conn.sendall(hashlib.sha256(payload).digest())


# --- load -------------------------------------------------------------------------------------


class Load:
    """Threads making each kind of traffic until stopped, counting every outcome."""

    def __init__(self, args, public):
        self.args, self.public = args, public
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = {(kind, outcome): 0 for kind in LOAD for outcome in OUTCOMES}
        self.latencies = {kind: [] for kind in LOAD}  # ms, since the last sample
        self.all_latencies = {kind: [] for kind in LOAD}
        self.first_errors = []
        targets = [self.short_connections, self.bulk_transfers]
        targets += [self.interactive] * args.interactive
        self.threads = [threading.Thread(target=t, daemon=True) for t in targets]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)

    def record(self, kind, outcome, ms=None, error=None):
        with self.lock:
            self.counts[(kind, outcome)] += 1
            if ms is not None:
                self.latencies[kind].append(ms)
                self.all_latencies[kind].append(ms)
            if error and len(self.first_errors) < 10:
                self.first_errors.append(f"{time.strftime('%H:%M:%S')} {kind}: {error}")

    def attempt(self, kind, action):
        started = time.perf_counter()
        try:
            action()
        except Corrupt as e:
            self.record(kind, "corrupt", error=e)
            return False
        except OSError as e:  # includes timeouts and refused or reset connections
            self.record(kind, "failed", error=repr(e))
            return False
        self.record(kind, "ok", ms=(time.perf_counter() - started) * 1e3)
        return True

    def take_latencies(self):
        with self.lock:
            taken = self.latencies
            self.latencies = {kind: [] for kind in LOAD}
        return taken

    def short_connections(self):
        period = 1 / self.args.rate
        due = time.monotonic()
        while not self.stop.wait(max(0.0, due - time.monotonic())):
            # Behind schedule, it carries on at the rate rather than bursting to catch up.
            due = max(due + period, time.monotonic())
            self.attempt("short", self.one_short)

    def one_short(self):
        message = os.urandom(64)
        with socket.create_connection(("127.0.0.1", self.public["echo"]), timeout=10) as sock:
            sock.sendall(message)
            if recv_exact(sock, len(message)) != message:
                raise Corrupt("echo differs")

    def interactive(self):
        sock = None
        while not self.stop.wait(self.args.interactive_every):
            if sock is None:
                try:
                    sock = socket.create_connection(("127.0.0.1", self.public["echo"]), timeout=10)
                except OSError as e:
                    self.record("interactive", "failed", error=repr(e))
                    continue
            if not self.attempt("interactive", lambda: self.round_trip(sock)):
                sock.close()
                sock = None
        if sock is not None:
            sock.close()

    @staticmethod
    def round_trip(sock):
        message = os.urandom(32)
        sock.sendall(message)
        if recv_exact(sock, len(message)) != message:
            raise Corrupt("echo differs")

    def bulk_transfers(self):
        while not self.stop.wait(self.args.bulk_every):
            self.attempt("bulk", self.one_bulk)

    def one_bulk(self):
        size = self.args.bulk_mb * 1_000_000
        payload = os.urandom(size)
        with socket.create_connection(("127.0.0.1", self.public["bulk"]), timeout=60) as sock:
            sock.sendall(size.to_bytes(8, "big"))
            sock.sendall(payload)
            if recv_exact(sock, 32) != hashlib.sha256(payload).digest():
                raise Corrupt("upload hash differs")
            received = hashlib.sha256()
            remaining = size
            while remaining:
                chunk = sock.recv(min(remaining, 1 << 20))
                if not chunk:
                    raise ConnectionError(f"download closed with {remaining} bytes to go")
                received.update(chunk)
                remaining -= len(chunk)
            if recv_exact(sock, 32) != received.digest():
                raise Corrupt("download hash differs")


# --- relay and agent --------------------------------------------------------------------------


class System:
    """A relay with its admin endpoint on loopback, and an agent exposing the given ports."""

    def __init__(self, tunnels):
        self.dir = tempfile.TemporaryDirectory(prefix="burrow-soak-")
        data = Path(self.dir.name)
        self.relay = harness.Process(
            [str(harness.RELEASE / "relay"), "--listen", "127.0.0.1:0", "--public-bind", "127.0.0.1",
             "--admin-listen", "127.0.0.1:0", "--data-dir", str(data / "relay")],
            env={"RUST_LOG": "warn"}, quiet=True, ready_file=True,
        )
        self.agent = None
        try:
            relay = self.relay.ready()
            port = harness.port_of(relay["quic"])
            fingerprint, token = relay["fingerprint"], relay["token"]
            self.admin = f"http://{relay['admin']}/metrics"
            config = data / "agent.toml"
            lines = [f'relay = "127.0.0.1:{port}"', f'fingerprint = "{fingerprint}"']
            for name, local in tunnels.items():
                lines += ["[[tunnels]]", f'name = "{name}"', f"local = {local}"]
            config.write_text("\n".join(lines) + "\n")
            self.agent = harness.Process([str(harness.RELEASE / "agent"), "--config", str(config)],
                                         env={"BURROW_TOKEN": token, "RUST_LOG": "warn"}, quiet=True, ready_file=True)
            online = self.agent.ready(until=lambda ready: {t["name"] for t in ready["tunnels"]} >= set(tunnels))
            self.public = {t["name"]: t["port"] for t in online["tunnels"]}
        except BaseException:
            self.stop()
            raise

    def metrics(self):
        """The relay's open visitors, and its runtime tasks when it exports them."""
        with urllib.request.urlopen(self.admin, timeout=5) as response:
            page = response.read().decode()
        return {"relay_visitors": metric(page, "burrow_visitors"),
                "relay_runtime_tasks": metric(page, "burrow_runtime_tasks")}

    def stop(self):
        if self.agent:
            self.agent.stop()
        self.relay.stop()
        self.dir.cleanup()


def metric(page, name):
    """The sum of a metric's samples over its label sets, or None if the page lacks it."""
    pattern = re.compile(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    values = [float(v) for v in pattern.findall(page)]
    return sum(values) if values else None


def process_figures(pid, prefix):
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    return {
        f"{prefix}_rss_mib": round(int(status["VmRSS"].split()[0]) / 1024, 2),
        f"{prefix}_fds": len(os.listdir(f"/proc/{pid}/fd")),
        f"{prefix}_threads": int(status["Threads"]),
    }


# --- sampling and the verdict -----------------------------------------------------------------


def sample(system, load, started):
    row = {"t_s": round(time.monotonic() - started, 1)}
    row.update(process_figures(system.relay.pid, "relay"))
    row.update(process_figures(system.agent.pid, "agent"))
    row.update(system.metrics())
    latencies = load.take_latencies()
    row["short_p99_ms"] = rounded(p99(latencies["short"]))
    row["interactive_max_ms"] = rounded(max(latencies["interactive"], default=None))
    with load.lock:
        for (kind, outcome), count in load.counts.items():
            row[f"{kind}_{outcome}"] = count
    return row


def rounded(value):
    return None if value is None else round(value, 2)


def p99(values):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def verdict(values, warm_up, slack):
    """FLAT unless the median of the last half after warm-up exceeds the median of the first
    half after warm-up by more than 10% plus `slack`. Medians, so a bulk transfer caught in
    one sample does not decide it."""
    settled = values[warm_up:]
    if len(settled) < 4:
        return "TOO SHORT", None, None
    middle, last = statistics.median(settled[: len(settled) // 2]), statistics.median(settled[len(settled) // 2:])
    return ("GROWING" if last > middle * 1.10 + slack else "FLAT"), middle, last


def summary(rows, args, latencies, left_open):
    """The per-figure table and load totals as lines, and whether anything went wrong."""
    # Warm-up: the first third of the run, at most two minutes.
    warm_up = max(1, round(min(WARM_UP_MAX_S, args.minutes * 60 / 3) / args.sample_every))
    lines = [f"soak: {args.minutes:g} min, {len(rows)} samples every {args.sample_every:g} s, "
             f"warm-up {warm_up * args.sample_every:g} s",
             f"{'figure':<22}{'warm-up end':>12}{'end':>10}{'max':>10}{'median mid':>12}{'median last':>12}  verdict"]
    bad = left_open != 0
    for name, slack in FIGURES.items():
        values = [r[name] for r in rows if r.get(name) is not None]
        if not values:
            lines.append(f"{name:<22}{'(not exported)':>12}")
            continue
        judged, middle, last = verdict(values, warm_up, slack)
        bad |= judged != "FLAT"
        lines.append(f"{name:<22}{fmt(values[min(warm_up, len(values)) - 1]):>12}{fmt(values[-1]):>10}"
                     f"{fmt(max(values)):>10}{fmt(middle):>12}{fmt(last):>12}  {judged}")
    for kind in LOAD:
        ok, failed, corrupt = (rows[-1][f"{kind}_{o}"] for o in OUTCOMES)
        bad |= failed + corrupt > 0
        ms = sorted(latencies[kind])
        timing = f"p50 {fmt(statistics.median(ms))} / p99 {fmt(p99(ms))} / max {fmt(ms[-1])} ms" if ms else ""
        lines.append(f"{kind:<12} {ok:>7} ok {failed:>5} failed {corrupt:>5} wrong bytes   {timing}".rstrip())
    lines.append(f"open visitors once the load stopped: {fmt(left_open)}")
    return lines, bad


def fmt(value):
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) and not value.is_integer() else f"{value:.0f}"


def visitors_drain(system, timeout=10):
    """Open visitors once the load has stopped, waiting up to `timeout` for them to reach 0."""
    deadline = time.monotonic() + timeout
    while True:
        visitors = system.metrics()["relay_visitors"]
        if visitors == 0 or time.monotonic() > deadline:
            return visitors
        time.sleep(0.1)


def run(args, out):
    """Runs the load for the given minutes, writing each sample to `out` as it is taken.
    Returns the samples, the load (for its totals) and the visitors left open at the end."""
    servers = {"echo": Server(echo), "bulk": Server(bulk)}
    system = System({name: server.port for name, server in servers.items()})
    load = Load(args, system.public)
    rows = []
    try:
        started = time.monotonic()
        load.start()
        with out.open("w", newline="") as f:
            writer = None
            for i in range(1, int(args.minutes * 60 / args.sample_every) + 1):
                time.sleep(max(0.0, started + i * args.sample_every - time.monotonic()))
                rows.append(sample(system, load, started))
                if writer is None:
                    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                    writer.writeheader()
                writer.writerow(rows[-1])
                f.flush()
                print(f"{rows[-1]['t_s']:>6.0f} s  relay {rows[-1]['relay_rss_mib']:.1f} MiB, "
                      f"{rows[-1]['relay_visitors']:.0f} visitors", file=sys.stderr, flush=True)
        load.finish()
        return rows, load, visitors_drain(system)
    finally:
        load.stop.set()
        system.stop()
        for server in servers.values():
            server.close()


def record(lines, out, command):
    """Puts the summary into BENCHMARKS.md's soak section."""
    text = BENCHMARKS.read_text()
    if START not in text or END not in text:
        raise RuntimeError(f"BENCHMARKS.md lacks the {START} ... {END} markers")
    where = out.relative_to(harness.ROOT) if out.is_relative_to(harness.ROOT) else out
    block = (f"{START}\nMeasured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores with `{command}`; "
             f"samples in `{where}`.\n\n```\n" + "\n".join(lines) + f"\n```\n{END}")
    head, rest = text.split(START, 1)
    BENCHMARKS.write_text(head + block + rest.split(END, 1)[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--sample-every", type=float, default=10, help="seconds between samples (default 10)")
    parser.add_argument("--rate", type=float, default=20, help="short connections per second (default 20)")
    parser.add_argument("--interactive", type=int, default=8, help="long-lived connections (default 8)")
    parser.add_argument("--interactive-every", type=float, default=1, help="seconds between their round trips")
    parser.add_argument("--bulk-mb", type=int, default=20, help="MB each way per bulk transfer (default 20)")
    parser.add_argument("--bulk-every", type=float, default=30, help="seconds between bulk transfers (default 30)")
    parser.add_argument("--out", help="CSV path (default bench/results/soak/soak-<time>.csv)")
    parser.add_argument("--record", action="store_true", help="write the summary into BENCHMARKS.md")
    args = parser.parse_args()
    out = Path(args.out or OUT / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.csv").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)

    rows, load, left_open = run(args, out)
    if not rows:
        print("no samples taken: run for at least one sampling interval", file=sys.stderr)
        return 1
    lines, bad = summary(rows, args, load.all_latencies, left_open)
    print("\n" + "\n".join(lines))
    for error in load.first_errors:
        print(f"  {error}")
    print(f"samples: {out}")
    if args.record:
        changed = [f"--{k.replace('_', '-')} {v:g}" for k, v in vars(args).items()
                   if k not in ("out", "record") and v != parser.get_default(k)]
        record(lines, out, " ".join(["bench/soak"] + changed))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
