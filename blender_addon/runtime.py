"""The add-on's runtime state for one Blender session: the backend connection, the running fit
and stream, the avatar list, live-preview bookkeeping. Never saved in a .blend file."""
from __future__ import annotations

import dataclasses
import time


@dataclasses.dataclass
class Runtime:
    connection: object = None        # connection.Connection while connected
    job: str | None = None           # the fit running on the backend, if any
    avatars: list = dataclasses.field(default_factory=list)   # the server's list, newest last
    enum_items: list = dataclasses.field(default_factory=list)  # kept alive for the EnumProperty
    streaming: bool = False
    exporting: str | None = None     # the avatar whose mesh the backend is baking (Bake mesh)
    stream_frames: list = dataclasses.field(default_factory=list)
    stream_dir: str = ""
    stepping_frames: bool = False    # an operator walks the timeline: no live-preview requests
    rendering: bool = False          # Blender's own render (F12 / Render Animation) is running
    last_view_key: int | None = None
    reduced_view: tuple | None = None   # (key, avatar, view) last requested at scrubbing size
    last_change: float = 0.0
    errors: int = 0                  # results that could not be applied (each reported once)
    loaded: tuple | None = None      # (avatar id, its (24, 3) rest joints) after Load
    proxy_mesh: dict | None = None   # the loaded avatar's body mesh (`loaded.proxy`), for its shadow proxy
    render_client: object = None     # ServiceClient for Blender's own renders (compositing.fetch_frame)
    render_frames: int = 0           # avatar frames put into Blender's renders this session
    render_problems: list = dataclasses.field(default_factory=list)   # frames rendered without it, why

    def rest_joints(self, avatar_id: str):
        """The loaded avatar's rest skeleton (rigs map their pose onto it exactly), else None."""
        return self.loaded[1] if self.loaded is not None and self.loaded[0] == avatar_id else None

    def reset(self) -> None:
        self.__init__()


runtime = Runtime()


def now() -> float:
    return time.monotonic()
