"""The loads the harness puts through each path (iperf3, wrk, raw sockets), and what they
measure. Every load is bounded in count and time."""

import json
import re
import socket
import statistics
import subprocess
import sys
import time

from procstat import cpu_seconds, rss_mib

# Held connections are read after this long idle: freed transfer memory has been returned by
# then (the allocator purges after 1 s).
HOLD_SETTLE = 2.0


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
    # wrk's default 2 s timeout cuts 1 MiB responses short when other processes share the cores;
    # a response still missing after 10 s is counted (`timeouts`), and the run goes on.
    argv = ["wrk", "-t2", "-c50", f"-d{seconds}s", "--timeout", "10s", "--latency", f"http://127.0.0.1:{port}{path}"]
    if host:
        argv += ["-H", f"Host: {host}"]
    before = sum(cpu_seconds(p) for p in pids)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    cpu = sum(cpu_seconds(p) for p in pids) - before
    total = int(re.search(r"(\d+) requests in", out).group(1))
    if total == 0:
        raise RuntimeError(f"wrk completed no request against port {port}{path}:\n{out}")
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    broken = socket_errors and any(int(n) for n in socket_errors.groups()[:3])
    if broken or re.search(r"Non-2xx or 3xx responses", out):
        raise RuntimeError(f"wrk saw errors: {out}")
    if socket_errors:
        print(f"wrk: {socket_errors.group(4)} responses from port {port}{path} took over 10 s", file=sys.stderr, flush=True)
    return {
        "timeouts": int(socket_errors.group(4)) if socket_errors else 0,
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
