"""The avatar inside Blender's own renders (issue 13): the add-on from its built zip, registered in
real bpy, a real backend process, F12 and Render Animation in Cycles, composited by depth.

A cube between the camera and the avatar hides it where the cube is; a cube behind it is hidden by
it. The avatar's visible pixels are the backend's own frame (the Standard view transform shows the
sRGB frame unchanged). The artist's compositor tree is kept: our node is inserted and removed."""
import numpy as np
import pytest
from PIL import Image

bpy = pytest.importorskip("bpy", reason="the add-on's tests need Blender as a module (bpy)")

from shared.client import ServiceClient  # noqa: E402
from tests.backend_process import ServerProcess, store_with  # noqa: E402
from tests.installed_addon import load_built_addon  # noqa: E402

AVATAR = "good000000000001"
BLUE = np.array([0, 0, 255])


@pytest.fixture(scope="module")
def session(tmp_path_factory, fitted):
    """Registered add-on, connected to a real backend, the avatar loaded (rig, camera, compositing)."""
    addon = load_built_addon()
    tmp = tmp_path_factory.mktemp("compositing")
    server = ServerProcess(store_with(tmp, fitted, AVATAR))
    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon.register()
    from one_shot_avatar import compositing, connection, live, operators, results
    from one_shot_avatar.runtime import runtime

    runtime.connection = connection.Connection(server.address)
    scene = bpy.context.scene
    scene.one_shot_avatar.avatar_id = AVATAR
    with ServiceClient(server.address, timeout=60) as c:
        results.apply_result("loaded", c.load(AVATAR))
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 1
    scene.cycles.use_denoising = False
    scene.render.film_transparent = True
    scene.view_settings.view_transform = "Standard"
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    yield {"addon": addon, "server": server, "tmp": tmp, "compositing": compositing, "runtime": runtime,
           "operators": operators, "live": live}
    runtime.connection.close()
    runtime.connection = None
    addon.unregister()
    server.kill()
    bpy.ops.wm.read_factory_settings(use_empty=True)


def backend_frame(session) -> np.ndarray:
    """What the backend renders for the scene's current frame, pose and camera."""
    view = session["operators"].current_view(bpy.context, avatar_id=AVATAR)
    with ServiceClient(session["server"].address, timeout=60) as c:
        return c.render(AVATAR, view["pose"], view["transl"], view["camera"])


def f12(path) -> np.ndarray:
    scene = bpy.context.scene
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    return np.asarray(Image.open(path).convert("RGBA")).astype(np.int32)


def emissive_cube(name, location, size, colour=(0.0, 0.0, 1.0)):
    bpy.ops.mesh.primitive_cube_add(size=size, location=location)
    cube = bpy.context.object
    cube.name = name
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nodes = mat.node_tree.nodes
    emission = nodes.new("ShaderNodeEmission")
    emission.inputs["Color"].default_value = (*colour, 1.0)
    mat.node_tree.links.new(emission.outputs[0], nodes["Material Output"].inputs["Surface"])
    cube.data.materials.append(mat)
    return cube


def camera_and_pelvis():
    """Blender world positions of the scene camera and the rig's pelvis."""
    scene = bpy.context.scene
    rig = scene.one_shot_avatar.armature
    pelvis = rig.matrix_world @ rig.pose.bones[rig.pose.bones[0].name].head
    return np.array(scene.camera.matrix_world.translation), np.array(pelvis)


def test_loading_puts_one_node_into_a_new_compositor_tree_and_a_shadow_proxy_on_the_rig(session):
    scene = bpy.context.scene
    tree = scene.compositing_node_group
    assert tree is not None and session["compositing"].installed(scene)
    assert scene.view_layers[0].use_pass_z and scene.render.use_compositing
    from one_shot_avatar import proxy

    s = scene.one_shot_avatar
    made = proxy.find_proxy(s.armature)
    assert made is not None and not made.visible_camera and made.visible_shadow
    s.shadow_proxy = False                              # the checkbox
    assert proxy.find_proxy(s.armature) is None and s.status == "shadow proxy removed"
    s.shadow_proxy = True
    assert proxy.find_proxy(s.armature) is not None and "shadow proxy added" in s.status


