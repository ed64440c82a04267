"""The results tables of BENCHMARKS.md, with every measured system beside burrow.

Each table has the columns direct | burrow TCP tunnel | burrow HTTP tunnel | burrow TCP tunnel
with the agent's links over TLS/TCP | rathole-tls | rathole-noise | bore, as far as the run
measured them; the comparison table sets burrow against rathole-tls and bore figure by figure,
and the head-of-line table the QUIC link against the TCP one.
"""

import statistics

COLUMN_ORDER = ("direct", "burrow", "burrow_http", "burrow_tcp", "rathole-tls", "rathole-noise", "bore")
HEADINGS = {"burrow": "burrow TCP tunnel", "burrow_http": "burrow HTTP tunnel",
            "burrow_tcp": "burrow TCP tunnel, link over TLS/TCP", "bore": "bore (plain)"}
SERVERS = (("http", "hyper"), ("nginx", "nginx"))


def fmt(value, digits=1):
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"


def columns(result):
    return [s for s in COLUMN_ORDER if s == "direct" or s in result["systems"]]


def figure(result, key, system):
    """The median of `key` for `system`: loopback figures, and those of the burst and lossy
    figures, which come from their own runs."""
    if key.startswith("burst_"):
        return ((result.get("burst") or {}).get(system) or {}).get(key[len("burst_"):])
    if key.startswith("lossy_"):
        return lossy_median(result.get("lossy"), system, key[len("lossy_"):])
    return result["median"].get(f"{key}_{system}")


def lossy_median(lossy, system, which):
    """The median Mbit/s of `which` ("one" or "eight") for `system` in bench/lossy.py's
    result, whose systems sit at its top level or under "systems": the median under
    "<which>_median_mbps", "<which>_median" or "median", else the median of the per-run
    values under "<which>_mbps" or "<which>" (a list, a number, or {"runs", "median"})."""
    if not isinstance(lossy, dict):
        return None
    entry = (lossy.get("systems") if isinstance(lossy.get("systems"), dict) else lossy).get(system)
    if not isinstance(entry, dict):
        return None
    medians = entry.get("median") or entry.get("medians")
    for value in (entry.get(f"{which}_median_mbps"), entry.get(f"{which}_median"),
                  medians.get(which) if isinstance(medians, dict) else None,
                  entry.get(f"{which}_mbps"), entry.get(which)):
        if isinstance(value, dict):
            value = value.get("median", value.get("runs"))
        if isinstance(value, list):
            value = statistics.median(value) if value else None
        if value is not None:
            return value
    return None


def row(result, label, key, digits=1, vs_direct=False, second=None):
    """One figure for every column; with `vs_direct`, each tunnel's cell shows its ratio to
    the direct connection; with `second`, cells read "first / second"."""
    direct = figure(result, key, "direct")
    cells = []
    for system in columns(result):
        value = figure(result, key, system)
        if value is None:
            cells.append("-")
        elif second is not None:
            cells.append(f"{fmt(value, digits)} / {fmt(figure(result, second, system), digits)}")
        elif vs_direct and system != "direct" and direct:
            cells.append(f"{fmt(value, digits)} ({value / direct:.2f}x)")
        else:
            cells.append(fmt(value, digits))
    if all(cell == "-" for cell in cells):
        return None
    return f"| {label} | " + " | ".join(cells) + " |"


def header(result):
    names = columns(result)
    return ["| figure | " + " | ".join(HEADINGS.get(s, s) for s in names) + " |", "|---|" + "---:|" * len(names)]


