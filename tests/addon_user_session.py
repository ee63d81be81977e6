"""An artist's session, run inside a separate bpy process that cannot see the source tree.

tests/test_addon_installed.py copies this file into a temporary folder and runs it with
`python -I addon_user_session.py config.json` (HOME pointing at an empty folder). It installs the
built zip exactly as a user does, then walks the whole path through the *installed* module
only: connect (and a CurveZMQ server), add a rig, choose a photo, create with progress and cancel,
load, preview, live preview while posing, SMPL-X and Mixamo rigs, F12, animation render and stop,
a 10,000-frame animation, File > Open, disable. Each passed step prints `STEP <name> ok`; a
failure raises (non-zero exit, traceback on stderr). Timers never fire in background mode, so the
session calls the add-on's result timer itself.
"""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

cfg = json.loads(Path(sys.argv[1]).read_text())
ROOT = Path(cfg["source_tree"]).resolve()


def step(name):
    print(f"STEP {name} ok", flush=True)


# -------------------------------------------------------------------------- isolation
assert not [p for p in sys.path if p and Path(p).resolve().is_relative_to(ROOT)], sys.path
for name in ("shared", "blender_addon", "backend"):
    try:
        __import__(name)
    except ModuleNotFoundError:
        continue
    raise AssertionError(f"'{name}' is importable: the session must not see the source tree")
step("isolated")

import bpy  # noqa: E402

bpy.ops.extensions.package_install_files(filepath=cfg["zip"], repo="user_default", enable_on_install=True)
modules = [a.module for a in bpy.context.preferences.addons if a.module.endswith(".one_shot_avatar")]
assert modules == ["bl_ext.user_default.one_shot_avatar"], modules
MOD = modules[0]
addon = sys.modules[MOD]
assert Path(addon.__file__).resolve().is_relative_to(Path(os.environ["HOME"]).resolve()), addon.__file__
ops_mod, results, live, rig = (sys.modules[f"{MOD}.{n}"] for n in ("operators", "results", "live", "rig"))
runtime = sys.modules[f"{MOD}.runtime"].runtime
prefs = bpy.context.preferences.addons[MOD].preferences
step("installed")

scene = bpy.context.scene
s = scene.one_shot_avatar


def pump(condition, timeout=120.0, what=""):
    """Run the result timer until condition() holds."""
    deadline = time.monotonic() + timeout
    seen = set()
    while time.monotonic() < deadline:
        assert results.poll_results() == results.POLL_S      # the timer keeps running
        seen.add(s.status)
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; statuses seen: {sorted(seen)[:20]}")


def expect_error(op, text, **kw):
    try:
        op(**kw)
    except RuntimeError as exc:
        assert text in str(exc), str(exc)
        assert "Traceback" not in str(exc) and len(str(exc).strip().splitlines()) <= 2, str(exc)
        return
    raise AssertionError(f"{op} did not refuse ({text})")


# -------------------------------------------------------------------------- first run
assert not bpy.ops.one_shot_avatar.create.poll() and not bpy.ops.one_shot_avatar.preview.poll()
assert bpy.ops.one_shot_avatar.add_rig.poll() and bpy.ops.one_shot_avatar.connect.poll()
assert prefs.backend_address == "tcp://127.0.0.1:5557"
prefs.backend_address = "tcp://192.0.2.10:5557"     # a remote host (TEST-NET: nothing is sent there)
assert not bpy.app.online_access
expect_error(bpy.ops.one_shot_avatar.connect, "online access is off")
assert runtime.connection is None
prefs.backend_address = "tcp://127.0.0.1"
expect_error(bpy.ops.one_shot_avatar.connect, "names no port")
step("refuses_remote_without_online_access")

# a backend that requires CurveZMQ keys, reached with the keys from the preferences
prefs.backend_address = cfg["curve_address"]
prefs.server_key, prefs.client_key = cfg["server_key"], cfg["client_key"] + ".missing"
expect_error(bpy.ops.one_shot_avatar.connect, "does not exist")
prefs.client_key = cfg["client_key"]
assert bpy.ops.one_shot_avatar.connect() == {"FINISHED"}
pump(lambda: s.status.startswith("connected"), 60, "the Curve server")
prefs.server_key = prefs.client_key = ""
step("curve_keys")

prefs.backend_address = cfg["address"]
assert bpy.ops.one_shot_avatar.connect() == {"FINISHED"}
pump(lambda: s.status.startswith("connected"), 60, "the backend")
assert "no CLIP weights" in s.status
expect_error(bpy.ops.one_shot_avatar.create, "choose a photo")
step("connect")

