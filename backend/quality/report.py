"""The benchmark's outputs: summary over subjects, the Markdown table and per-subject PNG grids.

A method can be missing from a run (skipped: no CLIP weights; not selected; failed): every
writer here takes what is there and says what is not, it never fails on a gap.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

BINS = ("input", "front", "side", "back", "novel pose")
METRICS = ("psnr", "ssim", "lpips", "semi_transparent")


def report_bin(view_bin: str) -> str:
    """The table's bins: left and right views are both 'side'."""
    return "side" if view_bin in ("left", "right") else view_bin


def summarise(results: dict) -> dict:
    """Per method: mean of each metric per bin over all subjects' views, mean fit time, peak
    memory and status ('ok', or 'skipped: why' / 'failed: why' when no subject produced rows)."""
    summary = {}
    for name, label in results["methods"].items():
        rows, fit_s, eval_s, peaks, notes = [], [], [], [], []
        for subject in results["subjects"]:
            run = subject["methods"].get(name)
            if run is None:
                continue
            if run["status"] != "ok":
                notes.append(run["status"])
                continue
            rows += run["views"]
            fit_s.append(run["fit_seconds"])
            eval_s.append(run["eval_seconds"])
            peaks.append(run["peak_memory_mb"])
        entry = {"label": label, "subjects": len(fit_s)}
        if not rows:
            entry["status"] = notes[0] if notes else "not run"
        else:
            entry["status"] = "ok"
            entry["by_bin"] = {}
            for b in BINS:
                sel = [r for r in rows if report_bin(r["bin"]) == b]
                if sel:
                    entry["by_bin"][b] = {m: float(np.mean([r[m] for r in sel])) for m in METRICS
                                          if all(m in r for r in sel)}
            entry["fit_seconds"] = float(np.mean(fit_s))
            entry["eval_seconds"] = float(np.mean(eval_s))
            entry["peak_memory_mb"] = float(np.max(peaks))
        summary[name] = entry
    return summary


def _cell(by_bin: dict, b: str, metrics=("psnr", "ssim")) -> str:
    m = by_bin.get(b)
    if not m or any(k not in m for k in metrics):
        return "—"
    return " / ".join(f"{m[k]:.2f}" if k == "psnr" else f"{100 * m[k]:.1f} %" if k == "semi_transparent"
                      else f"{m[k]:.3f}" for k in metrics)


def markdown_table(summary: dict, metrics=("psnr", "ssim"), memory_kind: str = "peak memory") -> str:
    """Methods x bins; cells 'PSNR / SSIM' (or the metrics asked for). Methods without numbers
    keep their row with dashes and the reason as a footnote."""
    head = " / ".join(m.upper() for m in metrics)
    lines = [f"| Method | " + " | ".join(f"{b} ({head})" for b in BINS) + f" | fit (s) | {memory_kind} (MB) |",
             "|---|" + "---|" * (len(BINS) + 2)]
    notes = []
    for name, entry in summary.items():
        label = entry.get("label", name)
        if entry.get("status") != "ok":
            notes.append(f"{label}: {entry.get('status', 'not run')}")
            lines.append(f"| {label} [{len(notes)}] | " + " | ".join("—" for _ in BINS) + " | — | — |")
            continue
        cells = [_cell(entry["by_bin"], b, metrics) for b in BINS]
        lines.append(f"| {label} | " + " | ".join(cells) +
                     f" | {entry['fit_seconds']:.1f} | {entry['peak_memory_mb']:.0f} |")
    if notes:
        lines.append("")
        lines += [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines)


def body_fit_table(results: dict, key: str = "body_fit") -> str:
    start = "landmarks" if key == "photo_body_fit" else "rough"
    lines = [f"| Subject | silhouette IoU ({start} -> fitted) | MPJPE mm ({start} -> fitted) | seconds |",
             "|---|---|---|---|"]
    for s in results["subjects"]:
        f = s.get(key)
        if f is None:
            continue
        lines.append(f"| {s['name']} | {f['iou_before']:.3f} -> {f['iou_after']:.3f} | "
                     f"{f['mpjpe_before_mm']:.1f} -> {f['mpjpe_after_mm']:.1f} | {f['seconds']:.1f} |")
    return "\n".join(lines)


