"""Import as mesh: the avatar baked by `python -m backend export` (a skinned .glb, made once here
by the CLI as the README prints it) imported into real bpy by the add-on from its built zip.

Without a rig it keeps the imported SMPL skeleton (24 bones, a UV-textured mesh, weights summing
to 1, Z up); with our rig of the same body it is bound to that rig instead (the imported
skeleton deleted) and the rig's pose deforms it exactly as the backend's own linear blend
skinning of the file's rest mesh; other rigs leave it on its own skeleton, which the add-on's
pose writer drives just as well. Bad files are one-line ValueErrors that leave nothing behind."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shared.smpl import JOINT_NAMES, NUM_JOINTS, PARENTS

try:
    import bpy
except ImportError:
    bpy = None

pytestmark = pytest.mark.skipif(bpy is None, reason="the add-on's tests need Blender as a module (bpy)")
ROOT = Path(__file__).resolve().parents[1]
LEFT_ELBOW = JOINT_NAMES.index("left_elbow")
DATA = ("objects", "meshes", "armatures", "materials", "images", "collections", "actions")


def addon():
    from tests.installed_addon import PACKAGE, load_built_addon

    module = load_built_addon()
    return module, module.rig, importlib.import_module(f"{PACKAGE}.mesh_import"), module.blender_camera.TO_BLENDER


def fresh():
    bpy.ops.wm.read_factory_settings(use_empty=True)


def read_glb(path) -> dict:
    """The file's rest vertices, skinning and joint nodes' accumulated rest translations (SMPL frame)."""
    import pygltflib

    gltf = pygltflib.GLTF2().load(str(path))
    blob = gltf.binary_blob()

    def accessor(index, dtype, width):
        acc = gltf.accessors[index]
        view = gltf.bufferViews[acc.bufferView]
        start = view.byteOffset + (acc.byteOffset or 0)
        return np.frombuffer(blob, dtype, acc.count * width, start).reshape(acc.count, width)

    (skin,) = gltf.skins
    attrs = gltf.meshes[0].primitives[0].attributes
    names = [gltf.nodes[n].name for n in skin.joints]
    local = np.array([gltf.nodes[n].translation for n in skin.joints], dtype=np.float64)
    joints = np.zeros((NUM_JOINTS, 3))
    for j in range(NUM_JOINTS):
        joints[j] = local[j] + (joints[PARENTS[j]] if PARENTS[j] >= 0 else 0.0)
    return {"vertices": accessor(attrs.POSITION, np.float32, 3).astype(np.float64),
            "joints": accessor(attrs.JOINTS_0, np.uint8, 4).astype(np.int64),
            "weights": accessor(attrs.WEIGHTS_0, np.float32, 4).astype(np.float64),
            "joint_names": names, "rest_joints": joints}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, fitted):
    """The fitted tiny avatar exported by the CLI to a.glb; the avatar; its body's rest joints."""
    from backend.avatar.avatar_file import load_avatar

    (avatar_file,) = sorted(Path(fitted).glob("*.avatar"))
    out = tmp_path_factory.mktemp("mesh_import") / "a.glb"
    proc = subprocess.run([sys.executable, "-m", "backend", "export", str(avatar_file), "--preset", "tiny",
                           "--out", str(out)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and out.is_file(), f"export failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    avatar = load_avatar(avatar_file).avatar
    rest_joints = avatar.body.rest(avatar.betas)[1][0].detach().numpy().astype(np.float64)
    glb = read_glb(out)
    assert glb["joint_names"] == list(JOINT_NAMES)
    np.testing.assert_allclose(glb["rest_joints"], rest_joints, atol=1e-5)   # the file's skeleton is the body's
    return out, avatar, rest_joints, glb


def group_weights(obj) -> tuple[np.ndarray, list]:
    """(V, groups) vertex-group weights and the groups' names."""
    out = np.zeros((len(obj.data.vertices), len(obj.vertex_groups)))
    for v in obj.data.vertices:
        for g in v.groups:
            out[v.index, g.group] = g.weight
    return out, [g.name for g in obj.vertex_groups]


def file_weights(glb) -> np.ndarray:
    """(V, 24) the file's skinning weights, columns in SMPL joint order."""
    out = np.zeros((len(glb["weights"]), NUM_JOINTS))
    np.add.at(out, (np.arange(len(out))[:, None].repeat(4, 1), glb["joints"]), glb["weights"])
    return out


def check_weights(obj, glb, bone_of_joint) -> None:
    """Every vertex's vertex-group weights are the file's, each joint's in its bone's group."""
    W, names = group_weights(obj)
    np.testing.assert_allclose(W.sum(1), 1.0, atol=1e-4)           # every vertex
    by_joint = W[:, [names.index(bone_of_joint[j]) for j in range(NUM_JOINTS)]]
    np.testing.assert_allclose(by_joint, file_weights(glb), atol=1e-6)


def forearm_vertex(glb, rest_joints) -> tuple[str, int]:
    """(side, vertex) for a vertex of a forearm: the one nearest the midpoint of the elbow and
    wrist rest joints, on the left forearm, or on the right one where the mesh has no left
    forearm (the test's tiny avatar's field has none: nothing within 30 cm)."""
    for side in ("left", "right"):
        elbow, wrist = (rest_joints[JOINT_NAMES.index(f"{side}_{j}")] for j in ("elbow", "wrist"))
        distance = np.linalg.norm(glb["vertices"] - (elbow + wrist) / 2, axis=1)
        if distance.min() < 0.05:
            return side, int(np.argmin(distance))
        print(f"the exported mesh has no {side} forearm: its nearest vertex is {distance.min() * 100:.0f} cm "
              f"from the forearm's middle")
    raise AssertionError("the exported mesh has neither forearm")


def world_vertices(obj, evaluated: bool) -> np.ndarray:
    """The mesh's world vertices (Blender frame), deformed by its modifiers when `evaluated`."""
    if evaluated:
        ev = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
        mesh = ev.to_mesh()
    else:
        ev, mesh = obj, obj.data
    try:
        co = np.empty(len(mesh.vertices) * 3, np.float32)
        mesh.vertices.foreach_get("co", co)
    finally:
        if evaluated:
            ev.to_mesh_clear()
    M = np.array(ev.matrix_world)
    return co.reshape(-1, 3).astype(np.float64) @ M[:3, :3].T + M[:3, 3]


def sample_pose() -> tuple[np.ndarray, np.ndarray]:
    """Bent elbows and knees, a turned pelvis, a little spine twist; and a translation."""
    pose = np.zeros((NUM_JOINTS, 3))
    pose[0] = (0.1, 0.7, 0.0)                               # pelvis turned about SMPL's up (+Y)
    pose[JOINT_NAMES.index("left_knee")] = (1.1, 0, 0)
    pose[JOINT_NAMES.index("right_knee")] = (0.6, 0, 0)
    pose[LEFT_ELBOW] = (0, -1.3, 0.2)
    pose[JOINT_NAMES.index("right_elbow")] = (0, 1.0, -0.3)
    pose[JOINT_NAMES.index("spine2")] = (0, 0.3, 0.1)
    pose[JOINT_NAMES.index("left_shoulder")] = (0, 0, -0.4)
    return pose.reshape(-1), np.array([0.15, -0.05, 0.3])


def posed_error(obj, rig_mod, armature, to_blender, exported, pose, transl) -> float:
    """Largest distance (m) between the mesh as the posed armature deforms it and the backend's
    linear blend skinning of the file's rest mesh, in the SMPL world frame."""
    from backend.export.check import pose_vertices

    _, avatar, rest_joints, glb = exported
    rig_mod.write_pose(armature, pose, transl, rest_joints=rest_joints)
    got = world_vertices(obj, evaluated=True) @ to_blender        # Blender world -> SMPL frame
    expected = pose_vertices(avatar, glb["vertices"].astype(np.float32), glb["joints"],
                             glb["weights"].astype(np.float32), pose, transl, correct_pose=False)
    moved = np.linalg.norm(expected - glb["vertices"], axis=1).max()
    assert moved > 0.3   # the pose does move the mesh (so agreement means something)
    return float(np.linalg.norm(got - expected, axis=1).max())


def counts() -> dict:
    return {name: len(getattr(bpy.data, name)) for name in DATA}


# -- without a rig ------------------------------------------------------------------------------

def test_import_without_a_rig_keeps_a_textured_mesh_on_its_own_smpl_skeleton(exported):
    module, rig, mesh_import, to_blender = addon()
    path, _, rest_joints, glb = exported
    fresh()
    obj, note = mesh_import.import_mesh(bpy.context, str(path))
    armature = obj.parent
    assert obj.type == "MESH" and armature is not None and armature.type == "ARMATURE"
    assert obj.name == "a_mesh" and armature.name == "a" and "no rig chosen" in note
    assert obj.get(mesh_import.TAG) == "a.glb" and armature.get(mesh_import.TAG) == "a.glb"
    assert sorted(b.name for b in armature.data.bones) == sorted(JOINT_NAMES)
    assert rig.rig_kind(armature) == "smpl"
    assert {o.name for o in bpy.data.objects} == {"a", "a_mesh"}      # no bone shapes, no empties
    assert len(obj.data.uv_layers) == 1
    images = [n.image for m in obj.data.materials for n in m.node_tree.nodes if n.type == "TEX_IMAGE"]
    assert len(images) == 1 and images[0] is not None and min(images[0].size) >= 16
    assert sorted(g.name for g in obj.vertex_groups) == sorted(JOINT_NAMES)
    check_weights(obj, glb, JOINT_NAMES)
    (modifier,) = [m for m in obj.modifiers if m.type == "ARMATURE"]
    assert modifier.object == armature
    # the file's vertices, in its order, turned Z up by the add-on's own axis change
    world = world_vertices(obj, evaluated=False)
    assert len(world) == len(glb["vertices"])
    np.testing.assert_allclose(world, glb["vertices"] @ to_blender.T, atol=1e-5)
    extent = world.max(0) - world.min(0)
    head, ankle = (np.array(armature.data.bones[n].head_local) for n in ("head", "left_ankle"))
    print(f"imported mesh: {len(world)} vertices, extent {np.round(extent, 3)} m (x, y, z)")
    assert int(np.argmax(extent)) == 2 and head[2] - ankle[2] > 0.5 * extent[2]   # it stands Z up
    # the add-on poses its skeleton like any SMPL rig
    error = posed_error(obj, rig, armature, to_blender, exported, *sample_pose())
    print(f"own skeleton posed by rig.write_pose: up to {error * 1000:.4f} mm from the backend's skinning")
    assert error < 1e-3
    # and its posed joints are the backend's posed body joints
    import torch

    pose, transl = sample_pose()
    with torch.no_grad():
        body = exported[1].body(pose, exported[1].betas, transl).joints[0].numpy()
    heads = np.array([armature.matrix_world @ armature.pose.bones[n].head for n in JOINT_NAMES]) @ to_blender
    print(f"posed joints: up to {np.abs(heads - body).max() * 1000:.4f} mm from the backend's body")
    assert np.abs(heads - body).max() < 1e-3
    # a second import is a second mesh; the first is untouched
    again, _ = mesh_import.import_mesh(bpy.context, str(path))
    assert again.name == "a_mesh.001" and again.parent.name == "a.001" and obj.parent == armature
    assert len(bpy.data.objects) == 4


# -- bound to our rig ---------------------------------------------------------------------------

@pytest.mark.parametrize("moved", [False, True], ids=["rig at the origin", "rig moved and turned"])
def test_import_onto_our_rig_binds_the_mesh_and_the_rig_poses_it(exported, moved):
    module, rig, mesh_import, to_blender = addon()
    path, _, rest_joints, glb = exported
    fresh()
    armature = rig.create_armature(bpy.context, rest_joints, name="avatar_rig")
    if moved:
        armature.location, armature.rotation_euler = (0.4, -1.0, 0.2), (0.1, -0.2, 0.7)
        bpy.context.view_layer.update()
    mine = bpy.data.objects.new("user_child", bpy.data.meshes.new("user_child"))
    bpy.context.scene.collection.objects.link(mine)
    mine.parent = armature
    before = {o.name for o in bpy.data.objects}
    obj, note = mesh_import.import_mesh(bpy.context, str(path), armature)
    assert note == ""
    assert {o.name for o in bpy.data.objects} == before | {"avatar_rig_mesh"}   # the imported skeleton is gone
    assert [o for o in bpy.data.objects if o.type == "ARMATURE"] == [armature] and len(bpy.data.armatures) == 1
    assert obj.name == "avatar_rig_mesh" and obj.parent == armature and obj.parent_type == "OBJECT"
    assert obj.get(mesh_import.TAG) == "a.glb" and mine.parent == armature
    assert np.allclose(np.array(obj.matrix_parent_inverse), np.eye(4))
    assert armature.users_collection[0] in obj.users_collection
    (modifier,) = [m for m in obj.modifiers if m.type == "ARMATURE"]
    assert modifier.object == armature and modifier.use_vertex_groups and not modifier.use_bone_envelopes
    assert sorted(g.name for g in obj.vertex_groups) == sorted(rig.bone_names(armature))
    check_weights(obj, glb, rig.bone_names(armature))
    # at rest the mesh stands on the rig's bones, wherever the rig is
    rest = world_vertices(obj, evaluated=True)
    M = np.array(armature.matrix_world)
    np.testing.assert_allclose(rest, glb["vertices"] @ to_blender.T @ M[:3, :3].T + M[:3, 3], atol=1e-5)
    # a vertex of the forearm is weighted mostly to the elbow
    side, v = forearm_vertex(glb, rest_joints)
    W, names = group_weights(obj)
    assert names[int(np.argmax(W[v]))] == f"{side}_elbow"
    errors = []
    rng = np.random.default_rng(5)
    for pose, transl in [sample_pose(), (rng.uniform(-0.6, 0.6, 72), rng.uniform(-0.5, 0.5, 3))]:
        errors.append(posed_error(obj, rig, armature, to_blender, exported, pose, transl))
    print(f"bound mesh ({'moved rig' if moved else 'rig at the origin'}): up to "
          f"{max(errors) * 1000:.4f} mm from the backend's skinning of the file's rest mesh")
    assert max(errors) < 1e-3
    # a second import onto the same rig: a second mesh, the first kept
    again, _ = mesh_import.import_mesh(bpy.context, str(path), armature)
    assert again.name == "avatar_rig_mesh.001" and obj.name == "avatar_rig_mesh" and again.parent == armature


def test_other_rigs_leave_the_mesh_on_its_own_skeleton(exported):
    from tests.rig_builders import mixamo_rig

    module, rig, mesh_import, _ = addon()
    path, _, rest_joints, _ = exported
    fresh()
    mixamo = mixamo_rig(rest_joints)
    obj, note = mesh_import.import_mesh(bpy.context, str(path), mixamo)
    assert obj.parent is not None and obj.parent != mixamo and obj.parent.type == "ARMATURE"
    assert f"not bound to '{mixamo.name}'" in note and "Mixamo" in note and "shadow proxy" not in note
    print(f"onto a Mixamo rig: {note}")
    fresh()
    other = rig.create_armature(bpy.context, rest_joints * 1.1, name="other_body")   # our rig, another body
    obj, note = mesh_import.import_mesh(bpy.context, str(path), other)
    assert obj.parent != other and "rest pose" in note and "not bound to 'other_body'" in note
    print(f"onto our rig of another body: {note}")
    fresh()   # the caller's avatar is not the file's
    ours = rig.create_armature(bpy.context, rest_joints)
    obj, note = mesh_import.import_mesh(bpy.context, str(path), ours, rest_joints=rest_joints * 1.1)
    assert obj.parent != ours and "not the loaded avatar's" in note


# -- bad files ----------------------------------------------------------------------------------

def unskinned_glb(path) -> None:
    """A valid .glb holding one triangle and no skin."""
    import pygltflib as g

    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    gltf = g.GLTF2(scene=0, scenes=[g.Scene(nodes=[0])], nodes=[g.Node(name="tri", mesh=0)],
                   meshes=[g.Mesh(primitives=[g.Primitive(attributes=g.Attributes(POSITION=0))])],
                   accessors=[g.Accessor(bufferView=0, componentType=g.FLOAT, count=3, type=g.VEC3,
                                         min=[0, 0, 0], max=[1, 1, 0])],
                   bufferViews=[g.BufferView(buffer=0, byteOffset=0, byteLength=vertices.nbytes,
                                             target=g.ARRAY_BUFFER)],
                   buffers=[g.Buffer(byteLength=vertices.nbytes)])
    gltf.set_binary_blob(vertices.tobytes())
    gltf.save_binary(str(path))


def test_bad_files_are_clear_errors_that_leave_nothing_behind(exported, tmp_path):
    module, rig, mesh_import, _ = addon()
    path, _, rest_joints, _ = exported
    fresh()
    armature = rig.create_armature(bpy.context, rest_joints)
    (tmp_path / "notes.glb").write_text("not a model")
    (tmp_path / "broken.glb").write_bytes(b"glTF" + bytes(range(200)))
    unskinned_glb(tmp_path / "triangle.glb")
    start = counts()
    cases = [(tmp_path / "missing.glb", "no such file"), (tmp_path / "notes.glb", "not a glTF binary"),
             (tmp_path / "broken.glb", "could not import broken.glb"),
             (tmp_path / "triangle.glb", "no mesh skinned to SMPL's 24 joints")]
    for bad, message in cases:
        for target in (None, armature):
            with pytest.raises(ValueError, match=message) as exc:
                mesh_import.import_mesh(bpy.context, str(bad), target)
            assert "\n" not in str(exc.value)
            assert counts() == start, (bad.name, counts(), start)
        print(f"{bad.name}: {exc.value}")


# -- the operator -------------------------------------------------------------------------------

def test_the_operator_imports_onto_the_panels_rig_and_reports_errors(exported, tmp_path):
    module, rig, _, _ = addon()
    path, _, rest_joints, _ = exported
    fresh()
    module.register()
    try:
        s = bpy.context.scene.one_shot_avatar
        s.armature = rig.create_armature(bpy.context, rest_joints, name="avatar_rig")
        assert bpy.ops.one_shot_avatar.import_mesh(filepath=str(path)) == {"FINISHED"}
        assert bpy.data.objects["avatar_rig_mesh"].parent == s.armature
        assert "bound to 'avatar_rig'" in s.status
        # the mesh stands in for the neural avatar: no second avatar drawn, composited or shadowed
        assert not (s.show_in_viewport or s.in_renders or s.shadow_proxy) and "stands in" in s.status
        n = len(bpy.data.objects)
        with pytest.raises(RuntimeError, match="no such file"):   # bpy.ops raises what an operator reports as ERROR
            bpy.ops.one_shot_avatar.import_mesh(filepath=str(tmp_path / "missing.glb"))
        assert s.status.startswith("could not import the mesh: no such file") and len(bpy.data.objects) == n
        s.armature = None
        assert bpy.ops.one_shot_avatar.import_mesh(filepath=str(path)) == {"FINISHED"}
        assert "no rig chosen" in s.status and len(bpy.data.objects) == n + 2
    finally:
        module.unregister()
        fresh()


def test_bake_mesh_fetches_the_bake_from_the_backend_and_binds_it(fitted, tmp_path):
    """'Bake mesh' end to end: the operator submits `export` to the connection thread, a real
    backend bakes the avatar over 127.0.0.1, the thread writes the .glb whole (no partial file),
    and the result timer imports it onto the loaded avatar's rig."""
    import time

    from tests.backend_process import ServerProcess, store_with
    from tests.installed_addon import PACKAGE

    module, rig, mesh_import, _ = addon()
    results = importlib.import_module(f"{PACKAGE}.results")
    runtime = importlib.import_module(f"{PACKAGE}.runtime").runtime
    connection = module.connection
    avatar = "bakeme000000001"
    server = ServerProcess(store_with(tmp_path, fitted, avatar))
    fresh()
    module.register()
    try:
        runtime.connection = conn = connection.Connection(server.address, timeout=30)
        s = bpy.context.scene.one_shot_avatar

        def pump(until, timeout):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not until():
                for kind, payload in conn.drain():
                    results.apply_result(kind, payload)
                time.sleep(0.05)
            assert until(), s.status

        pump(lambda: any(a["id"] == avatar for a in runtime.avatars), 60)
        s.avatar_id = avatar
        conn.submit("load", avatar=avatar)
        pump(lambda: runtime.loaded is not None and s.armature is not None, 60)
        assert bpy.ops.one_shot_avatar.bake_mesh(preset="tiny") == {"FINISHED"}
        assert runtime.exporting == avatar and not bpy.ops.one_shot_avatar.bake_mesh.poll()   # one at a time
        pump(lambda: runtime.exporting is None, 600)
        path = Path(bpy.app.tempdir) / f"avatar_{avatar}.glb"     # an unsaved .blend: the temp folder
        assert path.read_bytes()[:4] == b"glTF" and not list(path.parent.glob(".*.part"))
        mesh = bpy.data.objects[f"{s.armature.name}_mesh"]
        assert mesh.parent == s.armature and f"bound to '{s.armature.name}'" in s.status
        assert not (s.show_in_viewport or s.in_renders or s.shadow_proxy) and "stands in" in s.status
        assert not any(o.get("one_shot_avatar_proxy") for o in s.armature.children)   # its proxy went too
        assert mesh_import.bake_path(avatar).endswith(f"avatar_{avatar}_1.glb")   # the bake is never replaced
    finally:
        if runtime.connection is not None:
            runtime.connection.close()
        runtime.reset()
        module.unregister()
        fresh()
        server.kill()


def test_round_trip_export_import_pose_render_matches_the_neural_render(exported, fitted, tmp_path):
    """export -> Blender's importer (the add-on) -> our rig posed like the photo -> Cycles (the
    texture emitted, no lighting) agrees with the backend's neural render of the same view."""
    import torch
    from PIL import Image

    from backend.avatar.avatar_file import load_avatar
    from backend.quality.cycles_render import apply_camera, cycles_settings
    from shared.camera import PinholeCamera

    module, rig, mesh_import, to_blender = addon()
    path, _, rest_joints, _ = exported
    rec = load_avatar(Path(fitted) / "avatar.avatar")
    rec.avatar.eval()
    cam = rec.camera.scaled(96 / max(rec.camera.width, rec.camera.height))
    with torch.no_grad():
        rgba = rec.avatar.render_rgba(cam, rec.pose, rec.transl).numpy()
    neural = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    fresh()
    armature = rig.create_armature(bpy.context, rest_joints, name="rig")
    obj, note = mesh_import.import_mesh(bpy.context, str(path), armature)
    assert note == ""
    # the photo's pose with the avatar's learned correction, as the neural render poses it
    corrected = rec.avatar.posed(rec.pose, rec.transl)[0][0].detach().numpy()
    rig.write_pose(armature, corrected, rec.transl, rest_joints=rest_joints)
    for mat in obj.data.materials:     # emit the texture as it is (no lighting), as the benchmark does
        nodes, links = mat.node_tree.nodes, mat.node_tree.links
        image = next(n for n in nodes if n.type == "TEX_IMAGE")
        emission = nodes.new("ShaderNodeEmission")
        links.new(image.outputs["Color"], emission.inputs["Color"])
        out = next(n for n in nodes if n.type == "OUTPUT_MATERIAL")
        links.new(emission.outputs["Emission"], out.inputs["Surface"])
    scene = bpy.context.scene
    cam_obj = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    scene.collection.objects.link(cam_obj)
    scene.camera = cam_obj
    # the backend's camera in Blender's world: x_backend = C^T x_blender
    apply_camera(cam_obj, scene, PinholeCamera(cam.K, cam.R @ to_blender.T, cam.t, cam.width, cam.height))
    cycles_settings(scene, 16)
    scene.render.filepath = str(tmp_path / "mesh.png")
    bpy.ops.render.render(write_still=True)
    got = np.asarray(Image.open(tmp_path / "mesh.png").convert("RGBA"), np.float32) / 255.0
    mesh = got[..., :3] * got[..., 3:] + (1 - got[..., 3:])
    box = (rgba[..., 3] > 0.05) | (got[..., 3] > 0.05)
    psnr = -10 * np.log10(((mesh - neural)[box] ** 2).mean())
    iou = ((got[..., 3] > 0.5) & (rgba[..., 3] > 0.5)).sum() / ((got[..., 3] > 0.5) | (rgba[..., 3] > 0.5)).sum()
    print(f"round trip, input view at {cam.width}x{cam.height}: PSNR {psnr:.2f} dB, silhouette IoU {iou:.3f}")
    assert psnr > 18.0 and iou > 0.8
    fresh()
