"""The avatar's depth with every frame (issue 13, first step): the model's expected depth, and
`render` / `render_stream` carrying it over real sockets."""
import signal

import numpy as np
import torch

from backend.avatar.avatar_file import load_avatar
from backend.render.raster import camera_tensors, rasterize
from shared import protocol as P
from shared.client import ServiceClient
from tests.backend_process import ServerProcess, store_with, view


def body_depth(avatar, camera, pose, transl) -> np.ndarray:
    """The posed body model's rasterised camera depth (0 off the body)."""
    with torch.no_grad():
        verts = avatar.body(pose, avatar.betas, transl).vertices
        K, R, t = camera_tensors(camera, verts.device, verts.dtype)
        face, depth, _ = (a[0] for a in rasterize(verts, avatar.body.faces, K, R, t, camera.height, camera.width))
    return np.where(face.numpy() >= 0, depth.numpy(), 0.0)


def test_the_avatar_depth_lies_on_its_body_and_is_zero_where_nothing_is(fitted, subject_128):
    rec = load_avatar(fitted / "avatar.avatar")
    s = subject_128
    cam = s["camera"]
    rgba, depth = rec.avatar.render_layers(cam, s["pose"], s["transl"])
    alpha, depth = rgba[..., 3].numpy(), depth.numpy()
    assert depth.shape == (cam.height, cam.width) and np.isfinite(depth).all()
    assert (depth[alpha == 0] == 0).all() and (depth[alpha > 0] > 0).all()
    surface = body_depth(rec.avatar, cam, s["pose"], s["transl"])
    solid = (alpha > 0.5) & (surface > 0)
    error = np.abs(depth[solid] - surface[solid])
    print(f"|avatar depth - body surface| median {np.median(error) * 1000:.1f} mm, 95% {np.percentile(error, 95) * 1000:.1f} mm")
    assert solid.sum() > 500 and np.median(error) < 0.03 and np.percentile(error, 95) < 0.10
    # the camera a metre farther back along its axis: the avatar's depth grows by a metre
    from shared.camera import PinholeCamera

    far = PinholeCamera(cam.K, cam.R, np.asarray(cam.t) + np.array([0.0, 0.0, 1.0]), cam.width, cam.height)
    rgba_far, depth_far = (a.numpy() for a in rec.avatar.render_layers(far, s["pose"], s["transl"]))
    shift = np.median(depth_far[rgba_far[..., 3] > 0.5]) - np.median(depth[alpha > 0.5])
    assert abs(shift - 1.0) < 0.03, shift


def test_render_and_streams_carry_depth_over_the_wire(tmp_path, fitted, subject_128):
    store = store_with(tmp_path, fitted, "good000000000001")
    server = ServerProcess(store)
    rec = load_avatar(fitted / "avatar.avatar")
    v = view(subject_128)
    _, expected = rec.avatar.render_layers(v["camera"], v["pose"], v["transl"])
    try:
        with ServiceClient(server.address, timeout=60) as c:
            rgba, depth = c.render("good000000000001", **v, depth=True)
            assert rgba.shape == (64, 64, 4) and depth.shape == (64, 64) and depth.dtype == np.float32
            seen = rgba[..., 3] > 0
            np.testing.assert_allclose(depth[seen], expected.numpy()[seen], atol=1e-5)
            assert (depth[~seen] == 0).all() and (depth[seen] > 0).all()
            assert c.render("good000000000001", **v).shape == (64, 64, 4)     # without: as before
            frames = list(c.render_stream("good000000000001", [v] * 3, depth=True))
            assert [f[0] for f in frames] == [0, 1, 2] and all(len(f) == 3 for f in frames)
            np.testing.assert_allclose(frames[2][2], depth, atol=1e-5)
    finally:
        server.kill(signal.SIGTERM)


def test_a_frame_with_depth_round_trips_through_the_protocol():
    rgba = np.zeros((4, 5, 4), np.uint8)
    depth = np.linspace(0, 3, 20, dtype=np.float32).reshape(4, 5)
    msg = P.decode(P.encode("frame", {"index": 2, "seconds": 0.1}, {"rgba": rgba, "depth": depth}, id=3))
    assert msg.frames["depth"].dtype == np.float32 and np.array_equal(msg.frames["depth"], depth)
    assert P.MESSAGES["render"].fields["depth"](True, "render.depth") is True
