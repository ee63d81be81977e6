"""Add-on preferences: where the backend is and how to reach it (per user, not per scene)."""
from __future__ import annotations

import bpy

from .shared.protocol import DEFAULT_PORT

DEFAULT_ADDRESS = f"tcp://127.0.0.1:{DEFAULT_PORT}"


class AvatarPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    backend_address: bpy.props.StringProperty(
        name="Backend address", default=DEFAULT_ADDRESS,
        description="ZeroMQ address of the avatar backend: this computer by default, or a GPU server "
                    "(tcp://host:port; needs the keys below)")
    server_key: bpy.props.StringProperty(
        name="Server key", subtype="FILE_PATH",
        description="The backend's public certificate (server.key, made by 'avatar-backend keys'); "
                    "required for a backend on another computer")
    client_key: bpy.props.StringProperty(
        name="Client key", subtype="FILE_PATH",
        description="This computer's secret certificate (<name>.key_secret from 'avatar-backend keys')")
    timeout_s: bpy.props.FloatProperty(
        name="Timeout", default=10.0, min=1.0, max=600.0, subtype="TIME_ABSOLUTE", unit="TIME_ABSOLUTE",
        description="How long to wait for an answer before reconnecting")
    scrub_scale: bpy.props.FloatProperty(
        name="Scrubbing preview size", default=0.25, min=0.05, max=1.0, subtype="FACTOR",
        description="Live previews while you scrub or pose are rendered at this fraction of the render "
                    "size, then at full size once you stop (keeps a CPU or remote backend responsive)")

    def draw(self, context):
        col = self.layout.column()
        col.prop(self, "backend_address")
        col.prop(self, "server_key")
        col.prop(self, "client_key")
        col.prop(self, "timeout_s")
        col.prop(self, "scrub_scale")
        if not bpy.app.online_access:
            col.label(text="Blender's online access is off: only a backend on this computer can be used",
                      icon="INFO")


class _Defaults:
    """The preferences' defaults, for the add-on's modules used before it is enabled."""
    backend_address, server_key, client_key, timeout_s, scrub_scale = DEFAULT_ADDRESS, "", "", 10.0, 0.25


def get(context=None):
    addon = (context or bpy.context).preferences.addons.get(__package__)
    return addon.preferences if addon is not None and addon.preferences is not None else _Defaults()
