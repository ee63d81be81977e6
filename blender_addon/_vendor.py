"""The shared/ package: vendored inside the built add-on, or the source tree's during development."""
try:
    from . import shared  # noqa: F401  (the installed zip carries shared/ inside the add-on)
    from .shared import camera, smpl  # noqa: F401
except ImportError:
    import shared  # noqa: F401  (running from the repository: shared/ is on sys.path)
    from shared import camera, smpl  # noqa: F401
