"""The lung model, measured: held-out Dice and IoU, segmentation time, robustness on foreign images.
Prints one JSON object.

    python bench/lungs.py [--model cxrcore/lungs/shipped/lungs.keras] [--masks DIR ...] [--data DIR ...]
                          [--per-class 400] [--sheet-per-class 24] [--out bench/out/lungs]

* **held out**: Dice and IoU on each mask set's held-out split, the one the model's record names (the
  split is recomputed from the set, the record's seed and exclusions, and checked against the record's file
  names), and on the rows the training excluded (e.g. the Shenzhen films of a model trained without them),
  at each image's own size after the same post-processing as ``lungs segment``; the raw thresholded Dice
  beside it.
* **time**: seconds per image for the model alone at its input size (the goal: under 0.1 s on a 2-core CPU),
  and for ``LungSegmenter.segment`` on a 224 px PNG file (decode, model, resize back, two lungs, boxes);
  medians of 20 after a warm-up.
* **foreign images**: on each ``--data`` folder with a ``manifest.csv`` (``path``, ``label``; default the
  shared cxr-dev set), per class: how many images have two lungs with a lung fraction within
  0.10-0.60 (the goal: at least 95%), the fraction's quartiles, and the reasons of the others. A contact
  sheet per class (mask outlines over the images, the failures first) is written to ``--out`` for review.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import time
from pathlib import Path

from _common import ROOT, SHARED

DEFAULT_MASKS = [SHARED / "data" / "lung-masks-openist", SHARED / "data" / "lung-masks-mcsz"]
DEFAULT_DATA = [SHARED / "data" / "cxr-dev"]


def held_out(segmenter, masks: list[Path]) -> dict:
    from cxrcore.lungs.train import held_out_scores, read_mask_set

    record = segmenter.record
    seed = record.get("config", {}).get("seed", 0)
    exclude = tuple(record.get("config", {}).get("exclude") or ())
    named = {d["name"]: set(d.get("test_images", [])) for d in record.get("data", [])}
    sets, left_out_sets = [], []
    for folder in masks:
        if not (folder / "manifest.csv").is_file():
            continue
        mask_set = read_mask_set(folder, seed=seed, exclude=exclude)
        test_names = {Path(mask_set.pairs[i][0]).name for i in mask_set.split["test"]}
        if mask_set.name in named and named[mask_set.name] != test_names:
            raise SystemExit(f"{folder}: the held-out split differs from the one in the model's record")
        if mask_set.name not in named:
            mask_set.split["test"] = mask_set.split["train"] + mask_set.split["val"] + mask_set.split["test"]
        sets.append(mask_set)
        if exclude:  # what the model never saw at all: the rows its training left out
            left_out = read_mask_set(folder, seed=seed)
            kept = set(mask_set.pairs)
            unseen = [i for i, pair in enumerate(left_out.pairs) if pair not in kept]
            if unseen:
                left_out.name = f"{mask_set.name} (left out by {', '.join(exclude)})"
                left_out.split["test"] = unseen
                left_out_sets.append(left_out)
    scores = held_out_scores(segmenter.probabilities_of_gray, sets)
    scores["sets_not_in_training"] = [s.name for s in sets if s.name not in named]
    if left_out_sets:
        scores["left_out_by_training"] = held_out_scores(segmenter.probabilities_of_gray, left_out_sets)
    return scores


def timing(segmenter, repeats: int = 20) -> dict:
    import io

    import numpy as np
    from PIL import Image

    from cxrcore.data.io import decode_image

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (1, segmenter.size, segmenter.size, 1)).astype(np.float32)
    segmenter._forward(x)
    model_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        segmenter._forward(x)
        model_times.append(time.perf_counter() - start)
    files = []
    for _ in range(repeats + 1):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (224, 224), dtype=np.uint8)).save(buf, format="PNG")
        files.append(buf.getvalue())
    segmenter.lungs(decode_image(files[0]))
    full_times = []
    for data in files[1:]:
        start = time.perf_counter()
        segmenter.lungs(decode_image(data))
        full_times.append(time.perf_counter() - start)
    return {
        "model_input": segmenter.size,
        "model_s_per_image_median": round(statistics.median(model_times), 4),
        "model_s_per_image_min": round(min(model_times), 4),
        "segment_224_png_s_median": round(statistics.median(full_times), 4),
        "segment_224_png_s_min": round(min(full_times), 4),
    }


def contact_sheet(items, path: Path, columns: int = 8, tile: int = 160) -> None:
    """``items``: (image path, Lungs, caption) drawn as tiles, lungs outlined (image-left green, right red)."""
    from PIL import Image, ImageDraw

    from cxrcore.data.io import prepare_image
    from cxrcore.lungs import geometry

    rows = (len(items) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * tile, rows * (tile + 14)), "black")
    draw = ImageDraw.Draw(sheet)
    for k, (image_path, lungs, caption) in enumerate(items):
        rgb = prepare_image(image_path, tile)
        for value, colour in ((1, (0, 255, 0)), (2, (255, 60, 60))):
            rgb = geometry.draw_outline(rgb, lungs.labels == value, colour)
        x, y = (k % columns) * tile, (k // columns) * (tile + 14)
        sheet.paste(Image.fromarray(rgb), (x, y))
        draw.text((x + 2, y + tile), caption[:26], fill=(255, 255, 0) if "ok" not in caption else (200, 200, 200))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def foreign(segmenter, data: Path, per_class: int, sheet_per_class: int, out: Path) -> dict:
    import numpy as np

    from cxrcore.data.io import decode_image
    from cxrcore.lungs.geometry import PLAUSIBLE_FRACTION

    with open(data / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    by_class: dict[str, list[str]] = {}
    for row in rows:
        by_class.setdefault(row["label"], []).append(row["path"])
    rng = np.random.default_rng(0)
    report = {}
    for label, paths in sorted(by_class.items()):
        chosen = sorted(rng.choice(paths, min(per_class, len(paths)), replace=False).tolist())
        found, statuses, fractions = [], {}, []
        for rel in chosen:
            lungs = segmenter.lungs(decode_image(data / rel))
            found.append((rel, lungs))
            kind = "implausible lung fraction" if lungs.status.startswith("lung fraction") else lungs.status
            statuses[kind] = statuses.get(kind, 0) + 1
            fractions.append(lungs.fraction)
        ok = statuses.get("ok", 0)
        report[label] = {
            "images": len(chosen),
            "two_lungs_plausible": ok,
            "share_ok": round(ok / len(chosen), 4),
            "goal_met": ok / len(chosen) >= 0.95,
            "fraction_quartiles": [round(float(q), 3) for q in np.percentile(fractions, [25, 50, 75])],
            "statuses": statuses,
            "plausible_fraction": list(PLAUSIBLE_FRACTION),
        }
        failures = [(r, lg) for r, lg in found if lg.status != "ok"]
        fine = [(r, lg) for r, lg in found if lg.status == "ok"]
        shown = (failures + fine)[:sheet_per_class]
        sheet = out / f"{data.name}_{label}.png"
        contact_sheet([(data / r, lg, f"{lg.status} {lg.fraction:.2f}") for r, lg in shown], sheet)
        report[label]["contact_sheet"] = str(sheet)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a lungs.keras file (default: the shipped one)")
    parser.add_argument("--masks", nargs="*", type=Path, default=DEFAULT_MASKS)
    parser.add_argument("--data", nargs="*", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--per-class", type=int, default=400, help="foreign images per class (random, fixed seed)")
    parser.add_argument("--sheet-per-class", type=int, default=24)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "lungs")
    args = parser.parse_args()

    from cxrcore.lungs.segment import LungSegmenter

    segmenter = LungSegmenter(args.model)
    result = {
        "model": str(segmenter.path),
        "parameters": int(segmenter.model.count_params()),
        "model_bytes": segmenter.path.stat().st_size,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "time": timing(segmenter),
        "held_out": held_out(segmenter, [m for m in args.masks if m.is_dir()]),
        "foreign": {
            str(d.name): foreign(segmenter, d, args.per_class, args.sheet_per_class, args.out)
            for d in args.data
            if (d / "manifest.csv").is_file()
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