# -------------------------------------------------------------------------- scene set-up
scene.cursor.location = (0.0, 0.0, 0.0)
assert bpy.ops.one_shot_avatar.add_rig() == {"FINISHED"}
arm = s.armature
assert arm is not None and arm.type == "ARMATURE" and len(arm.data.bones) == 24
feet = min((arm.matrix_world @ b.head_local).z for b in arm.data.bones)
assert 0.0 < feet < 0.1, feet                          # standing on the cursor (ankles above the soles)
step("add_rig")

pose, transl = np.array(cfg["pose"]), np.array(cfg["transl"])
rig.write_pose(arm, pose, transl)                      # the artist poses the rig like the photo
bpy.context.view_layer.update()
s.photo = cfg["photo"]                                 # choosing the photo sets size and camera
assert scene.camera is not None and "render size and camera set" in s.status, s.status
assert (scene.render.resolution_x, scene.render.resolution_y) == (cfg["width"], cfg["height"])
cam = sys.modules[f"{MOD}.blender_camera"].camera_dict(scene, scene.camera)
want = cfg["expected_camera"]
for k in ("K", "R", "t"):
    assert np.allclose(cam[k], want[k], atol=2e-3), (k, cam[k], want[k])
s.mask = cfg["mask"]
step("photo_sets_camera")

# -------------------------------------------------------------------------- create, cancel, create
s.preset = "quick"
assert bpy.ops.one_shot_avatar.create() == {"FINISHED"}
assert not bpy.ops.one_shot_avatar.create.poll()       # one fit at a time
pump(lambda: s.status.startswith("fit stage"), 180, "progress of the quick fit")
assert bpy.ops.one_shot_avatar.cancel() == {"FINISHED"}
pump(lambda: s.status == "fit cancelled", 60, "the cancel")
step("create_progress_cancel")

s.preset = "tiny"
assert bpy.ops.one_shot_avatar.create() == {"FINISHED"}
statuses = []
pump(lambda: statuses.append(s.status) or s.status == "avatar ready", 300, "the tiny fit")
assert any(t.startswith("fit stage B") for t in statuses) and s.progress == 1.0
assert bpy.data.images.get(results.FIT_PREVIEW_IMAGE) is not None
avatar = s.avatar_id
pump(lambda: len(runtime.avatars) >= 2, 30, "the avatar list")
items = {i[0]: i[1] for i in addon._avatar_items(s, bpy.context)}
assert avatar in items and "tiny, done" in items[avatar], items
assert any("cancelled" in label for label in items.values()), items
s.avatar_choice = avatar
assert s.avatar_id == avatar
step("create_done_and_list")


class LayoutRecorder:
    """Stands in for Blender's UILayout (background mode cannot draw): records the panel's calls."""

    def __init__(self, calls):
        self.calls = calls

    def __getattr__(self, name):
        def call(*args, **kw):
            self.calls.append((name, args, kw))
            return LayoutRecorder(self.calls)
        return call


calls = []
runtime.job = "running"                                # draw it as during a fit, with the progress bar
s.progress = 0.4
addon.VIEW3D_PT_one_shot_avatar.draw(type("Panel", (), {"layout": LayoutRecorder(calls)})(), bpy.context)
runtime.job, s.progress = None, 1.0
drawn = {name for name, _, _ in calls}
assert {"prop", "operator", "progress", "template_icon", "label"} <= drawn, drawn
for name, args, kw in calls:
    if name == "prop":
        assert args[1] in args[0].bl_rna.properties, args[1]
    elif name == "operator":
        category, op = args[0].split(".")
        assert getattr(getattr(bpy.ops, category), op).get_rna_type().name, args[0]   # KeyError if unknown
    elif name == "progress":
        assert abs(kw["factor"] - 0.4) < 1e-6 and kw["text"] == "40 %", kw
step("panel_draws")

# -------------------------------------------------------------------------- load and preview
s.live_preview = True                                  # the camera-background preview (off by default)
assert bpy.ops.one_shot_avatar.load() == {"FINISHED"}
pump(lambda: s.status.startswith("loaded avatar"), 60, "load")
assert "camera set to the photo's" in s.status, s.status
got_pose, got_transl = rig.read_pose(arm, rest_joints=runtime.rest_joints(avatar))
with sys.modules[f"{MOD}.shared.client"].ServiceClient(cfg["address"]) as client:   # the zip's own client
    fitted = client.load(avatar)
