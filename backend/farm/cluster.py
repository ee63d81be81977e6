"""Start (or join) a Ray cluster and run the farm's workers on it, behind the one ZeroMQ front.

    server = start_farm(ServerConfig(store=...), FarmConfig(workers=2))
    server.serve()        # the same front as `serve`; stop() / Ctrl-C shuts the workers down

Placement: on a cluster with GPUs, one worker per GPU (Ray gives each actor its own GPU: it sees
it as cuda:0); without, one worker per `cpus_per_worker` CPUs. Every worker opens the same store
folder, so on a real cluster the store must be a filesystem every node mounts at the same path.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from backend.errors import AvatarError
from backend.farm.config import FarmConfig
from backend.service.server import Server, ServerConfig
from shared.camera import MAX_IMAGE_SIDE

log = logging.getLogger("avatar.farm")
START_TIMEOUT_S = 600.0   # workers import torch and load the body: minutes on a cold node


def _runtime_env(cfg: FarmConfig) -> dict | None:
    if not cfg.ship_code:
        return None
    import backend
    import shared

    return {"py_modules": [str(Path(backend.__file__).parent), str(Path(shared.__file__).parent)]}


def connect(cfg: FarmConfig, workers_wanted: int) -> None:
    """ray.init: join cfg.address, or start a local cluster with room for the workers."""
    import ray

    # workers report through their answers; their own logs stay in Ray's session folder
    common = dict(runtime_env=_runtime_env(cfg), log_to_driver=False, configure_logging=False)
    if cfg.address:
        try:
            ray.init(address=cfg.address, **common)
        except (ConnectionError, RuntimeError) as exc:   # no cluster there, or Ray's token does not match
            raise AvatarError(f"could not join the Ray cluster at {cfg.address}: {str(exc).splitlines()[0][:300]} "
                              f"(is it running, and do RAY_AUTH_MODE / RAY_AUTH_TOKEN match its nodes'? "
                              f"see docs/farm.md)") from None
        return
    cpus = os.cpu_count() or 1
    if workers_wanted:   # more CPU workers than cores is allowed (they share the cores), said once
        needed = workers_wanted * cfg.cpus_per_worker
        if needed > cpus:
            log.warning("%d workers x %d CPUs on a %d-CPU machine: they share the cores", workers_wanted,
                        cfg.cpus_per_worker, cpus)
        cpus = max(cpus, needed)
    ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=cfg.object_store_mb << 20, **common)


def start_farm(server_cfg: ServerConfig, cfg: FarmConfig = FarmConfig(), say=print) -> Server:
    """The front (a Server on server_cfg's address, with its store and CurveZMQ rules) with
    cfg.workers Ray actors behind it. say: where the workers are listed."""
    import ray

    from backend.farm.actor import FarmWorker
    from backend.farm.dispatcher import FarmDispatcher, FarmWorkerHandle

    def make_dispatcher(ctx, outbox, store):
        connect(cfg, cfg.workers)
        try:
            gpus = int(ray.cluster_resources().get("GPU", 0))
            use_gpu = gpus > 0 and server_cfg.device not in ("cpu",)
            cpus_total = int(ray.cluster_resources().get("CPU", 1))
            n = cfg.workers or (gpus if use_gpu else max(1, cpus_total // cfg.cpus_per_worker))
            remote = ray.remote(FarmWorker).options(
                num_gpus=1 if use_gpu else 0, num_cpus=1 if use_gpu else cfg.cpus_per_worker,
                max_restarts=-1, max_task_retries=0, max_concurrency=4)
            device = "cuda" if use_gpu else "cpu"
            actors = [remote.remote(str(Path(server_cfg.store).resolve()), device, server_cfg.preview_every,
                                    cfg.cpus_per_worker) for _ in range(n)]
            try:
                infos = ray.get([a.describe.remote(MAX_IMAGE_SIDE) for a in actors], timeout=START_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                raise AvatarError(f"the cluster did not start {n} workers in {START_TIMEOUT_S:g} s (it has "
                                  f"{cpus_total} CPUs and {gpus} GPUs; each worker wants "
                                  f"{'1 GPU' if use_gpu else f'{cfg.cpus_per_worker} CPUs'})") from None
            handles = [FarmWorkerHandle(i, a, pid=info["pid"], node=info["node"])
                       for i, (a, info) in enumerate(zip(actors, infos))]
            for h, info in zip(handles, infos):
                say(f"worker {h.index}: pid {h.pid} on {h.node} ({info['capabilities']['device']})")
            status = ray.get(actors[0].scan.remote())
            return FarmDispatcher(ctx, outbox, store, handles, infos[0], status, cfg, server_cfg.limits)
        except BaseException:
            ray.shutdown()
            raise

    return Server(server_cfg, make_worker=make_dispatcher)


def stop_farm() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
