"""``train``, ``backbones``, ``recipes`` and ``cache``: training a model, what it can be trained from, and
the activation cache training keeps."""

from __future__ import annotations

import json
import sys

from ..data.index import scan_layout
from ..recipes import RECIPES, describe, get_recipe
from ..runs import RunDir, read_loso
from ..training import activation_store
from ..training.backbones import list_backbones
from .options import add_train_options, config_from_args, print_epoch


def cmd_train(args) -> int:
    # the checks that need no TensorFlow come first, so a typo fails in a blink, not after its import
    if args.resume:
        RunDir(args.resume).check_resumable()  # a finished or still-running run is refused at once
        from ..workflows import resume  # lazy: TensorFlow

        run = resume(args.resume, progress=print_epoch)
    elif args.loso:
        config = config_from_args(args)
        scan_layout(config.data, config.findings)
        from ..workflows import leave_one_source_out  # lazy: TensorFlow

        folder = leave_one_source_out(config, out_dir=args.out, progress=print_epoch)
        for line in loso_lines(read_loso(folder)):
            print(line, file=sys.stderr)
        print(folder)
        return 0
    else:
        config = config_from_args(args)
        scan_layout(config.data, config.findings)
        from ..workflows import train  # lazy: TensorFlow

        run = train(config, out_dir=args.out, progress=print_epoch)
    print(run.path)
    return 0


def loso_lines(study: dict) -> list[str]:
    """A leave-one-source-out study in a few lines: each held-out source's AUC, then the mean and the worst."""
    lines = ["held-out source                          n     AUC (95% CI)"]
    for fold in study["folds"]:
        auc = "  -  " if fold["auc"] is None else f"{fold['auc']:.3f}"
        ci = f" ({fold['ci_low']:.3f}-{fold['ci_high']:.3f})" if fold.get("ci_low") is not None else ""
        lines.append(f"{fold['source'][:38]:<38} {fold['n']:>5}  {auc}{ci}")
    if study.get("mean_auc") is not None:
        lines.append(f"mean AUC {study['mean_auc']:.3f}; worst: {study['worst']}")
    lines += [f"not held out: {source} ({why})" for source, why in study.get("skipped", {}).items()]
    return lines


def cmd_backbones(args) -> int:
    rows = list_backbones()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<18}{'size':>5}  {'preprocess':<11}{'grad-cam layer':<18}{'unfreeze':>8}  imagenet  description")
    for r in rows:
        print(
            f"{r['name']:<18}{r['input_size']:>5}  {r['preprocess']:<11}{r['gradcam_layer']:<18}"
            f"{r['unfreeze']:>8}  {'yes' if r['pretrained'] else 'no ':<8}  {r['description']}"
        )
    return 0


def cmd_recipes(args) -> int:
    """One line per recipe, name first; ``--show NAME`` prints one recipe in full, its configuration last."""
    if args.show:
        recipe = get_recipe(args.show)
        print(describe(recipe))
        print(json.dumps(recipe.config))
        return 0
    for recipe in RECIPES.values():
        print(f"{recipe.name}\t{recipe.description}")
    return 0


def cmd_cache(args) -> int:
    if args.clear:
        freed = activation_store.clear()
        print(f"cleared the activation cache: {freed / 1e6:.1f} MB freed", file=sys.stderr)
    found = activation_store.usage()
    print(
        f"activation cache {found['folder']}: {found['entries']} entr{'y' if found['entries'] == 1 else 'ies'}, "
        f"{found['bytes'] / 1e6:.1f} MB (limit {activation_store.LIMIT_BYTES / 1024**3:.0f} GiB)",
        file=sys.stderr,
    )
    print(json.dumps(found))
    return 0


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model; prints the run directory last")
    add_train_options(p)
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its last completed epoch "
        "(with its own configuration; the other options are ignored)",
    )
    p.add_argument(
        "--loso",
        action="store_true",
        help="leave one source out: one run per source that holds both classes, trained on the other sources "
        "and tested on it (and on --external sets); prints the study folder (its runs and loso.json) last",
    )
    p.set_defaults(func=cmd_train)


def add_backbones_parser(sub) -> None:
    p = sub.add_parser("backbones", help="list the backbone registry")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backbones)


def add_recipes_parser(sub) -> None:
    p = sub.add_parser(
        "recipes", help="the reference write-ups as recipes: one per line, name first (`train --recipe NAME`)"
    )
    p.add_argument("--show", metavar="NAME", help="one recipe in full: settings stated, chosen, published figures")
    p.set_defaults(func=cmd_recipes)


def add_cache_parser(sub) -> None:
    p = sub.add_parser("cache", help="what the activation cache holds (frozen-backbone features); JSON last")
    p.add_argument("--clear", action="store_true", help="remove every cached activation first")
    p.set_defaults(func=cmd_cache)
