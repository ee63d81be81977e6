"""The avatar backend: body prior, avatar field, optimiser, renderer and server."""

__version__ = "0.1.0"
