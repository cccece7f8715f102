"""Close the gap: what moves external AUC, with internal AUC kept, printed as JSON lines.

    python bench/close_the_gap.py [--data DEV] [--mcsz LABELS_CSV] [--external EXT] [--out DIR] [--only NAME ...]

Trains one MobileNetV2-0.35 (abnormal-vs-normal) per option on DEV (default
../shared/data/cxr-dev) and evaluates each on EXT (default ../shared/data/cxr-external-nih),
the way a user would: ``python -m cxrcore train ... --external EXT``. The external set is
only ever evaluated, never trained or tuned on: every option runs with the same fixed
settings, and all of them are reported, whatever they score. One JSON line per option
(internal and external macro AUC and accuracy with 95% intervals, the ECE, the share of external
images flagged as unlike the training data when the run has that statistic), then a summary
line. Runs already in DIR are read back, so an interrupted benchmark goes on where it stopped.

The data-choice rows train on other data with the same settings: Montgomery + Shenzhen (MCSZ, both
classes in each hospital; tuberculosis mapped to Abnormal by a dataset list), cxr-dev and MCSZ together
(a dataset list of both, COVID and viral pneumonia mapped to Abnormal; EXT's Pneumonia is Abnormal),
with ``--drop-single-class-sources`` and ``--balance source``, and leave one
source out on MCSZ (each hospital held out in turn; the study's folds are each evaluated on EXT too).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import MNV2_035_WEIGHTS, ROOT, SHARED

#: every option tried: its name and the CLI flags it adds to the common ones
OPTIONS = {
    "baseline": [],
    "crop border 10%": ["--crop-border", "0.1"],
    "histogram equalisation": ["--equalize"],
    "crop 10% + equalisation": ["--crop-border", "0.1", "--equalize"],
    "strong augmentation": ["--augment", "rotation=10,zoom=0.15,contrast=0.4,brightness=0.3"],
    "input 320 px": ["--image-size", "320"],
    "lung crop": ["--lung-crop"],
    "lung mask": ["--lung-mask"],
}
#: the data-choice rows: (the dataset list's name, the CLI flags they add)
DATA_OPTIONS = {
    "data: Montgomery + Shenzhen": ("mcsz", []),
    "data: Montgomery + Shenzhen, lung crop": ("mcsz", ["--lung-crop"]),
    "data: cxr-dev + Montgomery + Shenzhen": ("cxr-dev+mcsz", []),
    "data: cxr-dev + MCSZ, single-class sources dropped": ("cxr-dev+mcsz", ["--drop-single-class-sources"]),
    "data: cxr-dev + MCSZ, batches balanced by source": ("cxr-dev+mcsz", ["--balance", "source"]),
    "data: cxr-dev + MCSZ, both": ("cxr-dev+mcsz", ["--drop-single-class-sources", "--balance", "source"]),
    "leave one source out: Montgomery + Shenzhen": ("mcsz", ["--loso"]),
}
COMMON = [
    "--backbone",
    "mobilenetv2_0.35",
    "--label-preset",
    "abnormal-vs-normal",
    "--epochs",
    "6",
    "--fine-tune-epochs",
    "3",
    "--batch-size",
    "32",
    "--seed",
    "42",
]


def _cell(metrics: dict, name: str) -> dict:
    ci = (metrics.get("ci") or {}).get(name) or {}
    return {"value": metrics.get(name), "ci_low": ci.get("ci_low"), "ci_high": ci.get("ci_high")}


def result_of(run_dir: Path, option: str) -> dict:
    from cxrcore import runs

    run = runs.RunDir(run_dir)
    internal = run.metrics() or {}
    row = {
        "option": option,
        "run": str(run_dir),
        "status": run.status(),
        "data": run.config().data,
        "pixels": run.config().to_dict()["pixels"],
        "train_seconds": run.info().get("train_seconds"),
        "finish_seconds": run.info().get("finish_seconds"),
        "internal_auc": _cell(internal, "macro_auc"),
        "internal_accuracy": _cell(internal, "accuracy"),
    }
    for evaluation in run.external_evaluations():
        found = evaluation.metrics or {}
        row["external_data"] = evaluation.source.get("data")
        row["external_auc"] = _cell(found, "macro_auc")
        row["external_accuracy"] = _cell(found, "accuracy")
        row["external_ece"] = ((found.get("calibration") or {}).get("ece") or {}).get("after", {}).get("mean")
        row["external_unlike_training"] = (found.get("ood") or {}).get("fraction_flagged")
    return row


def dataset_lists(out: Path, dev: str, mcsz: str) -> dict[str, Path]:
    """The dataset lists the data-choice rows train on, written into ``out``."""
    tb = {"path": str(Path(mcsz).resolve()), "name": "mcsz", "labels": {"Tuberculosis": "Abnormal"}}
    abnormal = {"COVID": "Abnormal", "Viral Pneumonia": "Abnormal"}
    dev_entry = {"path": str(Path(dev).resolve()), "name": "cxr-dev", "labels": abnormal}
    lists = {"mcsz": [tb], "cxr-dev+mcsz": [dev_entry, tb]}
    written = {}
    for name, datasets in lists.items():
        written[name] = out / f"{name}.json"
        written[name].write_text(json.dumps({"datasets": datasets}, indent=2))
    return written


def loso_row(folder: Path, option: str) -> dict:
    """A leave-one-source-out study's row: each held-out source's internal AUC and the fold's external AUC."""
    from cxrcore import runs

    study = runs.read_loso(folder) or {}
    folds = []
    for fold in study.get("folds", []):
        row = result_of(folder / fold["run"], f"{option}: {fold['source']} held out")
        folds.append(
            {"source": fold["source"], "n": fold["n"], **{k: row.get(k) for k in ("internal_auc", "external_auc")}}
        )
    return {
        "option": option,
        "study": str(folder),
        "mean_auc": study.get("mean_auc"),
        "worst": study.get("worst"),
        "folds": folds,
        "skipped": study.get("skipped"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(SHARED / "data" / "cxr-dev"))
    parser.add_argument("--external", default=str(SHARED / "data" / "cxr-external-nih"))
    parser.add_argument("--weights", default=str(MNV2_035_WEIGHTS))
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "close-the-gap"))
    parser.add_argument("--mcsz", default=str(SHARED / "data" / "lung-masks-mcsz" / "labels.csv"))
    parser.add_argument("--only", nargs="*", choices=[*OPTIONS, *DATA_OPTIONS], help="run only these options")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    rows = []
    lists = dataset_lists(out, args.data, args.mcsz)
    for option in args.only or [*OPTIONS, *DATA_OPTIONS]:
        data, flags = (
            (lists[DATA_OPTIONS[option][0]], DATA_OPTIONS[option][1])
            if option in DATA_OPTIONS
            else (
                args.data,
                OPTIONS[option],
            )
        )
        parent = out / option.replace(" ", "-").replace("%", "").replace("+", "and").replace(":", "").replace(",", "")
        finished = sorted(parent.glob("*/loso.json" if "--loso" in flags else "*/metrics.json"))
        if "--loso" in flags and finished and (json.loads(finished[-1].read_text()).get("status") != "complete"):
            finished = []
        if not finished:
            if parent.exists():
                shutil.rmtree(parent)  # an interrupted run of this option: start it again
            command = [sys.executable, "-m", "cxrcore", "train", "--data", str(data), "--weights", args.weights]
            common = COMMON
            if option in DATA_OPTIONS:  # the list maps the labels; NIH's Pneumonia is Abnormal
                at = COMMON.index("--label-preset")
                common = [*COMMON[:at], *COMMON[at + 2 :], "--external-map", "Pneumonia=Abnormal"]
            command += [*common, *flags, "--external", args.external, "--out", str(parent)]
            started = time.time()
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            if done.returncode != 0:
                print(json.dumps({"option": option, "error": done.stderr.strip().splitlines()[-3:]}), flush=True)
                continue
            print(f"# {option}: trained in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
            finished = sorted(parent.glob("*/loso.json" if "--loso" in flags else "*/metrics.json"))
        rows.append(
            loso_row(finished[-1].parent, option) if "--loso" in flags else result_of(finished[-1].parent, option)
        )
        print(json.dumps(rows[-1]), flush=True)
    print(
        json.dumps(
            {"summary": [{k: r.get(k) for k in ("option", "internal_auc", "external_auc", "mean_auc")} for r in rows]}
        )
    )


if __name__ == "__main__":
    main()