print(f"fitted vs the rig's starting pose: max {np.abs(got_pose[3:] - pose[3:]).max():.3f} rad")
rotations = [rig.rodrigues(a) - rig.rodrigues(b) for a, b in zip(got_pose.reshape(24, 3), np.reshape(fitted["pose"], (24, 3)))]
worst = np.abs(rotations).max(axis=(1, 2))
assert worst.max() < 1e-4 and np.allclose(got_transl, fitted["transl"], atol=1e-4), (
    f"rig vs fitted: joint {worst.argmax()} off by {worst.max():.2e}; transl {got_transl} vs {fitted['transl']}; "
    f"loaded {runtime.loaded and runtime.loaded[0]} avatar {avatar} status {s.status!r}")
assert np.allclose(cam_after := sys.modules[f"{MOD}.blender_camera"].camera_dict(scene, scene.camera)["K"],
                   fitted["camera"]["K"], atol=1e-3), cam_after
step("load")

prefs.scrub_scale = 0.25
assert bpy.ops.one_shot_avatar.preview() == {"FINISHED"}
full = (cfg["width"], cfg["height"])
# (the load's new pose may first bring a scrubbing-size live frame)
pump(lambda: bpy.data.images.get(results.PREVIEW_IMAGE) is not None and
     tuple(bpy.data.images[results.PREVIEW_IMAGE].size) == full, 60, "a full-size preview frame")
img = bpy.data.images[results.PREVIEW_IMAGE]


def image_array(image):
    w, h = image.size
    px = np.empty(w * h * 4, np.float32)
    image.pixels.foreach_get(px)
    return (px.reshape(h, w, 4)[::-1] * 255).round()


before = image_array(img)
alpha = before[..., 3] > 127
mask = np.load(cfg["mask_npy"]) > 127
iou = (alpha & mask).sum() / (alpha | mask).sum()
assert iou > 0.6, iou                                  # the frame lines up with the photo
print(f"preview/photo silhouette IoU {iou:.3f}")
step("preview_lines_up_with_photo")

# live preview: a pose change brings a reduced frame while "scrubbing", then full size at rest
sizes = []
raised = pose.copy()
raised[3 * 16 + 2] = 0.9                               # left shoulder up
rig.write_pose(arm, raised, transl)
bpy.context.view_layer.update()                        # depsgraph_update_post -> live preview
if runtime.last_view_key is None or runtime.reduced_view is None:
    live._on_change(scene)                             # background mode may not send the update
