"""``index``, ``audit`` and ``demo-data``: datasets before any training."""

from __future__ import annotations

import json
import sys

from ..data.audit import audit
from ..data.demo import make_demo_dataset, make_findings_demo
from ..data.index import build_index, summarize
from ..data.io import decode_image
from ..data.sources import NO_TRANSFER
from ..data.splits import assign_splits
from .options import add_findings_options, findings_options

#: how ``index`` splits a findings dataset to count its positives per split
SPLIT_NOTE = "as training would split: seed 42, 80/10/10 by patient unless the dataset has its own test split"


def cmd_index(args) -> int:
    index = build_index(args.data, options=findings_options(args))
    if args.verify:
        for path in index["path"]:
            decode_image(path)
    if args.csv:
        index.to_csv(args.csv, index=False)
    if "findings" in index.attrs:
        info = {**summarize(assign_splits(index)), "splits": SPLIT_NOTE}
        print_findings(info)
    else:
        info = summarize(index)
        print(
            f"{info['images']} images, {len(info['classes'])} classes, layout {info['layout']}: {info['root']}",
            file=sys.stderr,
        )
        for label, by_split in info["by_split"].items():
            print(f"  {label:<24} {info['classes'][label]:>7}  {by_split}", file=sys.stderr)
    print(json.dumps(info))
    return 0


def print_findings(info: dict) -> None:
    """A findings dataset's summary, for people (stderr)."""
    say = lambda text: print(text, file=sys.stderr)  # noqa: E731
    say(
        f"{info['images']} images, {len(info['findings'])} findings, layout {info['layout']} ({info['csv']}): "
        f"{info['root']}"
    )
    if info["missing"]:
        say(
            f"  {info['missing']} listed image(s) are not on disk (a partial download?), skipped; first: "
            f"{', '.join(info['missing_examples'])}"
        )
    if info["views_left_out"]:
        say(f"  {info['views_left_out']} film(s) left out by --views")
    if info["ignored_csvs"]:
        say(f"  also found {', '.join(info['ignored_csvs'])}: not read (pass a CSV itself to choose)")
    say(f"  test split: {info['official_split'] or 'none of its own; carved by patient'}; counts {info['splits']}")
    for name, row in info["findings"].items():
        rare = f"  too few positives in {', '.join(info['too_few'][name])}" if name in info["too_few"] else ""
        left = f", {row['left_out']} left out" if row["left_out"] else ""
        say(f"  {name:<28} {row['positives']:>7} ({row['prevalence']:6.1%}{left})  {row['by_split']}{rare}")
    say(f"  no finding: {info['all_negative']} images ({info['all_negative_share']:.1%})")


def cmd_audit(args) -> int:
    result = audit(args.data, folds=args.folds, use_cache=not args.no_cache, options=findings_options(args))
    shortcut = result["shortcut"]
    print(f"{result['images']} images, {result['checked_on']}: {result['classes']}", file=sys.stderr)
    print(
        f"  patient leak: {result['patient_leak']['patients']} patient(s) in more than one split "
        f"({result['patient_leak']['images_without_patient_id']} images without a patient id)",
        file=sys.stderr,
    )
    print(
        f"  duplicates: {result['duplicates']['groups']} group(s) of identical files, "
        f"{result['duplicates']['across_splits']} across splits",
        file=sys.stderr,
    )
    for check in (shortcut, shortcut.get("outside_lungs")):
        if check:
            print(f"  {'WARNING: ' if check['flagged'] else ''}{check['message']}", file=sys.stderr)
    for row in result["sources"] or []:
        mix = ", ".join(f"{n} {label} ({row['prevalence'][label]:.0%})" for label, n in row["counts"].items() if n)
        single = " (single class)" if row["single_class"] else ""
        print(f"  source {row['source']}: {row['images']} images: {mix}{single}", file=sys.stderr)
    if result["source_only_auc"] is not None:
        print(f"  the source alone predicts the label with AUC {result['source_only_auc']:.2f}", file=sys.stderr)
    if result["source_check"]:
        check = result["source_check"]
        print(f"  {'WARNING: ' if check['flagged'] else ''}source check: {check['message']}", file=sys.stderr)
    for sentence in result["verdict"]:
        print(f"  {'WARNING: ' if NO_TRANSFER in sentence else ''}{sentence}", file=sys.stderr)
    print(json.dumps(result))
    return 0


def cmd_demo_data(args) -> int:
    if args.findings:
        path = make_findings_demo(args.out_dir, n_images=args.n_images, image_size=args.image_size, seed=args.seed)
    else:
        path = make_demo_dataset(args.out_dir, n_per_class=args.n_per_class, image_size=args.image_size, seed=args.seed)
    kind = "findings demo (several findings per image)" if args.findings else "demo dataset"
    print(f"synthetic {kind} (not real radiographs) written to:", file=sys.stderr)
    print(path)
    return 0


def add_index_parser(sub) -> None:
    p = sub.add_parser("index", help="index a dataset and print its summary")
    p.add_argument("data")
    p.add_argument("--verify", action="store_true", help="also decode every image")
    p.add_argument("--csv", help="write the index to this CSV file")
    add_findings_options(p)
    p.set_defaults(func=cmd_index)


def add_audit_parser(sub) -> None:
    p = sub.add_parser("audit", help="audit a dataset before training: leaks, duplicates, shortcuts; JSON last")
    p.add_argument("data")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds of the shortcut check")
    p.add_argument("--no-cache", action="store_true", help="compute again even if a cached result exists")
    add_findings_options(p)
    p.set_defaults(func=cmd_audit)


def add_demo_data_parser(sub) -> None:
    p = sub.add_parser("demo-data", help="write the synthetic demo dataset")
    p.add_argument("out_dir")
    p.add_argument(
        "--findings",
        action="store_true",
        help="the findings demo instead: several drawn findings per image, in a path,labels manifest",
    )
    p.add_argument("--n-per-class", type=int, default=150, help="images per class (the class demo)")
    p.add_argument("--n-images", type=int, default=400, help="images (the findings demo)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo_data)
