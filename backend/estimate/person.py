"""Find the person in a photo: 33 BlazePose landmarks (in the image and metric 3D) and a mask.

MediaPipe's legacy Pose solution (mediapipe==0.10.21) runs offline: its detector, landmark
(model_complexity=1: `pose_landmark_full`) and segmentation models ship inside the wheel.
Complexity 2 would download a model at run time, so it is never used. The selfie-segmentation
model (also in the wheel) segments every person in view; comparing it with the pose's own mask
tells whether other people are in the photo.

Landmark conventions (MediaPipe's): indices as in `LANDMARKS`, "left" is the person's left;
image landmarks in pixels (x right, y down); world landmarks in metres, centred between the
hips, with the camera's axes (x right, y down, z away from the camera).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from backend.errors import InputError

# BlazePose's 33 landmarks (the ones we use by name)
LANDMARKS = {"nose": 0, "left_ear": 7, "right_ear": 8, "left_shoulder": 11, "right_shoulder": 12,
             "left_elbow": 13, "right_elbow": 14, "left_wrist": 15, "right_wrist": 16,
             "left_pinky": 17, "right_pinky": 18, "left_index": 19, "right_index": 20,
             "left_hip": 23, "right_hip": 24, "left_knee": 25, "right_knee": 26,
             "left_ankle": 27, "right_ankle": 28, "left_heel": 29, "right_heel": 30,
             "left_foot_index": 31, "right_foot_index": 32}
VISIBLE = 0.5            # a landmark with lower visibility is treated as not seen
OTHER_PERSON_AREA = 0.2  # a second person region at least this share of the main one is reported
EDGE_PX = 2.0            # a landmark this close to the border (or beyond) counts as cut off

INSTALL_HINT = ("the photo-only path needs mediapipe 0.10.21: run the project's set-up "
                "(bash scripts/env.sh …), or `pip install --no-deps mediapipe==0.10.21` plus "
                "absl-py attrs flatbuffers 'protobuf<5' sentencepiece matplotlib")


class NoPersonError(InputError):
    """No person was found in the photo."""


class EstimatorUnavailable(InputError):
    """mediapipe is not installed."""


@dataclasses.dataclass
class PersonEstimate:
    image_xy: np.ndarray    # (33, 2) pixels
    visibility: np.ndarray  # (33,) in [0, 1]
    world: np.ndarray       # (33, 3) metres, hip-centred, camera axes (x right, y down, z away)
    mask: np.ndarray        # (H, W) float32 in [0, 1]: the person (pose segmentation)
    warnings: list[str]

    def seen(self, name: str) -> bool:
        return bool(self.visibility[LANDMARKS[name]] >= VISIBLE)


def _mediapipe():
    try:
        import mediapipe as mp
    except ImportError as exc:
        raise EstimatorUnavailable(f"{INSTALL_HINT} ({exc})") from None
    return mp


def estimate_person(image: np.ndarray, where: str = "the photo") -> PersonEstimate:
    """(H, W, 3) uint8 RGB -> the person's landmarks and mask. NoPersonError if there is none;
    warnings for other people in view and for a person cut off at the frame."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise TypeError(f"estimate_person takes an (H, W, 3) uint8 photo, got {image.dtype} {image.shape}")
    mp = _mediapipe()
    image = np.ascontiguousarray(image[..., :3])
    h, w = image.shape[:2]
    with mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=True) as pose:
        result = pose.process(image)
    if result.pose_landmarks is None:
        raise NoPersonError(f"no person found in {where}: use a photo in which one person is seen "
                            f"whole, standing, not too small (at least a third of the photo's height)")
    lm = result.pose_landmarks.landmark
    image_xy = np.array([[p.x * w, p.y * h] for p in lm], dtype=np.float64)
    visibility = np.array([p.visibility for p in lm], dtype=np.float64)
    world = np.array([[p.x, p.y, p.z] for p in result.pose_world_landmarks.landmark], dtype=np.float64)
    mask = np.asarray(result.segmentation_mask, dtype=np.float32)
    estimate = PersonEstimate(image_xy, visibility, world, mask, [])
    estimate.warnings += cut_off_warnings(estimate, w, h, where)
    estimate.warnings += other_people_warnings(mp, image, mask, where)
    return estimate


def cut_off_warnings(est: PersonEstimate, width: int, height: int, where: str) -> list[str]:
    """Which body parts lie outside the frame (or are not seen at all)."""
    parts = {"head": ("nose", "left_ear", "right_ear"), "feet": ("left_ankle", "right_ankle", "left_heel",
                                                                 "right_heel"),
             "hands": ("left_wrist", "right_wrist")}
    out = []
    for part, names in parts.items():
        idx = [LANDMARKS[n] for n in names]
        xy = est.image_xy[idx]
        outside = ((xy < EDGE_PX) | (xy > np.array([width, height]) - EDGE_PX)).any(-1)
        hidden = est.visibility[idx] < VISIBLE
        if (outside | hidden).all() or outside.any():
            edges = _edges(xy[outside], width, height) if outside.any() else []
            out.append(f"{where}: the person's {part} {'are' if part != 'head' else 'is'} "
                       + (f"cut off at the {' and '.join(edges)} edge" if edges else "not visible")
                       + "; the avatar's missing parts are guessed from the body model")
    return out


def _edges(xy: np.ndarray, width: int, height: int) -> list[str]:
    edges = []
    for cond, name in ((xy[:, 1] > height - EDGE_PX, "bottom"), (xy[:, 1] < EDGE_PX, "top"),
                       (xy[:, 0] < EDGE_PX, "left"), (xy[:, 0] > width - EDGE_PX, "right")):
        if cond.any():
            edges.append(name)
    return edges


def person_regions(mask: np.ndarray, threshold: float = 0.5) -> list[np.ndarray]:
    """Connected regions of mask > threshold, largest first, as boolean masks."""
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats((mask > threshold).astype(np.uint8), connectivity=8)
    order = sorted(range(1, n), key=lambda i: -stats[i, cv2.CC_STAT_AREA])
    return [labels == i for i in order]


def other_people_warnings(mp, image: np.ndarray, person_mask: np.ndarray, where: str) -> list[str]:
    """Everybody the selfie segmentation sees, minus the estimated person: sizeable regions left
    are other people (the avatar is made of the one whose pose was found)."""
    import cv2

    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
        everyone = np.asarray(seg.process(image).segmentation_mask, dtype=np.float32) > 0.3
    # the selfie model breaks a small full-body figure into pieces: close the gaps between them
    k = max(3, round(0.04 * max(image.shape[:2]))) | 1
    joined = cv2.morphologyEx(everyone.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((k, k), np.uint8))
    main_area = max(1, int((person_mask > 0.5).sum()))
    others = [r for r in person_regions(joined.astype(np.float32))
              if (everyone & r).sum() >= OTHER_PERSON_AREA * main_area and (person_mask[r] > 0.5).mean() < 0.2]
    if not others:
        return []
    return [f"{where}: {len(others) + 1} people seem to be in view; the avatar is made of the one "
            f"whose whole body is clearest (give a mask to choose another)"]
