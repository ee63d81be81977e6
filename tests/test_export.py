"""`python -m backend export` as a user runs it (a real subprocess) on a finished tiny avatar: the
.glb read back by pygltflib, FBX and OBJ read back by Blender's own importers, the mesh following
the neural avatar, and bad inputs giving one clear line and no files. The add-on's import of the
.glb (bound to the rig, posed in bpy) is tested in tests/test_addon_mesh_import.py."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.smpl import JOINT_NAMES, PARENTS

ROOT = Path(__file__).resolve().parents[1]


def run(*args, script=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-c", script, *map(str, args)] if script else [sys.executable, "-m", "backend", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def avatar_file(fitted):
    return fitted / "avatar.avatar"


@pytest.fixture(scope="module")
def glb(avatar_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny.glb"
    proc = run("export", avatar_file, "--preset", "tiny", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout and "triangles" in proc.stdout
    return out


def accessor(gltf, index: int) -> np.ndarray:
    import pygltflib as g

    acc = gltf.accessors[index]
    view = gltf.bufferViews[acc.bufferView]
    dtype = {g.FLOAT: np.float32, g.UNSIGNED_BYTE: np.uint8, g.UNSIGNED_SHORT: np.uint16,
             g.UNSIGNED_INT: np.uint32}[acc.componentType]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}[acc.type]
    data = gltf.binary_blob()[view.byteOffset:view.byteOffset + view.byteLength]
    return np.frombuffer(data, dtype=dtype, count=acc.count * width).reshape(acc.count, width)


def test_glb_is_a_skinned_textured_smpl_mesh(glb, avatar_file):
    import pygltflib as g

    from backend.avatar.avatar_file import load_avatar

    gltf = g.GLTF2().load(str(glb))
    (skin,) = gltf.skins
    names = [gltf.nodes[j].name for j in skin.joints]
    assert names == list(JOINT_NAMES)
    for j, node in enumerate(skin.joints):           # the hierarchy is SMPL's
        kids = {names.index(gltf.nodes[c].name) for c in gltf.nodes[node].children or []}
        assert kids == {k for k, p in enumerate(PARENTS) if p == j}
    rec = load_avatar(avatar_file)
    rest = rec.avatar.body.rest(rec.avatar.betas)[1][0].detach().numpy()
    ibm = accessor(gltf, skin.inverseBindMatrices).reshape(-1, 4, 4).transpose(0, 2, 1)  # column-major
    np.testing.assert_allclose(ibm[:, :3, 3], -rest, atol=1e-6)     # bound in the body's rest pose
    world, stack = {}, [(skin.joints[0], np.zeros(3))]                # node translations add up to it
    while stack:
        node, parent = stack.pop()
        world[node] = parent + np.asarray(gltf.nodes[node].translation)
        stack += [(c, world[node]) for c in gltf.nodes[node].children or []]
    np.testing.assert_allclose([world[j] for j in skin.joints], rest, atol=1e-5)
    (prim,) = gltf.meshes[0].primitives
    a = prim.attributes
    pos, w, jnt, uv = (accessor(gltf, i) for i in (a.POSITION, a.WEIGHTS_0, a.JOINTS_0, a.TEXCOORD_0))
    faces = accessor(gltf, prim.indices).reshape(-1, 3)
    assert 1000 < len(faces) <= 8000 and len(pos) == len(w) == len(jnt) == len(uv)
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-5)
    assert jnt.max() < 24 and uv.min() >= 0 and uv.max() <= 1
    # the mesh is the body's: inside its rest box (plus the clothes' margin) and most of its
    # height (the tiny preset's 4 cm field loses thin ends: hands, feet)
    body = rec.avatar.rest_vertices.numpy()
    assert (pos.min(0) > body.min(0) - 0.15).all() and (pos.max(0) < body.max(0) + 0.15).all()
    assert np.ptp(pos[:, 1]) > 0.75 * np.ptp(body[:, 1])
    image = gltf.images[0]
    view = gltf.bufferViews[image.bufferView]
    png = Image.open(io.BytesIO(gltf.binary_blob()[view.byteOffset:view.byteOffset + view.byteLength]))
    assert image.mimeType == "image/png" and png.size == (256, 256)
    assert np.asarray(png).std() > 0.01 * 255                        # colours, not a flat fill
    extras = gltf.asset.extras
    assert extras["body"] == "open_body" and len(extras["pose"]) == 72


def test_mesh_follows_the_neural_avatar(avatar_file):
    """The baked mesh, posed by its own weights, covers what the volume render covers."""
    import torch

    from backend.avatar.avatar_file import load_avatar
    from backend.export.check import mesh_mask, pose_vertices, silhouette_iou
    from backend.jobs.avatar_export import ExportConfig, bake
    from shared.orbit import body_up, orbit_from_camera

    rec = load_avatar(avatar_file)
    av = rec.avatar.eval()
    mesh, seconds = bake(av, ExportConfig.preset("tiny"))
    posed = pose_vertices(av, mesh.vertices, mesh.joints, mesh.weights, rec.pose, rec.transl)
    with torch.no_grad():
        verts = av.posed(rec.pose, rec.transl)[2].numpy()
        centre, up = (verts.min(0) + verts.max(0)) / 2, body_up(rec.pose[:3])
        ious = []
        for yaw in (0, 90, 180, 270):
            cam = orbit_from_camera(rec.camera, centre, up, yaw)
            alpha = av.render(cam, rec.pose, rec.transl).alpha.numpy()
            ious.append(silhouette_iou(mesh_mask(posed, mesh.faces, cam), alpha > 0.5))
    assert min(ious) > 0.75, ious     # the tiny preset's field is coarse (4 cm texels); default: docs/export.md
    # skinning: a point on the left forearm follows the left elbow most (the skinning volume read
    # there, as for any vertex; the tiny field may not resolve the forearm's surface itself)
    from backend.export.skin import vertex_skinning

    rest = av.body.rest(av.betas)[1][0].detach().numpy()
    forearm = ((rest[18] + rest[20]) / 2)[None].astype(np.float32)
    joints, weights = vertex_skinning(av, forearm)
    assert joints[0, 0] == JOINT_NAMES.index("left_elbow") and weights[0, 0] > 0.5
    assert (mesh.weights[:, 0] >= mesh.weights[:, 1]).all()


BLENDER_READ = r"""
import sys, json
import bpy, numpy as np
bpy.ops.wm.read_factory_settings(use_empty=True)
before = set(bpy.data.objects)
path = sys.argv[1]
if path.endswith(".fbx"):
    bpy.ops.import_scene.fbx(filepath=path)