def loopback_table(result):
    rows = header(result) + [
        row(result, "iperf3 1 stream, visitor -> local (Gbit/s)", "iperf_up_gbps", 2, True),
        row(result, "iperf3 1 stream, local -> visitor (Gbit/s)", "iperf_down_gbps", 2, True),
        row(result, "iperf3 -P 4 (Gbit/s)", "iperf_p4_gbps", 2, True),
    ]
    for prefix, server in SERVERS:
        rows += [
            row(result, f"HTTP 1 KiB from {server}, wrk -t2 -c50 (req/s)", f"{prefix}_1k_rps", 0, True),
            row(result, f"HTTP 1 KiB from {server}, latency p50 / p99 (ms)", f"{prefix}_1k_p50_ms", 2,
                second=f"{prefix}_1k_p99_ms"),
            row(result, f"CPU per 1 KiB request from {server} (µs)", f"{prefix}_1k_cpu_us_per_req"),
            row(result, f"HTTP 1 MiB from {server} (req/s)", f"{prefix}_1m_rps", 0, True),
            row(result, f"HTTP 1 MiB from {server}, latency p50 / p99 (ms)", f"{prefix}_1m_p50_ms", 1,
                second=f"{prefix}_1m_p99_ms"),
            row(result, f"CPU per 1 MiB request from {server} (µs)", f"{prefix}_1m_cpu_us_per_req"),
        ]
    return "\n".join(r for r in rows if r)


def memory_table(result):
    held = result["settings"].get("held", 1000)
    return "\n".join(r for r in header(result) + [
        row(result, "new connection + 1 KiB response, sequential, p50 / p99 (ms)", "connect_p50_ms", 2,
            second="connect_p99_ms"),
        row(result, "relay RSS idle (MiB)", "relay_rss_idle_mib"),
        row(result, "relay peak RSS during the 1 MiB runs (MiB)", "relay_rss_peak_mib"),
        row(result, f"relay RSS with {held:,} open connections (MiB)", "relay_rss_held_mib"),
        row(result, "relay memory per open connection (KiB)", "relay_kib_per_held_connection"),
    ] if r)


def link_table(result):
    """The burst and lossy figures, or "" when the run measured neither."""
    burst = result.get("burst") or {}
    rows = []
    if "p99_ms" in (burst.get("burrow") or {}):
        rows.append(row(result, f"burst of {burst['burst']} new connections, {burst['rtt_ms']} ms RTT relay<->agent, "
                                "TTFB p50 / p99 (ms)", "burst_p50_ms", 1, second="burst_p99_ms"))
    if any(figure(result, "lossy_one", s) is not None for s in columns(result)):
        rows += [row(result, "1 visitor's download over 50 ms RTT + 1 % loss (Mbit/s)", "lossy_one", 1),
                 row(result, "8 visitors' downloads over the same link, in total (Mbit/s)", "lossy_eight", 1)]
    rows = [r for r in rows if r]
    return "\n".join(header(result) + rows) if rows else ""


# (label with unit, key, whether higher is better, digits) of the comparison table.
COMPARED = [
    ("iperf3 1 stream, visitor -> local (Gbit/s)", "iperf_up_gbps", True, 2),
    ("iperf3 1 stream, local -> visitor (Gbit/s)", "iperf_down_gbps", True, 2),
    ("iperf3 -P 4 (Gbit/s)", "iperf_p4_gbps", True, 2),
    *[entry for prefix, server in SERVERS for entry in (
        (f"HTTP 1 KiB from {server} (req/s)", f"{prefix}_1k_rps", True, 0),
        (f"HTTP 1 KiB from {server}, p99 (ms)", f"{prefix}_1k_p99_ms", False, 2),
        (f"CPU per 1 KiB request from {server} (µs)", f"{prefix}_1k_cpu_us_per_req", False, 1),
        (f"HTTP 1 MiB from {server} (req/s)", f"{prefix}_1m_rps", True, 0),
        (f"CPU per 1 MiB request from {server} (µs)", f"{prefix}_1m_cpu_us_per_req", False, 0))],
    ("new connection + 1 KiB response, p50 (ms)", "connect_p50_ms", False, 2),
    ("relay RSS idle (MiB)", "relay_rss_idle_mib", False, 1),
    ("relay peak RSS during the 1 MiB runs (MiB)", "relay_rss_peak_mib", False, 1),
    ("relay memory per open connection (KiB)", "relay_kib_per_held_connection", False, 1),
    ("burst TTFB p99 at 50 ms RTT (ms)", "burst_p99_ms", False, 1),
    ("lossy, 1 visitor (Mbit/s)", "lossy_one", True, 1),
    ("lossy, 8 visitors in total (Mbit/s)", "lossy_eight", True, 1),
]


