"""The avatar in Blender's own renders (F12, Render Animation), composited with the scene by depth.

Blender renders the scene as usual (Cycles or EEVEE: the scene's resolution, frame range, output
format and path, its render window and cancel); the compositor then puts the avatar in with a
Z Combine against the scene's depth pass, so objects in front of the avatar hide it and objects
behind it are hidden. The avatar's frame (straight-alpha RGBA and its camera depth) is fetched for
each frame while that frame is being prepared: Blender calls `frame_change_post` with the render's
own depsgraph (the originals are not updated while an animation renders), after `render_pre` and
before rendering and compositing. The fetch goes through its own socket (the connection thread may
be busy with a fit for minutes; the backend interleaves renders with a running fit).

What we add to the scene's compositor is one group node, inserted after the Render Layers node of
the active view layer; removing it (the panel's checkbox) restores the links. A compositor tree is
only created when the scene had none, and only that one is ever deleted.

Colours: the backend's RGBA are sRGB display values; they enter the compositor as linear colours
(sRGB decoded), so with the Standard view transform F12 shows exactly the backend's frame and with
AgX/Filmic the avatar is tone mapped like the rest of the scene.
"""
from __future__ import annotations

import math

import bpy
import numpy as np

from .blender_camera import render_size
from .runtime import runtime
from .shared.camera import MIN_IMAGE_SIDE
from .shared.client import ServiceClient
from .shared.compositing import EMPTY_DEPTH, srgb_to_linear

GROUP = "One-Shot Avatar Composite"
NODE = "One-Shot Avatar"
RGBA_IMAGE, DEPTH_IMAGE = "Avatar Render", "Avatar Render Depth"
CREATED_TAG = "one_shot_avatar_created"   # custom property on a compositor tree we made
RENDER_TIMEOUT_S = 600.0         # one full-size frame from a CPU backend takes a while


