"""Cycles renders of benchmark subjects: runs in Blender's Python (bpy + numpy, never torch).

The ground truth of the quality benchmark must come from a renderer that shares no code with
ours, so the subject's mesh, its per-vertex appearance attributes and the cameras are written
to a job file by backend/quality/subjects.py and rendered here by Cycles in a separate
process: `python -m backend.quality.cycles_render JOB.npz OUT_DIR`.

Appearance is unlit (an emission shader) with the shading baked per vertex by the generator
(`shade`), so every view of a pose sees the same radiance, as a diffuse surface under a fixed
light would; the garment patterns are procedural textures of the rest-pose position, so they
stay sharp however coarse the mesh is and move with the body.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from shared.camera import PinholeCamera

SENSOR_WIDTH = 36.0  # mm; any value works as long as lens is derived from it


def blender_camera_params(cam: PinholeCamera) -> dict:
    """Blender camera settings equivalent to an OpenCV pinhole camera (square pixels)."""
    W, H = cam.width, cam.height
    fx, cx, cy = cam.K[0, 0], cam.K[0, 2], cam.K[1, 2]
    fit = W  # shift is in units of the fitted sensor side: the width with sensor_fit HORIZONTAL
    # Blender's camera looks down -Z with +Y up: flip the OpenCV camera's Y and Z axes.
    cam_to_world = cam.R.T @ np.diag([1.0, -1.0, -1.0])
    return {
        "lens": fx * SENSOR_WIDTH / W, "sensor_width": SENSOR_WIDTH, "sensor_fit": "HORIZONTAL",
        "shift_x": (W / 2.0 - cx) / fit, "shift_y": (cy - H / 2.0) / fit,
        "rotation": cam_to_world, "location": -cam.R.T @ cam.t,
    }


def apply_camera(cam_obj, scene, cam: PinholeCamera) -> None:
    import mathutils

    p = blender_camera_params(cam)
    data = cam_obj.data
    data.lens, data.sensor_width, data.sensor_fit = p["lens"], p["sensor_width"], p["sensor_fit"]
    data.shift_x, data.shift_y = p["shift_x"], p["shift_y"]
    data.clip_start, data.clip_end = 0.01, 1000.0
    M = mathutils.Matrix.Identity(4)
    for i in range(3):
        for j in range(3):
            M[i][j] = float(p["rotation"][i, j])
        M[i][3] = float(p["location"][i])
    cam_obj.matrix_world = M
    scene.render.resolution_x, scene.render.resolution_y = cam.width, cam.height
    scene.render.resolution_percentage = 100
    scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0


def new_scene(vertices: np.ndarray, faces: np.ndarray, cam: PinholeCamera):
    """An empty factory scene with the mesh and a camera equal to `cam`."""
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    mesh = bpy.data.meshes.new("body")
    mesh.from_pydata(np.asarray(vertices).tolist(), [], np.asarray(faces).tolist())
    mesh.update()
    obj = bpy.data.objects.new("body", mesh)
    scene.collection.objects.link(obj)
    cam_obj = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    scene.collection.objects.link(cam_obj)
    scene.camera = cam_obj
    apply_camera(cam_obj, scene, cam)
    return scene, obj, cam_obj


def cycles_settings(scene, samples: int, filter_width: float = 1.5) -> None:
    """Deterministic CPU Cycles with exact colours: no denoiser, fixed seed, no dither, the
    'Standard' view transform (sRGB out of linear values, nothing else), transparent film."""
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_adaptive_sampling = False
    scene.cycles.use_denoising = False
    scene.cycles.seed = 0
    scene.cycles.max_bounces = 0
    scene.cycles.filter_width = filter_width
    scene.render.film_transparent = True
    scene.render.dither_intensity = 0.0
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.view_settings.exposure = 0.0
    scene.view_settings.gamma = 1.0
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.render.image_settings.color_depth = "8"


def _set_attribute(mesh, name: str, values: np.ndarray) -> None:
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 1:
        kind, key = "FLOAT", "value"
    elif values.shape[1] == 3:
        kind, key = "FLOAT_VECTOR", "vector"
    else:
        kind, key = "FLOAT_COLOR", "color"
    attr = mesh.attributes.get(name) or mesh.attributes.new(name=name, type=kind, domain="POINT")
    attr.data.foreach_set(key, values.ravel())


def build_material(obj, look: dict) -> None:
    """albedo (per vertex) with a checker print where front_print > 0.5, stripes where
    back_print > 0.5, emitted with strength `shade`."""
    import bpy

    mat = bpy.data.materials.new("garments")
    if mat.node_tree is None:  # Blender < 5 makes the node tree only on request
        mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()

    def attribute(name):
        n = nodes.new("ShaderNodeAttribute")
        n.attribute_type, n.attribute_name = "GEOMETRY", name
        return n

    def above_half(socket):
        n = nodes.new("ShaderNodeMath")
        n.operation = "GREATER_THAN"
        links.new(socket, n.inputs[0])
        n.inputs[1].default_value = 0.5
        return n.outputs[0]

    def mix(factor, a, b):
        n = nodes.new("ShaderNodeMix")
        n.data_type = "RGBA"
        socket = {s.identifier: s for s in n.inputs}  # several inputs share the name "A"
        links.new(factor, socket["Factor_Float"])
        for name, value in (("A_Color", a), ("B_Color", b)):
            if isinstance(value, (tuple, list)):
                socket[name].default_value = (*value, 1.0)
            else:
                links.new(value, socket[name])
        return next(s for s in n.outputs if s.identifier == "Result_Color")

    rest = attribute("rest").outputs["Vector"]
    checker = nodes.new("ShaderNodeTexChecker")
    links.new(rest, checker.inputs["Vector"])
    checker.inputs["Scale"].default_value = look["print_scale"]
    checker.inputs["Color1"].default_value = (*look["print_colours"][0], 1.0)
    checker.inputs["Color2"].default_value = (*look["print_colours"][1], 1.0)
    wave = nodes.new("ShaderNodeTexWave")
    wave.wave_type, wave.bands_direction = "BANDS", "Y"
    links.new(rest, wave.inputs["Vector"])
    wave.inputs["Scale"].default_value = look["stripe_scale"]
    wave.inputs["Distortion"].default_value = 0.0
    wave.inputs["Detail"].default_value = 0.0
    stripes = mix(above_half(wave.outputs["Fac"]), look["stripe_colours"][0], look["stripe_colours"][1])
    colour = mix(above_half(attribute("front_print").outputs["Fac"]), attribute("albedo").outputs["Color"],
                 checker.outputs["Color"])
    colour = mix(above_half(attribute("back_print").outputs["Fac"]), colour, stripes)
    emission = nodes.new("ShaderNodeEmission")
    links.new(colour, emission.inputs["Color"])
    links.new(attribute("shade").outputs["Fac"], emission.inputs["Strength"])
    out = nodes.new("ShaderNodeOutputMaterial")
    links.new(emission.outputs["Emission"], out.inputs["Surface"])
    obj.data.materials.append(mat)


def build_texture_material(obj, uvs: np.ndarray, texture: str) -> None:
    """The exported mesh's look: its colour texture through its UVs (per vertex), emitted as is."""
    import bpy

    mesh = obj.data
    layer = mesh.uv_layers.new(name="UVMap")
    loop_vertices = np.empty(len(mesh.loops), np.int32)
    mesh.loops.foreach_get("vertex_index", loop_vertices)
    uv = np.asarray(uvs, np.float32)[loop_vertices].copy()
    uv[:, 1] = 1.0 - uv[:, 1]   # glTF's v runs down the image, Blender's up
    layer.data.foreach_set("uv", uv.ravel())
    mat = bpy.data.materials.new("exported")
    if mat.node_tree is None:
        mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()
    image = nodes.new("ShaderNodeTexImage")
    image.image = bpy.data.images.load(texture)
    image.interpolation = "Linear"
    emission = nodes.new("ShaderNodeEmission")
    links.new(image.outputs["Color"], emission.inputs["Color"])
    out = nodes.new("ShaderNodeOutputMaterial")
    links.new(emission.outputs["Emission"], out.inputs["Surface"])
    mesh.materials.append(mat)


