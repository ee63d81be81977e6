"""The baked avatar as a skinned glTF 2.0 binary (.glb), written with pygltflib.

Frames: glTF is metres, +Y up, its assets facing +Z: exactly SMPL's rest frame, so the
canonical mesh and joints go in unchanged (importers convert to their own axes; Blender's
makes it Z up). The skeleton is SMPL's 24 joints, named and parented as in shared/smpl.py
(the add-on's rig uses the same names), each a node translated from its parent to its rest
joint with no rest rotation: an SMPL pose's local axis-angle rotations are the nodes' rotations
directly, and the global orientation and translation go on the pelvis (`transl` moves it).
"""
from __future__ import annotations

import dataclasses
import io

import numpy as np
import pygltflib as g
from PIL import Image

from shared.smpl import JOINT_NAMES, PARENTS

GENERATOR = "one-shot-avatar export"


@dataclasses.dataclass
class BakedMesh:
    vertices: np.ndarray       # (V, 3) float32, rest pose, SMPL frame, metres
    normals: np.ndarray        # (V, 3) float32
    uvs: np.ndarray            # (V, 2) float32, glTF convention (v = 0 at the image's top)
    faces: np.ndarray          # (F, 3) int, counter-clockwise from outside
    joints: np.ndarray         # (V, 4) uint8 joint indices
    weights: np.ndarray        # (V, 4) float32, rows sum to 1
    texture: np.ndarray        # (H, W, 3) uint8 sRGB colour
    rest_joints: np.ndarray    # (24, 3) float32, SMPL frame
    extras: dict = dataclasses.field(default_factory=dict)


class _Buffer:
    """Accessors packed into one binary buffer, each view 4-byte aligned."""

    def __init__(self, gltf: g.GLTF2):
        self.gltf, self.blob = gltf, bytearray()

    def view(self, data: bytes, target: int | None = None) -> int:
        self.blob += b"\0" * (-len(self.blob) % 4)
        self.gltf.bufferViews.append(g.BufferView(buffer=0, byteOffset=len(self.blob), byteLength=len(data),
                                                  target=target))
        self.blob += data
        return len(self.gltf.bufferViews) - 1

    def accessor(self, array: np.ndarray, kind: str, component: int, target: int | None = None,
                 bounds: bool = False) -> int:
        view = self.view(np.ascontiguousarray(array).tobytes(), target)
        acc = g.Accessor(bufferView=view, componentType=component, count=len(array), type=kind)
        if bounds:
            acc.min = array.min(0).astype(float).tolist()
            acc.max = array.max(0).astype(float).tolist()
        self.gltf.accessors.append(acc)
        return len(self.gltf.accessors) - 1


def png_bytes(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue()


def to_glb(mesh: BakedMesh, name: str = "avatar", texture_png: bytes | None = None) -> bytes:
    """The whole .glb file as bytes. texture_png: the texture already encoded (png_bytes)."""
    gltf = g.GLTF2(asset=g.Asset(version="2.0", generator=GENERATOR, extras=mesh.extras or None))
    buf = _Buffer(gltf)
    attrs = g.Attributes(
        POSITION=buf.accessor(mesh.vertices.astype(np.float32), g.VEC3, g.FLOAT, g.ARRAY_BUFFER, bounds=True),
        NORMAL=buf.accessor(mesh.normals.astype(np.float32), g.VEC3, g.FLOAT, g.ARRAY_BUFFER),
        TEXCOORD_0=buf.accessor(mesh.uvs.astype(np.float32), g.VEC2, g.FLOAT, g.ARRAY_BUFFER),
        JOINTS_0=buf.accessor(mesh.joints.astype(np.uint8), g.VEC4, g.UNSIGNED_BYTE, g.ARRAY_BUFFER),
        WEIGHTS_0=buf.accessor(mesh.weights.astype(np.float32), g.VEC4, g.FLOAT, g.ARRAY_BUFFER))
    indices = buf.accessor(mesh.faces.astype(np.uint32).reshape(-1), g.SCALAR, g.UNSIGNED_INT,
                           g.ELEMENT_ARRAY_BUFFER)
    image_view = buf.view(texture_png if texture_png is not None else png_bytes(mesh.texture))
    gltf.images.append(g.Image(bufferView=image_view, mimeType="image/png", name=f"{name}_colour"))
    gltf.samplers.append(g.Sampler(magFilter=g.LINEAR, minFilter=g.LINEAR_MIPMAP_LINEAR,
                                   wrapS=g.CLAMP_TO_EDGE, wrapT=g.CLAMP_TO_EDGE))
    gltf.textures.append(g.Texture(source=0, sampler=0))
    gltf.materials.append(g.Material(
        name=f"{name}_material",
        pbrMetallicRoughness=g.PbrMetallicRoughness(baseColorTexture=g.TextureInfo(index=0),
                                                    metallicFactor=0.0, roughnessFactor=1.0)))
    gltf.meshes.append(g.Mesh(name=name, primitives=[g.Primitive(attributes=attrs, indices=indices, material=0)]))

    # nodes: 0 the root, 1 the mesh, 2.. the 24 joints
    joints = np.asarray(mesh.rest_joints, np.float64).reshape(len(JOINT_NAMES), 3)
    first = 2
    gltf.nodes.append(g.Node(name=name, children=[1, first]))
    gltf.nodes.append(g.Node(name=f"{name}_mesh", mesh=0, skin=0))
    for j, joint_name in enumerate(JOINT_NAMES):
        offset = joints[j] - (joints[PARENTS[j]] if PARENTS[j] >= 0 else 0.0)
        children = [first + k for k, p in enumerate(PARENTS) if p == j]
        gltf.nodes.append(g.Node(name=joint_name, translation=offset.tolist(), children=children or None))
    inverse_bind = np.tile(np.eye(4, dtype=np.float32), (len(JOINT_NAMES), 1, 1))
    inverse_bind[:, :3, 3] = -joints
    # glTF matrices are column-major
    ibm = buf.accessor(np.ascontiguousarray(inverse_bind.transpose(0, 2, 1)).reshape(len(JOINT_NAMES), 16),
                       g.MAT4, g.FLOAT)
    gltf.skins.append(g.Skin(name=f"{name}_skeleton", joints=list(range(first, first + len(JOINT_NAMES))),
                             inverseBindMatrices=ibm, skeleton=first))
    gltf.scenes.append(g.Scene(name=name, nodes=[0]))
    gltf.scene = 0
    gltf.buffers.append(g.Buffer(byteLength=len(buf.blob)))
    gltf.set_binary_blob(bytes(buf.blob))
    return b"".join(gltf.save_to_bytes())