def layer_pixels(rgba: np.ndarray, depth: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """A backend frame (H, W, 4 uint8 straight alpha, sRGB; depth H, W metres, 0 where empty) ->
    the two images' pixels as Blender stores them (rows bottom-up, RGBA float): linear colour
    with straight alpha, and depth in every colour channel (EMPTY_DEPTH where nothing is)."""
    h, w = rgba.shape[:2]
    colour = np.empty((h, w, 4), np.float32)
    colour[..., :3] = srgb_to_linear(rgba[..., :3] / 255.0)
    colour[..., 3] = rgba[..., 3].astype(np.float32) / 255.0
    z = np.full((h, w), EMPTY_DEPTH, np.float32)
    if depth is not None:
        seen = (rgba[..., 3] > 0) & (depth > 0)
        z[seen] = depth[seen]
    depth4 = np.empty((h, w, 4), np.float32)
    depth4[..., :3], depth4[..., 3] = z[..., None], 1.0
    return colour[::-1], depth4[::-1]


def _float_image(name: str, width: int, height: int):
    """Our float image, made once and then resized in place: a render's depsgraph holds copies of
    the node group that point at it, so it must never be removed or replaced while rendering."""
    img = bpy.data.images.get(name)
    if img is None:
        img = bpy.data.images.new(name, width, height, alpha=True, float_buffer=True)
        img.alpha_mode = "STRAIGHT"
        img.colorspace_settings.name = "Non-Color" if name == DEPTH_IMAGE else "Linear Rec.709"
    elif tuple(img.size) != (width, height):
        img.scale(width, height)
    return img


def shrink(rgba: np.ndarray, depth: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A frame rendered k times larger (renders below the backend's smallest size) -> the render
    size: k x k pixel blocks averaged, colour and depth weighted by alpha (straight alpha)."""
    if k == 1:
        return rgba, depth
    h, w = rgba.shape[0] // k, rgba.shape[1] // k
    blocks = rgba[:h * k, :w * k].astype(np.float64).reshape(h, k, w, k, 4)
    alpha = blocks[..., 3] / 255.0
    weight = alpha.sum(axis=(1, 3))
    safe = np.maximum(weight, 1e-12)[..., None]
    colour = (blocks[..., :3] * alpha[..., None]).sum(axis=(1, 3)) / safe
    z = (depth[:h * k, :w * k].astype(np.float64).reshape(h, k, w, k) * alpha).sum(axis=(1, 3)) / safe[..., 0]
    out = np.concatenate([colour, (weight / (k * k) * 255.0)[..., None]], -1)
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    return out, np.where(out[..., 3] > 0, z, 0.0).astype(np.float32)


def set_layers(rgba: np.ndarray, depth: np.ndarray | None) -> None:
    """Put a backend frame where the compositor group reads it."""
    colour, depth4 = layer_pixels(rgba, depth)
    h, w = rgba.shape[:2]
    for name, pixels in ((RGBA_IMAGE, colour), (DEPTH_IMAGE, depth4)):
        img = _float_image(name, w, h)
        img.pixels.foreach_set(pixels.ravel())
        img.update()


def clear_layers(width: int, height: int) -> None:
    """No avatar in this frame (fully transparent, nothing in front of the scene)."""
    set_layers(np.zeros((height, width, 4), np.uint8), None)


# ---------------------------------------------------------------------------- the node group
def node_group():
    """Our group: (scene Image, scene Depth) -> the scene with the avatar, by depth."""
    group = bpy.data.node_groups.get(GROUP)
    if group is not None and group.bl_idname == "CompositorNodeTree" and "Z Combine" in group.nodes:
        return group
    if group is not None:
        group.name = GROUP + " (damaged)"
    group = bpy.data.node_groups.new(GROUP, "CompositorNodeTree")
    group.interface.new_socket("Image", in_out="INPUT", socket_type="NodeSocketColor")
    group.interface.new_socket("Depth", in_out="INPUT", socket_type="NodeSocketFloat")
    group.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    nodes, links = group.nodes, group.links
    given, out = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    colour, depth = nodes.new("CompositorNodeImage"), nodes.new("CompositorNodeImage")
    colour.name, depth.name = "Avatar", "Avatar Depth"
    colour.image, depth.image = _float_image(RGBA_IMAGE, 16, 16), _float_image(DEPTH_IMAGE, 16, 16)
    zc = nodes.new("CompositorNodeZcombine")
    zc.name = "Z Combine"
    zc.inputs["Use Alpha"].default_value = True   # the avatar's soft edges blend over what is behind
    links.new(given.outputs[0], zc.inputs["A"])
    links.new(given.outputs[1], zc.inputs["Depth A"])
    links.new(colour.outputs["Image"], zc.inputs["B"])
    links.new(depth.outputs["Image"], zc.inputs["Depth B"])
    links.new(zc.outputs["Result"], out.inputs[0])
    given.location, colour.location, depth.location, zc.location, out.location = \
        (-400, 0), (-400, -200), (-400, -450), (0, 0), (250, 0)
    return group


def _render_layers_node(tree, scene):
    layer = bpy.context.view_layer.name if bpy.context.view_layer else scene.view_layers[0].name
    nodes = [n for n in tree.nodes if n.bl_idname == "CompositorNodeRLayers"]
    for n in nodes:
        if n.layer == layer and (n.scene is None or n.scene == scene):
            return n
    if nodes:
        return nodes[0]
    rl = tree.nodes.new("CompositorNodeRLayers")
    rl.location = (-500, 0)
    return rl


def installed(scene) -> bool:
    tree = scene.compositing_node_group
    return tree is not None and tree.nodes.get(NODE) is not None


def install(scene) -> list[str]:
    """Insert the avatar into the scene's compositing (idempotent); notes for the status line."""
    notes = []
    tree = scene.compositing_node_group
    if tree is None:
        tree = bpy.data.node_groups.new(f"{scene.name} Compositing", "CompositorNodeTree")
        tree[CREATED_TAG] = True
        tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
        scene.compositing_node_group = tree
    rl = _render_layers_node(tree, scene)
    layer = scene.view_layers.get(rl.layer) or scene.view_layers[0]
    if not layer.use_pass_z:   # (the Render Layers node shows its Depth output only then)
        layer.use_pass_z = True
        notes.append(f"depth pass turned on for view layer '{layer.name}'")
    node = tree.nodes.get(NODE)
    if node is None:
        node = tree.nodes.new("CompositorNodeGroup")
        node.name = node.label = NODE
        node.node_tree = node_group()
        node.location = (rl.location.x + 300, rl.location.y - 150)
        for link in list(tree.links):
            if link.from_node == rl and link.from_socket.name == "Image":
                to = link.to_socket
                tree.links.remove(link)
                tree.links.new(node.outputs[0], to)
        tree.links.new(rl.outputs["Image"], node.inputs["Image"])
        tree.links.new(rl.outputs["Depth"], node.inputs["Depth"])
        out = next((n for n in tree.nodes if n.bl_idname == "NodeGroupOutput"), None)
        if out is None:
            out = tree.nodes.new("NodeGroupOutput")
            out.location = (node.location.x + 300, rl.location.y)
        if out.inputs and not out.inputs[0].is_linked:
            tree.links.new(node.outputs[0], out.inputs[0])
    if not scene.render.use_compositing:
        scene.render.use_compositing = True
        notes.append("compositing turned on")
    # the frame is fetched from a render handler: lock the UI while rendering, as Blender advises
    scene.render.use_lock_interface = True
    return notes


def uninstall(scene) -> None:
    """Take the avatar out again; the scene's own links are restored."""
    tree = scene.compositing_node_group
    node = tree.nodes.get(NODE) if tree is not None else None
    if node is None:
        return
    if tree.get(CREATED_TAG):
        scene.compositing_node_group = None
        bpy.data.node_groups.remove(tree)
        return
    source = node.inputs["Image"].links[0].from_socket if node.inputs["Image"].links else None
    consumers = [link.to_socket for link in node.outputs[0].links]
    tree.nodes.remove(node)
    if source is not None:
        for to in consumers:
            tree.links.new(source, to)


# ---------------------------------------------------------------------------- one frame, while rendering
def _render_client():
    """A socket of its own for the render's frames (opened on the first frame of a render job)."""
    conn = runtime.connection
    if conn is None:
        raise ValueError("not connected to a backend (press Connect in the Avatar panel)")
    if runtime.render_client is None:
        runtime.render_client = ServiceClient(conn.address, timeout=RENDER_TIMEOUT_S, **conn.keys)
    return runtime.render_client


def close_render_client() -> None:
    client, runtime.render_client = runtime.render_client, None
    if client is not None:
        client.close()


def fetch_frame(scene, depsgraph) -> str | None:
    """The avatar for the frame Blender is about to render (its depsgraph: the pose and camera of
    that frame). Without a backend or avatar the frame renders without it, and says so: the
    problem goes to the status line and the console, and is returned."""
    from .operators import scene_view   # (operators -> results -> live -> here: imported when used)

    s = scene.one_shot_avatar
    if not s.in_renders or not installed(scene):
        return None
    try:
        if not s.avatar_id:
            raise ValueError("no avatar chosen in the Avatar panel")
        width, height = render_size(scene)
        k = max(1, math.ceil(MIN_IMAGE_SIDE / max(1, min(width, height))))   # a test render at 10 %
        view = scene_view(scene, depsgraph, scale=k, avatar_id=s.avatar_id)
        client = _render_client()
        rgba, depth = client.render(s.avatar_id, view["pose"], view["transl"], view["camera"], depth=True)
        set_layers(*shrink(rgba, depth, k))
        runtime.render_frames += 1
        return None
    except Exception as exc:  # noqa: BLE001 - the scene still renders; the artist is told why
        close_render_client()
        clear_layers(*render_size(scene))
        problem = f"frame {scene.frame_current} rendered without the avatar: {getattr(exc, 'message', exc)}"
        print(f"One-Shot Avatar: {problem}")
        runtime.render_problems.append(problem)
        s.status = problem[:200]
        return problem
