"""The built-in open body: loads through smplx, SMPL conventions, parts, shape, transforms."""
import numpy as np
import pytest
import smplx
import torch

from shared.smpl import JOINT_INDEX as J
from shared.smpl import NUM_PARTS, PARENTS, PART_INDEX


def test_loads_through_smplx_data_struct(open_body):
    assert isinstance(open_body.smpl, smplx.SMPL)
    assert open_body.num_vertices == 13718 and open_body.faces.shape == (27420, 3)
    assert open_body.num_betas == 6
    assert open_body.shape_names == ["gender", "age", "muscle", "weight", "height", "proportions"]
    assert open_body.parents.tolist() == list(PARENTS)
    assert torch.allclose(open_body.weights.sum(1), torch.ones(open_body.num_vertices), atol=1e-5)
    assert open_body.identity.startswith("open_body-v1-")


def test_rest_pose_is_smpl_like(open_body):
    out = open_body(torch.zeros(72))
    j = out.joints[0]
    v = out.vertices[0]
    # Y-up: head above neck above pelvis above knees above ankles
    assert j[J["head"], 1] > j[J["neck"], 1] > j[J["spine3"], 1] > j[J["pelvis"], 1]
    assert j[J["pelvis"], 1] > j[J["left_knee"], 1] > j[J["left_ankle"], 1]
    assert j[J["left_hip"], 1] < j[J["left_shoulder"], 1]
    # left at +X
    for name in ("hip", "knee", "ankle", "collar", "shoulder", "elbow", "wrist", "hand"):
        assert j[J[f"left_{name}"], 0] > 0.0 > j[J[f"right_{name}"], 0]
    # T-pose: arms horizontal, hands far out to the sides
    assert abs(float(j[J["left_wrist"], 1] - j[J["left_shoulder"], 1])) < 0.02
    assert j[J["left_wrist"], 0] > 0.55
    # facing +Z: the nose (most forward head vertex) is in front of the head joint
    head = (open_body.part_labels == PART_INDEX["head"])
    assert v[head, 2].max() > j[J["head"], 2] + 0.08
    # an adult's height, metres
    assert 1.5 < float(v[:, 1].max() - v[:, 1].min()) < 1.8


def test_left_elbow_flex_bends_forward(open_body):
    pose = torch.zeros(72)
    pose[3 * J["left_elbow"] + 1] = -np.pi / 2  # SMPL: left elbow flexes about -Y
    j = open_body(pose).joints[0]
    elbow, wrist = j[J["left_elbow"]], j[J["left_wrist"]]
    forearm = (wrist - elbow) / (wrist - elbow).norm()
    assert forearm[2] > 0.99  # points forward (+Z)
    rest = open_body(torch.zeros(72)).joints[0]
    assert torch.allclose(j[J["right_wrist"]], rest[J["right_wrist"]])  # the other arm stays
    # knee flexion (+X rotation) moves the foot backwards
    pose = torch.zeros(72)
    pose[3 * J["left_knee"]] = np.pi / 2
    j = open_body(pose).joints[0]
    assert j[J["left_ankle"], 2] < j[J["left_knee"], 2] - 0.3


def test_parts_cover_the_body_sensibly(open_body):
    labels = open_body.part_labels.numpy()
    assert set(np.unique(labels)) == set(range(NUM_PARTS))
    v = open_body(torch.zeros(72)).vertices[0].numpy()
    assert v[labels == PART_INDEX["left_arm"], 0].min() > 0.1
    assert v[labels == PART_INDEX["right_hand_forearm"], 0].max() < -0.3
    assert v[labels == PART_INDEX["head"], 1].min() > v[labels == PART_INDEX["body"], 1].max() - 0.1
    assert v[labels == PART_INDEX["left_leg_foot"], 1].max() < v[labels == PART_INDEX["left_upper_leg"], 1].max()
    assert open_body.face_parts.shape == (open_body.faces.shape[0],)


