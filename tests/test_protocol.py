"""The wire protocol: every message round-trips, and anything malformed is a ProtocolError
with a code (never another exception), including random and mutated bytes."""
import math

import msgpack
import numpy as np
import pytest

from shared import protocol as P
from shared.camera import PinholeCamera

CAM = PinholeCamera.from_focal(500.0, 64, 48).to_dict()
VIEW = {"pose": [0.0] * 72, "transl": [0.0, 0.1, 3.0], "camera": CAM}


def valid_messages():
    photo = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
    return [
        ("hello", {"client": "test", "protocol": 1}, {}),
        ("welcome", {"protocol": 1, "server": "backend 0.1", "capabilities": {
            "device": "cpu", "body_models": ["open_body"], "clip": False, "presets": ["quick", "full"],
            "max_image_side": 8192}}, {}),
        ("ping", {}, {}),
        ("fit", {"pose": VIEW["pose"], "transl": VIEW["transl"], "camera": CAM, "prompt": "red shirt",
                 "preset": "tiny"}, {"photo": photo, "mask": np.ones((48, 64), np.uint8)}),
        ("progress", {"job": "j1", "stage": "B", "iteration": 3, "total": 20, "losses": {"mse": 0.1},
                      "eta_s": 1.5}, {"preview": np.zeros((8, 8, 4), np.uint8)}),
        ("render", {"avatar": "a1", "view": VIEW, "format": "float16"}, {}),
        ("render_stream", {"avatar": "a1", "views": [VIEW] * 3, "window": 2}, {}),
        ("frame", {"index": 2, "stream": "s1", "seconds": 0.01}, {"rgba": np.zeros((4, 5, 4), np.float16)}),
        ("avatars", {"avatars": [{"id": "a1", "stage": "done", "iteration": 20, "preset": "tiny"}]}, {}),
        ("error", {"code": P.BAD_FIELD, "message": "x"}, {}),
    ]


@pytest.mark.parametrize("type_,fields,frames", valid_messages(), ids=lambda v: v if isinstance(v, str) else "")
def test_round_trip(type_, fields, frames):
    parts = P.encode(type_, fields, frames, id=7)
    assert len(parts) == 1 + len(frames)
    msg = P.decode(parts)
    assert msg.type == type_ and msg.id == 7
    for k, v in fields.items():
        got = msg.fields[k]
        assert np.allclose(got, v) if isinstance(got, np.ndarray) else got is not None
    for k, a in frames.items():
        assert msg.frames[k].dtype == a.dtype and np.array_equal(msg.frames[k], a)


def _header(parts):
    return msgpack.unpackb(parts[0], raw=False)


def _with(parts, **changes):
    h = _header(parts)
    h.update(changes)
    return [msgpack.packb(h, use_bin_type=True)] + list(parts[1:])


@pytest.mark.parametrize("parts,code,text", [
    ([], P.BAD_MESSAGE, "empty"),
    ([b"\xc1\xff\x00"], P.BAD_MESSAGE, "not valid msgpack"),
    ([msgpack.packb([1, 2])], P.BAD_MESSAGE, "not a map"),
    ([b"x" * (P.MAX_HEADER_BYTES + 1)], P.TOO_LARGE, "header"),
    ([msgpack.packb({"v": 99, "type": "ping"})], P.BAD_VERSION, "99"),
    ([msgpack.packb({"v": P.PROTOCOL_VERSION, "type": "launch_missiles"})], P.UNKNOWN_TYPE, "launch_missiles"),
    ([msgpack.packb({"v": P.PROTOCOL_VERSION, "type": "ping", "extra": 1})], P.BAD_FIELD, "unknown fields"),
    ([msgpack.packb({"v": P.PROTOCOL_VERSION, "type": "ping", "id": -1})], P.BAD_FIELD, "id"),
    ([msgpack.packb({"v": P.PROTOCOL_VERSION, "type": "ping"})] + [b""] * 9, P.TOO_LARGE, "frames"),
])
def test_malformed_messages(parts, code, text):
    with pytest.raises(P.ProtocolError) as e:
        P.decode(parts)
    assert e.value.code == code and text in e.value.message


