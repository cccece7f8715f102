"""NIH ChestX-ray14 at its full size: the index and the Data page on 112,120 images, printed as JSON.

    python bench/nih_scale.py [--images 112120] [--out DIR] [--record]

Makes (once; a folder whose marker file ``.nih_scale.json`` holds the same parameters is reused) a folder
in NIH's own distribution format: ``Data_Entry_2017.csv`` (NIH's header, bracketed names and trailing
comma included), ``train_val_list.txt`` / ``test_list.txt`` (split by patient, 25,596 test images at full
size) and ``images_001/images`` ... ``images_012/images`` (4,999, then 10,000 each, the last 7,121, as
NIH's archives; scaled down for ``--images``), named ``{patient:08d}_{followup:03d}.png``: 30,805
patients with 1 to 184 images each (skewed: most have one or two, a few have over a hundred), 14 findings
drawn per image with NIH's published counts (several per image possible, "No Finding" 60,361), PA/AP
about 60/40. Every image is a 16x16 8-bit grayscale PNG with content of its own (the index reads
headers, not pixels).

Then, each in a fresh process (honest imports and memory) with ``CXRCORE_CACHE`` an empty temporary
folder: ``build_index`` cold, ``build_index`` warm (a second process, the same cache), each with its peak
RSS; then the Data page through Streamlit's AppTest as the tests open it (``app.py``, whose default page
is Data; ``pages/data.py`` on its own reruns for ever without app.py's navigation) with the dataset in
session state: the first run (the index cache warm, Streamlit's caches empty) and a second ``AppTest`` in
the same process (Streamlit's st.cache_data is process-wide), with any exception or error elements.
``--record`` appends the JSON to bench/results/nih_scale_cpu.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from _common import ROOT

NIH_IMAGES = 112_120
NIH_PATIENTS = 30_805
NIH_TEST_IMAGES = 25_596
NIH_MAX_PER_PATIENT = 184
#: images per archive folder, images_001 .. images_012
NIH_FOLDERS = (4_999, *([10_000] * 10), 7_121)
NO_FINDING = 60_361
#: NIH's published counts of each finding out of 112,120 images
FINDINGS = {
    "Infiltration": 19_894,
    "Effusion": 13_317,
    "Atelectasis": 11_559,
    "Nodule": 6_331,
    "Mass": 5_782,
    "Pneumothorax": 5_302,
    "Consolidation": 4_667,
    "Pleural_Thickening": 3_385,
    "Cardiomegaly": 2_776,
    "Emphysema": 2_516,
    "Edema": 2_303,
    "Fibrosis": 1_686,
    "Pneumonia": 1_431,
    "Hernia": 227,
}
#: NIH's header, literally: the bracketed names hold commas (pandas reads them as four columns) and the
#: line ends with a comma (pandas: an empty "Unnamed: 11"); the rows end with a comma too
HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
MARKER = ".nih_scale.json"
VERSION = 1
IMAGE_SIZE = 16
CHUNK = 500  # images per generation task
RESULTS = ROOT / "bench" / "results" / "nih_scale_cpu.jsonl"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    """This process's peak resident memory (ru_maxrss: KiB on Linux, bytes on macOS), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


# -- the dataset -------------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


_PNG_HEAD = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", IMAGE_SIZE, IMAGE_SIZE, 8, 0, 0, 0, 0))
_PNG_TAIL = _chunk(b"IEND", b"")


def png_bytes(pixels: bytes) -> bytes:
    """A grayscale 8-bit PNG of IMAGE_SIZE x IMAGE_SIZE ``pixels`` (row-major), written by hand: no filter,
    one IDAT; PIL and every decoder read it."""
    rows = b"".join(b"\x00" + pixels[i : i + IMAGE_SIZE] for i in range(0, len(pixels), IMAGE_SIZE))
    return _PNG_HEAD + _chunk(b"IDAT", zlib.compress(rows, 6)) + _PNG_TAIL


def _write_images(task: tuple[str, list[str], int]) -> int:
    """One generation task: ``names`` into ``folder``, each a smooth gradient plus noise of its own."""
    import numpy as np

    folder, names, seed = task
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 200, IMAGE_SIZE)
    for name in names:
        base = ramp[:, None] * rng.uniform(0.6, 1.2) + ramp[None, :] * rng.uniform(0.0, 0.3)
        pixels = np.clip(base + rng.normal(0, 12, (IMAGE_SIZE, IMAGE_SIZE)), 0, 255).astype(np.uint8)
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(png_bytes(pixels.tobytes()))
    return len(names)