def test_transforms_reproduce_skinning(open_body):
    torch.manual_seed(0)
    pose = 0.3 * torch.randn(2, 72)
    betas = 0.5 * torch.randn(2, 6)
    transl = torch.tensor([[0.1, -0.2, 3.0], [0.0, 0.0, 0.0]])
    out = open_body(pose, betas, transl)
    # posedirs are zero for this body, so LBS with the returned transforms is exact
    A = torch.einsum("vj,bjrc->bvrc", open_body.weights, out.transforms)
    homo = torch.cat([out.rest_vertices, torch.ones_like(out.rest_vertices[..., :1])], -1)
    skinned = torch.einsum("bvrc,bvc->bvr", A, homo)[..., :3]
    assert torch.allclose(skinned, out.vertices, atol=1e-4)
    joints_h = torch.cat([out.rest_joints, torch.ones_like(out.rest_joints[..., :1])], -1)
    posed_joints = torch.einsum("bjrc,bjc->bjr", out.transforms, joints_h)[..., :3]
    assert torch.allclose(posed_joints, out.joints, atol=1e-4)


def test_shape_directions_follow_phenotypes(open_body):
    def height(betas):
        v = open_body.rest(torch.tensor(betas, dtype=torch.float32))[0][0]
        return float(v[:, 1].max() - v[:, 1].min())
    i = open_body.shape_names.index("height")
    up, down = np.zeros(6), np.zeros(6)
    up[i], down[i] = 1.0, -1.0
    assert height(up) > height(np.zeros(6)) + 0.1 > height(down) + 0.2
    w = open_body.shape_names.index("weight")
    heavy = np.zeros(6); heavy[w] = 1.0
    v0 = open_body.rest(torch.zeros(6))[0][0]
    v1 = open_body.rest(torch.tensor(heavy, dtype=torch.float32))[0][0]
    belly = (open_body.part_labels == PART_INDEX["body"]) & (v0[:, 2] > 0.05)
    # Anny's weight phenotype is mild: at beta=1 the belly moves forward ~2 mm
    assert float(v1[belly, 2].mean()) > float(v0[belly, 2].mean()) + 0.001
    # joints follow shape: the regressor is exact on the linear body
    tall = open_body.rest(torch.tensor(up, dtype=torch.float32))[1][0]
    rest = open_body.rest(torch.zeros(6))[1][0]
    assert tall[J["head"], 1] - rest[J["head"], 1] > 0.05


def test_bad_pose_shapes_are_refused(open_body):
    with pytest.raises(ValueError, match="72"):
        open_body(torch.zeros(69))
    with pytest.raises(ValueError, match="6 shape parameters"):
        open_body(torch.zeros(72), torch.zeros(10))


def test_the_add_ons_default_skeleton_is_the_open_body(open_body):
    """shared/body_defaults.py lets the add-on make a rig before any backend answers: its numbers
    are the asset's rest joints and sole height."""
    from shared.body_defaults import OPEN_BODY_REST_JOINTS, OPEN_BODY_SOLE_Y

    v, j = open_body.rest()
    assert np.abs(np.array(OPEN_BODY_REST_JOINTS) - j[0].numpy()).max() < 1e-4
    assert abs(OPEN_BODY_SOLE_Y - float(v[0, :, 1].min())) < 1e-4


def test_kinematic_chain_stays_on_the_host_when_the_body_moves():
    """smplx indexes its chain with parents[i] in a Python loop: the chain must stay a CPU
    tensor when the body moves to a device (else every step is a host sync on a GPU)."""
    from backend.body.body_model import load_body_model

    body = load_body_model("open_body").to(torch.float64)
    assert body.smpl.parents.device.type == "cpu" and body.parents.tolist() == list(PARENTS)
    out = body(torch.zeros(1, 72, dtype=torch.float64))
    assert out.transforms.shape == (1, 24, 4, 4)
