"""The farm: backends as Ray actors behind one ZeroMQ front (docs/farm.md).

config.py (settings, no heavy imports), actor.py (a worker: one Engine on one GPU or CPU slot),
dispatcher.py (the front's stand-in for the single worker: chunks, least-loaded placement,
retries), cluster.py (start or join a Ray cluster, place the workers). Only `python -m backend
farm` imports this package; `serve` never does.
"""
