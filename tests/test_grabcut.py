"""GrabCut derives a person mask on a synthetic photo, seeded by a roughly posed body."""
import numpy as np
import pytest

from backend.body.grabcut import grabcut_mask
from backend.errors import InputError
from backend.jobs.body_fit import body_silhouette
from backend.jobs.sample_subject import (
    FOCAL,
    frame_body,
    render_flat,
    rough_estimate,
    subject_pose,
    textured_background,
)
from shared.camera import PinholeCamera

SIZE = 256


def _iou(a, b):
    return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


@pytest.fixture(scope="module")
def photo(open_body):
    rng = np.random.default_rng(3)
    camera = PinholeCamera.from_focal(FOCAL * SIZE / 512, SIZE, SIZE)
    pose, betas = subject_pose(), np.array([0.8, -0.5, 0.6, 0.4, 0.0, 0.0])
    transl = frame_body(open_body, pose, betas, 4.8)
    rgb, mask = render_flat(open_body, pose, betas, transl, camera, textured_background(SIZE, rng))
    # a moderately rough estimate (limb joints off by up to 0.15 rad, average shape)
    rough = body_silhouette(open_body, rough_estimate(pose, rng, 0.15), np.zeros(6), transl + 0.02, camera)
    return rgb, mask > 0.5, rough


def test_grabcut_recovers_the_person(photo):
    rgb, truth, rough = photo
    result = grabcut_mask(rgb, rough)
    got = result.mask > 0.5
    assert _iou(got, truth) >= 0.9
    assert _iou(got, truth) > _iou(rough, truth) + 0.05  # better than the seed it started from
    assert result.reliable and not result.warnings


def test_unreliable_mask_is_reported(photo):
    rgb, truth, rough = photo
    # The body parameters put the person where the photo shows only background.
    ys, xs = np.nonzero(rough)
    shifted = np.zeros_like(rough)
    shifted[ys, np.clip(xs + 100, 0, SIZE - 1)] = True
    result = grabcut_mask(rgb, shifted)
    assert not result.reliable
    assert any("agrees poorly" in w or "area" in w for w in result.warnings)


def test_body_outside_the_photo_is_an_input_error(photo):
    rgb, _, _ = photo
    with pytest.raises(InputError, match="outside the photo"):
        grabcut_mask(rgb, np.zeros(rgb.shape[:2], bool))
