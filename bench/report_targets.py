"""The targets block of BENCHMARKS.md: each target of issue 13 computed from the ratios of the
same run, marked met or not met, and by how much."""

from report_tables import SERVERS, figure


class Targets:
    def __init__(self, result):
        self.result = result
        self.lines = []
        self.peers_missing = set()

    def value(self, key, system="burrow"):
        return figure(self.result, key, system)

    def missing(self, text, why):
        self.lines.append(f"- not measured: {text} ({why})")

    def why_missing(self, key):
        if key.startswith("lossy_") and not self.result.get("lossy"):
            return "the lossy figure did not run: bench/lossy.py absent, no root, or left out by --only"
        if key.startswith("burst_") and not self.result.get("burst"):
            return "the burst figure did not run: no root, or left out by --only"
        return "not in this run's figures"

    def verdict(self, met, text, margin):
        self.lines.append(f"- {'met' if met else '**not met**'}: {text}; {margin}")

    def ratio(self, text, key, peer, target, higher=True, unit="", system="burrow"):
        """`system`'s `key` against `peer`'s: at least `target` times it when `higher`, at most
        when not."""
        if peer not in self.result["systems"]:
            self.peers_missing.add(peer)
            return
        ours, theirs = self.value(key, system), self.value(key, peer)
        if ours is None or theirs is None or not theirs:
            self.missing(text, self.why_missing(key))
            return
        ratio = ours / theirs
        met = ratio >= target if higher else ratio <= target
        bound = "at least" if higher else "at most"
        body = (f"{text}: {fmt_value(ours, unit)} against {peer}'s {fmt_value(theirs, unit)} = {ratio:.2f}x "
                f"(target {bound} {target:.2f}x)")
        gap = ratio / target - 1
        if met:
            margin = f"by {abs(gap):.0%}"
        else:
            margin = f"{abs(gap):.0%} {'short' if higher else 'over'}"
        self.verdict(met, body, margin)

    def bound(self, text, key, limit, unit, strict=False, system="burrow"):
        """burrow's `key` at most `limit` (below it when `strict`)."""
        ours = self.value(key, system)
        if ours is None:
            self.missing(text, self.why_missing(key))
            return
        met = ours < limit if strict else ours <= limit
        word = "under" if strict else "at most"
        margin = f"{abs(limit - ours):.1f} {unit} {'to spare' if met else 'over'}"
        self.verdict(met, f"{text}: {ours:.1f} {unit} (target {word} {limit:g} {unit})", margin)


def fmt_value(value, unit):
    text = f"{value:,.0f}" if abs(value) >= 100 or unit == "req/s" else f"{value:.2f}"
    return f"{text} {unit}".rstrip()


def targets(result):
    t = Targets(result)
    t.ratio("iperf3 1 stream, visitor -> local", "iperf_up_gbps", "rathole-tls", 1.25, unit="Gbit/s")
    t.ratio("iperf3 1 stream, local -> visitor", "iperf_down_gbps", "rathole-tls", 1.25, unit="Gbit/s")
    t.ratio("iperf3 -P 4", "iperf_p4_gbps", "rathole-tls", 1.25, unit="Gbit/s")
    for prefix, server in SERVERS:
        t.ratio(f"HTTP 1 KiB from {server}", f"{prefix}_1k_rps", "rathole-tls", 1.2, unit="req/s")
        t.ratio(f"CPU per 1 KiB request from {server}", f"{prefix}_1k_cpu_us_per_req", "bore", 1.0, higher=False,
                unit="µs")
    for prefix, server in SERVERS:
        t.ratio(f"HTTP 1 MiB from {server}", f"{prefix}_1m_rps", "rathole-tls", 1.0, unit="req/s")
    t.bound("relay peak RSS during the 1 MiB runs", "relay_rss_peak_mib", 48, "MiB")
    if "burrow_http" in result["systems"]:
        t.bound("HTTP tunnel relay's peak RSS during the 1 MiB runs", "relay_rss_peak_mib", 48, "MiB",
                system="burrow_http")
    t.bound("relay RSS idle", "relay_rss_idle_mib", 8, "MiB", strict=True)
    t.ratio("lossy, 1 visitor's download", "lossy_one", "rathole-tls", 1.4, unit="Mbit/s")
    t.ratio("lossy, 8 visitors' total", "lossy_eight", "rathole-tls", 0.9, unit="Mbit/s")
    direct = t.value("burst_p99_ms", "direct")
    t.bound("burst of new connections at 50 ms RTT, TTFB p99" + (f" (direct p99 {direct:.1f} ms)" if direct else ""),
            "burst_p99_ms", 70, "ms")
    t.ratio("new connection + 1 KiB response, p50", "connect_p50_ms", "rathole-tls", 1.0, higher=False, unit="ms")
    t.ratio("relay memory per open connection", "relay_kib_per_held_connection", "rathole-tls", 1.0, higher=False,
            unit="KiB")
    if "burrow_tcp" in result["systems"]:
        # The TCP transport (issue 14): at least rathole-tls, which also runs TLS over TCP.
        tcp = {"system": "burrow_tcp"}
        t.ratio("link over TCP: iperf3 1 stream, visitor -> local", "iperf_up_gbps", "rathole-tls", 1.0,
                unit="Gbit/s", **tcp)
        t.ratio("link over TCP: iperf3 1 stream, local -> visitor", "iperf_down_gbps", "rathole-tls", 1.0,
                unit="Gbit/s", **tcp)
        t.ratio("link over TCP: iperf3 -P 4", "iperf_p4_gbps", "rathole-tls", 1.0, unit="Gbit/s", **tcp)
        for prefix, server in SERVERS:
            t.ratio(f"link over TCP: HTTP 1 KiB from {server}", f"{prefix}_1k_rps", "rathole-tls", 1.0, unit="req/s",
                    **tcp)
        t.ratio("link over TCP: burst TTFB p99 at 50 ms RTT", "burst_p99_ms", "rathole-tls", 1.0, higher=False,
                unit="ms", **tcp)
    if t.peers_missing:
        t.missing("every target set against " + " and ".join(sorted(t.peers_missing)), "needs `bench/run --peers`")
    return "\n".join(t.lines)
