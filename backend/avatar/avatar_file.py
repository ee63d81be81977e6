"""The avatar file (.avatar): everything needed to render the avatar again or resume its fit.

A torch-serialised dict of tensors and plain values only, so it loads with
`torch.load(weights_only=True)` (no arbitrary code from a file). It records the format
version, the body model's identity (an avatar only makes sense on the exact body it was fitted
with), the fit config, the input camera and body parameters, the learned state and, while a fit
runs, the optimiser state. Writes are atomic: a killed process leaves the previous file whole.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch

from backend.avatar.avatar import Avatar
from backend.avatar.config import AvatarFitConfig
from backend.body.body_model import BodyModel, load_body_model
from backend.errors import AvatarError
from shared.camera import PinholeCamera

FORMAT = "one-shot-avatar"
FORMAT_VERSION = 1


class AvatarFileError(AvatarError, ValueError):
    """An avatar file is missing, damaged, from another version or for another body."""


@dataclasses.dataclass
class AvatarRecord:
    avatar: Avatar
    config: AvatarFitConfig
    camera: PinholeCamera          # the input photo's camera
    pose: np.ndarray               # (72,) fitted body pose of the photo
    transl: np.ndarray             # (3,)
    body_spec: str                 # "open_body" or the SMPL file it was made with
    stage: str                     # "A", "B" (fit in progress) or "done"
    iteration: int                 # stage-B iterations done
    optimiser: dict | None = None  # optimiser state while a fit runs
    rng: dict | None = None        # numpy generator state while a fit runs
    report: dict | None = None     # losses, timings, warnings
    input_key: str = ""            # hash of the inputs a resumed fit must match


def save_avatar(path, rec: AvatarRecord) -> None:
    path = Path(path)
    payload = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "body": {"spec": rec.body_spec, "identity": rec.avatar.body.identity},
        "config": rec.config.to_dict(),
        "camera": rec.camera.to_dict(),
        "pose": torch.as_tensor(np.asarray(rec.pose, dtype=np.float32)),
        "transl": torch.as_tensor(np.asarray(rec.transl, dtype=np.float32)),
        "state": {k: v.detach().cpu() for k, v in rec.avatar.avatar_state().items()},
        "stage": rec.stage, "iteration": int(rec.iteration),
        "optimiser": rec.optimiser, "rng": rec.rng, "report": rec.report or {},
        "input_key": rec.input_key,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_avatar(path, body: BodyModel | None = None, device="cpu") -> AvatarRecord:
    path = Path(path)
    if not path.is_file():
        raise AvatarFileError(f"{path}: no such avatar file (make one with 'avatar-backend fit')")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means a damaged file
        raise AvatarFileError(f"{path}: not a readable avatar file ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise AvatarFileError(f"{path}: not an avatar file (no '{FORMAT}' header)")
    if data.get("version") != FORMAT_VERSION:
        raise AvatarFileError(f"{path}: avatar format version {data.get('version')} is not supported "
                              f"by this backend (it reads version {FORMAT_VERSION}); refit or update")
    try:
        spec, identity = str(data["body"]["spec"]), str(data["body"]["identity"])
        config = AvatarFitConfig.from_dict(data["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AvatarFileError(f"{path}: a damaged or hostile avatar file ({exc})") from None
    if body is None:
        try:
            body = load_body_model(spec)
        except AvatarError as exc:
            raise AvatarFileError(f"{path}: its body model cannot be loaded: {exc}") from None
    if body.identity != identity:
        raise AvatarFileError(f"{path}: made with body model {identity}, but the loaded body is "
                              f"{body.identity}; use the same body model file as for the fit")
    body = body.to(device)
    state = data["state"]
    avatar = Avatar(body, state["betas"].numpy()[0], config.field, config.motion, config.render).to(device)
    try:
        avatar.load_avatar_state(state)
    except (ValueError, RuntimeError) as exc:
        raise AvatarFileError(f"{path}: its learned state does not match its config ({exc})") from None
    cam = data["camera"]
    camera = PinholeCamera(np.array(cam["K"]), np.array(cam["R"]), np.array(cam["t"]), cam["width"], cam["height"])
    return AvatarRecord(avatar, config, camera, data["pose"].numpy(), data["transl"].numpy(), spec,
                        data["stage"], int(data["iteration"]), data.get("optimiser"), data.get("rng"),
                        data.get("report"), data.get("input_key", ""))
