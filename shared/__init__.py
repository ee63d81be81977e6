"""Definitions shared by the backend and the Blender add-on.

Pure Python + numpy (+ msgpack for the protocol): this package is vendored into the
add-on and must import inside Blender's own Python without torch.
"""
