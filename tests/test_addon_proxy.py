"""The avatar's shadow proxy: the body mesh a `load` reply carries (over real sockets, within the
protocol's limits), made into a mesh bound to our rig in real bpy (the add-on from its built
zip), deformed by the rig exactly as the body model poses it, unseen by the camera but casting a
shadow in Cycles; other rig kinds get none."""
import importlib
import signal

import msgpack
import numpy as np
import pytest

from shared import protocol as P
from shared.smpl import NUM_JOINTS

try:
    import bpy
except ImportError:   # the protocol tests run anyway
    bpy = None

needs_bpy = pytest.mark.skipif(bpy is None, reason="the add-on's tests need Blender as a module (bpy)")
AVATAR = "proxy00000000001"
OPEN_BODY_VERTICES, OPEN_BODY_FACES = 13718, 27420
SMPL_VERTICES, SMPL_FACES = 6890, 13776


def addon_modules():
    from tests.installed_addon import PACKAGE, load_built_addon

    addon = load_built_addon()
    return addon.rig, importlib.import_module(f"{PACKAGE}.proxy"), addon.blender_camera.TO_BLENDER


def fresh():
    bpy.ops.wm.read_factory_settings(use_empty=True)


def loaded_fields() -> dict:
    cam = {"K": [[500.0, 0, 64], [0, 500.0, 64], [0, 0, 1]], "R": np.eye(3), "t": [0, 0, 3], "width": 128,
           "height": 128}
    return {"avatar": AVATAR, "stage": "done", "iteration": 1, "preset": "tiny", "pose": np.zeros(72),
            "transl": np.zeros(3), "camera": cam, "rest_joints": np.zeros((24, 3))}


