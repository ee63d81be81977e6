"""The quality benchmark: Cycles subjects agree with our body model, the baseline and the
table writer behave, and a tiny run goes end to end (with the tiny random CLIP for its rows)."""
from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from backend.errors import AvatarError
from backend.quality import report
from backend.quality.measure import PeakMemory
from backend.quality.methods import BY_NAME, select
from backend.quality.projection import ProjectionBaseline
from backend.render.raster import camera_tensors, hard_silhouette
from shared.camera import PinholeCamera

needs_bpy = pytest.mark.skipif(importlib.util.find_spec("bpy") is None,
                               reason="the benchmark's ground truth is rendered by Cycles (bpy not installed)")


@pytest.fixture(scope="module")
def small_subject(open_body, tmp_path_factory):
    from backend.quality.subjects import Subject, ensure_subjects

    cache = tmp_path_factory.mktemp("subjects")
    folder = ensure_subjects(open_body, 1, seed=3, size=256, samples=16, cache=cache, log=lambda m: None)[0]
    return Subject.load(folder)


def _our_silhouette(body, pose, betas, transl, cam: PinholeCamera) -> np.ndarray:
    with torch.no_grad():
        v = body(pose, betas, transl).vertices
    K, R, t = camera_tensors(cam)
    return hard_silhouette(v, body.faces, K, R, t, cam.height, cam.width)[0].numpy()


@needs_bpy
def test_cycles_masks_match_our_body_at_every_view(open_body, small_subject):
    s = small_subject
    views = s.views
    held_out = [v for v in views if v.pose_name == "input" and v.name != "input"]
    assert len(held_out) >= 8 and any(v.yaw == 180 for v in held_out)
    assert len({v.pose_name for v in views}) >= 4            # the photo's pose + 3 novel poses
    for v in views:
        cycles = np.asarray(Image.open(s.folder / "masks" / f"{v.name}.png")) > 127
        ours = _our_silhouette(open_body, s.pose(v.pose_name), s.betas, s.transl, v.camera)
        iou = (cycles & ours).sum() / (cycles | ours).sum()
        assert iou >= 0.98, (v.name, iou)


@needs_bpy
def test_subject_formats_agree(open_body, small_subject):
    """Each view's ELICIT file (body in that camera's frame, identity camera) draws the same
    silhouette as our JSON (world body + camera); the input folder loads as a fit input."""
    from backend.inputs import load_elicit_folder, load_params

    s = small_subject
    for v in s.views[::3]:
        params, cam = load_params(s.folder / "truth" / f"{v.name}.json", (v.camera.height, v.camera.width))
        assert np.allclose(cam.R, v.camera.R) and params.source_model == open_body.name
        world = _our_silhouette(open_body, params.pose, params.betas, params.transl, cam)
        e = np.load(s.folder / "truth" / f"{v.name}.npz")
        ident = PinholeCamera.from_focal(float(e["focal_l"]), cam.width, cam.height)
        elicit = _our_silhouette(open_body, e["pose"][0], e["shape"][0], e["global_t"][0], ident)
        assert (world != elicit).sum() <= 2, v.name
    inputs = load_elicit_folder(s.folder / "input")
    assert inputs.image.shape == (256, 256, 3) and inputs.mask.sum() > 100
    assert not np.allclose(inputs.params.pose, s.pose())   # a rough estimate, not the truth


@needs_bpy
def test_subjects_are_deterministic_and_dressed_differently_front_and_back(open_body, tmp_path):
    from backend.quality.subjects import appearance, make_subject, write_subject

    a, b = make_subject(open_body, 2, seed=5), make_subject(open_body, 2, seed=5)
    assert np.array_equal(a.pose, b.pose) and np.array_equal(a.betas, b.betas) and a.look == b.look
    assert not np.array_equal(a.betas, make_subject(open_body, 3, seed=5).betas)
    attrs = appearance(open_body, a.betas, a.look)
    front, back = attrs["front_print"] > 0.5, attrs["back_print"] > 0.5
    assert front.sum() > 50 and back.sum() > 50 and not (front & back).any()
    one = write_subject(open_body, a, tmp_path / "one", size=48, samples=2)
    two = write_subject(open_body, a, tmp_path / "two", size=48, samples=2)
    for name in ("input", "yaw_180"):
        pixels = [np.asarray(Image.open(f / "renders" / f"{name}.png")) for f in (one, two)]
        assert np.array_equal(*pixels)


