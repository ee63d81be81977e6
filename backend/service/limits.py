"""How much the service's worker takes on (no heavy imports: the command line reads the defaults)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class WorkerLimits:
    max_queued_fits: int = 32
    max_queued_renders: int = 256        # single renders and loads waiting
    max_streams: int = 16                # render streams waiting, all clients together
    stream_ack_timeout_s: float = 60.0   # a stream with no new ack for this long is stopped