def synthetic_proxy(vertices: int, faces: int, influences: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    w = rng.random((vertices, influences)).astype(np.float32)
    return {"vertices": rng.normal(size=(vertices, 3)).astype(np.float32),
            "faces": rng.integers(0, vertices, (faces, 3)).astype(np.int32),
            "joint_index": rng.integers(0, NUM_JOINTS, (vertices, influences)).astype(np.uint8),
            "joint_weight": w / w.sum(1, keepdims=True)}


def message_bytes(parts) -> int:
    return sum(len(p) for p in parts)


# -- the wire -----------------------------------------------------------------------------------

@pytest.mark.parametrize("vertices,faces", [(SMPL_VERTICES, SMPL_FACES), (OPEN_BODY_VERTICES, OPEN_BODY_FACES)],
                         ids=["smpl", "open_body"])
def test_a_body_sized_proxy_round_trips_within_the_protocol_limits(vertices, faces):
    proxy = synthetic_proxy(vertices, faces, P.PROXY_MAX_INFLUENCES)   # the most joints a vertex may have
    parts = P.encode("loaded", loaded_fields(), P.proxy_frames(proxy), id=3)
    print(f"loaded with a {vertices}-vertex proxy: {message_bytes(parts) / 1024:.0f} KiB in {len(parts)} parts "
          f"(largest {max(map(len, parts)) / 1024:.0f} KiB)")
    assert len(parts) - 1 <= P.MAX_FRAMES and len(parts[0]) < P.MAX_HEADER_BYTES / 100
    assert max(map(len, parts)) <= P.MAX_PART_BYTES and max(map(len, parts[1:])) <= P.MAX_FRAME_BYTES
    got = P.proxy_from_frames(P.decode(parts).frames)
    for k in P.PROXY_KEYS:
        assert got[k].dtype == proxy[k].dtype and np.array_equal(got[k], proxy[k]), k
    assert P.proxy_from_frames(P.decode(P.encode("loaded", loaded_fields())).frames) is None   # optional


def test_a_bad_proxy_is_refused_on_both_sides():
    good = synthetic_proxy(10, 8, 4)
    fields = loaded_fields()
    bad = {"faces out of range": dict(good, faces=good["faces"] + 10),
           "joints out of range": dict(good, joint_index=good["joint_index"] + NUM_JOINTS),
           "weights not summing to 1": dict(good, joint_weight=good["joint_weight"] * 2),
           "negative weights": dict(good, joint_weight=np.tile(np.float32([1.5, -0.5, 0, 0]), (10, 1))),
           "vertex counts apart": dict(good, joint_weight=good["joint_weight"][:9],
                                       joint_index=good["joint_index"][:9]),
           "too many joints": dict(good, joint_index=np.zeros((10, 9), np.uint8),
                                   joint_weight=np.full((10, 9), 1 / 9, np.float32)),
           "NaN weights": dict(good, joint_weight=np.full((10, 4), np.nan, np.float32)),
           "NaN vertices": dict(good, vertices=np.full((10, 3), np.nan, np.float32))}
    for what, proxy in bad.items():
        with pytest.raises(P.ProtocolError) as exc:
            P.encode("loaded", fields, P.proxy_frames(proxy))
        assert exc.value.code == P.BAD_FIELD, what
    parts = P.encode("loaded", fields, P.proxy_frames(good))
    assert P.decode(parts).frames["proxy_faces"].dtype == np.int32
    header = msgpack.unpackb(parts[0])
    alone = msgpack.packb({**header, "frames": header["frames"][:1]})
    with pytest.raises(P.ProtocolError, match="all together"):   # the receiver checks too
        P.decode([alone, parts[1]])
    faces = good["faces"].copy()
    faces[0, 0] = 10
    with pytest.raises(P.ProtocolError, match="proxy_faces"):
        P.decode(parts[:2] + [faces.tobytes()] + parts[3:])
    with pytest.raises(P.ProtocolError, match="dtype"):    # int64 faces are not int32 faces
        P.encode("loaded", fields, {**P.proxy_frames(good), "proxy_faces": good["faces"].astype(np.int64)})


def test_mutated_proxy_frames_only_ever_raise_protocol_errors():
    rng = np.random.default_rng(0)
    parts = P.encode("loaded", loaded_fields(), P.proxy_frames(synthetic_proxy(50, 40, 4)))
    refused = 0
    for i in range(400):
        mutated = [bytearray(p) for p in parts]
        frame = mutated[1 + i % 4]
        for _ in range(int(rng.integers(1, 4))):
            frame[int(rng.integers(0, len(frame)))] = int(rng.integers(0, 256))
        try:
            P.decode([bytes(p) for p in mutated])
        except P.ProtocolError as e:
            assert e.code == P.BAD_FIELD
            refused += 1
    assert refused > 100


# -- a real server's `loaded` -----------------------------------------------------------------

@pytest.fixture(scope="module")
def reply(tmp_path_factory, fitted):
    """The `loaded` reply of a real backend for the fitted tiny avatar, and the avatar itself."""
    from backend.avatar.avatar_file import load_avatar
    from shared.client import ServiceClient
    from tests.backend_process import ServerProcess, store_with

    server = ServerProcess(store_with(tmp_path_factory.mktemp("proxy"), fitted, AVATAR))
    try:
        with ServiceClient(server.address, timeout=60) as c:
            loaded = c.load(AVATAR)
    finally:
        server.kill(signal.SIGTERM)
    return loaded, load_avatar(fitted / "avatar.avatar").avatar


def test_the_load_reply_carries_the_avatar_bodys_rest_mesh_and_skinning(reply, open_body):
    loaded, avatar = reply
    proxy = loaded["proxy"]
    V = open_body.num_vertices
    assert proxy["vertices"].shape == (V, 3) and proxy["vertices"].dtype == np.float32
    assert proxy["faces"].shape == tuple(open_body.faces.shape) and proxy["faces"].dtype == np.int32
    K = proxy["joint_index"].shape[1]
    assert proxy["joint_index"].shape == proxy["joint_weight"].shape == (V, K) and K <= P.PROXY_MAX_INFLUENCES
    np.testing.assert_allclose(proxy["joint_weight"].sum(1), 1.0, atol=1e-5)
    rest_vertices, rest_joints = (a[0].numpy() for a in avatar.body.rest(avatar.betas))
    np.testing.assert_allclose(proxy["vertices"], rest_vertices, atol=1e-6)   # the avatar's shaped rest pose
    np.testing.assert_allclose(loaded["rest_joints"], rest_joints, atol=1e-6)
    assert np.array_equal(proxy["faces"], open_body.faces.numpy())
    # the strongest joint of each vertex is the body model's
    assert np.array_equal(proxy["joint_index"][:, 0], open_body.weights.argmax(1).numpy())
    parts = P.encode("loaded", {k: v for k, v in loaded.items() if k != "proxy"}, P.proxy_frames(proxy))
    print(f"loaded for the open body: {message_bytes(parts) / 1024:.0f} KiB, {K} joints per vertex")


# -- the proxy in Blender -----------------------------------------------------------------------

def group_weights(obj) -> np.ndarray:
    """(V, bones) vertex-group weights of a mesh object, columns in vertex-group order."""
    out = np.zeros((len(obj.data.vertices), len(obj.vertex_groups)))
    for v in obj.data.vertices:
        for g in v.groups:
            out[v.index, g.group] = g.weight
    return out


def evaluated_smpl_vertices(obj, to_blender) -> np.ndarray:
    """The evaluated (deformed) mesh's world vertices, in the backend's SMPL frame."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(depsgraph)
    mesh = ev.to_mesh()
    try:
        co = np.empty(len(mesh.vertices) * 3, np.float32)
        mesh.vertices.foreach_get("co", co)
    finally:
        ev.to_mesh_clear()
    M = np.array(ev.matrix_world)
    return (co.reshape(-1, 3).astype(np.float64) @ M[:3, :3].T + M[:3, 3]) @ to_blender


@needs_bpy
def test_the_proxy_is_a_hidden_skinned_body_mesh_on_our_rig(reply, open_body):
    rig, proxy_mod, _ = addon_modules()
    loaded, _ = reply
    fresh()
    armature = rig.create_armature(bpy.context, loaded["rest_joints"], name="avatar_rig")
    obj = proxy_mod.make_proxy(bpy.context, armature, loaded["proxy"], loaded["rest_joints"])
    V = open_body.num_vertices
    assert obj.name == "avatar_rig_proxy" and obj.type == "MESH" and obj.parent == armature
    assert len(obj.data.vertices) == V and len(obj.data.polygons) == len(loaded["proxy"]["faces"])
    assert armature.users_collection[0] in obj.users_collection
    assert {g.name for g in obj.vertex_groups} == set(rig.bone_names(armature))
    np.testing.assert_allclose(group_weights(obj).sum(1), 1.0, atol=1e-5)   # every vertex, weights sum to 1
    (modifier,) = obj.modifiers
    assert modifier.type == "ARMATURE" and modifier.object == armature and modifier.use_vertex_groups
    assert not obj.visible_camera and obj.visible_shadow and not obj.visible_glossy
    assert obj.hide_get() and obj.hide_select and not obj.hide_render
    assert all(p.use_smooth for p in obj.data.polygons[:100])
    assert obj.active_material is not None and obj.active_material.diffuse_color[0] == pytest.approx(0.5)
    # made again: replaced, never a user's object parented to the rig
    mine = bpy.data.objects.new("user_child", bpy.data.meshes.new("user_child"))
    bpy.context.scene.collection.objects.link(mine)
    mine.parent = armature
    again = proxy_mod.make_proxy(bpy.context, armature, loaded["proxy"], loaded["rest_joints"])
    assert [o.name for o in armature.children if o.get(proxy_mod.TAG) is not None] == ["avatar_rig_proxy"]
    assert again.name == "avatar_rig_proxy" and "user_child" in bpy.data.objects
    assert proxy_mod.find_proxy(armature) == again
    proxy_mod.remove_proxy(armature)
    assert proxy_mod.find_proxy(armature) is None and "avatar_rig_proxy" not in bpy.data.meshes
    assert "user_child" in bpy.data.objects
    assert proxy_mod.make_proxy(bpy.context, armature, None, loaded["rest_joints"]) is None   # an older server


@needs_bpy
@pytest.mark.parametrize("moved", [False, True], ids=["rig at the origin", "rig moved and turned"])
def test_the_posed_proxy_is_the_posed_body(reply, open_body, moved):
    """Posed through the rig (its Armature modifier), the proxy's vertices are the body model's
    posed vertices (the open body has no pose-corrective blend shapes: nothing is left out)."""
    rig, proxy_mod, to_blender = addon_modules()
    loaded, avatar = reply
    fresh()
    armature = rig.create_armature(bpy.context, loaded["rest_joints"])
    if moved:
        armature.location, armature.rotation_euler = (0.4, -1.0, 0.2), (0.1, -0.2, 0.7)
        bpy.context.view_layer.update()
    obj = proxy_mod.make_proxy(bpy.context, armature, loaded["proxy"], loaded["rest_joints"])
    rng = np.random.default_rng(3)
    errors = []
    for pose, transl in [(loaded["pose"], loaded["transl"])] + [(rng.uniform(-0.8, 0.8, 72), rng.uniform(-0.5, 0.5, 3))
                                                             for _ in range(2)]:
        rig.write_pose(armature, pose, transl, rest_joints=loaded["rest_joints"])
        got = evaluated_smpl_vertices(obj, to_blender)
        expected = open_body(pose, avatar.betas, transl).vertices[0].detach().numpy()
        errors.append(np.linalg.norm(got - expected, axis=1).max())
    print(f"proxy vertex error: up to {max(errors) * 1000:.4f} mm")
    assert max(errors) < 1e-3


@needs_bpy
def test_other_rigs_get_no_proxy(reply):
    from tests.rig_builders import mixamo_rig, smplx_rig

    rig, proxy_mod, _ = addon_modules()
    loaded, _ = reply
    rest = np.asarray(loaded["rest_joints"])
    for make, kind in [(lambda: smplx_rig(rest, "addon"), "SMPL-X"), (lambda: mixamo_rig(rest), "Mixamo")]:
        fresh()
        armature = make()
        assert proxy_mod.make_proxy(bpy.context, armature, loaded["proxy"], rest) is None
        assert "no shadow proxy for this rig kind" in proxy_mod.unsupported_reason(armature, rest)
        assert kind in proxy_mod.unsupported_reason(armature, rest)
        assert not any(o.type == "MESH" for o in bpy.data.objects)
    fresh()   # our rig, but of another body: its rest pose is not this avatar's
    other = rig.create_armature(bpy.context, rest * 1.1)
    assert proxy_mod.make_proxy(bpy.context, other, loaded["proxy"], rest) is None
    assert "rest pose" in proxy_mod.unsupported_reason(other, rest)
    fresh()
    assert proxy_mod.unsupported_reason(rig.create_armature(bpy.context, rest), rest) is None


# -- the shadow --------------------------------------------------------------------------------

def look_at(obj, target) -> None:
    from mathutils import Vector

    obj.rotation_euler = (Vector(target) - obj.location).to_track_quat("-Z", "Y").to_euler()


def render(path) -> np.ndarray:
    """Render the scene's camera to a PNG and read it back: (H, W, 4) floats, bottom row first."""
    scene = bpy.context.scene
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    img = bpy.data.images.load(str(path))
    try:
        px = np.empty(img.size[0] * img.size[1] * 4, np.float32)
        img.pixels.foreach_get(px)
        return px.reshape(img.size[1], img.size[0], 4)
    finally:
        bpy.data.images.remove(img)


def shadow_scene(sun_direction):
    """Cycles at 64x64, 8 samples, CPU; a floor under the proxy, a sun shining along
    `sun_direction`, a dim world, the camera on the whole body from the front and above."""
    from mathutils import Vector

    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 8
    scene.cycles.use_adaptive_sampling = False
    scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = 64
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = True     # the world behind shows as alpha 0
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.view_settings.view_transform = "Standard"
    world = bpy.data.worlds.new("dim")
    world.color = (0.05, 0.05, 0.05)
    scene.world = world
    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
    sun.data.energy = 3.0
    sun.data.angle = 0.0   # a sharp shadow
    sun.rotation_euler = Vector(sun_direction).to_track_quat("-Z", "Y").to_euler()
    scene.collection.objects.link(sun)
    cam = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    return cam


def floor_under(z: float, size: float = 20.0):
    mesh = bpy.data.meshes.new("floor")
    h = size / 2
    mesh.from_pydata([(-h, -h, z), (h, -h, z), (h, h, z), (-h, h, z)], [], [(0, 1, 2, 3)])
    floor = bpy.data.objects.new("floor", mesh)
    bpy.context.scene.collection.objects.link(floor)
    return floor


def surface_points(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Points covering a mesh's surface: its vertices and four points inside every face."""
    corners = vertices[faces]                                   # (F, 3, 3)
    inside = np.array([[1, 1, 1], [4, 1, 1], [1, 4, 1], [1, 1, 4]], dtype=np.float64)
    inside /= inside.sum(1, keepdims=True)
    return np.concatenate([vertices, np.einsum("kc,fcd->fkd", inside, corners).reshape(-1, 3)])


def pixels_of(points_world: np.ndarray, cam, side: int = 64) -> np.ndarray:
    """(side, side) bool: the pixels (bottom row first) the world points project to."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    P = np.array(cam.calc_matrix_camera(depsgraph, x=side, y=side)) @ np.array(cam.matrix_world.inverted())
    h = np.c_[points_world, np.ones(len(points_world))] @ P.T
    front = h[:, 3] > 0
    xy = np.floor((h[front, :2] / h[front, 3:] + 1) / 2 * side).astype(np.int64)
    xy = xy[((xy >= 0) & (xy < side)).all(1)]
    out = np.zeros((side, side), bool)
    out[xy[:, 1], xy[:, 0]] = True
    return out


def eroded(mask: np.ndarray) -> np.ndarray:
    """The pixels of a mask whose four neighbours are in it too (no pixel only partly covered)."""
    core = mask.copy()
    core[1:] &= mask[:-1]
    core[:-1] &= mask[1:]
    core[:, 1:] &= mask[:, :-1]
    core[:, :-1] &= mask[:, 1:]
    return core


@needs_bpy
def test_the_proxy_casts_a_shadow_in_cycles_and_is_not_seen(reply, tmp_path):
    rig, proxy_mod, to_blender = addon_modules()
    loaded, _ = reply
    fresh()
    armature = rig.create_armature(bpy.context, loaded["rest_joints"])
    pose = np.array(loaded["pose"])
    pose[:3] = 0.0   # the photo's body pose, standing upright (the photo's world is the camera's: y down)
    rig.write_pose(armature, pose, np.zeros(3), rest_joints=loaded["rest_joints"])
    obj = proxy_mod.make_proxy(bpy.context, armature, loaded["proxy"], loaded["rest_joints"])
    body = evaluated_smpl_vertices(obj, to_blender) @ to_blender.T    # Blender world
    low, high = body.min(0), body.max(0)
    centre, height = (low + high) / 2, high[2] - low[2]
    floor_z = low[2] - 0.01
    # from above and behind the body, at an angle: its shadow falls on the floor before it
    sun_direction = np.array([0.35, -1.0, -1.3]) / np.linalg.norm([0.35, -1.0, -1.3])
    cam = shadow_scene(sun_direction)
    floor = floor_under(floor_z)
    cam.location = (centre[0] + 0.4, centre[1] - 2.4 * height, floor_z + 1.6 * height)
    look_at(cam, (centre[0], centre[1] - 0.5 * height, floor_z + 0.2 * height))
    bpy.context.view_layer.update()
    # where the shadow falls: the body's surface carried along the sunlight onto the floor
    surface = surface_points(body, np.asarray(loaded["proxy"]["faces"]))
    shadow = pixels_of(surface + ((floor_z - surface[:, 2]) / sun_direction[2])[:, None] * sun_direction, cam)

    with_proxy = render(tmp_path / "with_proxy.png")
    obj.visible_camera = True               # a control: what the camera would see of the proxy
    floor.hide_render = True
    seen = render(tmp_path / "proxy_seen.png")
    seen_body = seen[..., 3] > 0.5
    floor.hide_render = False
    proxy_mod.remove_proxy(armature)
    without = render(tmp_path / "without_proxy.png")

    grey = lambda img: img[..., :3].mean(-1)  # noqa: E731
    floor_px = without[..., 3] > 0.5
    shadowed = eroded(shadow) & ~seen_body & floor_px
    lit = floor_px & ~shadow & ~seen_body
    before, after = grey(without)[shadowed].mean(), grey(with_proxy)[shadowed].mean()
    elsewhere = np.abs(grey(with_proxy) - grey(without))[lit].mean()
    behind = np.abs(with_proxy - without)[seen_body & ~shadow].max(-1)
    print(f"shadow: floor {before:.3f} -> {after:.3f} over {shadowed.sum()} px; lit floor changes "
          f"{elsewhere:.3f} on average; where the body is, at most {behind.max():.3f} "
          f"(mean {behind.mean():.3f}) over {(seen_body & ~shadow).sum()} px")
    assert shadowed.sum() >= 30 and seen_body.sum() >= 30 and (seen_body & ~shadow).sum() >= 20
    assert after < 0.5 * before                 # the shadowed floor is clearly darker
    assert elsewhere < 0.03                     # and the rest of the floor is as it was
    # the camera sees no proxy: where the body would be, the floor (or the world) as without it,
    # where a body it saw would stand out (the control)
    assert np.median(behind) < 0.02 and behind.mean() < 0.05
    assert np.abs(grey(seen) - grey(without))[seen_body & ~shadow].mean() > 0.2