def test_field_checks_name_the_field():
    render = P.encode("render", {"avatar": "a", "view": VIEW})
    cases = [
        (dict(view={**VIEW, "pose": [0.0] * 71}), "render.view.pose: expected shape 72"),
        (dict(view={**VIEW, "pose": [math.nan] + [0.0] * 71}), "NaN"),
        (dict(view={**VIEW, "transl": ["a", 1, 2]}), "numbers only"),
        (dict(view={**VIEW, "camera": {**CAM, "width": 100000}}), "render.view.camera.width"),
        (dict(view={**VIEW, "camera": {**CAM, "R": [[2, 0, 0], [0, 1, 0], [0, 0, 1]]}}), "not a rotation"),
        (dict(view={**VIEW, "camera": {**CAM, "K": [[-5, 0, 1], [0, 5, 1], [0, 0, 1]]}}), "pinhole"),
        (dict(avatar=None), "render.avatar: missing"),
        (dict(avatar=5), "expected a string"),
        (dict(format="png"), "not one of"),
    ]
    for change, text in cases:
        with pytest.raises(P.ProtocolError) as e:
            P.decode(_with(render, **change))
        assert e.value.code == P.BAD_FIELD and text in e.value.message, (change, e.value.message)
    # a bool is not an integer, even though Python says so
    with pytest.raises(P.ProtocolError, match="expected an integer"):
        P.decode(_with(P.encode("frame", {"index": 1}), index=True))


def test_frame_checks():
    parts = P.encode("frame", {"index": 0}, {"rgba": np.zeros((4, 4, 4), np.uint8)})
    with pytest.raises(P.ProtocolError, match="bytes for shape"):
        P.decode([parts[0], parts[1][:-1]])
    with pytest.raises(P.ProtocolError, match="do not match"):
        P.decode(parts[:1])
    bad = _with(parts, frames=[{"name": "rgba", "dtype": "object", "shape": [4, 4, 4]}])
    with pytest.raises(P.ProtocolError, match="dtype"):
        P.decode(bad)
    bad = _with(parts, frames=[{"name": "rgba", "dtype": "uint8", "shape": [0, 4, 4]}])
    with pytest.raises(P.ProtocolError, match="shape"):
        P.decode(bad)
    nan = P.encode("frame", {"index": 0}, {"rgba": np.full((2, 2, 4), np.nan, np.float16)})
    with pytest.raises(P.ProtocolError, match="NaN"):
        P.decode(nan)
    with pytest.raises(P.ProtocolError, match="carries no frame"):
        P.encode("ping", {}, {"rgba": np.zeros(3, np.uint8)})


def test_sender_cannot_emit_what_the_receiver_refuses():
    with pytest.raises(P.ProtocolError, match="render.view.pose"):
        P.encode("render", {"avatar": "a", "view": {**VIEW, "pose": [0.0] * 3}})


def test_random_and_mutated_bytes_only_ever_raise_protocol_errors():
    rng = np.random.default_rng(0)
    seeds = [P.encode(t, f, fr) for t, f, fr in valid_messages()]
    accepted = 0
    for i in range(3000):
        parts = [bytearray(p) for p in seeds[i % len(seeds)]]
        kind = i % 3
        if kind == 0:      # flip bytes in the header
            h = parts[0]
            for _ in range(int(rng.integers(1, 6))):
                h[int(rng.integers(0, len(h)))] = int(rng.integers(0, 256))
        elif kind == 1:    # random header bytes
            parts[0] = bytearray(rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes())
        else:              # truncate or drop frames
            parts = parts[: int(rng.integers(0, len(parts) + 1))]
            if parts:
                parts[-1] = parts[-1][: int(rng.integers(0, len(parts[-1]) + 1))]
        try:
            P.decode([bytes(p) for p in parts])
            accepted += 1
        except P.ProtocolError as e:
            assert e.code in (P.BAD_MESSAGE, P.BAD_VERSION, P.UNKNOWN_TYPE, P.BAD_FIELD, P.TOO_LARGE)
    assert accepted < 3000  # most mutations are refused; the rest decoded into valid messages


def test_a_stream_chunk_of_views_stays_far_below_the_header_limit():
    """shared/client.py sends STREAM_CHUNK views per request; with full-precision random floats
    (the largest msgpack encoding) such a header is under a quarter of the limit."""
    rng = np.random.default_rng(0)
    cam = {"K": [[1234.56789012345, 0.0, 256.123456789], [0.0, 1234.56789012345, 256.987654321], [0, 0, 1]],
           "R": np.linalg.qr(rng.normal(size=(3, 3)))[0] * [1, 1, 1], "t": rng.normal(size=3),
           "width": 8192, "height": 8192}
    if np.linalg.det(cam["R"]) < 0:
        cam["R"] = -cam["R"]
    views = [{"pose": rng.normal(size=72) * 0.3, "transl": rng.normal(size=3), "camera": cam}
             for _ in range(P.STREAM_CHUNK)]
    header = P.encode("render_stream", {"avatar": "a" * 32, "views": views, "format": "uint8", "window": 4})[0]
    assert len(header) < P.MAX_HEADER_BYTES / 4
    assert P.decode([header]).fields["views"][-1]["pose"].shape == (72,)