else:
    bpy.ops.wm.obj_import(filepath=path)
mesh = next(o for o in bpy.data.objects if o.type == "MESH" and o not in before)
co = np.array([mesh.matrix_world @ v.co for v in mesh.data.vertices])
arm = next((o for o in bpy.data.objects if o.type == "ARMATURE"), None)
images = [n.image for m in mesh.data.materials if m and m.node_tree for n in m.node_tree.nodes
          if n.type == "TEX_IMAGE" and n.image]
print(json.dumps({"extent": (co.max(0) - co.min(0)).tolist(), "uv": len(mesh.data.uv_layers),
                  "bones": [b.name for b in arm.data.bones] if arm else [],
                  "groups": len(mesh.vertex_groups), "image": images[0].size[:] if images else None}))
"""


@pytest.mark.parametrize("fmt", ["fbx", "obj"])
def test_fbx_and_obj_read_back_by_blender(avatar_file, tmp_path, fmt):
    pytest.importorskip("bpy", reason="FBX and OBJ are written by Blender's exporters (the bpy module)")
    out = tmp_path / f"a.{fmt}"
    proc = run("export", avatar_file, "--preset", "tiny", "--out", out)
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == (["a.fbx"] if fmt == "fbx" else ["a.mtl", "a.obj", "a_colour.png"])   # nothing else left
    got = run(out, script=BLENDER_READ)
    assert got.returncode == 0, got.stderr
    info = json.loads(got.stdout.strip().splitlines()[-1])
    width, depth, height = info["extent"]
    assert height > 1.4 and height > 2 * depth     # stands upright (Z up) in Blender, metres
    assert info["uv"] == 1 and info["image"] == [256, 256]
    if fmt == "fbx":
        assert sorted(info["bones"]) == sorted(JOINT_NAMES) and info["groups"] >= 20


def test_bad_inputs_are_one_clear_line_and_leave_no_files(avatar_file, tmp_path):
    import torch

    folder = tmp_path / "out"
    folder.mkdir()
    proc = run("export", avatar_file, "--out", folder / "a.ply")
    assert proc.returncode == 2 and "unknown export format 'ply'" in proc.stderr
    proc = run("export", avatar_file, "--format", "fbx", "--out", folder / "a.glb")
    assert proc.returncode == 2 and "must end in .fbx" in proc.stderr
    (tmp_path / "file").write_text("not a folder")
    proc = run("export", avatar_file, "--out", tmp_path / "file" / "a.glb")
    assert proc.returncode == 2 and "cannot write there" in proc.stderr
    proc = run("export", tmp_path / "missing.avatar", "--out", folder / "a.glb")
    assert proc.returncode == 2 and "no such avatar file" in proc.stderr
    # an unfinished (cancelled or interrupted) fit
    data = torch.load(avatar_file, weights_only=True)
    data["stage"] = "B"
    torch.save(data, tmp_path / "unfinished.avatar")
    proc = run("export", tmp_path / "unfinished.avatar", "--preset", "tiny", "--out", folder / "a.glb")
    assert proc.returncode == 2 and "the fit is not finished" in proc.stderr
    assert list(folder.iterdir()) == []          # no partial or temporary files anywhere
    # an existing file is never replaced without --overwrite
    (folder / "a.glb").write_bytes(b"mine")
    proc = run("export", avatar_file, "--preset", "tiny", "--out", folder / "a.glb")
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert (folder / "a.glb").read_bytes() == b"mine" and len(list(folder.iterdir())) == 1


def test_solid_occupancy_fills_cavities_and_drops_floaters():
    from backend.export.surface import orient_outwards, solid_occupancy

    d = np.zeros((20, 20, 20), np.float32)
    d[4:16, 4:16, 4:16] = 50.0
    d[8:12, 8:12, 8:12] = 0.0          # a cavity inside the body
    d[1, 1, 1] = 50.0                  # a floater
    inside = solid_occupancy(d, 20.0, 0.01)
    assert inside[10, 10, 10] and not inside[1, 1, 1] and inside.sum() == 12 ** 3
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    inward = np.array([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])   # a tetrahedron wound inwards
    out = orient_outwards(verts, inward)
    a, b, c = (verts[out[:, i]] for i in range(3))
    assert np.einsum("ij,ij->i", a, np.cross(b, c)).sum() > 0


def test_export_over_the_service(fitted, tmp_path):
    """The `export` request over real sockets: the .glb bytes of a finished avatar, clear errors
    for bad settings and unknown avatars, and the server keeps serving."""
    import pygltflib as g

    from shared.client import ServiceClient, ServiceError
    from tests.backend_process import ServerProcess, store_with

    server = ServerProcess(store_with(tmp_path, fitted, "exportme0000001"))
    try:
        with ServiceClient(server.address, timeout=60) as c:
            info, data = c.export("exportme0000001", preset="tiny", texture=128)
            assert data[:4] == b"glTF" and info["texture"] == 128 and 0 < info["triangles"] <= 8000
            path = tmp_path / "fetched.glb"
            path.write_bytes(data)
            gltf = g.GLTF2().load(str(path))
            assert [gltf.nodes[j].name for j in gltf.skins[0].joints] == list(JOINT_NAMES)
            # what a client library refuses to send, the server refuses too (a hand-made message)
            import msgpack

            from shared import protocol as P

            c._send([msgpack.packb({"v": P.PROTOCOL_VERSION, "type": "export", "id": 999, "frames": [],
                                    "avatar": "exportme0000001", "preset": "huge"})])
            with pytest.raises(ServiceError) as err:
                c.receive(0)   # (a message refused as it is decoded is answered without its id)
            assert err.value.code == "bad_field" and "preset" in err.value.message
            with pytest.raises(ServiceError) as err:
                c.export("nosuchavatar000")
            assert err.value.code == "unknown_avatar"
            assert c.ping() >= 0
    finally:
        server.kill()
