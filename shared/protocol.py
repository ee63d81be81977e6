"""The wire protocol between the Blender add-on (or any client) and the backend service.

One definition of every message, used by both sides; pure Python + msgpack + numpy so that it
runs in Blender's own Python. A message is a ZeroMQ multipart message:

    [header, frame_0, frame_1, ...]

`header` is a msgpack map {"v": PROTOCOL_VERSION, "type": <name>, "id": <request id>, ...fields,
"frames": [{"dtype": "uint8" | "float16" | "float32", "shape": [...]}, ...]} and each frame is the
raw C-order bytes of one array (images travel as raw frames, never inside msgpack; so does the
body mesh of `loaded`, as tables of a fixed dtype each: ArrayFrame). Every
inbound message is checked on decode: sizes before unpacking (msgpack's own limits too), then
the type, every field's type, shape, range and finiteness; anything else is a ProtocolError
with a code and a human message, which the receiver sends back as an `error` message.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import msgpack
import numpy as np

from .camera import MAX_IMAGE_SIDE, MIN_IMAGE_SIDE
from .smpl import NUM_JOINTS, POSE_DIM

PROTOCOL_VERSION = 2   # 2: depth frames with renders, the body mesh (proxy) in `loaded`
DEFAULT_PORT = 5557

MAX_HEADER_BYTES = 1 << 20          # a header is small: parameters, never pixels
MAX_FRAMES = 4                      # raw arrays per message (photo, mask, preview, ...)
MAX_FRAME_BYTES = 4096 * 4096 * 4 * 2  # a 4096² RGBA float16 image
MAX_STRING = 4096
MAX_PROMPT = 1000
MAX_SEQUENCE = 10_000               # poses/cameras in one render stream
# Views per render_stream request that a client sends: even 17-digit floats keep such a header
# under a quarter of MAX_HEADER_BYTES (tests/test_protocol.py measures it); longer animations
# are split into several requests by shared/client.py.
STREAM_CHUNK = 200
# ZeroMQ's MAXMSGSIZE applies to each part of a multipart message: the largest part is a frame
MAX_PART_BYTES = max(MAX_HEADER_BYTES, MAX_FRAME_BYTES)
# Frames of one stream in flight (sent, not yet acknowledged) stay under this many bytes: the
# server lowers a stream's window for big frames, so a stalled client never holds more.
MAX_STREAM_BYTES_IN_FLIGHT = 256 << 20
MAX_BETAS = 300
# Liveness (the ZeroMQ guide's "Paranoid Pirate"): the server sends every client a heartbeat
# every HEARTBEAT_S; a client that hears nothing at all for HEARTBEAT_S * HEARTBEAT_LIVENESS
# takes the server for gone and reconnects.
HEARTBEAT_S = 2.0
HEARTBEAT_LIVENESS = 5
FRAME_DTYPES = ("uint8", "float16", "float32")
# The body mesh in `loaded` (a client's shadow proxy, bound to its rig): `proxy_vertices` float32
# Vx3 (rest pose, SMPL frame), `proxy_faces` int32 Fx3, and linear-blend skinning as the K
# strongest joints of each vertex, `proxy_joint_index` uint8 VxK and `proxy_joint_weight` float32
# VxK (each row sums to 1). Sizes: SMPL 6890 vertices / 13776 faces, the open body 13718 / 27420
# (its vertices have up to 7 joints: fewer than 7 moves some by ~1 cm in a pose), SMPL-X 10475.
PROXY_KEYS = ("vertices", "faces", "joint_index", "joint_weight")
PROXY_FRAMES = tuple(f"proxy_{k}" for k in PROXY_KEYS)
PROXY_MAX_VERTICES = 1 << 16
PROXY_MAX_FACES = 1 << 17
PROXY_MAX_INFLUENCES = 8
PROXY_WEIGHT_SUM_TOLERANCE = 1e-3
# The mesh bake (`export`): the backend's presets (backend/jobs/avatar_export.py) and the limits a
# request may ask for; the .glb comes back as one uint8 frame of N x 1 bytes
EXPORT_PRESETS = ("default", "tiny")
EXPORT_MAX_TRIANGLES = 1_000_000
EXPORT_MAX_TEXTURE = 4096

# error codes (the `code` field of an `error` message)
BAD_MESSAGE = "bad_message"         # not a valid multipart msgpack message at all
BAD_VERSION = "bad_version"
UNKNOWN_TYPE = "unknown_type"
BAD_FIELD = "bad_field"             # a field is missing, of the wrong type, shape or range
TOO_LARGE = "too_large"
UNKNOWN_AVATAR = "unknown_avatar"
UNKNOWN_JOB = "unknown_job"
BUSY = "busy"                       # a queue is full: try again later
TIMEOUT = "timeout"                 # a render stream waited too long for the client's acks
INTERNAL = "internal"               # the server failed at a task; it goes on serving


class ProtocolError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


# --------------------------------------------------------------------------- field checks

Check = Callable[[Any, str], Any]


def _fail(where: str, what: str):
    raise ProtocolError(BAD_FIELD, f"{where}: {what}")


def integer(lo: int, hi: int) -> Check:
    def check(v, where):
        if isinstance(v, bool) or not isinstance(v, int):
            _fail(where, f"expected an integer, got {type(v).__name__}")
        if not lo <= v <= hi:
            _fail(where, f"{v} is outside {lo}..{hi}")
        return v
    return check


def number(lo: float = -math.inf, hi: float = math.inf) -> Check:
    def check(v, where):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            _fail(where, f"expected a number, got {type(v).__name__}")
        if not math.isfinite(v) or not lo <= v <= hi:
            _fail(where, f"{v} is not a finite number in [{lo}, {hi}]")
        return float(v)
    return check


def string(max_len: int = MAX_STRING, choices: tuple[str, ...] | None = None) -> Check:
    def check(v, where):
        if not isinstance(v, str):
            _fail(where, f"expected a string, got {type(v).__name__}")
        if len(v) > max_len:
            _fail(where, f"longer than {max_len} characters")
        if choices is not None and v not in choices:
            _fail(where, f"{v!r} is not one of {', '.join(choices)}")
        return v
    return check


def boolean(v, where):
    if not isinstance(v, bool):
        _fail(where, f"expected true or false, got {type(v).__name__}")
    return v


def array(*shape: int | None, max_len: int | None = None) -> Check:
    """A list (nested for 2D) of finite numbers of this shape (None: any length up to max_len)
    -> float64 ndarray."""
    def check(v, where):
        if not isinstance(v, (list, tuple)):
            _fail(where, f"expected a list of numbers, got {type(v).__name__}")
        if max_len is not None and len(v) > max_len:
            _fail(where, f"more than {max_len} values")
        try:
            a = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            _fail(where, "expected numbers only")
        if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape)):
            want = "x".join("N" if s is None else str(s) for s in shape)
            _fail(where, f"expected shape {want}, got {'x'.join(map(str, a.shape)) or 'a scalar'}")
        if not np.isfinite(a).all():
            _fail(where, "contains NaN or Inf")
        return a
    return check


def optional(inner: Check) -> Check:
    def check(v, where):
        return None if v is None else inner(v, where)
    return check


def record(**fields: Check) -> Check:
    """A map with exactly these keys (optional ones may be absent)."""
    def check(v, where):
        if not isinstance(v, dict):
            _fail(where, f"expected a map, got {type(v).__name__}")
        unknown = set(v) - set(fields)
        if unknown:
            _fail(where, f"unknown keys {sorted(map(str, unknown))[:5]}")
        return {k: c(v.get(k), f"{where}.{k}") for k, c in fields.items()}
    return check


def list_of(inner: Check, max_len: int) -> Check:
    def check(v, where):
        if not isinstance(v, (list, tuple)):
            _fail(where, f"expected a list, got {type(v).__name__}")
        if len(v) > max_len:
            _fail(where, f"more than {max_len} items")
        return [inner(x, f"{where}[{i}]") for i, x in enumerate(v)]
    return check


def number_map(max_len: int) -> Check:
    """A map of short names to finite numbers (e.g. the losses of one iteration)."""
    def check(v, where):
        if not isinstance(v, dict):
            _fail(where, f"expected a map, got {type(v).__name__}")
        if len(v) > max_len:
            _fail(where, f"more than {max_len} entries")
        return {string(64)(k, f"{where} key"): number()(x, f"{where}.{k}") for k, x in v.items()}
    return check


def required(inner: Check) -> Check:
    def check(v, where):
        if v is None:
            _fail(where, "missing")
        return inner(v, where)
    return check


_side = integer(MIN_IMAGE_SIDE, MAX_IMAGE_SIDE)
CAMERA = record(K=required(array(3, 3)), R=required(array(3, 3)), t=required(array(3)),
                width=required(_side), height=required(_side))
POSE = required(array(POSE_DIM))
TRANSL = required(array(3))
AVATAR_ID = required(string(128))
FORMAT = optional(string(16, ("uint8", "float16")))
# also send the avatar's depth with each frame: a float32 H x W `depth` frame, the expected camera
# depth (z along the camera's viewing axis, metres) of the volume render where alpha > 0, else 0
DEPTH = optional(boolean)


def _camera_ok(cam: dict, where: str) -> dict:
    R = cam["R"]
    if np.abs(R).max() > 1.0 + 1e-4 or not np.allclose(R @ R.T, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0:
        _fail(f"{where}.R", "not a rotation matrix")
    K = cam["K"]
    if not (K[0, 0] > 0 and K[1, 1] > 0 and np.allclose(K[2], [0, 0, 1])):
        _fail(f"{where}.K", "not pinhole intrinsics (positive focal lengths, last row 0 0 1)")
    return cam


def camera(v, where):
    return _camera_ok(required(CAMERA)(v, where), where)


VIEW = record(pose=POSE, transl=TRANSL, camera=required(camera))
# how the server's single compute worker is: alive, tasks that failed (each answered with an
# `internal` error), the last failure's message, and what waits
WORKER_HEALTH = record(alive=required(boolean), failures=required(integer(0, 1 << 62)),
                       last_error=optional(string(MAX_STRING)), queued=required(integer(0, 1 << 31)))


@dataclasses.dataclass(frozen=True)
class ArrayFrame:
    """A frame that is no image: a table of one dtype, `rows` x `cols` (ranges, inclusive)."""
    dtype: str
    rows: tuple[int, int]
    cols: tuple[int, int]


def _proxy_ok(frames: dict) -> None:
    """The proxy frames of a `loaded`: all four or none, of one vertex count, faces and joints
    indexing what exists, weights non-negative and summing to 1 per vertex."""
    present = [n for n in PROXY_FRAMES if n in frames]
    if not present:
        return
    if len(present) != len(PROXY_FRAMES):
        _fail("loaded", f"proxy frames come all together ({', '.join(PROXY_FRAMES)}); got only {present}")
    v, f, ji, jw = (frames[n] for n in PROXY_FRAMES)
    V = v.shape[0]
    if ji.shape[0] != V or jw.shape != ji.shape:
        _fail("loaded.proxy", f"{V} vertices but joint_index {list(ji.shape)} and joint_weight {list(jw.shape)}")
    if f.min() < 0 or f.max() >= V:
        _fail("loaded.proxy_faces", f"vertex indices outside 0..{V - 1}")
    if ji.max() >= NUM_JOINTS:
        _fail("loaded.proxy_joint_index", f"joint indices outside 0..{NUM_JOINTS - 1}")
    if not np.isfinite(v).all():   # (a receiver checks every float frame; this is for senders)
        _fail("loaded.proxy_vertices", "contains NaN or Inf")
    if not (jw.min() >= 0 and np.abs(jw.sum(1, dtype=np.float64) - 1.0).max() <= PROXY_WEIGHT_SUM_TOLERANCE):
        _fail("loaded.proxy_joint_weight", "weights must be >= 0 and sum to 1 for every vertex")


def proxy_frames(proxy: dict | None) -> dict[str, np.ndarray]:
    """A proxy mesh {vertices, faces, joint_index, joint_weight} as the frames of `loaded`."""
    if proxy is None:
        return {}
    return {f"proxy_{k}": np.ascontiguousarray(proxy[k], dtype=PROXY_ARRAYS[f"proxy_{k}"].dtype)
            for k in PROXY_KEYS}


def proxy_from_frames(frames: dict) -> dict | None:
    """The proxy mesh {vertices, faces, joint_index, joint_weight} a `loaded` carried (None: none)."""
    if PROXY_FRAMES[0] not in frames:
        return None
    return {k: frames[f"proxy_{k}"] for k in PROXY_KEYS}


_vertex_rows = (1, PROXY_MAX_VERTICES)
PROXY_ARRAYS = dict(zip(PROXY_FRAMES, (
    ArrayFrame("float32", _vertex_rows, (3, 3)), ArrayFrame("int32", (1, PROXY_MAX_FACES), (3, 3)),
    ArrayFrame("uint8", _vertex_rows, (1, PROXY_MAX_INFLUENCES)),
    ArrayFrame("float32", _vertex_rows, (1, PROXY_MAX_INFLUENCES)))))


# --------------------------------------------------------------------------- message types

@dataclasses.dataclass(frozen=True)
class MessageType:
    name: str
    fields: dict[str, Check]
    frames: tuple[str, ...] = ()       # names of the frames it carries (all may be optional)
    doc: str = ""
    # frames that are tables, not images (the others follow the image rules: FRAME_DTYPES, 1 to 3
    # sides of at most MAX_IMAGE_SIDE)
    arrays: dict[str, ArrayFrame] = dataclasses.field(default_factory=dict)
    # checks across the decoded frames (shapes that must agree, index ranges); raises ProtocolError
    check_frames: Callable[[dict], None] | None = None


_HEADER_KEYS = ("v", "type", "id", "frames")


def _types(*defs: MessageType) -> dict[str, MessageType]:
    for d in defs:
        clash = set(d.fields) & set(_HEADER_KEYS)
        assert not clash, f"{d.name}: field names {clash} are reserved for the header"
    return {d.name: d for d in defs}


MESSAGES = _types(
    # handshake and liveness
    MessageType("hello", {"client": required(string(200)), "protocol": required(integer(0, 1 << 16))},
                doc="client -> server, first: who is asking and which protocol it speaks"),
    MessageType("welcome", {"protocol": required(integer(0, 1 << 16)), "server": required(string(200)),
                            "capabilities": required(record(
                                device=required(string(64)), body_models=required(list_of(string(200), 64)),
                                clip=required(boolean), presets=required(list_of(string(32), 16)),
                                max_image_side=required(integer(1, MAX_IMAGE_SIDE)))),
                            "worker": optional(WORKER_HEALTH)},
                doc="server -> client: protocol version and what this server can do"),
    MessageType("ping", {}, doc="either way; answered by pong"),
    MessageType("pong", {"worker": optional(WORKER_HEALTH)},
                doc="server -> client: alive; a server also says how its compute worker is"),
    MessageType("heartbeat", {}, doc="either way, every few seconds while connected"),
    # fitting
    MessageType("fit", {"pose": optional(array(POSE_DIM)), "transl": optional(array(3)), "camera": required(camera),
                        "betas": optional(array(None, max_len=MAX_BETAS)),
                        "prompt": optional(string(MAX_PROMPT)), "preset": optional(string(32)),
                        "body": optional(string(200)), "fit_body": optional(boolean),
                        "name": optional(string(200))},
                frames=("photo", "mask"),
                doc="client -> server: photo (uint8 HxWx3|4) [+ mask uint8 HxW] + the photo's camera [+ body "
                    "params: pose and transl together; without them the server estimates the body from the photo]"),
    MessageType("accepted", {"job": required(string(64)), "warnings": optional(list_of(string(1000), 16))},
                doc="server -> client: a fit job is queued (its id is also the avatar's id)"),
    MessageType("progress", {"job": required(string(64)), "stage": required(string(8)),
                             "iteration": required(integer(0, 1 << 31)), "total": required(integer(0, 1 << 31)),
                             "losses": optional(number_map(64)),
                             "eta_s": optional(number(0.0)),
                             "body": optional(record(pose=POSE, transl=TRANSL, camera=required(camera),
                                                     rest_joints=required(array(24, 3))))},
                frames=("preview",), doc="server -> client during a fit; preview every N iterations; once, "
                                         "as stage B starts, the body the avatar is fitted on (estimated "
                                         "from a photo alone, or the given one refined): a rig can be posed "
                                         "like the photo before the fit ends"),
    MessageType("done", {"job": required(string(64)), "avatar": AVATAR_ID,
                         "warnings": optional(list_of(string(1000), 16))}),
    MessageType("cancel", {"job": required(string(64))}),
    MessageType("cancelled", {"job": required(string(64))}),
    # avatars
    MessageType("list", {}),
    MessageType("avatars", {"avatars": required(list_of(record(
        id=AVATAR_ID, stage=required(string(16)), iteration=required(integer(0, 1 << 31)),
        preset=required(string(32)), name=optional(string(200))), 10_000))}),
    MessageType("load", {"avatar": AVATAR_ID}, doc="client -> server: get an avatar ready; answered by loaded"),
    MessageType("delete", {"avatar": AVATAR_ID},
                doc="client -> server: remove an avatar and its inputs from the store (a queued fit is "
                    "dropped; a running one must be cancelled first); answered by deleted"),
    MessageType("deleted", {"avatar": AVATAR_ID}),
    MessageType("loaded", {"avatar": AVATAR_ID, "stage": required(string(16)),
                           "iteration": required(integer(0, 1 << 31)), "preset": required(string(32)),
                           "pose": POSE, "transl": TRANSL, "camera": required(camera),
                           "rest_joints": required(array(24, 3)),
                           "warnings": optional(list_of(string(1000), 16))},
                frames=PROXY_FRAMES, arrays=PROXY_ARRAYS, check_frames=_proxy_ok,
                doc="server -> client: the fitted body (pose, translation, rest joints for a rig) and the photo's "
                    "camera [+ the body's rest-pose mesh with skinning, a shadow proxy for a rig: PROXY_FRAMES]"),
    MessageType("export", {"avatar": AVATAR_ID, "preset": optional(string(32, EXPORT_PRESETS)),
                           "triangles": optional(integer(100, EXPORT_MAX_TRIANGLES)),
                           "texture": optional(integer(64, EXPORT_MAX_TEXTURE))},
                doc="client -> server: bake a finished avatar into a rigged, textured mesh (a minute or so on a "
                    "CPU; the worker renders nothing meanwhile); answered by exported"),
    MessageType("exported", {"avatar": AVATAR_ID, "triangles": required(integer(0, 1 << 31)),
                             "vertices": required(integer(0, 1 << 31)), "texture": required(integer(1, 1 << 16)),
                             "seconds": required(number(0.0))},
                frames=("glb",), arrays={"glb": ArrayFrame("uint8", (12, MAX_FRAME_BYTES), (1, 1))},
                doc="server -> client: the baked avatar as a glTF binary (.glb: the 24-joint SMPL skeleton, "
                    "skinning weights, UVs and the colour texture)"),
    # rendering
    MessageType("render", {"avatar": AVATAR_ID, "view": required(VIEW), "format": FORMAT, "depth": DEPTH},
                doc="client -> server: one frame; answered by frame"),
    MessageType("render_stream", {"avatar": AVATAR_ID, "views": required(list_of(VIEW, MAX_SEQUENCE)), "depth": DEPTH,
                                  "format": FORMAT, "window": optional(integer(1, 64))},
                doc="client -> server: frames come back in order, at most `window` unacknowledged"),
    MessageType("ack", {"stream": required(string(64)), "index": required(integer(0, MAX_SEQUENCE))},
                doc="client -> server: frame `index` of a stream was received (back-pressure)"),
    MessageType("frame", {"index": required(integer(0, MAX_SEQUENCE)), "stream": optional(string(64)),
                          "seconds": optional(number(0.0))},
                frames=("rgba", "depth"), doc="server -> client: an RGBA image (uint8 or float16, straight alpha) "
                                               "[+ its depth, float32 H x W, when asked for]"),
    MessageType("stream_done", {"stream": required(string(64)), "count": required(integer(0, MAX_SEQUENCE))}),
    MessageType("stream_cancel", {"request": required(integer(0, (1 << 63) - 1))},
                doc="client -> server: stop the render_stream sent with this request id; answered by "
                    "stream_cancelled (also when that stream has already ended)"),
    MessageType("stream_cancelled", {"request": required(integer(0, (1 << 63) - 1))}),
    MessageType("error", {"code": required(string(64)), "message": required(string(MAX_STRING))}),
)


@dataclasses.dataclass
class Message:
    type: str
    fields: dict
    frames: dict[str, np.ndarray]
    id: int = 0


# --------------------------------------------------------------------------- encoding

def encode(type_: str, fields: dict | None = None, frames: dict[str, np.ndarray] | None = None,
           id: int = 0) -> list[bytes]:
    """A message as multipart frames. Fields are validated here too: a sender can't emit what a
    receiver would refuse."""
    spec = MESSAGES.get(type_)
    if spec is None:
        raise ProtocolError(UNKNOWN_TYPE, f"no message type {type_!r}")
    fields = {k: _plain(v) for k, v in (fields or {}).items()}  # numpy values become plain lists/numbers
    _validate_fields(spec, fields)
    frames = {k: v for k, v in (frames or {}).items() if v is not None}
    unknown = set(frames) - set(spec.frames)
    if unknown:
        raise ProtocolError(BAD_FIELD, f"{type_} carries no frame {sorted(unknown)}")
    header = {"v": PROTOCOL_VERSION, "type": type_, "id": int(id), **fields}
    header["frames"] = []
    parts = []
    for name in spec.frames:
        if name in frames:
            a = np.ascontiguousarray(frames[name])
            if name in spec.arrays:
                _check_array_frame(spec, name, a.dtype.name, list(a.shape))
            elif a.dtype.name not in FRAME_DTYPES:
                raise ProtocolError(BAD_FIELD, f"frame {name}: dtype {a.dtype} is not one of {FRAME_DTYPES}")
            header["frames"].append({"name": name, "dtype": a.dtype.name, "shape": list(a.shape)})
            parts.append(a.tobytes())
    if spec.check_frames is not None:
        spec.check_frames({k: np.asarray(v) for k, v in frames.items()})
    return [msgpack.packb(header, use_bin_type=True)] + parts


def _plain(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _validate_fields(spec: MessageType, fields: dict) -> dict:
    unknown = set(fields) - set(spec.fields) - set(_HEADER_KEYS)
    if unknown:
        raise ProtocolError(BAD_FIELD, f"{spec.name}: unknown fields {sorted(map(str, unknown))[:5]}")
    return {k: check(fields.get(k), f"{spec.name}.{k}") for k, check in spec.fields.items()}


def decode(parts: list[bytes]) -> Message:
    """Check and decode a received multipart message. Raises ProtocolError (never anything
    else) for anything malformed."""
    if not isinstance(parts, (list, tuple)) or not parts:
        raise ProtocolError(BAD_MESSAGE, "empty message")
    if len(parts) > 1 + MAX_FRAMES:
        raise ProtocolError(TOO_LARGE, f"{len(parts) - 1} frames; at most {MAX_FRAMES}")
    head = parts[0]
    if len(head) > MAX_HEADER_BYTES:
        raise ProtocolError(TOO_LARGE, f"header of {len(head)} bytes; at most {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(bytes(head), raw=False, strict_map_key=True,
                                 max_str_len=MAX_STRING * 4, max_bin_len=0, max_array_len=MAX_SEQUENCE * 2,
                                 max_map_len=256, max_ext_len=0)
    except Exception as exc:  # noqa: BLE001 - msgpack raises many kinds; all mean "malformed"
        raise ProtocolError(BAD_MESSAGE, f"header is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise ProtocolError(BAD_MESSAGE, "header is not a map")
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(BAD_VERSION, f"protocol version {header.get('v')!r}; this side speaks {PROTOCOL_VERSION}")
    type_ = header.get("type")
    spec = MESSAGES.get(type_) if isinstance(type_, str) else None
    if spec is None:
        raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {str(type_)[:64]!r}")
    msg_id = header.get("id", 0)
    if isinstance(msg_id, bool) or not isinstance(msg_id, int) or not 0 <= msg_id < 1 << 63:
        raise ProtocolError(BAD_FIELD, f"{type_}.id: expected a non-negative integer")
    descriptors = header.get("frames", [])
    fields = _validate_fields(spec, {k: v for k, v in header.items() if k not in _HEADER_KEYS})
    frames = _decode_frames(spec, descriptors, parts[1:])
    return Message(type_, fields, frames, msg_id)


def _decode_frames(spec: MessageType, descriptors, raw: list[bytes]) -> dict[str, np.ndarray]:
    if not isinstance(descriptors, list) or len(descriptors) != len(raw):
        raise ProtocolError(BAD_MESSAGE, f"{spec.name}: frame descriptors do not match the {len(raw)} frames sent")
    out = {}
    for d, data in zip(descriptors, raw):
        if not isinstance(d, dict) or d.get("name") not in spec.frames or d["name"] in out:
            raise ProtocolError(BAD_FIELD, f"{spec.name}: unexpected frame {str(d)[:80]}")
        name = d["name"]
        dtype, shape = d.get("dtype"), d.get("shape")
        if name in spec.arrays:
            _check_array_frame(spec, name, dtype, shape)
        elif dtype not in FRAME_DTYPES:
            raise ProtocolError(BAD_FIELD, f"{spec.name}.{name}: dtype {str(dtype)[:20]!r} is not one of {FRAME_DTYPES}")
        elif (not isinstance(shape, list) or not 1 <= len(shape) <= 3
                or any(isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= MAX_IMAGE_SIDE for n in shape)):
            raise ProtocolError(BAD_FIELD, f"{spec.name}.{name}: shape must be 1 to 3 sides of 1..{MAX_IMAGE_SIDE}")
        if len(data) > MAX_FRAME_BYTES:
            raise ProtocolError(TOO_LARGE, f"{spec.name}.{name}: {len(data)} bytes; at most {MAX_FRAME_BYTES}")
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if len(data) != expected:
            raise ProtocolError(BAD_FIELD, f"{spec.name}.{name}: {len(data)} bytes for shape {shape} {dtype} "
                                           f"({expected} expected)")
        a = np.frombuffer(data, dtype=dtype).reshape(shape)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ProtocolError(BAD_FIELD, f"{spec.name}.{name}: contains NaN or Inf")
        out[name] = a
    if spec.check_frames is not None:
        spec.check_frames(out)
    return out


def _check_array_frame(spec: MessageType, name: str, dtype, shape) -> None:
    rule = spec.arrays[name]
    if dtype != rule.dtype:
        raise ProtocolError(BAD_FIELD, f"{spec.name}.{name}: dtype {str(dtype)[:20]!r}; expected {rule.dtype}")
    ok = (isinstance(shape, list) and len(shape) == 2
          and all(not isinstance(n, bool) and isinstance(n, int) for n in shape)
          and rule.rows[0] <= shape[0] <= rule.rows[1] and rule.cols[0] <= shape[1] <= rule.cols[1])
    if not ok:
        raise ProtocolError(BAD_FIELD, f"{spec.name}.{name}: shape {str(shape)[:40]}; expected "
                                       f"{rule.rows[0]}..{rule.rows[1]} rows of {rule.cols[0]}..{rule.cols[1]}")


def error_message(exc: ProtocolError, id: int = 0) -> list[bytes]:
    return encode("error", {"code": exc.code, "message": exc.message[:MAX_STRING]}, id=id)
