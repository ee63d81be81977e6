"""Rasterisation and silhouettes of meshes for pinhole cameras."""