def test_v2_dresses_the_same_people_off_the_body_surface(open_body):
    """v2 is v1's person (body, pose, colours) with a loose top, a hair volume and, for some, a
    skirt: the dressed mesh leaves the body surface where those are and nowhere else, and the
    skirt is skinned (weights summing to 1) so that it follows the legs into a novel pose."""
    from backend.quality.subjects import dressed_meshes, make_subject

    specs = [make_subject(open_body, i, seed=0, subject_set="v2") for i in range(6)]
    v1 = make_subject(open_body, 0, seed=0)
    assert np.array_equal(specs[0].pose, v1.pose) and specs[0].look == v1.look and v1.garments is None
    assert any(s.garments.skirt for s in specs) and not all(s.garments.skirt for s in specs)
    with pytest.raises(ValueError, match="unknown subject set"):
        make_subject(open_body, 0, subject_set="v3")
    plain, _, _, _ = dressed_meshes(open_body, v1)
    spec = next(s for s in specs if s.garments.skirt)
    verts, faces, attrs, shade = dressed_meshes(open_body, spec)
    n = open_body.num_vertices
    body_only, _, _, _ = dressed_meshes(open_body, dataclasses.replace(spec, garments=None))
    assert np.array_equal(plain.shape, body_only.shape)
    moved = np.linalg.norm(verts[0, :n] - body_only[0], axis=1)
    g = spec.garments
    assert moved.max() == pytest.approx(max(g.loose_top, g.hair_volume), rel=1e-4)
    assert (moved < 1e-9).mean() > 0.4                       # face, hands, legs stay on the body
    skirt = verts[:, n:]
    assert skirt.shape[1] > 100 and faces.max() == verts.shape[1] - 1 and len(attrs["albedo"]) == verts.shape[1]
    assert shade.shape == verts.shape[:2] and (shade > 0).all()
    # the skirt hangs round both legs: wider than the hips and enclosing the thighs' centre
    from shared.smpl import PART_INDEX

    legs = np.isin(open_body.part_labels.numpy(), [PART_INDEX[p] for p in ("body", "left_upper_leg", "right_upper_leg")])
    hips = body_only[0][legs & (np.abs(body_only[0, :, 1] - skirt[0, :, 1].mean()) < 0.05)]
    assert np.ptp(skirt[0, :, 0]) > np.ptp(hips[:, 0]) + 0.05
    # in the novel poses it moves with the hips and thighs it hangs round
    moves = []
    for p in range(1, len(verts)):
        shift_skirt = skirt[p].mean(0) - skirt[0].mean(0)
        shift_legs = verts[p, :n][legs].mean(0) - verts[0, :n][legs].mean(0)
        assert np.linalg.norm(shift_skirt - shift_legs) < 0.03, p
        moves.append(np.abs(skirt[p] - skirt[0]).max())
    assert max(moves) > 0.05


@needs_bpy
def test_v2_cycles_masks_are_wider_than_the_body(open_body, tmp_path):
    """What Cycles renders for v2 covers the body's silhouette and more (the clothing)."""
    from backend.quality.subjects import Subject, ensure_subjects

    folders = ensure_subjects(open_body, 2, seed=0, size=96, samples=2, cache=tmp_path, log=lambda m: None,
                              subject_set="v2")
    assert "subjects-v2-" in str(folders[0])
    for folder in folders:
        s = Subject.load(folder)
        assert s.manifest["set"] == "v2" and s.manifest["garments"]["loose_top"] > 0
        for v in (s.views[0], s.views[5]):
            cycles = np.asarray(Image.open(s.folder / "masks" / f"{v.name}.png")) > 127
            ours = _our_silhouette(open_body, s.pose(v.pose_name), s.betas, s.transl, v.camera)
            assert (cycles & ours).sum() >= 0.97 * ours.sum(), v.name
            assert (cycles & ~ours).sum() > 0.08 * ours.sum(), v.name


