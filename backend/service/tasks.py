"""The requests a backend queues (fits, single renders, render streams) and its queue bound; no
heavy imports: the farm's front (backend/farm/) queues the same requests without torch."""
from __future__ import annotations

import dataclasses
import secrets
import threading
import time

from shared import protocol as P


@dataclasses.dataclass
class FitJob:
    avatar_id: str
    identity: bytes | None      # None: resumed after a restart, nobody to tell
    request_id: int
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)


@dataclasses.dataclass
class Stream:
    identity: bytes
    request_id: int
    avatar: str
    views: list
    format: str
    window: int
    depth: bool = False         # send each frame's depth too
    id: str = dataclasses.field(default_factory=lambda: secrets.token_hex(6))
    acked: int = -1
    sent: int = -1              # the last frame index sent: an ack beyond it counts only up to it
    cancelled: bool = False


@dataclasses.dataclass
class RenderRequest:
    identity: bytes
    request_id: int
    avatar: str
    view: dict
    format: str
    load_only: bool = False     # a `load`: warm the cache and describe the avatar, no image
    export: dict | None = None  # an `export`: bake the avatar with these settings (preset, triangles, texture)
    depth: bool = False         # send the frame's depth too
    received: float = dataclasses.field(default_factory=time.perf_counter)


def room(queue, limit: int, what: str) -> None:
    """`busy` when the queue is at its limit."""
    if len(queue) >= limit:
        raise P.ProtocolError(P.BUSY, f"{len(queue)} {what}; try again later")
