#!/usr/bin/env python3
"""One relay holding many agents and connections: starts a release relay, runs loadgen
against it, and writes bench/results/scale.json. Run it with `bench/scale`."""

import argparse
import json
import secrets
import sys
import tempfile
from pathlib import Path

import harness


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=20000)
    parser.add_argument("--probes", type=int, default=500)
    parser.add_argument("--out", default=str(harness.RESULTS / "scale.json"))
    args = parser.parse_args()

    token = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="burrow-scale-") as data:
        relay = harness.Process(
            [str(harness.RELEASE / "relay"), "--listen", "127.0.0.1:0", "--public-bind", "127.0.0.1",
             "--data-dir", data],
            env={"BURROW_RELAY_TOKEN": token, "RUST_LOG": "warn"},
        )
        try:
            port = int(relay.line(r"agents connect to\s+udp \S+:(\d+)").group(1))
            fingerprint = relay.line(r"fingerprint\s+(\S+)").group(1)
            loadgen = harness.Process(
                [str(harness.RELEASE / "loadgen"), "--relay", f"127.0.0.1:{port}", "--fingerprint", fingerprint,
                 "--token", token, "--relay-pid", str(relay.pid), "--agents", str(args.agents),
                 "--connections", str(args.connections), "--probes", str(args.probes)],
                env={"RUST_LOG": "error"},
            )
            report = json.loads(loadgen.line(r"^\{.*\}$", timeout=900).group(0))
            loadgen.stop()
        finally:
            relay.stop()
    report["machine"] = harness.machine()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
