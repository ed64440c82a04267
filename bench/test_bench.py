"""Tests of the harness's own logic: the peak-memory probe, the nginx it starts, and the
report's tables and targets. `python3 -m unittest discover -s bench -p 'test_*.py'`."""

import json
import os
import socket
import subprocess
import sys
import unittest

import nginx
import procstat
import report_tables
import report_targets
import udp
import udp_systems

# A child that grows to about 64 MiB, says so, frees it, and waits for a line on stdin.
SPIKE = """
import sys
block = bytearray(64 << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
print("grown", flush=True)
del block
print("freed", flush=True)
sys.stdin.readline()
"""


class PeakRssTest(unittest.TestCase):
    def test_peak_holds_a_spike_that_is_gone_when_the_load_ends(self):
        child = subprocess.Popen([sys.executable, "-c", SPIKE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            with procstat.PeakRss(child.pid) as peak:
                self.assertEqual(child.stdout.readline().strip(), "grown")
                self.assertEqual(child.stdout.readline().strip(), "freed")
            now = procstat.rss_mib(child.pid)
            self.assertGreater(peak.mib, 60)
            self.assertLess(now, peak.mib - 40)
        finally:
            child.kill()
            child.wait()
            child.stdin.close()
            child.stdout.close()


def get(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return head.split(b"\r\n")[0], body


@unittest.skipIf(nginx.binary() is None, "nginx is not installed")
class NginxTest(unittest.TestCase):
    def test_serves_both_sizes_and_leaves_nothing_behind(self):
        server = nginx.Nginx()
        directory = server.dir.name
        try:
            for path, size in (("/1k", 1024), ("/1m", 1 << 20)):
                status, body = get(server.port, path)
                self.assertIn(b" 200 ", status)
                self.assertEqual(len(body), size)
        finally:
            server.stop()
        self.assertIsNotNone(server.process.proc.poll())
        self.assertFalse(os.path.exists(directory))


def result(median, systems=("burrow", "rathole-tls", "bore"), **extra):
    return {"median": median, "systems": list(systems), "settings": {"held": 1000}, **extra}


class ReportTest(unittest.TestCase):
    def test_every_table_has_a_column_per_measured_system(self):
        r = result({"iperf_up_gbps_direct": 20.0, "iperf_up_gbps_burrow": 5.0, "iperf_up_gbps_rathole-tls": 4.0,
                    "iperf_up_gbps_bore": 8.0, "relay_rss_idle_mib_burrow": 7.0, "relay_rss_idle_mib_bore": 3.0})
        loopback = report_tables.loopback_table(r).splitlines()
        self.assertEqual(loopback[0], "| figure | direct | burrow TCP tunnel | rathole-tls | bore (plain) |")
        self.assertIn("| 20.00 | 5.00 (0.25x) | 4.00 (0.20x) | 8.00 (0.40x) |", loopback[2])
        self.assertEqual(report_tables.memory_table(r).splitlines()[0], loopback[0])
        comparison = report_tables.comparison_table(r)
        self.assertIn("| iperf3 1 stream, visitor -> local (Gbit/s) | higher | 5.00 | 4.00 | 8.00 | 1.25x | 0.62x |",
                      comparison)

    def test_lossy_medians_are_read_from_every_shape_of_result(self):
        shapes = [{"one": [1.0, 3.0]}, {"one": 2.0}, {"one": {"runs": [1.0, 3.0]}}, {"one": {"median": 2.0}},
                  {"one_median": 2.0, "one": None}, {"median": {"one": 2.0}, "runs": []},
                  {"one_mbps": [1.0, 3.0], "one_median_mbps": 2.0}, {"one_mbps": [2.0]}]
        for shape in shapes:
            self.assertEqual(report_tables.lossy_median({"burrow": shape}, "burrow", "one"), 2.0, shape)
            self.assertEqual(report_tables.lossy_median({"settings": {}, "systems": {"burrow": shape}}, "burrow", "one"),
                             2.0, shape)
        self.assertIsNone(report_tables.lossy_median({"error": "boom"}, "burrow", "one"))

    def test_targets_say_met_or_by_how_much_not(self):
        r = result({"iperf_up_gbps_burrow": 5.0, "iperf_up_gbps_rathole-tls": 5.0,
                    "http_1k_cpu_us_per_req_burrow": 30.0, "http_1k_cpu_us_per_req_bore": 40.0,
                    "relay_rss_peak_mib_burrow": 60.0, "relay_rss_idle_mib_burrow": 7.0},
                   lossy={"burrow": {"eight": [9.0]}, "rathole-tls": {"eight": [10.0]}})
        lines = report_targets.targets(r).splitlines()
        self.assertIn("- **not met**: iperf3 1 stream, visitor -> local: 5.00 Gbit/s against rathole-tls's 5.00 Gbit/s "
                      "= 1.00x (target at least 1.25x); 20% short", lines)
        self.assertIn("- met: CPU per 1 KiB request from hyper: 30.00 µs against bore's 40.00 µs = 0.75x "
                      "(target at most 1.00x); by 25%", lines)
        self.assertIn("- **not met**: relay peak RSS during the 1 MiB runs: 60.0 MiB (target at most 48 MiB); "
                      "12.0 MiB over", lines)
        self.assertIn("- met: relay RSS idle: 7.0 MiB (target under 8 MiB); 1.0 MiB to spare", lines)
        self.assertIn("- met: lossy, 8 visitors' total: 9.00 Mbit/s against rathole-tls's 10.00 Mbit/s = 0.90x "
                      "(target at least 0.90x); by 0%", lines)

    def test_without_peers_the_ratio_targets_are_named_as_not_measured(self):
        lines = report_targets.targets(result({"relay_rss_idle_mib_burrow": 9.0}, systems=("burrow",))).splitlines()
        self.assertIn("- not measured: every target set against bore and rathole-tls (needs `bench/run --peers`)", lines)
        self.assertIn("- **not met**: relay RSS idle: 9.0 MiB (target under 8 MiB); 1.0 MiB over", lines)

    def test_the_tcp_transport_has_its_column_and_its_targets_against_rathole_tls(self):
        r = result({"iperf_up_gbps_direct": 20.0, "iperf_up_gbps_burrow": 5.0, "iperf_up_gbps_burrow_tcp": 3.0,
                    "iperf_up_gbps_rathole-tls": 4.0}, systems=("burrow", "burrow_tcp", "rathole-tls"),
                   burst={"direct": {"p50_ms": 10.0, "p99_ms": 14.0}, "burrow_tcp": {"p50_ms": 60.0, "p99_ms": 65.0},
                          "rathole-tls": {"p50_ms": 1000.0, "p99_ms": 2000.0}})
        loopback = report_tables.loopback_table(r).splitlines()
        self.assertEqual(loopback[0], "| figure | direct | burrow TCP tunnel | burrow TCP tunnel, link over TLS/TCP "
                                      "| rathole-tls |")
        self.assertIn("| 20.00 | 5.00 (0.25x) | 3.00 (0.15x) | 4.00 (0.20x) |", loopback[2])
        self.assertIn("| link over TCP: iperf3 1 stream, visitor -> local (Gbit/s) | higher | 3.00 | 4.00 | 0.75x |",
                      report_tables.comparison_table(r))
        lines = report_targets.targets(r).splitlines()
        self.assertIn("- **not met**: link over TCP: iperf3 1 stream, visitor -> local: 3.00 Gbit/s against "
                      "rathole-tls's 4.00 Gbit/s = 0.75x (target at least 1.00x); 25% short", lines)
        self.assertIn("- met: link over TCP: burst TTFB p99 at 50 ms RTT: 65.00 ms against rathole-tls's 2,000 ms "
                      "= 0.03x (target at most 1.00x); by 97%", lines)

    def test_head_of_line_table_has_a_row_per_transport(self):
        run = {"idle": {"p50_ms": 51.0}, "loaded": {"p50_ms": 60.0, "p99_ms": 300.0, "max_ms": 400.0},
               "bulk_mbps": 100.0, "loaded_rtts_ms": [60.0, 300.0, 400.0]}
        hol = {"settings": {"bulk_visitors": 10},
               "systems": {"burrow_tcp": {"idle_p50_ms": 51.0, "loaded_p50_ms": 60.0, "loaded_p99_ms": 300.0,
                                          "loaded_max_ms": 400.0, "pooled": {"p99_ms": 400.0, "max_ms": 400.0},
                                          "bulk_mbps": 100.0, "runs": [run]},
                           "burrow": {"idle_p50_ms": 50.5, "loaded_p50_ms": 52.0, "loaded_p99_ms": 80.0,
                                      "loaded_max_ms": 90.0, "pooled": {"p99_ms": 85.0, "max_ms": 90.0},
                                      "bulk_mbps": 500.0, "runs": [run]}}}
        lines = report_tables.hol_table(hol).splitlines()
        self.assertEqual(lines[2], "| burrow, link over QUIC | 50.5 | 52.0 / 80.0 / 90.0 | 85.0 / 90.0 | 500.0 |")
        self.assertEqual(lines[3], "| burrow, link over TLS/TCP | 51.0 | 60.0 / 300.0 / 400.0 | 400.0 / 400.0 | 100.0 |")
        self.assertEqual(report_tables.hol_table({"error": "boom"}), "")


class UdpTest(unittest.TestCase):
    def test_the_rate_search_finds_the_last_rate_under_the_loss_limit(self):
        tried = []

        def up_to(limit):
            def carries(rate):
                tried.append(rate)
                return rate <= limit
            return carries

        self.assertEqual(udp.highest_rate(up_to(700), 100, 6400, 3), 700)
        self.assertEqual(tried, [100, 200, 400, 800, 600, 700, 750])
        self.assertEqual(udp.highest_rate(up_to(10_000), 100, 6400, 3), 6400)
        self.assertEqual(udp.highest_rate(up_to(30), 100, 6400, 3), 25)
        self.assertEqual(udp.highest_rate(up_to(0), 100, 6400, 3), 0)

    def test_a_rate_is_carried_when_little_is_lost_and_nearly_all_of_it_arrives(self):
        self.assertTrue(udp.carried({"loss_pct": 0.5, "received_mbps": 195.0}, 200, 1.0))
        self.assertFalse(udp.carried({"loss_pct": 1.5, "received_mbps": 195.0}, 200, 1.0))
        # iperf3 could not send that fast: nothing lost, but the rate was never reached.
        self.assertFalse(udp.carried({"loss_pct": 0.0, "received_mbps": 455.0}, 6400, 1.0))

    def test_iperf3_reports_read_the_receiver_side_and_refuse_failures(self):
        sent = {"bits_per_second": 200e6, "lost_percent": 0, "jitter_ms": 0}
        received = {"bits_per_second": 190e6, "lost_percent": 5.0, "jitter_ms": 0.02}
        self.assertEqual(udp.iperf3_summary({"end": {"sum_sent": sent, "sum_received": received}}),
                         {"sent_mbps": 200.0, "received_mbps": 190.0, "loss_pct": 5.0, "jitter_ms": 0.02})
        with self.assertRaisesRegex(RuntimeError, "busy"):
            udp.iperf3_summary({"start": {}, "end": {}, "error": "the server is busy"})

    def test_the_game_summary_counts_missing_echoes_as_lost(self):
        summary = udp.game_summary(4, [40.0, None, 42.0, 400.0])
        self.assertEqual(summary, {"sent": 4, "loss_pct": 25.0, "p50_ms": 42.0, "p99_ms": 400.0, "max_ms": 400.0})
        self.assertEqual(udp.game_summary(2, [None, None]), {"sent": 2, "loss_pct": 100.0})
        medians = udp.median_runs([summary, {"sent": 4, "loss_pct": 75.0}, summary])
        self.assertEqual((medians["loss_pct"], "p50_ms" in medians, len(medians["runs"])), (25.0, False, 3))

    def test_iperf3_gets_a_tcp_and_a_udp_tunnel_on_one_public_port(self):
        services = {"iperf": (5201, ("tcp", "udp")), "game": (5300, ("udp",))}
        public = {"iperf": 21000, "game": 21001}
        config = udp_systems.burrow_config("127.0.0.1:4433", "ab:cd", services, public)
        self.assertEqual(config.count("[[tunnels]]"), 3)
        self.assertIn('name = "iperf-tcp"\nprotocol = "tcp"\nlocal = 5201\nremote_port = 21000\n', config)
        self.assertIn('name = "iperf-udp"\nprotocol = "udp"\nlocal = 5201\nremote_port = 21000\n', config)
        self.assertIn('name = "game-udp"\nprotocol = "udp"\nlocal = 5300\nremote_port = 21001\n', config)
        server, client = udp_systems.rathole_configs("127.0.0.1:2333", services, public, ("", ""))
        self.assertIn('[server.services.iperf-udp]\ntoken = "bench-token"\ntype = "udp"\n'
                      'bind_addr = "127.0.0.1:21000"\n', server)
        self.assertIn('[client.services.game-udp]\ntoken = "bench-token"\ntype = "udp"\n'
                      'local_addr = "127.0.0.1:5300"\n', client)
        self.assertEqual(server.count("[server.services."), 3)

    def test_the_game_probe_times_echoes_through_a_local_echo(self):
        port = udp_systems.free_tcp_and_udp_port(40000, 49999)
        echo = subprocess.Popen([sys.executable, str(udp.GAME_PROBE), "echo", "127.0.0.1", str(port)],
                                stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(echo.stdout.readline().strip(), "listening")
            out = subprocess.run([sys.executable, str(udp.GAME_PROBE), "play", "127.0.0.1", str(port), "0.5", "40",
                                  "64"], capture_output=True, text=True, check=True, timeout=30).stdout
        finally:
            echo.kill()
            echo.wait()
            echo.stdout.close()
        played = json.loads(out)
        self.assertEqual(played["sent"], 20)
        self.assertEqual(udp.game_summary(played["sent"], played["rtts_ms"])["loss_pct"], 0.0)


if __name__ == "__main__":
    unittest.main()