def test_projection_baseline_reproduces_the_photo_and_mirrors_the_back(open_body):
    from backend.avatar.metrics import boxed_metrics
    from backend.jobs.sample_subject import FOCAL, frame_body, render_flat, subject_pose

    pose, betas = subject_pose(), np.zeros(open_body.num_betas)
    transl = frame_body(open_body, pose, betas, 4.8)
    cam = PinholeCamera.from_focal(FOCAL / 4, 128, 128)
    photo, mask = render_flat(open_body, pose, betas, transl, cam, np.zeros((128, 128, 3)))
    base = ProjectionBaseline(open_body, photo, mask, cam, pose, betas, transl)
    assert 0.2 < base.seen_fraction < 0.7
    again = base.render(cam, pose, transl, background=(0.0, 0.0, 0.0))
    assert boxed_metrics(again, photo, mask)["psnr"] > 20.0
    # every colour the baseline uses comes from the photo: unseen vertices copy seen ones
    seen_colours = {tuple(c) for c in base.colours.numpy().round(5)}
    assert len(seen_colours) < len(base.colours)


def test_method_definitions():
    recon = BY_NAME["recon_only"].change(__import__("backend.avatar.config", fromlist=["quick"]).quick())
    assert recon.stage_a.iterations == 0 and recon.stage_b.input_view_prob == 1.0 and not recon.use_clip
    assert recon.losses.silhouette == recon.losses.edge == recon.losses.outside == 0.0
    assert recon.losses.mse > 0 and recon.losses.input_alpha > 0
    cfg = BY_NAME["no_silhouette"].change(recon)
    assert cfg.losses.silhouette == 0.0
    names = [m.name for m in select(None, "true")]
    assert {"full", "projection", "full_fitted_body", "projection_fitted_body"} <= set(names)
    assert "full_true_body" not in names and "projection_true_body" not in names
    names = [m.name for m in select(None, "fitted")]
    assert {"full_true_body", "projection_true_body"} <= set(names) and "full_fitted_body" not in names
    with pytest.raises(AvatarError, match="unknown method"):
        select(["fulll"])


def _run(label, status="ok", bins=("input", "front", "left", "back", "novel pose"), psnr=20.0):
    if status != "ok":
        return {"status": status}
    views = [{"view": f"v{i}", "bin": b, "psnr": psnr + i, "ssim": 0.5} for i, b in enumerate(bins)]
    return {"status": "ok", "fit_seconds": 10.0, "eval_seconds": 1.0, "peak_memory_mb": 900.0, "views": views}


def test_table_writer_handles_missing_methods():
    results = {
        "size": {"name": "quick"}, "command": "x", "machine": {"processor": "x86_64", "cpu_count": 2, "torch": "2",
                                                                "device": "cpu"},
        "methods": {"full": "Full method", "no_clip": "w/o CLIP", "broken": "Broken", "absent": "Absent",
                    "partial": "Partial"},
        "held_out_views": 9, "novel_pose_views": 6, "eval_size": 256, "total_seconds": 60.0, "notes": ["n"],
        "subjects": [
            {"name": "s0", "body_fit": {"iou_before": 0.5, "iou_after": 0.9, "mpjpe_before_mm": 90,
                                        "mpjpe_after_mm": 50, "seconds": 3},
             "methods": {"full": _run("Full"), "no_clip": _run("", "skipped: no CLIP weights"),
                         "broken": _run("", "failed: RuntimeError: x"), "partial": _run("", bins=("front",))}},
            {"name": "s1", "body_fit": {"iou_before": 0.5, "iou_after": 0.9, "mpjpe_before_mm": 90,
                                        "mpjpe_after_mm": 50, "seconds": 3},
             "methods": {"full": _run("Full", psnr=22.0)}},
        ]}
    summary = report.summarise(results)
    assert summary["full"]["by_bin"]["front"]["psnr"] == pytest.approx(22.0)   # (21 + 23) / 2
    assert summary["full"]["by_bin"]["side"]["psnr"] == pytest.approx(23.0)    # 'left' is a side view
    assert summary["no_clip"]["status"].startswith("skipped") and summary["absent"]["status"] == "not run"
    md = report.write_markdown(results, summary)
    assert "| Full method | 21.00 / 0.500 | 22.00 / 0.500 |" in md
    assert "w/o CLIP: skipped: no CLIP weights" in md and "Broken: failed" in md and "Absent: not run" in md
    partial = next(line for line in md.splitlines() if line.startswith("| Partial"))
    assert partial.count("—") == 4                                             # only 'front' measured
    assert "## LPIPS" not in md                                                  # no LPIPS table without values
    per_subject = md.split("## Held-out PSNR (dB) per subject")[1]
    assert "| s0 | 22.50 |" in per_subject and "| s1 | 24.50 |" in per_subject   # held-out: all but input


