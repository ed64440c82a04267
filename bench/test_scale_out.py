"""The scale-out calculation's arithmetic (bench/scale_out.py)."""

import unittest

import scale_out


class ScaleOutTest(unittest.TestCase):
    def test_subsets_spread_links_and_ports_over_the_fleet(self):
        subset = scale_out.designs(100)[1]
        cost = scale_out.costs(subset, relays=100, agents=100_000)
        self.assertEqual(cost["links per relay"], "4,000")
        self.assertEqual(cost["public ports per relay"], "2,400")
        self.assertEqual(cost["visitor bytes carried twice"], "0%")

    def test_a_full_mesh_runs_out_of_ports_and_etcd_keys(self):
        mesh = scale_out.designs(100)[0]
        cost = scale_out.costs(mesh, relays=100, agents=100_000)
        self.assertIn("over the range", cost["public ports per relay"])
        self.assertIn("too many", cost["etcd held keys"])

    def test_forwarding_carries_nearly_every_byte_twice(self):
        forwarding = scale_out.designs(100)[2]
        self.assertEqual(scale_out.costs(forwarding, 100, 100_000)["visitor bytes carried twice"], "98%")


if __name__ == "__main__":
    unittest.main()
