"""What /proc says about the processes under test: CPU time, and resident memory now and at
its peak during a load."""

import os
import threading
from pathlib import Path

SAMPLE_EVERY = 0.05
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU time of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status_kib(pid, field):
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def rss_mib(pid):
    return status_kib(pid, "VmRSS") / 1024


def reset_peak(pid):
    """Makes VmHWM start again from the current RSS (Linux's clear_refs 5), so that after a
    load it holds that load's peak and not the process lifetime's. False when not permitted."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakRss:
    """The highest RSS (MiB) of `pid` while the `with` block runs: VmHWM reset at entry and
    read at exit where the kernel allows it, and in any case VmRSS sampled every 50 ms by a
    thread, so a short spike is not lost between samples and no figure depends on the reset."""

    def __init__(self, pid):
        self.pid = pid
        self.peak_kib = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self):
        while True:
            try:
                self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmRSS"))
            except (OSError, RuntimeError):
                return
            if self.stopped.wait(SAMPLE_EVERY):
                return

    def __enter__(self):
        self.hwm_valid = reset_peak(self.pid)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join(timeout=5)
        if self.hwm_valid:
            self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmHWM"))
        return False

    @property
    def mib(self):
        return self.peak_kib / 1024
