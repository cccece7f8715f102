"""``python -m cxrcore``: index, train, evaluate, predict, ensemble, export, recipes, demo-data, backbones, jobs.

Machine-readable results go to stdout (the run directory, JSON lines); progress and
logs go to stderr. A bad input exits with status 2 and one line ``error: ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path

from .errors import CXRError


def parse_augment(text: str):
    """``"flip,rotation=10,zoom=0.1"`` -> AugmentConfig."""
    from .config import AugmentConfig

    fields = {"flip", "rotation", "zoom", "contrast", "brightness"}
    values: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in fields:
            raise CXRError(f"--augment: unknown augmentation '{name}' (use {', '.join(sorted(fields))})")
        try:
            values[name] = True if name == "flip" else float(value)
        except ValueError:
            raise CXRError(f"--augment: {name} needs a number, e.g. {name}=0.1") from None
    return AugmentConfig(**values)


def add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset folder or CSV manifest")
    p.add_argument("--config", help="start from this config.json (flags override it)")
    p.add_argument("--recipe", help="start from a reference write-up's recipe (see `recipes`; flags override it)")
    p.add_argument("--backbone", help="registry name (see `backbones`)")
    p.add_argument("--weights", help="imagenet | none | path to a weights file")
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--epochs", type=int, help="stage 1 epochs (frozen backbone); 0 skips it")
    p.add_argument("--fine-tune-epochs", type=int, help="stage 2 epochs (top layers unfrozen); 0 skips it")
    p.add_argument("--unfreeze", type=int, help="backbone layers unfrozen in stage 2 (-1 = all)")
    p.add_argument("--optimizer", choices=["adam", "rmsprop", "adamax", "sgd"])
    p.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float)
    p.add_argument("--fine-tune-lr-factor", type=float, help="stage 2 learning rate = lr x factor")
    p.add_argument("--patience", type=int, help="early-stopping patience (0 = off)")
    p.add_argument("--reduce-lr-patience", type=int, help="reduce-on-plateau patience (0 = off)")
    p.add_argument("--class-weights", choices=["none", "balanced"])
    p.add_argument("--focal-loss", action="store_true", default=None)
    p.add_argument("--focal-gamma", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--augment", help="e.g. flip,rotation=10,zoom=0.1,contrast=0.1,brightness=0.1")
    p.add_argument(
        "--crop-border", type=float, help="fraction of width and height cut from each side before resizing (0-0.4)"
    )
    p.add_argument(
        "--equalize", action="store_true", default=None, help="histogram-equalise every image (training and after)"
    )
    p.add_argument(
        "--lung-crop",
        action="store_true",
        default=None,
        help="crop every image to the box around both lungs, with a margin (the shipped lung model finds them)",
    )
    p.add_argument(
        "--lung-mask", action="store_true", default=None, help="black out every pixel outside the lungs (all images)"
    )
    p.add_argument("--pooling", choices=["avg", "max", "flatten"])
    p.add_argument("--dense-units", help="head dense layers, e.g. 256,128 ('' for none)")
    p.add_argument("--dropout", type=float)
    p.add_argument("--head-batch-norm", action="store_true", default=None)
    p.add_argument("--label-preset", choices=["pneumonia-subtype", "abnormal-vs-normal"])
    p.add_argument("--rename", action="append", metavar="OLD=NEW")
    p.add_argument("--merge", action="append", metavar="NEW=OLD1,OLD2")
    p.add_argument("--drop", action="append", metavar="CLASS")
    p.add_argument("--filename-rule", action="append", metavar="SUBSTRING=LABEL")
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--test-fraction", type=float)
    p.add_argument("--mixed-precision", action="store_true", default=None, help="float16 on a GPU")
    p.add_argument(
        "--xla",
        choices=["auto", "on", "off"],
        help="XLA-compile the training step (auto: on a GPU only, Keras's default; on a CPU it is slower)",
    )
    p.add_argument("--no-cache", dest="cache", action="store_false", default=None)
    p.add_argument(
        "--no-feature-cache",
        dest="feature_cache",
        action="store_false",
        default=None,
        help="run the whole network every epoch instead of training frozen parts on cached activations",
    )
    p.add_argument(
        "--augment-views", type=int, help="augmented views cached per image when augmenting (0 = full passes)"
    )
    p.add_argument("--max-steps", type=int, help="cap batches per epoch (smoke tests)")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--target-sensitivity", type=float, help="operating point chosen on validation per class (default 0.95)"
    )
    p.add_argument("--out", help="parent folder of the run directory (default: models/)")
    p.add_argument(
        "--external",
        action="append",
        metavar="DATA",
        help="a labelled dataset from elsewhere, evaluated once the model is trained (repeatable)",
    )
    p.add_argument(
        "--external-map",
        action="append",
        metavar="NAME=CLASS",
        help="an external class name as a model class, e.g. Pneumonia=Abnormal (repeatable)",
    )
    p.add_argument(
        "--external-skip-unknown",
        action="store_true",
        default=None,
        help="skip external images of classes the model does not know (default: refuse)",
    )


def config_from_args(args: argparse.Namespace, *, resolve: bool = True):
    """A TrainConfig from ``--config`` (or defaults) with the given flags applied, resolved
    (:meth:`TrainConfig.resolved`: weights, image size and unfreeze depth left to the backbone
    filled from it). ``resolve=False`` keeps them open, for a comparison over several backbones.

    ``--backbone`` on top of a ``--config`` for another backbone lets the settings that follow
    the backbone follow the new one, unless they are given as flags too.
    """
    from dataclasses import replace

    from .config import AUTO, LABEL_PRESETS, TrainConfig, extend_scheme, parse_pairs

    if args.config and args.recipe:
        raise CXRError("--config and --recipe both give a starting configuration: use one")
    if args.recipe:
        from .recipes import recipe_config

        config = recipe_config(args.recipe)
    else:
        config = TrainConfig.load(args.config) if args.config else TrainConfig()
    if args.backbone is not None and args.backbone != config.backbone:
        config = replace(config, weights=AUTO, image_size=None, unfreeze=None)
    simple = [
        "data",
        "backbone",
        "weights",
        "image_size",
        "batch_size",
        "epochs",
        "fine_tune_epochs",
        "unfreeze",
        "optimizer",
        "learning_rate",
        "fine_tune_lr_factor",
        "patience",
        "reduce_lr_patience",
        "class_weights",
        "focal_loss",
        "focal_gamma",
        "label_smoothing",
        "val_fraction",
        "test_fraction",
        "mixed_precision",
        "xla",
        "cache",
        "feature_cache",
        "augment_views",
        "max_steps",
        "seed",
        "target_sensitivity",
    ]
    config = replace(config, **{k: getattr(args, k) for k in simple if getattr(args, k) is not None})
    if args.augment is not None:
        config.augment = parse_augment(args.augment)
    pixel_options = {
        name: getattr(args, name)
        for name in ("crop_border", "equalize", "lung_crop", "lung_mask")
        if getattr(args, name) is not None
    }
    if pixel_options:
        config.pixels = replace(config.pixels, **pixel_options)
    if args.external:
        config.external = [str(Path(d).expanduser().resolve()) for d in args.external]
    if args.external_map:
        config.external_map = {**config.external_map, **parse_pairs(args.external_map, "--external-map")}
    if args.external_skip_unknown is not None:
        config.external_skip_unknown = True
    head = {
        k: getattr(args, a)
        for k, a in (("pooling", "pooling"), ("dropout", "dropout"), ("batch_norm", "head_batch_norm"))
        if getattr(args, a) is not None
    }
    if args.dense_units is not None:
        try:
            head["dense_units"] = [int(u) for u in args.dense_units.split(",") if u.strip()]
        except ValueError:
            raise CXRError(f"--dense-units expects numbers like 256,128, got '{args.dense_units}'") from None
    config.head = replace(config.head, **head)
    if args.label_preset:
        config.labels = LABEL_PRESETS[args.label_preset]
    if args.rename or args.merge or args.drop or args.filename_rule:
        config.labels = extend_scheme(
            config.labels,
            filename_rules=args.filename_rule or (),
            rename=args.rename or (),
            merge=args.merge or (),
            drop=args.drop or (),
        )
    if not config.data:
        raise CXRError("--data is required (a dataset folder or CSV manifest)")
    return config.resolved() if resolve else config.validate()


def _print_epoch(event: dict) -> None:
    if event["event"] != "epoch":
        return
    logs = event["logs"]
    shown = "  ".join(
        f"{k} {logs[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy", "val_auc") if k in logs
    )
    print(f"[{event['stage']}] epoch {event['epoch']}/{event['epochs']}  {shown}", file=sys.stderr, flush=True)


def cmd_train(args) -> int:
    # the checks that need no TensorFlow come first, so a typo fails in a blink, not after its import
    if args.resume:
        from .runs import RunDir

        RunDir(args.resume).check_resumable()  # a finished or still-running run is refused at once
        from .workflows import resume

        run = resume(args.resume, progress=_print_epoch)
    else:
        from .data.index import scan_layout

        config = config_from_args(args)
        scan_layout(config.data)
        from .workflows import train

        run = train(config, out_dir=args.out, progress=_print_epoch)
    print(run.path)
    return 0


def cmd_ensemble(args) -> int:
    """Average finished runs into a new run directory (printed last); its comparison with the best member
    goes to stderr."""
    from .ensemble import report
    from .workflows import make_ensemble

    run = make_ensemble(args.runs, tta=args.tta, out_dir=args.out)
    found = report(run)
    if found and found["best_member"]:
        auc = found["difference"]["macro_auc"]
        low, high = auc["ci_low"], auc["ci_high"]
        interval = "n/a" if low is None else f"{low:+.3f} to {high:+.3f}"
        print(
            f"ensemble vs its best member {found['best_member']}: macro AUC {auc['difference']:+.3f} "
            f"(95% CI {interval}, paired bootstrap over patients): {found['verdict']}",
            file=sys.stderr,
        )
    print(run.path)
    return 0


def cmd_export(args) -> int:
    """Export a run's model (calibrated) as a SavedModel or a TFLite file; the path is printed last and its
    input spec (``<path>.json``) sits beside it."""
    from .workflows import export

    path = export(args.run, args.format, args.out)
    print(f"input spec: {path.with_name(path.name + '.json')}", file=sys.stderr)
    print(path)
    return 0


def cmd_recipes(args) -> int:
    """One line per recipe, name first; ``--show NAME`` prints one recipe in full, its configuration last."""
    from .recipes import RECIPES, describe, get_recipe

    if args.show:
        recipe = get_recipe(args.show)
        print(describe(recipe))
        print(json.dumps(recipe.config))
        return 0
    for recipe in RECIPES.values():
        print(f"{recipe.name}\t{recipe.description}")
    return 0


def cmd_index(args) -> int:
    from .data.index import build_index, summarize

    index = build_index(args.data)
    if args.verify:
        from .data.io import decode_image

        for path in index["path"]:
            decode_image(path)
    if args.csv:
        index.to_csv(args.csv, index=False)
    info = summarize(index)
    print(
        f"{info['images']} images, {len(info['classes'])} classes, layout {info['layout']}: {info['root']}",
        file=sys.stderr,
    )
    for label, by_split in info["by_split"].items():
        print(f"  {label:<24} {info['classes'][label]:>7}  {by_split}", file=sys.stderr)
    print(json.dumps(info))
    return 0


def cmd_audit(args) -> int:
    from .data.audit import audit

    result = audit(args.data, folds=args.folds, use_cache=not args.no_cache)
    shortcut = result["shortcut"]
    print(f"{result['images']} images, classes {result['classes']}", file=sys.stderr)
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
    for source, mix in (result["sources"] or {}).items():
        print(f"  source {source}: {mix}", file=sys.stderr)
    print(json.dumps(result))
    return 0


def cmd_predict(args) -> int:
    from .runs import RunDir

    RunDir(args.run_dir).require_model()
    from .predict import Predictor

    predictor = Predictor(args.run_dir)
    failed = 0
    for result in predictor.predict_each(args.images, operating_point=args.operating_point):
        if "error" in result:
            failed += 1
            print(f"error: {result['error']}", file=sys.stderr)
        else:
            print(prediction_line(result), file=sys.stderr)
        print(json.dumps(result))
    return 2 if failed else 0


def prediction_line(result: dict) -> str:
    """One prediction for people: the top class, the decision and, when so, that the image is unlike
    anything the model was trained on."""
    line = f"{result['image']}: {result['label']} {result['confidence']:.1%} (calibrated)"
    decision = result.get("decision")
    if decision and decision.get("withheld"):
        line += f"; no decision at {decision['name']}"
    elif decision:
        positive = ", ".join(decision["positive"]) or "none"
        line += f"; positive at {decision['name']}: {positive}"
    unlike = result.get("unlike_training")
    if unlike and unlike["flagged"]:
        line += (
            f"; UNLIKE THE TRAINING DATA (feature distance {unlike['score']:.1f} > {unlike['threshold']:.1f}): "
            "the probabilities above mean little for this image"
        )
    return line


def cmd_cache(args) -> int:
    from .training import activation_store

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


def cmd_demo_data(args) -> int:
    from .data.demo import make_demo_dataset

    path = make_demo_dataset(args.out_dir, n_per_class=args.n_per_class, image_size=args.image_size, seed=args.seed)
    print("synthetic demo dataset (not real radiographs) written to:", file=sys.stderr)
    print(path)
    return 0


def cmd_backbones(args) -> int:
    from .training.backbones import list_backbones

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cxrcore", description="Train, evaluate and explain chest X-ray classifiers."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("index", help="index a dataset and print its summary")
    p.add_argument("data")
    p.add_argument("--verify", action="store_true", help="also decode every image")
    p.add_argument("--csv", help="write the index to this CSV file")
    p.set_defaults(func=cmd_index)
    p = sub.add_parser("audit", help="audit a dataset before training: leaks, duplicates, shortcuts; JSON last")
    p.add_argument("data")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds of the shortcut check")
    p.add_argument("--no-cache", action="store_true", help="compute again even if a cached result exists")
    p.set_defaults(func=cmd_audit)
    p = sub.add_parser("train", help="train a model; prints the run directory last")
    add_train_options(p)
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its last completed epoch "
        "(with its own configuration; the other options are ignored)",
    )
    p.set_defaults(func=cmd_train)
    from .evaluation.commands import add_evaluate_parser  # here: these import this module

    add_evaluate_parser(sub)
    p = sub.add_parser("predict", help="predict images; one JSON line each")
    p.add_argument("run_dir")
    p.add_argument("images", nargs="+")
    p.add_argument(
        "--operating-point",
        choices=["sensitivity", "youden"],
        default="sensitivity",
        help="the thresholds a decision is made at (chosen on validation; default: the target sensitivity)",
    )
    p.set_defaults(func=cmd_predict)
    from .explain.commands import add_explain_parsers

    add_explain_parsers(sub)
    from .lungs.commands import add_lungs_parser

    add_lungs_parser(sub)
    p = sub.add_parser("cache", help="what the activation cache holds (frozen-backbone features); JSON last")
    p.add_argument("--clear", action="store_true", help="remove every cached activation first")
    p.set_defaults(func=cmd_cache)
    p = sub.add_parser("demo-data", help="write the synthetic demo dataset")
    p.add_argument("out_dir")
    p.add_argument("--n-per-class", type=int, default=150)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo_data)
    from .jobs.commands import add_jobs_parser  # here: it imports this module's train options

    add_jobs_parser(sub)
    p = sub.add_parser("backbones", help="list the backbone registry")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backbones)
    p = sub.add_parser("export", help="export a run's model as a SavedModel or TFLite file; prints the path last")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--format", choices=["savedmodel", "tflite"], required=True)
    p.add_argument("--out", help="folder to write into (default: the run's export/)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("ensemble", help="average finished runs into a new run; prints its directory last")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories: same classes, same split of the same data")
    p.add_argument("--tta", choices=["none", "flip"], default="none", help="flip: each member also sees the mirror")
    p.add_argument("--out", help="parent folder of the new run (default: beside the first member)")
    p.set_defaults(func=cmd_ensemble)
    p = sub.add_parser(
        "recipes", help="the reference write-ups as recipes: one per line, name first (`train --recipe NAME`)"
    )
    p.add_argument("--show", metavar="NAME", help="one recipe in full: settings stated, chosen, published figures")
    p.set_defaults(func=cmd_recipes)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        return args.func(args)
    except CXRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileExistsError, ValueError) as exc:  # raised with a clear message by the demo generator
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, traceback on request
        if os.environ.get("CXRCORE_DEBUG"):
            traceback.print_exc()
        print(
            f"error: unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "(set CXRCORE_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
