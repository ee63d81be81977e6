"""What the benchmark measures besides images: peak memory of a step and the machine it ran on."""
from __future__ import annotations

import os
import platform
import resource
import threading
import time

import torch


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):   # not Linux: the process's lifetime peak is the best we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak memory while the block runs: CUDA memory allocated by torch on a GPU, else the
    process's resident set size (sampled every 20 ms, so it includes Python and the libraries)."""

    def __init__(self, device: torch.device, interval: float = 0.02):
        self.device, self.interval = torch.device(device), interval
        self.peak_mb = 0.0
        self._stop = threading.Event()

    @property
    def kind(self) -> str:
        return "CUDA allocated" if self.device.type == "cuda" else "process RSS"

    def _poll(self) -> None:
        peak = _rss_bytes()
        while not self._stop.wait(self.interval):
            peak = max(peak, _rss_bytes())
        self._peak = max(peak, _rss_bytes())

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = self._peak / 2**20


class Stopwatch:
    def __enter__(self) -> "Stopwatch":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": str(device)}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