def grown(mask: np.ndarray) -> np.ndarray:
    """The mask and its 8 neighbours (Z Combine anti-aliases a pixel wide along depth edges)."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    return np.any([padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)


@pytest.mark.parametrize("engine", ["CYCLES", "BLENDER_EEVEE"])
def test_f12_hides_the_avatar_behind_a_cube_and_the_cube_behind_it(session, tmp_path, engine):
    """EEVEE renders through software OpenGL here (~10 s at this size)."""
    scene = bpy.context.scene
    scene.render.engine = engine
    scene.eevee.taa_render_samples = 1
    runtime = session["runtime"]
    expected = backend_frame(session).astype(np.int32)
    solid = expected[..., 3] >= 250
    cam, pelvis = camera_and_pelvis()
    toward = (cam - pelvis) / np.linalg.norm(cam - pelvis)
    side = np.cross(toward, [0.0, 0.0, 1.0])
    # a cube half way to the camera, covering the avatar's one side
    cube = emissive_cube("Wall", tuple(pelvis + 0.5 * (cam - pelvis) + 0.12 * side), 0.25)
    frames_before = runtime.render_frames
    front = f12(tmp_path / "front.png")
    assert runtime.render_frames == frames_before + 1 and not runtime.render_problems
    blue = (np.abs(front[..., :3] - BLUE).max(-1) <= 2) & (front[..., 3] == 255)
    assert (blue & solid).sum() > 50, "the cube must hide part of the avatar for this test to mean anything"
    visible = solid & ~grown(blue)
    error = np.abs(front[..., :3][visible] - expected[..., :3][visible])
    print(f"{engine}, cube in front: {(blue & solid).sum()} avatar pixels hidden, {visible.sum()} visible, "
          f"|F12 - backend| mean {error.mean():.2f}, max {error.max()} / 255")
    assert visible.sum() > 200 and error.mean() < 1.0 and error.max() <= 3
    assert (front[..., 3][visible] >= 250).all()

    # the same cube behind the avatar: the avatar hides it
    cube.location = tuple(pelvis - 0.6 * toward + 0.12 * side)
    cube.scale = (3.0, 3.0, 3.0)
    behind = f12(tmp_path / "behind.png")
    opaque = expected[..., 3] == 255      # (alpha 250 lets 2 % of the blue through: right, but not equal)
    error = np.abs(behind[..., :3][opaque] - expected[..., :3][opaque])
    cube_shows = (np.abs(behind[..., :3] - BLUE).max(-1) <= 2) & (expected[..., 3] == 0)
    print(f"{engine}, cube behind: |F12 - backend| over the avatar mean {error.mean():.2f}, max {error.max()} / 255, "
          f"cube seen at {cube_shows.sum()} px")
    assert error.mean() < 1.0 and error.max() <= 3 and cube_shows.sum() > 50
    bpy.data.objects.remove(cube)
    scene.render.engine = "CYCLES"


def test_without_the_backend_the_frame_renders_and_says_why(session, tmp_path):
    runtime = session["runtime"]
    connection, runtime.connection = runtime.connection, None
    try:
        image = f12(tmp_path / "alone.png")
    finally:
        runtime.connection = connection
    assert runtime.render_problems and "not connected" in runtime.render_problems[-1]
    assert "without the avatar" in bpy.context.scene.one_shot_avatar.status
    assert image[..., 3].max() == 0          # an empty scene, no stale avatar from the last frame
    runtime.render_problems.clear()


def test_render_animation_writes_each_frame_composited_with_the_scene_settings(session, tmp_path):
    scene = bpy.context.scene
    rig = scene.one_shot_avatar.armature
    root = rig.pose.bones[0]
    root.location = (0.0, 0.0, 0.0)
    root.keyframe_insert("location", frame=1)
    root.location = (0.0, 0.25, 0.0)
    root.keyframe_insert("location", frame=3)
    scene.frame_start, scene.frame_end = 1, 3
    scene.render.image_settings.file_format = "JPEG"
    scene.render.filepath = str(tmp_path / "shot_")
    runtime = session["runtime"]
    before = runtime.render_frames
    bpy.ops.render.render(animation=True)
    files = sorted(tmp_path.glob("shot_*.jpg"))
    assert [f.name for f in files] == ["shot_0001.jpg", "shot_0002.jpg", "shot_0003.jpg"], files
    assert runtime.render_frames == before + 3 and not runtime.render_problems
    assert runtime.render_client is None and not runtime.rendering     # closed with the render
    first, last = (np.asarray(Image.open(f)).astype(np.int32) for f in (files[0], files[2]))
    assert first.shape[:2] == (scene.render.resolution_y, scene.render.resolution_x)
    assert np.abs(first - last).max() > 60        # the avatar moved with the rig's keys
    scene.render.image_settings.file_format = "PNG"
    rig.animation_data_clear()
    scene.frame_set(1)


def test_the_artists_compositor_tree_is_kept(session):
    compositing = session["compositing"]
    scene = bpy.context.scene
    compositing.uninstall(scene)
    assert scene.compositing_node_group is None      # the tree we made is gone again
    tree = bpy.data.node_groups.new("Artist", "CompositorNodeTree")
    tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    rl, glare, out = (tree.nodes.new(t) for t in ("CompositorNodeRLayers", "CompositorNodeGlare", "NodeGroupOutput"))
    tree.links.new(rl.outputs["Image"], glare.inputs["Image"])
    tree.links.new(glare.outputs["Image"], out.inputs[0])
    scene.compositing_node_group = tree
    compositing.install(scene)
    node = tree.nodes[compositing.NODE]
    assert glare.inputs["Image"].links[0].from_node == node
    assert node.inputs["Image"].links[0].from_node == rl and node.inputs["Depth"].links[0].from_socket.name == "Depth"
    compositing.install(scene)                        # twice is once
    assert sum(n.name.startswith(compositing.NODE) for n in tree.nodes) == 1
    scene.one_shot_avatar.in_renders = False          # the checkbox takes it out
    assert compositing.NODE not in tree.nodes and glare.inputs["Image"].links[0].from_node == rl
    assert scene.compositing_node_group == tree and len(tree.nodes) == 3
    scene.one_shot_avatar.in_renders = True
    assert compositing.installed(scene)


def test_a_viewport_view_gets_its_frame_with_depth_off_the_ui_thread(session):
    """viewport.prepare with the region of a viewport looking through the scene camera (the GPU
    draw call is all it leaves out): a quarter-size frame is asked for at once, arrives through
    the connection thread with its depth converted to the view's depth range, and the full-size
    frame follows once the view has rested."""
    import time
    from types import SimpleNamespace

    from one_shot_avatar import results, viewport
    from one_shot_avatar.viewport_view import window_depth

    scene = bpy.context.scene
    cam = scene.camera
    depsgraph = bpy.context.evaluated_depsgraph_get()
    width, height = scene.render.resolution_x, scene.render.resolution_y
    P = np.array(cam.calc_matrix_camera(depsgraph, x=width, y=height))
    rv3d = SimpleNamespace(view_matrix=cam.matrix_world.normalized().inverted(), window_matrix=P)
    region = SimpleNamespace(width=width, height=height, as_pointer=lambda: 4242)

    def pump_until(condition, timeout=60.0):
        start = time.monotonic()
        while not condition():
            assert time.monotonic() - start < timeout
            results.poll_results()
            time.sleep(0.02)
        return time.monotonic() - start

    start = time.monotonic()
    assert viewport.prepare(bpy.context, region, rv3d) is None      # asked; nothing to draw yet
    assert viewport.prepare(bpy.context, region, rv3d) is None      # the same view: not asked again
    waited = pump_until(lambda: 4242 in viewport.scheduler.shown)
    quarter = viewport.prepare(bpy.context, region, rv3d)
    assert quarter.request.scale == 0.25 and quarter.rgba.shape[:2] == (round(height / 4), round(width / 4))
    print(f"quarter-size viewport frame {quarter.rgba.shape[1]}x{quarter.rgba.shape[0]} in {waited * 1000:.0f} ms "
          f"(CPU backend, with the tiny avatar)")
    time.sleep(viewport.scheduler.idle_s)
    waited = pump_until(lambda: viewport.scheduler.shown[4242].request.scale == 1.0)
    full = viewport.prepare(bpy.context, region, rv3d)
    # a viewport through the scene camera sees what F12 gets: the same frame, the same depth.
    # The viewport's camera comes from Blender's projection matrix and F12's from the lens, so
    # they agree to float32 rounding (K within ~3e-5 px): a pixel may round to the next level.
    view = session["operators"].current_view(bpy.context, avatar_id=AVATAR)
    with ServiceClient(session["server"].address, timeout=60) as c:
        rgba, depth = c.render(AVATAR, view["pose"], view["transl"], view["camera"], depth=True)
    off = np.abs(full.rgba.astype(int) - rgba.astype(int))
    assert off.max() <= 1 and (off > 0).any(-1).mean() < 1e-3
    np.testing.assert_allclose(full.depth, window_depth(depth, P), atol=1e-6)
    assert (full.depth[rgba[..., 3] == 0] == 1.0).all() and (full.depth[rgba[..., 3] > 0] < 1.0).all()
    print(f"full-size frame {width}x{height} {waited * 1000:.0f} ms after the view rested; "
          f"{time.monotonic() - start:.2f} s in all")
    viewport.scheduler.forget()


def test_a_cancelled_render_closes_its_socket_and_the_next_one_works(session, tmp_path):
    """Blender cancels between frames itself (Esc; background mode has no way to press it): our
    part is what the render_cancel handler does. A render is started as Blender starts one (its
    render_pre, then frame_change_post with the render's depsgraph), cancelled, then F12 works."""
    scene = bpy.context.scene
    runtime = session["runtime"]
    for handler in bpy.app.handlers.render_pre:
        handler(scene, None)
    assert runtime.rendering
    before = runtime.render_frames
    for handler in bpy.app.handlers.frame_change_post:
        handler(scene, bpy.context.evaluated_depsgraph_get())
    assert runtime.render_frames == before + 1 and runtime.render_client is not None
    for handler in bpy.app.handlers.render_cancel:
        handler(scene, None)
    assert not runtime.rendering and runtime.render_client is None
    f12(tmp_path / "after.png")
    assert runtime.render_frames == before + 2 and not runtime.render_problems


def test_renders_below_the_backends_smallest_size_are_rendered_larger_and_shrunk(session, tmp_path):
    """A test render at 10 % (12 x 12 here) is below the backend's 16 pixels a side: the frame is
    asked for at an integer multiple and averaged down, so the avatar is still in it."""
    compositing = session["compositing"]
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[:2, :2] = (200, 100, 0, 255)
    rgba[0, 2], depth = (10, 20, 30, 255), np.full((4, 6), 3.0, np.float32)
    depth[0, 2] = 5.0
    small, z = compositing.shrink(rgba, depth, 2)
    assert small.shape == (2, 3, 4) and tuple(small[0, 0]) == (200, 100, 0, 255)
    assert tuple(small[0, 1]) == (10, 20, 30, 64) and abs(z[0, 1] - 5.0) < 1e-6 and z[1, 1] == 0.0
    scene = bpy.context.scene
    scene.render.resolution_percentage = 10
    try:
        runtime = session["runtime"]
        before = runtime.render_frames
        image = f12(tmp_path / "tiny.png")
    finally:
        scene.render.resolution_percentage = 100
    assert runtime.render_frames == before + 1 and not runtime.render_problems, runtime.render_problems
    assert image.shape[0] < 16 and image[..., 3].max() > 0
