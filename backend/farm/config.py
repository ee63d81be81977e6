"""The farm's settings (no heavy imports: the command line reads the defaults)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class FarmConfig:
    workers: int = 0                 # 0: one per GPU of the cluster, else one per `cpus_per_worker` CPUs
    address: str | None = None       # a running Ray cluster to join ("auto", "ray://host:10001", ...); None: start one
    cpus_per_worker: int = 1         # CPU workers: torch threads each (also Ray's CPU reservation)
    chunk_frames: int = 4            # frames of a render stream per worker task
    tasks_per_worker: int = 2        # render tasks in flight per worker (one runs, one waits: no idle gap)
    fit_attempts: int = 3            # a fit whose worker dies is resumed elsewhere, at most this often
    chunk_attempts: int = 4          # likewise for a chunk of frames
    poll_s: float = 0.25             # how often a running fit's progress is collected
    object_store_mb: int = 512       # a local cluster's object store (frames pass through it)
    ship_code: bool = True           # send backend/ and shared/ to the workers (a cluster's nodes need
                                     # only the pinned environment, not a checkout)
