"""The 3D viewport's view as the backend's camera, its depth range, and when to ask for frames.

Plain numpy (no bpy, no gpu): everything the viewport drawing needs except the draw call itself
(viewport.py), so it is tested on its own. Conventions: Blender's `RegionView3D.view_matrix` maps
Blender's world to view space (x right, y up, looking down -z), `window_matrix` maps view space to
OpenGL clip space (perspective: w = -z), window pixels run from the region's left/bottom edge with
pixel i covering [i, i + 1]. The backend's camera (shared/camera.py) is OpenCV-like (x right, y
down, looking down +z) in the SMPL frame (TO_BLENDER turns that into Blender's world), with image
rows from the top; its pixel i also covers [i, i + 1].
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from .blender_camera import TO_BLENDER
from .shared.camera import scaled_camera

_FLIP_YZ = np.diag([1.0, -1.0, -1.0])   # Blender view axes <-> OpenCV camera axes


def is_perspective(window_matrix) -> bool:
    P = np.asarray(window_matrix, dtype=np.float64)
    return abs(P[3, 3]) < 1e-9 and abs(P[3, 2] + 1.0) < 1e-6


def view_camera(view_matrix, window_matrix, width: int, height: int) -> dict:
    """A perspective viewport (free view or looking through a camera, lens shift and camera zoom
    included: both live in the window matrix) at width x height pixels -> {K, R, t, width,
    height} as the protocol sends cameras. ValueError for an orthographic view (the avatar is a
    pinhole render)."""
    P = np.asarray(window_matrix, dtype=np.float64)
    if not is_perspective(P):
        raise ValueError("the viewport is orthographic; the avatar is drawn in perspective views only")
    V = np.asarray(view_matrix, dtype=np.float64)
    rot = V[:3, :3] / np.linalg.norm(V[:3, :3], axis=1, keepdims=True)   # drop any scale
    # u = (ndc_x + 1) W / 2 with ndc_x = P00 x/(-z) + P01 y/(-z) - P02 (P01 = 0 for Blender's views)
    K = np.array([[P[0, 0] * width / 2.0, 0.0, (1.0 - P[0, 2]) * width / 2.0],
                  [0.0, P[1, 1] * height / 2.0, (1.0 + P[1, 2]) * height / 2.0],
                  [0.0, 0.0, 1.0]])
    R = _FLIP_YZ @ rot @ TO_BLENDER
    t = _FLIP_YZ @ V[:3, 3]
    return {"K": K.tolist(), "R": R.tolist(), "t": t.tolist(), "width": int(width), "height": int(height)}


def window_depth(depth: np.ndarray, window_matrix) -> np.ndarray:
    """Camera depth in metres (the backend's, 0 where nothing is) -> the depth buffer's value for
    the same point, 0..1 (glDepthRange's default), 1 (the far plane) where nothing is."""
    P = np.asarray(window_matrix, dtype=np.float64)
    d = np.asarray(depth, dtype=np.float64)
    seen = d > 0
    ndc = np.where(seen, -P[2, 2] + P[2, 3] / np.where(seen, d, 1.0), 1.0)   # z_view = -d, w = d
    return np.clip(0.5 * ndc + 0.5, 0.0, 1.0).astype(np.float32)


@dataclasses.dataclass
class Request:
    slot: object       # which viewport region
    key: int           # the view's identity (pose, camera, size)
    seq: int           # increasing: a frame older than the one shown is dropped
    scale: float
    view: dict         # {pose, transl, camera} for the backend, camera at `scale` of the region
    window_matrix: list   # the projection the frame's depth is converted with


@dataclasses.dataclass
class Frame:
    request: Request
    rgba: np.ndarray          # (h, w, 4) uint8, straight alpha, rows from the top
    depth: np.ndarray         # (h, w) float32 window depth, rows from the top


class ViewportScheduler:
    """When to ask for which viewport frame. A change of view or pose asks at once for a frame at
    `moving_scale` (a quarter: a CPU or remote backend keeps up while the artist navigates or
    scrubs); once a view has rested for `idle_s`, the same view is asked for at full size. Each
    slot (viewport region) has one request at a time on the wire: the connection replaces a
    request still waiting for the same slot, and a frame older than the one shown is dropped."""

    def __init__(self, moving_scale: float = 0.25, idle_s: float = 0.4, clock: Callable[[], float] = time.monotonic):
        self.moving_scale, self.idle_s, self.clock = moving_scale, idle_s, clock
        self._seq = 0
        self._asked: dict = {}       # slot -> (key, time of the change, Request at full size or None)
        self.shown: dict = {}        # slot -> Frame
        self.pending: dict = {}      # slot -> {seq: Request} asked for and not answered yet

    def _request(self, slot, key, scale, view, window_matrix) -> Request:
        self._seq += 1
        req = Request(slot, key, self._seq, scale, {**view, "camera": scaled_camera(view["camera"], scale)},
                      [list(map(float, row)) for row in np.asarray(window_matrix)])
        self.pending.setdefault(slot, {})[req.seq] = req
        return req

    def on_view(self, slot, key: int, view: dict, window_matrix) -> Request | None:
        """The region is drawn with this view: a request if it changed since the last one."""
        asked = self._asked.get(slot)
        if asked is not None and asked[0] == key:
            return None
        full = self.moving_scale >= 1.0
        self._asked[slot] = (key, self.clock(), None if full else (view, window_matrix))
        return self._request(slot, key, 1.0 if full else self.moving_scale, view, window_matrix)

    def due(self) -> list[Request]:
        """Full-size requests for the views that have rested for idle_s (from a timer)."""
        out = []
        now = self.clock()
        for slot, (key, since, rest) in list(self._asked.items()):
            if rest is not None and now - since >= self.idle_s:
                self._asked[slot] = (key, since, None)
                out.append(self._request(slot, key, 1.0, *rest))
        return out

    def on_frame(self, slot, seq: int, rgba: np.ndarray, depth_m: np.ndarray) -> Frame | None:
        """A frame arrived for request `seq`: shown (and returned) unless a newer one already is.
        While the view keeps changing every answer is already older than the newest request, and
        still the newest answer so far: it is shown (the view lags, it never freezes)."""
        waiting = self.pending.get(slot, {})
        req = waiting.pop(seq, None)
        shown = self.shown.get(slot)
        if req is None or (shown is not None and shown.request.seq > seq):
            return None
        for older in [s for s in waiting if s < seq]:   # their answers, if any come, are stale
            del waiting[older]
        frame = Frame(req, rgba, window_depth(depth_m, req.window_matrix))
        self.shown[slot] = frame
        return frame

    def forget(self, slot=None) -> None:
        """Drop a region's state (closed), or every region's (avatar changed, disconnected)."""
        for table in (self._asked, self.shown, self.pending):
            if slot is None:
                table.clear()
            else:
                table.pop(slot, None)