def _images_per_patient(rng, images: int, patients: int, cap: int):
    """``patients`` counts in 1..cap summing to ``images``, skewed as NIH's: a truncated power law whose
    exponent gives the right mean, then single images added or taken to hit the total exactly."""
    import numpy as np

    k = np.arange(1, cap + 1, dtype=float)
    mean = images / patients

    def mean_of(a: float) -> float:
        p = k**-a
        return float((k * p).sum() / p.sum())

    low, high = 0.5, 6.0  # mean_of falls as the exponent rises
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if mean_of(mid) > mean else (low, mid)
    p = k**-low
    counts = rng.choice(k.astype(int), size=patients, p=p / p.sum())
    diff = images - int(counts.sum())
    while diff:
        if diff > 0:  # more images to patients that already have several (keeps the skew)
            room = np.flatnonzero(counts < cap)
            pick = rng.choice(room, size=min(diff, len(room)), replace=False, p=counts[room] / counts[room].sum())
            counts[pick] += 1
        else:
            room = np.flatnonzero(counts > 1)
            pick = rng.choice(room, size=min(-diff, len(room)), replace=False)
            counts[pick] -= 1
        diff = images - int(counts.sum())
    return counts


def _findings(rng, n: int) -> list[str]:
    """Each image's ``Finding Labels``: "No Finding" with NIH's share; else one finding drawn by NIH's counts
    plus each other one with the probability that makes every finding's share NIH's; joined by ``|`` in
    alphabetical order, as NIH's file has them."""
    import numpy as np

    names = list(FINDINGS)
    counts = np.array(list(FINDINGS.values()), dtype=float)
    abnormal_share = 1 - NO_FINDING / NIH_IMAGES
    q = counts / (NIH_IMAGES - NO_FINDING)  # a finding's share among images with any
    first = counts / counts.sum()
    rest = (q - first) / (1 - first)  # P(present) = first + (1 - first) * rest = q
    present = rng.random((n, len(names))) < rest
    present[np.arange(n), rng.choice(len(names), size=n, p=first)] = True
    present[rng.random(n) >= abnormal_share] = False
    order = sorted(range(len(names)), key=lambda i: names[i])
    labels = []
    for row in present:
        found = [names[i] for i in order if row[i]]
        labels.append("|".join(found) if found else "No Finding")
    return labels


