"""One run of the harness: every loopback figure, directly and through every system.

Figures are keyed `<figure>_<label>`, the label being "direct" or a system's name. The HTTP
figures carry their server in the key: `http_<size>_*` against bench-http (hyper), and
`nginx_<size>_*` against nginx.
"""

import sys
import time

from load import held_connections_rss, iperf, sequential_connects, wrk
from procstat import PeakRss, rss_mib

# The servers behind the tunnels, as (figure name, key prefix); the figure name is also the
# tunnel's name, so a system reaches server `name` at `system.public[name]`.
HTTP_SERVERS = (("http", "http"), ("nginx", "nginx"))
SIZES = ("1k", "1m")


def measure_path(r, label, args, ports, pids=(), relay=None, hosts=None):
    """Every throughput and latency figure of `args.only` against `ports` (tunnel name ->
    port). `relay` is the process whose peak RSS is taken during the 1 MiB runs; `hosts`
    (tunnel name -> Host header) routes an HTTP tunnel's requests."""
    if "iperf" in args.only and "iperf" in ports:
        r[f"iperf_up_gbps_{label}"] = iperf(ports["iperf"], args.seconds)
        r[f"iperf_down_gbps_{label}"] = iperf(ports["iperf"], args.seconds, reverse=True)
        r[f"iperf_p4_gbps_{label}"] = iperf(ports["iperf"], args.seconds, parallel=4)
    for server, prefix in HTTP_SERVERS:
        if server in args.only and server in ports:
            host = (hosts or {}).get(server)
            measure_wrk(r, f"{prefix}_", label, args, ports[server], pids, relay, host)
    peaks = [r[k] for k in (f"relay_rss_peak_1m_{p}_mib_{label}" for _, p in HTTP_SERVERS) if k in r]
    if peaks:
        r[f"relay_rss_peak_mib_{label}"] = max(peaks)
    if "connect" in args.only and "http" in ports and not hosts:
        try:
            connects = sequential_connects(ports["http"], args.connects)
        except OSError as error:
            raise RuntimeError(f"{args.connects} sequential connections: {error}") from error
        for key, value in connects.items():
            r[f"connect_{key}_{label}"] = value


def measure_wrk(r, prefix, label, args, port, pids, relay, host):
    for size in SIZES:
        if size == "1m" and relay is not None:
            with PeakRss(relay) as peak:
                figures = wrk(port, f"/{size}", args.seconds, pids, host)
            r[f"relay_rss_peak_1m_{prefix}mib_{label}"] = peak.mib
        else:
            figures = wrk(port, f"/{size}", args.seconds, pids, host)
        for key, value in figures.items():
            if value is not None:
                r[f"{prefix}{size}_{key}_{label}"] = value


def measure_relay_memory(r, label, args, relay, port, host="bench"):
    """The relay's RSS with `args.held` open connections, and what each adds to the idle RSS
    read before the load."""
    if "memory" not in args.only:
        return
    try:
        held = held_connections_rss(port, args.held, [relay], host)[0]
    except OSError as error:
        raise RuntimeError(f"holding {args.held} connections: {error}") from error
    r[f"relay_rss_held_mib_{label}"] = held
    r[f"relay_kib_per_held_connection_{label}"] = (held - r[f"relay_rss_idle_mib_{label}"]) * 1024 / args.held


def run_once(args, ports, systems, http_tunnel=None):
    """`systems` maps a name to a class started with the tunnels `ports`; `http_tunnel`, when
    given, is burrow's HTTP tunnel class, measured right after burrow."""
    r = {}
    if "direct" in args.systems:
        guarded(r, "direct", lambda: measure_path(r, "direct", args, ports))
    for name, start in systems.items():
        if name not in args.systems:
            continue
        guarded(r, name, lambda: measure_system(r, name, args, ports, start))
        if name == "burrow" and http_tunnel is not None:
            guarded(r, "burrow_http", lambda: measure_http_tunnel(r, args, ports, http_tunnel))
    return r


def guarded(r, name, measure):
    """Runs one system's figures; a failure is reported and listed under the run's "errors"
    (the figures it has are kept, and the medians come from the other runs), so that one
    overloaded moment does not throw the whole run away."""
    print(f"  {time.strftime('%H:%M:%S')} {name}", file=sys.stderr, flush=True)
    try:
        measure()
    except Exception as error:  # noqa: BLE001 - reported and recorded, see above
        print(f"  {name} failed: {error}", file=sys.stderr, flush=True)
        r.setdefault("errors", {})[name] = str(error)[-2000:]


def measure_system(r, name, args, ports, start):
    system = start(ports)
    try:
        relay = system.pids[0]
        r[f"relay_rss_idle_mib_{name}"] = rss_mib(relay)
        measure_path(r, name, args, system.public, system.pids, relay)
        measure_relay_memory(r, name, args, relay, system.public["http"])
    finally:
        system.stop()


def measure_http_tunnel(r, args, ports, http_tunnel):
    """The wrk and relay memory figures through burrow's HTTP tunnels (one per HTTP server),
    keyed `<figure>_burrow_http`. No iperf: an HTTP tunnel carries HTTP, not raw TCP."""
    label = "burrow_http"
    system = http_tunnel({server: ports[server] for server, _ in HTTP_SERVERS if server in ports})
    try:
        relay = system.relay.pid
        hosts = {name: system.host(name) for name in system.public}
        r[f"relay_rss_idle_mib_{label}"] = rss_mib(relay)
        measure_path(r, label, args, system.public, system.pids, relay, hosts)
        measure_relay_memory(r, label, args, relay, system.public["http"], hosts["http"])
    finally:
        system.stop()
