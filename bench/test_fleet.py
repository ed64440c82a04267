"""The fleet benchmark's arithmetic and its etcd (bench/fleet.py, bench/etcd_node.py)."""

import os
import unittest

import etcd_node
import fleet


def online(seconds, times):
    return {"event": "online", "agents": len(times), "seconds": seconds, "online_ms": times}


class AdmissionTest(unittest.TestCase):
    def test_the_slowest_shard_times_the_whole_load(self):
        figures = fleet.admission([online(2.0, [10.0, 30.0]), online(4.0, [20.0, 40.0])])
        self.assertEqual(figures["agents"], 4)
        self.assertEqual(figures["claims_per_s"], 1.0)
        self.assertEqual(figures["online_p50_ms"], 25.0)
        self.assertEqual(figures["online_p99_ms"], 40.0)


class SummaryTest(unittest.TestCase):
    def run_of(self, base_rate, fleet_rate, fleet_p50):
        base = {"claims_per_s": base_rate, "online_p50_ms": 10.0, "online_p99_ms": 50.0,
                "single_p50_ms": 2.0, "single_p99_ms": 4.0}
        return {fleet.BASELINE: base,
                fleet.FLEET: {"claims_per_s": fleet_rate, "online_p50_ms": fleet_p50, "online_p99_ms": 80.0,
                              "single_p50_ms": 5.0, "single_p99_ms": 9.0}}

    def test_medians_over_runs_and_the_fleets_cost_against_the_baseline(self):
        runs = [self.run_of(400, 100, 30.0), self.run_of(500, 250, 14.0), self.run_of(600, 300, 16.0)]
        report = fleet.summary(runs)
        self.assertEqual(report["median"][fleet.FLEET]["claims_per_s"], 250)
        self.assertEqual(report["against_baseline"][fleet.FLEET]["claims_per_s_ratio"], 0.5)
        self.assertEqual(report["against_baseline"][fleet.FLEET]["online_p50_added_ms"], 6.0)
        self.assertEqual(report["against_baseline"][fleet.FLEET]["online_p99_added_ms"], 30.0)
        self.assertEqual(report["against_baseline"][fleet.FLEET]["single_p50_added_ms"], 3.0)
        self.assertEqual(report["against_baseline"][fleet.FLEET]["single_p99_added_ms"], 5.0)

    def test_the_table_has_a_row_per_setup_and_a_dash_where_there_is_no_etcd(self):
        text = fleet.table(fleet.summary([self.run_of(400, 200, 12.0)]), markdown=True)
        rows = [line for line in text.splitlines() if line.startswith("| ")]
        self.assertEqual(len(rows), 3)
        self.assertTrue(rows[1].startswith(f"| {fleet.BASELINE} | 400 |"))
        self.assertTrue(rows[1].endswith("| - | - |"))
        self.assertIn("0.50x the claims per second", text)


@unittest.skipUnless(etcd_node.available(), "etcd is not installed")
class EtcdTest(unittest.TestCase):
    def test_starts_healthy_and_leaves_nothing_behind(self):
        etcd = etcd_node.Etcd()
        directory = etcd.dir.name
        try:
            self.assertTrue(etcd.url.startswith("etcd://127.0.0.1:"))
        finally:
            etcd.stop()
        self.assertIsNotNone(etcd.process.proc.poll())
        self.assertFalse(os.path.exists(directory))


if __name__ == "__main__":
    unittest.main()
