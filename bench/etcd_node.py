"""A one-node etcd on free loopback ports for the fleet benchmark, as testkit/src/etcd.rs
starts it for the tests: Debian's etcd, its data in /dev/shm where there is one (etcd 3.4
cannot skip its fsyncs, and a disk would measure the disk)."""

import json
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import harness


def available():
    return shutil.which("etcd") is not None


class Etcd:
    def __init__(self, timeout=30):
        shm = Path("/dev/shm")
        self.dir = tempfile.TemporaryDirectory(prefix="burrow-etcd-", dir=shm if shm.is_dir() else None)
        client, peer = f"http://127.0.0.1:{harness.free_port()}", f"http://127.0.0.1:{harness.free_port()}"
        self.endpoint = client.removeprefix("http://")
        self.process = harness.Process(
            ["etcd", "--name", "bench", "--data-dir", str(Path(self.dir.name) / "data"),
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"bench={peer}", "--logger", "zap", "--log-level", "warn"],
            quiet=True,
        )
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self):
        """A relay's `--store` for this etcd."""
        return f"etcd://{self.endpoint}"

    @property
    def pid(self):
        return self.process.pid

    def wait_healthy(self, timeout):
        """Returns once /health says true, which it does only once the node is its leader."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.proc.poll() is not None:
                self.process.log.seek(0)
                raise RuntimeError(f"etcd exited: {self.process.log.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as answer:
                    if json.load(answer).get("health") == "true":
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"etcd not healthy within {timeout} s")

    def stop(self):
        self.process.stop()
        self.dir.cleanup()
