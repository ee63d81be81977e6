"""SMPL skeleton and ELICIT body-part conventions, the single definition for both sides.

SMPL rest pose: Y-up, facing +Z, the body's left at +X, arms horizontal (T-pose).
A pose is 72 axis-angle values: global orientation then 23 local joint rotations.
"""

JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee",
    "spine2", "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot",
    "neck", "left_collar", "right_collar", "head", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hand", "right_hand",
)
NUM_JOINTS = len(JOINT_NAMES)  # 24
PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
POSE_DIM = 3 * NUM_JOINTS  # 72
JOINT_INDEX = {name: i for i, name in enumerate(JOINT_NAMES)}

# The 11 body segments ELICIT samples from (part-aware sampling and crops).
PART_NAMES = (
    "body", "left_arm", "right_arm", "left_hand_forearm", "right_hand_forearm",
    "left_upper_leg", "right_upper_leg", "left_leg_foot", "right_leg_foot",
    "head", "neck",
)
NUM_PARTS = len(PART_NAMES)
PART_INDEX = {name: i for i, name in enumerate(PART_NAMES)}

# Which part a vertex belongs to, given the joint that dominates its skinning weights.
# A joint rotates the segment below it: left_shoulder drives the upper arm, left_elbow
# the forearm, left_hip the thigh, left_knee the shin.
JOINT_TO_PART = {
    "pelvis": "body", "spine1": "body", "spine2": "body", "spine3": "body",
    "left_collar": "body", "right_collar": "body",
    "left_shoulder": "left_arm", "right_shoulder": "right_arm",
    "left_elbow": "left_hand_forearm", "right_elbow": "right_hand_forearm",
    "left_wrist": "left_hand_forearm", "right_wrist": "right_hand_forearm",
    "left_hand": "left_hand_forearm", "right_hand": "right_hand_forearm",
    "left_hip": "left_upper_leg", "right_hip": "right_upper_leg",
    "left_knee": "left_leg_foot", "right_knee": "right_leg_foot",
    "left_ankle": "left_leg_foot", "right_ankle": "right_leg_foot",
    "left_foot": "left_leg_foot", "right_foot": "right_leg_foot",
    "neck": "neck", "head": "head",
}
JOINT_PART = tuple(PART_INDEX[JOINT_TO_PART[name]] for name in JOINT_NAMES)

# Bone names other SMPL rigs use (older SMPL FBX exports), for reading armatures.
FBX_JOINT_NAMES = (
    "m_avg_Pelvis", "m_avg_L_Hip", "m_avg_R_Hip", "m_avg_Spine1", "m_avg_L_Knee",
    "m_avg_R_Knee", "m_avg_Spine2", "m_avg_L_Ankle", "m_avg_R_Ankle", "m_avg_Spine3",
    "m_avg_L_Foot", "m_avg_R_Foot", "m_avg_Neck", "m_avg_L_Collar", "m_avg_R_Collar",
    "m_avg_Head", "m_avg_L_Shoulder", "m_avg_R_Shoulder", "m_avg_L_Elbow",
    "m_avg_R_Elbow", "m_avg_L_Wrist", "m_avg_R_Wrist", "m_avg_L_Hand", "m_avg_R_Hand",
)

# The SMPL-X Blender add-on's joints (SMPL-X order). The first 22 are SMPL's body joints with the
# same names; SMPL's left_hand/right_hand (22, 23) do not exist there: the wrists are followed by
# the jaw, the eyes and 15 finger joints per hand. Its rigs add a `root` bone above `pelvis`.
SMPLX_BODY_JOINTS = 22
SMPLX_JOINT_NAMES = JOINT_NAMES[:SMPLX_BODY_JOINTS] + (
    "jaw", "left_eye_smplhf", "right_eye_smplhf",
    "left_index1", "left_index2", "left_index3", "left_middle1", "left_middle2", "left_middle3",
    "left_pinky1", "left_pinky2", "left_pinky3", "left_ring1", "left_ring2", "left_ring3",
    "left_thumb1", "left_thumb2", "left_thumb3",
    "right_index1", "right_index2", "right_index3", "right_middle1", "right_middle2", "right_middle3",
    "right_pinky1", "right_pinky2", "right_pinky3", "right_ring1", "right_ring2", "right_ring3",
    "right_thumb1", "right_thumb2", "right_thumb3",
)

# Mixamo bones for the 24 SMPL joints (names without the rig's "mixamorig:"-style prefix); SMPL's
# left_hand/right_hand have no Mixamo bone (None). Mixamo's rest pose and bone orientations are
# not SMPL's: these name a retarget (blender_addon/rig.py), not a rename.
MIXAMO_BONE_NAMES = (
    "Hips", "LeftUpLeg", "RightUpLeg", "Spine", "LeftLeg", "RightLeg",
    "Spine1", "LeftFoot", "RightFoot", "Spine2", "LeftToeBase", "RightToeBase",
    "Neck", "LeftShoulder", "RightShoulder", "Head", "LeftArm",
    "RightArm", "LeftForeArm", "RightForeArm", "LeftHand", "RightHand",
    None, None,
)
# Where SMPL's hand joints (22, 23) sit on a Mixamo rig, when it has fingers: the middle finger's
# first bone starts at the knuckles, as SMPL's hand joint does. Used only to aim the wrist.
MIXAMO_HAND_TIP_NAMES = {22: "LeftHandMiddle1", 23: "RightHandMiddle1"}