def render_job(job_path: Path, out_dir: Path) -> list[Path]:
    """Render every view of a job file (see subjects.write_cycles_job, or a textured mesh's:
    meta kind "textured", `uvs` and meta `texture`) to OUT_DIR/<view>.png."""
    import bpy

    job = np.load(job_path, allow_pickle=False)
    meta = json.loads(str(job["meta"]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cams = [PinholeCamera(job["K"][i], job["R"][i], job["t"][i], meta["width"], meta["height"])
            for i in range(len(meta["views"]))]
    verts = job["vertices"]
    scene, obj, cam_obj = new_scene(verts[0], job["faces"], cams[0])
    cycles_settings(scene, meta["samples"], meta.get("filter_width", 1.5))
    mesh = obj.data
    if meta.get("kind") == "textured":
        build_texture_material(obj, job["uvs"], meta["texture"])
        return _render_views(scene, obj, cam_obj, cams, meta["views"], verts, job["pose_index"], out_dir)
    shades = job["shade"]
    for name in ("rest", "albedo", "front_print", "back_print"):
        values = job[name]
        if name == "albedo":
            values = np.concatenate([values, np.ones((len(values), 1))], 1)
        _set_attribute(mesh, name, values)
    build_material(obj, meta["look"])
    return _render_views(scene, obj, cam_obj, cams, meta["views"], verts, job["pose_index"], out_dir, shades)


def _render_views(scene, obj, cam_obj, cams, views, verts, pose_index, out_dir: Path, shades=None) -> list[Path]:
    import bpy

    mesh = obj.data
    written, current = [], None
    for i, view in enumerate(views):
        p = int(pose_index[i])
        if p != current:
            mesh.vertices.foreach_set("co", verts[p].astype(np.float32).ravel())
            if shades is not None:
                _set_attribute(mesh, "shade", shades[p])
            mesh.update()
            current = p
        apply_camera(cam_obj, scene, cams[i])
        path = out_dir / f"{view}.png"
        scene.render.filepath = str(path)
        bpy.ops.render.render(write_still=True)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m backend.quality.cycles_render JOB.npz OUT_DIR", file=sys.stderr)
        return 2
    render_job(Path(argv[0]), Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