def comparison_table(result):
    """burrow's TCP tunnel (and its HTTP tunnel where it has the figure) as a ratio to
    rathole-tls and to bore; "" without peers."""
    peers = [p for p in ("rathole-tls", "bore") if p in result["systems"]]
    if not peers:
        return ""
    rows = ["| figure | better | burrow | " + " | ".join(peers) + " | "
            + " | ".join(f"burrow / {p}" for p in peers) + " |",
            "|---|---|---:|" + "---:|" * (2 * len(peers))]
    for label, key, higher, digits in COMPARED:
        for system, prefix in (("burrow", ""), ("burrow_http", "HTTP tunnel: "), ("burrow_tcp", "link over TCP: ")):
            ours = figure(result, key, system)
            if ours is None or (system == "burrow_http" and not key.startswith(("http_", "nginx_", "relay_rss_peak"))):
                continue
            theirs = [figure(result, key, p) for p in peers]
            ratios = [f"{ours / t:.2f}x" if t else "-" for t in theirs]
            rows.append(f"| {prefix}{label} | {'higher' if higher else 'lower'} | {fmt(ours, digits)} | "
                        + " | ".join(fmt(t, digits) for t in theirs) + " | " + " | ".join(ratios) + " |")
    return "\n".join(rows)


def http_against_tcp(result):
    """One sentence setting the HTTP tunnel beside the TCP tunnel of the same run."""
    m = result["median"]
    parts = []
    for prefix, server in SERVERS:
        for size, label in (("1k", "1 KiB"), ("1m", "1 MiB")):
            keys = [f"{prefix}_{size}_{k}_{s}" for k in ("rps", "cpu_us_per_req") for s in ("burrow_http", "burrow")]
            if all(k in m for k in keys):
                rps, cpu = m[keys[0]] / m[keys[1]], m[keys[2]] / m[keys[3]]
                parts.append(f"{label} requests from {server} at {rps:.2f}x its req/s and {cpu:.2f}x its CPU per request")
    if not parts:
        return ""
    return "Against the TCP tunnel in the same run, the HTTP tunnel serves " + "; ".join(parts) + "."


def hol_table(hol):
    """bench/hol.py's figure: the interactive visitor's round trip beside bulk downloads, one
    row per system; "" when it did not run."""
    systems = (hol or {}).get("systems") if isinstance(hol, dict) else None
    if not systems:
        return ""
    settings = hol["settings"]
    rows = [f"| system | alone, p50 (ms) | beside {settings['bulk_visitors']} downloads: p50 / p99 / max (ms) "
            f"| all runs pooled: p99 / max (ms) | downloads in total (Mbit/s) |", "|---|---:|---:|---:|---:|"]
    names = {"burrow": "burrow, link over QUIC", "burrow_tcp": "burrow, link over TLS/TCP"}
    for name in COLUMN_ORDER:
        s = systems.get(name)
        if s is None:
            continue
        pooled = s["pooled"]
        rows.append(f"| {names.get(name, name)} | {fmt(s['idle_p50_ms'])} | {fmt(s['loaded_p50_ms'])} / "
                    f"{fmt(s['loaded_p99_ms'])} / {fmt(s['loaded_max_ms'])} | {fmt(pooled['p99_ms'])} / "
                    f"{fmt(pooled['max_ms'])} | {fmt(s['bulk_mbps'])} |")
    return "\n".join(rows)