pump(lambda: sizes.append(tuple(bpy.data.images[results.PREVIEW_IMAGE].size)) or
     (cfg["width"] // 4, cfg["height"] // 4) in sizes, 60, "the scrubbing-size frame")
pump(lambda: tuple(bpy.data.images[results.PREVIEW_IMAGE].size) == (cfg["width"], cfg["height"]), 60,
     "the full-size frame once idle")
after = image_array(bpy.data.images[results.PREVIEW_IMAGE])
assert np.abs(after - before).max() > 50               # the raised arm shows
step("live_preview_scrub_then_full")

# the timer survives a result it cannot apply
runtime.connection.results.put(("frame", {"rgba": "not an image"}))
assert results.poll_results() == results.POLL_S
assert s.status.startswith("could not apply 'frame'"), s.status
step("timer_survives_errors")

# -------------------------------------------------------------------------- rigs artists have
def preview_of(armature, pose_values, timeout=60):
    """Pose `armature`, make it the panel's rig and render a full-size preview (as an array)."""
    rig.write_pose(armature, pose_values, transl)
    s.armature = armature
    bpy.context.view_layer.update()
    old = bpy.data.images.get(results.PREVIEW_IMAGE)
    if old is not None:
        bpy.data.images.remove(old)
    assert bpy.ops.one_shot_avatar.preview() == {"FINISHED"}
    pump(lambda: bpy.data.images.get(results.PREVIEW_IMAGE) is not None, timeout, f"a preview of {armature.name}")
    return image_array(bpy.data.images[results.PREVIEW_IMAGE])


s.live_preview = False                                 # previews on request only from here
reference = preview_of(arm, pose)
with bpy.data.libraries.load(cfg["rigs_blend"]) as (src, dst):
    dst.objects = [n for n in src.objects if n in ("smplx_rig", "mixamo_rig")]
for obj in dst.objects:
    scene.collection.objects.link(obj)
for name, kind in (("smplx_rig", "smplx"), ("mixamo_rig", "mixamo")):
    other = bpy.data.objects[name]
    assert rig.rig_kind(other) == kind
    got = preview_of(other, pose)
    differs = (np.abs(got - reference).max(-1) > 32).mean()
    print(f"{name}: {differs * 100:.2f} % of pixels differ from our rig's frame")
    assert differs < 0.01, differs                     # the same avatar pose from another rig
    step(f"{kind}_rig_drives_preview")
other = bpy.data.objects.new("Rigify-like", bpy.data.armatures.new("Rigify-like"))
scene.collection.objects.link(other)
bpy.context.view_layer.objects.active = other
bpy.ops.object.mode_set(mode="EDIT")
other.data.edit_bones.new("spine").tail = (0.0, 0.0, 1.0)
bpy.ops.object.mode_set(mode="OBJECT")
s.armature = other                                     # a rig the add-on cannot read: one line, no traceback
expect_error(bpy.ops.one_shot_avatar.preview, "is not an SMPL, SMPL-X or Mixamo rig")
s.armature = arm
step("wrong_rig_is_one_line")

# -------------------------------------------------------------------------- animation
for frame, angle in ((1, 0.0), (2, 0.5), (3, 1.0)):
    p = pose.copy()
    p[3 * 16 + 2] = angle
    rig.write_pose(arm, p, transl)
    for pb in arm.pose.bones:
        pb.keyframe_insert("rotation_quaternion", frame=frame)
        pb.keyframe_insert("location", frame=frame)
scene.frame_start, scene.frame_end = 1, 3
scene.frame_set(2)
keyed = rig.read_pose(arm)[0]
assert bpy.ops.one_shot_avatar.load() == {"FINISHED"}  # an animated rig keeps its keys and pose
pump(lambda: s.status.startswith("loaded avatar"), 60, "load onto an animated rig")
assert "is animated: its keyed pose was kept" in s.status, s.status
assert np.allclose(rig.read_pose(arm)[0], keyed, atol=1e-6)
step("load_keeps_keyed_pose")

out = Path(cfg["out"])
s.output_dir = str(out / "anim") + "/"
assert bpy.ops.one_shot_avatar.render_animation() == {"FINISHED"}
pump(lambda: s.status == "animation rendered", 120, "the animation")
files = sorted((out / "anim").glob("frame_*.png"))
assert [f.name for f in files] == ["frame_0001.png", "frame_0002.png", "frame_0003.png"], files
first, last = (bpy.data.images.load(str(f)) for f in (files[0], files[2]))
assert tuple(first.size) == (cfg["width"], cfg["height"])
assert np.abs(image_array(first) - image_array(last)).max() > 50
assert not list((out / "anim").glob("*.part*"))
step("animation_render")

# F12 / Render Animation with Cycles: frames change, the avatar's live preview asks for nothing
scene.render.engine = "CYCLES"
scene.cycles.samples = 1
scene.render.resolution_percentage = 10
scene.render.filepath = str(out / "f12" / "frame_")
s.live_preview = True
live._on_change(scene)                                 # the live preview has the current view
asked = []
request = runtime.connection.request_render
runtime.connection.request_render = lambda *a: asked.append(a) or request(*a)
composited = runtime.render_frames
bpy.ops.render.render(animation=True)
assert len(list((out / "f12").glob("frame_*.png"))) == 3
assert asked == [] and not runtime.rendering, asked
# ... and each rendered frame has the avatar composited in by depth (loading put the node in)
assert runtime.render_frames == composited + 3 and not runtime.render_problems, runtime.render_problems
assert scene.compositing_node_group.nodes.get("One-Shot Avatar") is not None
scene.render.resolution_percentage = 100
runtime.connection.request_render = request
s.live_preview = False
step("f12_asks_for_no_preview")

# Stop ends the stream on the server: a preview right after is answered
scene.frame_end = 40
s.output_dir = str(out / "stopped") + "/"
assert bpy.ops.one_shot_avatar.render_animation(preview=True) == {"FINISHED"}
pump(lambda: s.status.startswith("rendered frame"), 60, "the first frame")
assert bpy.ops.one_shot_avatar.cancel_render() == {"FINISHED"}
pump(lambda: s.status == "animation render stopped", 60, "the stop")
written = len(list((out / "stopped").glob("frame_*.png")))
assert 1 <= written < 40, written
preview_of(arm, pose, timeout=30)
step("stop_frees_the_backend")

# a 10,000-frame animation: sent in requests the protocol accepts, stopped after its first frames
scene.frame_end = 10_000
s.output_dir = str(out / "long") + "/"
started = time.monotonic()
assert bpy.ops.one_shot_avatar.render_animation(preview=True) == {"FINISHED"}
print(f"collecting 10,000 views took {time.monotonic() - started:.1f} s")
pump(lambda: s.status.startswith("rendered frame") and s.status.endswith("/10000")
     and int(s.status.split()[2].split("/")[0]) >= 2, 120, "frames of the long animation")
assert bpy.ops.one_shot_avatar.cancel_render() == {"FINISHED"}
pump(lambda: s.status == "animation render stopped", 60, "the stop")
step("long_animation")

# one photo is enough: no rig chosen -> the backend estimates the pose, the rig is made and posed
scene.frame_set(1)
s.armature = None
s.preset = "tiny"
rigs_before = {o.name for o in bpy.data.objects if o.type == "ARMATURE"}
assert bpy.ops.one_shot_avatar.create() == {"FINISHED"}
rig_during_fit = []     # the rig appears, posed, as stage B starts: before the fit ends
pump(lambda: rig_during_fit.append((s.armature is not None, s.status)) or s.status == "avatar ready", 300,
     "a fit from the photo alone")
assert any(made and status.startswith("fit stage B") for made, status in rig_during_fit), rig_during_fit[-5:]
made = s.armature
assert made.name not in rigs_before and rig.rig_kind(made) == "smpl"
with sys.modules[f"{MOD}.shared.client"].ServiceClient(cfg["address"]) as client:
    fitted = client.load(s.avatar_id)
got_pose, got_transl = rig.read_pose(made, rest_joints=runtime.rest_joints(s.avatar_id))
assert np.allclose(got_transl, fitted["transl"], atol=1e-4)
estimated = np.reshape(fitted["pose"], (24, 3))
print(f"photo-only pose vs the photo's: max {np.abs(estimated[1:] - pose.reshape(24, 3)[1:]).max():.2f} rad")
assert np.abs(estimated[[16, 17, 1, 2]] - pose.reshape(24, 3)[[16, 17, 1, 2]]).max() < 0.6   # arms and legs as in the photo
head = (made.matrix_world @ made.pose.bones["head"].head).z
assert head > (made.matrix_world @ made.pose.bones["pelvis"].head).z + 0.3     # upright in Blender
# the finished fit is loaded without touching the rig: its shadow proxy, and F12 includes it
pump(lambda: s.status.startswith("avatar ready;"), 60, "the finished fit loaded")
proxy_module = sys.modules[f"{MOD}.proxy"]
assert runtime.loaded[0] == s.avatar_id and proxy_module.find_proxy(made) is not None, s.status
assert sys.modules[f"{MOD}.compositing"].installed(scene)
assert np.allclose(rig.read_pose(made, rest_joints=runtime.rest_joints(s.avatar_id))[1], got_transl, atol=1e-6)
s.armature = arm
step("create_from_photo_alone")

# the backend goes away: a status line, the add-on keeps working and keeps retrying
os.kill(cfg["server_pid"], 15)
assert bpy.ops.one_shot_avatar.preview() == {"FINISHED"}
pump(lambda: "not reachable" in s.status or "stopped answering" in s.status, 60, "the backend gone")
print(f"backend gone: {s.status}")
assert "Traceback" not in s.status
step("backend_gone_is_a_status_line")

# -------------------------------------------------------------------------- reopen, disable
scene.frame_end = 3
blend = out / "scene.blend"
chosen = s.avatar_id
bpy.ops.wm.save_as_mainfile(filepath=str(blend))
bpy.ops.wm.open_mainfile(filepath=str(blend))
s = bpy.context.scene.one_shot_avatar
assert s.avatar_id == chosen and s.armature is not None and s.status == "connected"
assert live._on_change in bpy.app.handlers.depsgraph_update_post
assert live._on_render_start in bpy.app.handlers.render_init
step("reopen_keeps_settings_and_handlers")

thread = runtime.connection.thread
bpy.ops.preferences.addon_disable(module=MOD)
assert not thread.is_alive() and runtime.connection is None
assert live._on_change not in bpy.app.handlers.depsgraph_update_post
step("disable_stops_everything")
print("done", flush=True)