def per_subject_table(results: dict, summary: dict) -> str:
    """Held-out PSNR (all views but the input, novel poses included) per subject and method."""
    names = [n for n, e in summary.items() if e.get("status") == "ok"]
    lines = ["| Subject | " + " | ".join(summary[n]["label"] for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for s in results["subjects"]:
        cells = []
        for n in names:
            run = s["methods"].get(n, {})
            views = [r["psnr"] for r in run.get("views", []) if r["bin"] != "input"]
            cells.append(f"{np.mean(views):.2f}" if views else "—")
        lines.append(f"| {s['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def export_table(results: dict) -> str | None:
    """The exported mesh per subject: its size, bake time and silhouette agreement with the
    neural render (None when no run baked one)."""
    rows = [(s["name"], run["export"]) for s in results["subjects"] for run in s["methods"].values()
            if isinstance(run, dict) and "export" in run]
    if not rows:
        return None
    lines = ["| Subject | triangles | texture | bake (s) | .glb (MB) | silhouette IoU min / mean |",
             "|---|---|---|---|---|---|"]
    for name, e in rows:
        iou = e.get("silhouette_iou", {})
        lines.append(f"| {name} | {e['triangles']} | {e['texture']}² | {e['bake_seconds']:.1f} | "
                     f"{e['glb_bytes'] / 1e6:.1f} | {iou.get('min', float('nan')):.3f} / "
                     f"{iou.get('mean', float('nan')):.3f} |")
    return "\n".join(lines)


def write_markdown(results: dict, summary: dict) -> str:
    r = results
    parts = [f"# Quality benchmark ({r['size']['name']}, subjects {r.get('set', 'v1')})", "",
             f"Command: `{r['command']}`  ",
             f"Machine: {r['machine']['processor']}, {r['machine']['cpu_count']} CPUs, "
             f"{r['machine'].get('gpu', 'no GPU')}, torch {r['machine']['torch']}; device {r['machine']['device']}  ",
             f"Subjects: {len(r['subjects'])}; views per subject: 1 input, {r['held_out_views']} held-out, "
             f"{r['novel_pose_views']} novel-pose; evaluated at {r['eval_size']}x{r['eval_size']} inside the "
             f"person's box; total {r['total_seconds'] / 60:.1f} min", ""]
    source = r.get("body_source", "true")
    parts += [f"- Methods start from the {source} body parameters"
              + (" (ELICIT's protocol: its datasets provide body fits)" if source == "true" else
                 " (fitted to the photo's mask from a rough pose estimate)")
              + "; the 'Full, ... body' row shows the full method on the other one."]
    parts += [f"- {n}" for n in r.get("notes", [])]
    parts += ["", "## PSNR (dB) / SSIM, mean over subjects and views", "",
              markdown_table(summary, memory_kind=r.get("memory_kind", "peak memory"))]
    if any("lpips" in b for e in summary.values() for b in e.get("by_bin", {}).values()):
        parts += ["", "## LPIPS (VGG), lower is better", "",
                  markdown_table(summary, metrics=("lpips",), memory_kind=r.get("memory_kind", "peak memory"))]
    if any("semi_transparent" in b for e in summary.values() for b in e.get("by_bin", {}).values()):
        parts += ["", "## Semi-transparent fraction (of the rendered silhouette, alpha 0.1–0.9), lower is better",
                  "", markdown_table(summary, metrics=("semi_transparent",),
                                     memory_kind=r.get("memory_kind", "peak memory"))]
    exported = export_table(results)
    if exported:
        parts += ["", "## Exported mesh (`backend export`; IoU of its silhouette and the neural render's, every "
                  "view)", "", exported]
    parts += ["", "## Held-out PSNR (dB) per subject (every view but the input)", "",
              per_subject_table(results, summary)]
    parts += ["", "## Body fit from the rough estimate (used by the rows on the fitted body)", "",
              body_fit_table(results), ""]
    if any("photo_body_fit" in s for s in results["subjects"]):
        parts += ["## Body from the photo alone (used by the rows on the photo's body; IoU against the "
                  "estimated mask)", "", body_fit_table(results, "photo_body_fit"), ""]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- grids

def _square_box(mask: np.ndarray, pad: float = 0.08) -> tuple[int, int, int]:
    ys, xs = np.nonzero(mask > 0.5)
    if len(ys) == 0:
        return 0, 0, max(mask.shape)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    side = int(math.ceil(max(np.ptp(ys), np.ptp(xs)) * (1 + 2 * pad))) + 1
    return int(round(cy - side / 2)), int(round(cx - side / 2)), side


def _tile(image: np.ndarray, box: tuple[int, int, int], size: int) -> Image.Image:
    y0, x0, side = box
    h, w = image.shape[:2]
    canvas = np.ones((side, side, 3), np.float32)
    ys, xs = slice(max(0, y0), min(h, y0 + side)), slice(max(0, x0), min(w, x0 + side))
    canvas[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0] = image[ys, xs]
    tile = Image.fromarray((np.clip(canvas, 0, 1) * 255).round().astype(np.uint8))
    return tile.resize((size, size), Image.BILINEAR)


def write_grid(path, photo: np.ndarray, photo_mask: np.ndarray, views: list[dict], columns: list[str],
               tile: int = 128) -> None:
    """Rows: views; columns: the input photo, the ground truth, then each method's render of
    that view (`views[i]['images'][column]`, missing ones left blank), each cropped to the
    ground truth's person box. A header names the columns, each row's truth tile its view."""
    header = 18
    grid = Image.new("RGB", ((2 + len(columns)) * tile, header + len(views) * tile), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(["photo", "ground truth"] + columns):
        draw.text((c * tile + 3, 3), name[:22], fill="black")
    photo_tile = _tile(photo, _square_box(photo_mask), tile)
    for r, view in enumerate(views):
        y = header + r * tile
        box = _square_box(view["mask"])
        grid.paste(photo_tile, (0, y))
        grid.paste(_tile(view["truth"], box, tile), (tile, y))
        draw.text((tile + 3, y + 3), view["name"], fill="black")
        for c, name in enumerate(columns):
            if name in view["images"]:
                grid.paste(_tile(view["images"][name], box, tile), ((2 + c) * tile, y))
    grid.save(path)