def test_peak_memory_sees_a_large_allocation():
    with PeakMemory(torch.device("cpu")) as small:
        pass
    with PeakMemory(torch.device("cpu")) as big:
        block = np.ones(300 * 2**20 // 8)          # 300 MB, touched
        del block
    assert big.peak_mb > small.peak_mb + 200


@needs_bpy
def test_tiny_benchmark_end_to_end(open_body, tmp_path):
    """Every writer on a real (tiny) run, the CLIP rows with the tiny random CLIP config, then
    a resumed run that keeps the finished subject."""
    from backend.avatar.pretrained import ClipSpec
    from backend.quality.run import run_benchmark

    out = tmp_path / "bench"
    logs = []
    methods = ["full", "full_fitted_body", "no_clip_text", "recon_only", "projection", "exported_mesh"]
    results = run_benchmark("tiny", out, methods=methods,
                            clip_spec=ClipSpec.tiny_test(), cache=tmp_path / "cache", command="test",
                            log=logs.append)
    summary = results["summary"]
    for name in ("full", "no_clip_text", "recon_only", "projection"):
        assert summary[name]["status"] == "ok", (name, summary[name])
        assert set(summary[name]["by_bin"]) == set(report.BINS)
        assert np.isfinite(summary[name]["by_bin"]["back"]["psnr"])
    assert summary["full_fitted_body"]["status"] == "ok"       # the full method on the fitted body
    # the exported mesh of the full method's avatar, rendered by Cycles at every view
    assert summary["exported_mesh"]["status"] == "ok" and set(summary["exported_mesh"]["by_bin"]) == set(report.BINS)
    export = json.loads((out / "results.json").read_text())["subjects"][0]["methods"]["exported_mesh"]["export"]
    assert export["triangles"] <= 8000 and export["texture"] == 256 and export["silhouette_iou"]["mean"] > 0.6
    assert "## Exported mesh" in (out / "results.md").read_text()
    saved = json.loads((out / "results.json").read_text())
    assert saved["subjects"][0]["body_fit"]["iou_after"] > saved["subjects"][0]["body_fit"]["iou_before"]
    assert "| Full method |" in (out / "results.md").read_text()
    grid = Image.open(out / "grids" / "subject_00.png")
    assert grid.size[1] > 16 * 100                              # a row per view
    again = run_benchmark("tiny", out, methods=methods,
                          clip_spec=ClipSpec.tiny_test(), cache=tmp_path / "cache", command="test", resume=True,
                          log=logs.append)
    assert any("kept from the earlier run" in m for m in logs)
    assert again["summary"]["full"] == {**summary["full"]}


def test_subject_spec_prompt_names_front_and_back():
    from backend.quality.subjects import Look

    look = Look("red", "black", "white", "brown", (0.9, 0.7, 0.6), True, False, True, ("yellow", "teal"),
                ("white", "green"), 12.0, 6.0)
    text = look.prompt()
    assert "red shirt" in text and "yellow and teal" in text and "back" in text and "shorts" in text
    assert dataclasses.replace(look, long_trousers=True).prompt().count("trousers") == 1
