"""The photo's colours on the body (backend/avatar/photo_colours.py) and stage A starting from
them: seen vertices take the photo's colour, unseen ones the colours of the rim of what the photo sees, by part
(or, for the projection baseline, the front's mirror image)."""
import numpy as np
import torch

from backend.avatar.avatar import Avatar
from backend.avatar.config import preset
from backend.avatar.photo_colours import fill_unseen, photo_vertex_colours, seen_colours
from backend.avatar.stage_a import run_stage_a


def test_seen_vertices_take_the_photos_colour_and_the_rest_their_parts(open_body, subject_128):
    s = subject_128
    betas = np.zeros(open_body.num_betas)
    colours, seen, rest = seen_colours(open_body, s["photo"], s["mask"], s["camera"], s["pose"], betas, s["transl"])
    assert 0.2 < seen.mean() < 0.7 and colours.max() <= 1.0          # about the front half; uint8 photo read as 0..1
    filled, fraction = photo_vertex_colours(open_body, s["photo"], s["mask"], s["camera"], s["pose"], betas,
                                            s["transl"])
    assert fraction == seen.mean() and np.array_equal(filled[seen], colours[seen])
    parts = open_body.part_labels.numpy()
    from backend.avatar.photo_colours import rim

    edge = rim(seen, open_body.faces.numpy())
    assert edge.any() and (edge <= seen).all()
    for p in np.unique(parts[~seen]):       # an unseen vertex: within the colours of its part's rim
        have = edge & (parts == p)
        if have.any():
            lo, hi = colours[have].min(0) - 1e-9, colours[have].max(0) + 1e-9
            assert ((filled[~seen & (parts == p)] >= lo) & (filled[~seen & (parts == p)] <= hi)).all()


def test_a_chest_print_stays_on_the_chest_unlike_the_mirror(open_body):
    """The front (what faces a camera in front) with a red print in the middle of the chest on a
    green shirt: the mirror rule copies the print onto the back, the nearest-seen rule much less."""
    from backend.avatar.photo_colours import vertex_normals

    rest = open_body.rest()[0][0].numpy().astype(np.float64)
    parts = open_body.part_labels.numpy()
    normal_z = vertex_normals(rest, open_body.faces.numpy())[:, 2]
    front = normal_z > 0.1                                         # what a camera in front sees
    middle = (np.abs(rest[:, 0]) < 0.06) & (rest[:, 1] > 0.0) & (rest[:, 1] < 0.25)   # chest / upper back
    chest, back_middle = front & middle, (normal_z < -0.5) & middle
    colours = np.where(chest[:, None], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    mirrored = fill_unseen(colours, front, rest, "mirror")
    nearest = fill_unseen(colours, front, rest, "rim", parts, open_body.faces.numpy())
    red = lambda c: (c[back_middle, 0] > 0.5).mean()  # noqa: E731
    print(f"back of the chest painted red: mirror {red(mirrored):.0%}, rim {red(nearest):.0%}")
    assert back_middle.sum() > 20 and red(mirrored) > 0.8 and red(nearest) < 0.5 * red(mirrored)


def test_stage_a_starts_from_the_vertex_colours(open_body):
    torch.manual_seed(0)
    cfg = preset("tiny")
    avatar = Avatar(open_body, np.zeros(open_body.num_betas), cfg.field, cfg.motion, cfg.render)
    rest = avatar.rest_vertices.numpy()
    colours = np.where((rest[:, 1] > 0.0)[:, None], [0.9, 0.2, 0.1], [0.1, 0.2, 0.9])   # upper red, lower blue
    run_stage_a(avatar, cfg.stage_a, vertex_colours=colours)
    normals_in = rest - 0.01 * (rest - rest.mean(0)) / np.linalg.norm(rest - rest.mean(0), axis=1, keepdims=True)
    with torch.no_grad():
        _, rgb = avatar.field(torch.as_tensor(normals_in, dtype=torch.float32))
    rgb = rgb.numpy()
    upper, lower = rest[:, 1] > 0.3, rest[:, 1] < -0.4
    print(f"stage A colour just inside the body: upper {rgb[upper].mean(0).round(2)}, lower {rgb[lower].mean(0).round(2)}")
    assert rgb[upper, 0].mean() > rgb[upper, 2].mean() + 0.3 and rgb[lower, 2].mean() > rgb[lower, 0].mean() + 0.3
