"""``explain`` and ``faithfulness``: class activation maps with their faithfulness scores, per image and
over a run's test split."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..data.findings import match_finding
from ..errors import ConfigError, ImageDecodeError
from ..explain import faithfulness
from ..explain.cam import COLORMAPS, METHODS, overlay, to_png_bytes
from ..explain.faithfulness import BASELINES, BORDER_WARN, SAMPLE_SIZE, STEPS, percent
from ..lungs.geometry import LUNG_SHARE_WARN
from ..runs import RunDir
from .predict import result_line


def finding_index(run: RunDir, name: str) -> int:
    """The index of the finding ``--finding NAME`` names in a findings run's outputs: the name as the run
    spells it, or its exact equivalent in the other dataset (:func:`cxrcore.data.findings.match_finding`);
    ConfigError for a class run or a finding the run does not predict."""
    labels = run.labels()
    if run.task() != "findings":
        raise ConfigError(
            f"--finding is for findings runs; {run.run_id} predicts classes ({', '.join(labels)}): "
            f"use --class NAME to explain one of them"
        )
    found = match_finding(name, labels)
    if found is None:
        raise ConfigError(f"--finding {name!r} is not one of the run's findings: {', '.join(labels)}")
    return labels.index(found)


def cmd_explain(args) -> int:
    run = RunDir(args.run_dir)
    run.require_model()
    if not 0 <= args.alpha <= 1:
        raise ConfigError(f"--alpha must be between 0 and 1, got {args.alpha}")
    chosen = None if args.finding is None else finding_index(run, args.finding)
    from ..predict import Predictor  # lazy: TensorFlow

    predictor = Predictor(args.run_dir)
    class_index = chosen
    if args.class_name is not None:
        if args.class_name not in predictor.labels:
            raise ConfigError(
                f"--class {args.class_name!r} is not one of the model's classes: {', '.join(predictor.labels)}"
            )
        class_index = predictor.labels.index(args.class_name)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed, written = 0, set()
    for image in args.images:
        try:
            found = predictor.explain(
                image,
                args.method,
                class_index,
                operating_point=args.operating_point,
                steps=args.steps,
                baseline=args.baseline,
            )
        except ImageDecodeError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            print(json.dumps({"image": image, "error": str(exc)}))
            continue
        stem = f"{Path(image).stem}_{args.method.replace('++', 'pp')}_{found['class']}"
        name, n = f"{stem}.png", 1
        while name in written:  # two inputs with the same file name in different folders
            n += 1
            name = f"{stem}_{n}.png"
        written.add(name)
        target = out / name
        target.write_bytes(
            to_png_bytes(overlay(found["input"], found["heatmap"], colormap=args.colormap, alpha=args.alpha))
        )
        line = {
            key: found[key]
            for key in (
                "image",
                "label",
                "confidence",
                "probabilities",
                "decision",
                "unlike_training",
                "method",
                "class",
            )
        }
        if "findings" in found:
            line.update(task=found["task"], findings=found["findings"])
        line.update(
            deletion=found["deletion"],
            insertion=found["insertion"],
            border_share=found["border_share"],
            border_flagged=found["border_flagged"],
            lung_share=found["lung_share"],
            lung_flagged=found["lung_flagged"],
            steps=found["faithfulness"]["steps"],
            baseline=found["faithfulness"]["baseline"],
            overlay=str(target),
        )
        share = "n/a (empty map)" if found["border_share"] is None else f"{found['border_share']:.0%}"
        if found["lung_share"] is not None:
            inside = percent(found["lung_share"], LUNG_SHARE_WARN)
        else:
            inside = "n/a (empty map)" if found["border_share"] is None else "n/a (no lungs found)"
        print(
            f"{result_line(found)}\n  {args.method} for {found['class']}: deletion {found['deletion']:.3f} "
            f"(lower is better), insertion {found['insertion']:.3f} (higher is better), border share {share}"
            + (f" > {BORDER_WARN:.0%}: the map lies mostly on the image's border" if found["border_flagged"] else "")
            + f", lung share {inside}"
            + (
                f" < {LUNG_SHARE_WARN:.0%}: most of the map lies outside the lung fields"
                if found["lung_flagged"]
                else ""
            )
            + f"; overlay {target}",
            file=sys.stderr,
        )
        print(json.dumps(line))
    return 2 if failed else 0


def cmd_faithfulness(args) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None

    def progress(done: int, total: int) -> None:
        if done == total or done % 20 == 0:
            print(f"  {done}/{total} maps scored", file=sys.stderr)

    from ..workflows import score_explanations  # lazy: TensorFlow

    result = score_explanations(
        args.run_dir,
        methods,
        args.sample,
        seed=args.seed,
        steps=args.steps,
        baseline=args.baseline,
        progress=progress,
    )
    print(
        f"explanations of {args.run_dir} on {len(result['images'])} test image(s); {result['describe']}",
        file=sys.stderr,
    )
    print(faithfulness.table(result).to_string(index=False, float_format=lambda v: f"{v:.3f}"), file=sys.stderr)
    for line in faithfulness.verdict(result):
        print(line, file=sys.stderr)
    print(json.dumps({k: v for k, v in result.items() if k != "images"}))
    return 0


def add_explain_parser(sub) -> None:
    p = sub.add_parser(
        "explain",
        help="class activation maps with faithfulness scores: overlay PNGs, one JSON line per image "
        "(probabilities, deletion, insertion, border_share, lung_share)",
    )
    p.add_argument("run_dir")
    p.add_argument("images", nargs="+")
    p.add_argument("--method", choices=list(METHODS), default="gradcam")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--class", dest="class_name", metavar="NAME", help="explain this class (default: the predicted one)"
    )
    which.add_argument(
        "--finding",
        metavar="NAME",
        help="a findings run: explain this finding, as the run names it or by its equivalent name in NIH or "
        "CheXpert (e.g. Pleural Effusion for Effusion; default: the most probable finding)",
    )
    p.add_argument("--out", default="explanations", help="folder for the overlay PNGs (default: ./explanations)")
    p.add_argument("--colormap", choices=list(COLORMAPS), default="jet")
    p.add_argument("--alpha", type=float, default=0.4, help="heatmap opacity, 0-1")
    p.add_argument(
        "--steps", type=int, default=STEPS, help=f"steps of the deletion and insertion curves (default {STEPS})"
    )
    p.add_argument("--baseline", choices=list(BASELINES), default=BASELINES[0], help="what removed pixels become")
    p.add_argument("--operating-point", choices=["sensitivity", "youden"], default="sensitivity")
    p.set_defaults(func=cmd_explain)


def add_faithfulness_parser(sub) -> None:
    p = sub.add_parser(
        "faithfulness",
        help="score each explanation method on a sample of a run's test split (kept in the run); JSON last",
    )
    p.add_argument("run_dir")
    p.add_argument("--sample", type=int, default=SAMPLE_SIZE, help=f"test images scored (default {SAMPLE_SIZE})")
    p.add_argument("--methods", help=f"comma-separated, default all: {','.join(METHODS)}")
    p.add_argument("--seed", type=int, default=0, help="which test images are sampled")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--baseline", choices=list(BASELINES), default=BASELINES[0])
    p.set_defaults(func=cmd_faithfulness)