def plan(images: int, seed: int) -> dict:
    """Everything about the dataset but the pixels: per image its name, folder and CSV row; the split."""
    import numpy as np

    rng = np.random.default_rng(seed)
    scale = images / NIH_IMAGES
    patients = max(1, min(images, round(NIH_PATIENTS * scale)))
    counts = _images_per_patient(rng, images, patients, NIH_MAX_PER_PATIENT)
    labels = _findings(rng, images)
    sizes = np.floor(np.array(NIH_FOLDERS) * scale).astype(int)
    sizes[-1] = images - sizes[:-1].sum()
    # the test patients: drawn with a weight growing with their images (NIH's 25,596 test images come from
    # about 2,800 patients, over 9 images each), until their images reach NIH's share
    target = round(NIH_TEST_IMAGES * scale)
    key = rng.random(patients) ** (1.0 / np.sqrt(counts.astype(float)))
    test_patients, taken = set(), 0
    for i in np.argsort(-key):
        if taken >= target:
            break
        if taken + counts[i] <= target * 1.02 or not taken:
            test_patients.add(int(i) + 1)
            taken += int(counts[i])
    male = rng.random(patients) < 0.565
    first_age = np.clip(rng.normal(47, 17, patients), 1, 95).astype(int)
    view_pa = rng.random(images) < 0.6
    shapes = [(2500, 2048, 0.168), (2048, 2500, 0.168), (2992, 2991, 0.143), (3056, 2544, 0.139)]
    shape = rng.choice(len(shapes), size=images, p=[0.55, 0.05, 0.25, 0.15])
    rows, names, test = [], [], []
    i = 0
    for patient, n in enumerate(counts, start=1):
        for followup in range(int(n)):
            name = f"{patient:08d}_{followup:03d}.png"
            age = min(first_age[patient - 1] + followup // 8, 95)
            w, h, spacing = shapes[shape[i]]
            rows.append(
                f"{name},{labels[i]},{followup},{patient},{age},{'M' if male[patient - 1] else 'F'},"
                f"{'PA' if view_pa[i] else 'AP'},{w},{h},{spacing},{spacing},\n"
            )
            names.append(name)
            if patient in test_patients:
                test.append(name)
            i += 1
    one = int((counts == 1).sum())
    return {
        "rows": rows,
        "names": names,
        "test": test,
        "folder_sizes": [int(s) for s in sizes],
        "facts": {
            "images": images,
            "patients": patients,
            "patients_with_one_image": one,
            "max_images_per_patient": int(counts.max()),
            "test_images": len(test),
            "test_patients": len(test_patients),
            "no_finding": labels.count("No Finding"),
            "labels_per_abnormal_image": round(
                sum(label.count("|") + 1 for label in labels if label != "No Finding")
                / max(1, sum(label != "No Finding" for label in labels)),
                3,
            ),
        },
    }


def marker_params(images: int, seed: int) -> dict:
    return {"generator": "bench/nih_scale.py", "version": VERSION, "images": images, "seed": seed, "size": IMAGE_SIZE}


def generate(out: Path, images: int, seed: int, workers: int) -> dict:
    """The folder (made in ``out``.partial, then renamed), its facts and how long it took."""
    import multiprocessing

    start = time.perf_counter()
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    log(f"nih_scale: planning {images:,} images...")
    layout = plan(images, seed)
    names = layout["names"]
    tasks, at = [], 0
    for k, size in enumerate(layout["folder_sizes"], start=1):
        folder = work / f"images_{k:03d}" / "images"
        folder.mkdir(parents=True)
        for j in range(at, at + size, CHUNK):
            part = names[j : min(j + CHUNK, at + size)]
            tasks.append((str(folder), part, seed * 1_000_003 + j))
        at += size
    (work / "Data_Entry_2017.csv").write_text(HEADER + "\n" + "".join(layout["rows"]), encoding="utf-8")
    test = set(layout["test"])
    (work / "train_val_list.txt").write_text("".join(f"{n}\n" for n in names if n not in test), encoding="utf-8")
    (work / "test_list.txt").write_text("".join(f"{n}\n" for n in layout["test"]), encoding="utf-8")
    planned = time.perf_counter()
    done, last = 0, 0.0
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for n in pool.imap_unordered(_write_images, tasks):
            done += n
            now = time.perf_counter()
            if now - last > 2 or done == images:
                last = now
                rate = done / max(now - planned, 1e-9)
                log(f"nih_scale: {done:,}/{images:,} images written ({rate:,.0f}/s)")
    seconds = time.perf_counter() - start
    facts = {
        **layout["facts"],
        "folder_sizes": layout["folder_sizes"],
        "generate_seconds": round(seconds, 1),
        "images_per_s": round(images / seconds, 1),
        "png_images_per_s": round(images / (time.perf_counter() - planned), 1),
        "workers": workers,
    }
    (work / MARKER).write_text(json.dumps({**marker_params(images, seed), "facts": facts}, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)
    return facts


def dataset(out: Path, images: int, seed: int, workers: int) -> tuple[dict, bool]:
    """``(facts, generated_now)``: the folder at ``out`` reused when its marker holds these parameters,
    else (re)made; a folder there that is not one of ours is refused, never deleted."""
    marker = out / MARKER
    if marker.is_file():
        try:
            found = json.loads(marker.read_text())
        except ValueError:
            found = {}
        if {k: found.get(k) for k in marker_params(images, seed)} == marker_params(images, seed):
            log(f"nih_scale: reusing {out}")
            return found.get("facts", {}), False
        log(f"nih_scale: {out} was made with other parameters; making it again")
    elif out.exists() and any(out.iterdir()):
        sys.exit(f"{out} exists and is not a folder this benchmark made (no {MARKER}); give another --out")
    return generate(out, images, seed, workers), True


# -- the measurements, each in a fresh process --------------------------------------------------------
def child_index(folder: str) -> dict:
    start = time.perf_counter()
    from cxrcore.data.index import build_index

    imported = time.perf_counter()
    after_import = peak_rss_mb()
    index = build_index(folder)
    seconds = time.perf_counter() - imported
    result = {
        "seconds": round(seconds, 3),
        "import_seconds": round(imported - start, 3),
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_import_mb": after_import,
        "rows": int(len(index)),
        "layout": index.attrs.get("layout"),
    }
    if "label" in index:
        result["labels"] = int(index["label"].nunique())
        result["top_labels"] = {str(k): int(v) for k, v in index["label"].value_counts().head(5).items()}
    if "split" in index:
        result["splits"] = {str(k or "unassigned"): int(v) for k, v in index["split"].value_counts().items()}
    if "patient_id" in index:
        result["patients"] = int(index.loc[index["patient_id"] != "", "patient_id"].nunique())
    return result


def child_page(folder: str, timeout: float) -> dict:
    from streamlit.testing.v1 import AppTest

    def one() -> dict:
        start = time.perf_counter()
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout)
        at.session_state["dataset"] = folder
        try:
            at.run()
        except RuntimeError as exc:  # AppTest's own time limit
            return {"seconds": round(time.perf_counter() - start, 2), "failed": str(exc)[:300]}
        return {
            "seconds": round(time.perf_counter() - start, 2),
            "exceptions": [
                {"message": str(e.value)[:300], "where": [line.strip()[:200] for line in e.stack_trace[-4:]]}
                for e in at.exception
            ],
            "errors": [str(e.value)[:300] for e in at.error],
            "metrics": {str(m.label): str(m.value) for m in at.metric},
            "peak_rss_mb": peak_rss_mb(),
        }

    return {"cold": one(), "warm": one()}


def in_child(what: str, folder: Path, env: dict, timeout: float) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", what, str(folder)]
    command += ["--page-timeout", str(timeout)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout + 120)
    except subprocess.TimeoutExpired:
        return {"failed": f"no answer in {timeout + 120:.0f} s"}
    wall = round(time.perf_counter() - start, 2)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"failed": f"exit {done.returncode}", "stderr": done.stderr.strip().splitlines()[-5:], "wall_s": wall}
    return {**json.loads(lines[-1]), "process_wall_s": wall}


def measure(folder: Path, timeout: float) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="nih-scale-"))
    env = {
        **os.environ,
        "CXRCORE_CACHE": str(tmp / "cache"),  # empty: the first index is cold
        "CXRCORE_MODELS": str(tmp / "models"),
        "CXRLAB_DEMO_DATA": str(tmp / "demo"),
        "CXRCORE_SCHEDULER_IDLE_EXIT": "2",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    try:
        result = {}
        for name, what in (("index_cold", "index"), ("index_warm", "index"), ("page", "page")):
            log(f"nih_scale: measuring {name}...")
            result[name] = in_child(what, folder, env, timeout)
            log(f"nih_scale: {name}: {json.dumps(result[name])[:400]}")
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def csv_columns(folder: Path) -> list[str]:
    import pandas as pd

    return [str(c) for c in pd.read_csv(folder / "Data_Entry_2017.csv", nrows=0).columns]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=NIH_IMAGES, help="images in the made set (NIH: 112,120)")
    parser.add_argument("--out", type=Path, help="the set's folder (default: bench/out/nih-scale-<images>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes writing PNGs")
    parser.add_argument("--page-timeout", type=float, default=600, help="seconds one Data page run may take")
    parser.add_argument("--record", action="store_true", help=f"append the JSON to {RESULTS.relative_to(ROOT)}")
    parser.add_argument("--child", nargs=2, metavar=("WHAT", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, folder = args.child
        found = child_index(folder) if what == "index" else child_page(folder, args.page_timeout)
        print(json.dumps(found), flush=True)
        return
    if args.images < len(NIH_FOLDERS):
        sys.exit(f"--images must be at least {len(NIH_FOLDERS)} (one per folder)")
    out = (args.out or ROOT / "bench" / "out" / f"nih-scale-{args.images}").expanduser().resolve()
    facts, generated = dataset(out, args.images, args.seed, args.workers)
    measured = measure(out, args.page_timeout)
    cold, warm, page = measured["index_cold"], measured["index_warm"], measured["page"]
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "folder": str(out),
        "images": args.images,
        "generated_now": generated,
        "dataset": facts,
        "csv_columns": csv_columns(out),
        "rows": cold.get("rows"),
        "layout": cold.get("layout"),
        "index_cold_s": cold.get("seconds"),
        "index_warm_s": warm.get("seconds"),
        "index_cold_peak_rss_mb": cold.get("peak_rss_mb"),
        "index_warm_peak_rss_mb": warm.get("peak_rss_mb"),
        "page_cold_s": (page.get("cold") or {}).get("seconds"),
        "page_warm_s": (page.get("warm") or {}).get("seconds"),
        "page_peak_rss_mb": (page.get("warm") or page.get("cold") or {}).get("peak_rss_mb"),
        "page_problems": sum(
            len(run.get("exceptions", [])) + len(run.get("errors", [])) + ("failed" in run)
            for run in (page.get("cold") or {}, page.get("warm") or {})
        )
        + ("failed" in page),
        "index_cold": cold,
        "index_warm": warm,
        "page": page,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "python": platform.python_version(),
    }
    line = json.dumps(result)
    print(line)
    if args.record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


if __name__ == "__main__":
    main()
