"""What the command groups share: the training options (``train`` and ``jobs submit``) and the config
they make, and the lines printed for people (an epoch's progress, one prediction)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from ..config import (
    AUTO,
    BLANK_POLICIES,
    LABEL_PRESETS,
    UNCERTAIN_POLICIES,
    VIEWS,
    AugmentConfig,
    FindingsOptions,
    TrainConfig,
    extend_scheme,
    parse_findings,
    parse_pairs,
    recipe_config,
)
from ..errors import CXRError


def parse_augment(text: str):
    """``"flip,rotation=10,zoom=0.1"`` -> AugmentConfig."""
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


def add_findings_options(p: argparse.ArgumentParser, *, for_training: bool = False) -> None:
    """How a findings dataset (NIH ChestX-ray14, CheXpert, a path,labels manifest) is read. ``for_training``:
    each option is None unless given, so ``--config`` and ``--recipe`` keep theirs (:func:`config_from_args`)."""
    default = (lambda value: None) if for_training else (lambda value: value)
    g = p.add_argument_group("findings datasets (NIH ChestX-ray14, CheXpert, a path,labels manifest)")
    g.add_argument(
        "--uncertain",
        choices=UNCERTAIN_POLICIES,
        default=default("ignore"),
        help="CheXpert's uncertain labels (-1): ignore (left out of the loss and metrics for that finding; "
        "default), ones (positive) or zeros (negative), as named in the CheXpert paper",
    )
    g.add_argument(
        "--blank",
        choices=BLANK_POLICIES,
        default=default("negative"),
        help="CheXpert's blank labels: negative (default, as most CheXpert work) or ignore",
    )
    g.add_argument("--findings", help="keep these findings only, comma-separated (e.g. Effusion,Cardiomegaly)")
    g.add_argument(
        "--labels-column",
        default=default(""),
        metavar="NAME",
        help="read a manifest's column NAME as its findings (|-separated, 'No Finding' for none), e.g. nih_labels",
    )
    g.add_argument(
        "--views",
        choices=VIEWS,
        default=default("all"),
        help="keep frontal films, or PA or AP ones (needs a view column); default all",
    )


def findings_options(args: argparse.Namespace) -> FindingsOptions:
    return FindingsOptions(
        uncertain=args.uncertain,
        blank=args.blank,
        findings=parse_findings(args.findings),
        views=args.views,
        labels_column=args.labels_column,
    ).validate()


def add_train_options(p: argparse.ArgumentParser) -> None:
    """The options of ``train`` and ``jobs submit``; each is None unless given, so ``--config`` and
    ``--recipe`` keep their values (see :func:`config_from_args`)."""
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
    p.add_argument(
        "--reduce-lr-factor",
        type=float,
        help="on a plateau the learning rate is multiplied by this (default 0.5; CheXNet: 0.1)",
    )
    p.add_argument(
        "--class-weights",
        choices=["none", "balanced"],
        help="balanced (default): classes weighted n / (k x their count); for a findings dataset, per finding, "
        "a positive label weighs its negatives / positives on the training split (negatives weigh 1)",
    )
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
    p.add_argument(
        "--balance",
        choices=["none", "source"],
        help="source: draw every training batch evenly over the (source, class) groups (times a source's weight), "
        "so no hospital or public set dominates; validation and test are never rebalanced. Needs a source column",
    )
    p.add_argument(
        "--drop-single-class-sources",
        action="store_true",
        default=None,
        help="leave out the images of sources that hold one class only (a source that is one class teaches the "
        "source, not the disease); says which and how many. Images without a source are kept",
    )
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
    p.add_argument(
        "--external-labels-column",
        metavar="NAME",
        help="a findings run: the --external manifests' column of findings (e.g. nih_labels)",
    )
    add_findings_options(p, for_training=True)


def config_from_args(args: argparse.Namespace, *, resolve: bool = True):
    """A TrainConfig from ``--config`` (or defaults) with the given flags applied, resolved
    (:meth:`TrainConfig.resolved`: weights, image size and unfreeze depth left to the backbone
    filled from it). ``resolve=False`` keeps them open, for a comparison over several backbones.

    ``--backbone`` on top of a ``--config`` for another backbone lets the settings that follow
    the backbone follow the new one, unless they are given as flags too.
    """
    if args.config and args.recipe:
        raise CXRError("--config and --recipe both give a starting configuration: use one")
    if args.recipe:
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
        "reduce_lr_factor",
        "class_weights",
        "focal_loss",
        "focal_gamma",
        "label_smoothing",
        "val_fraction",
        "test_fraction",
        "balance",
        "drop_single_class_sources",
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
    if args.external_labels_column is not None:
        config.external_labels_column = args.external_labels_column
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
    given = {
        name: getattr(args, name)
        for name in ("uncertain", "blank", "views", "labels_column")
        if getattr(args, name, None) is not None
    }
    if getattr(args, "findings", None) is not None:
        given["findings"] = parse_findings(args.findings)
    if given:
        config.findings = replace(config.findings, **given)
    if not config.data:
        raise CXRError("--data is required (a dataset folder or CSV manifest)")
    return config.resolved() if resolve else config.validate()


def print_epoch(event: dict) -> None:
    """Training progress for people: one stderr line per finished epoch (other events are skipped)."""
    if event["event"] != "epoch":
        return
    logs = event["logs"]
    shown = "  ".join(
        f"{k} {logs[k]:.4f}"
        for k in ("loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc")
        if k in logs and (k != "auc" or "accuracy" not in logs)  # auc: a findings model's mean AUC
    )
    print(f"[{event['stage']}] epoch {event['epoch']}/{event['epochs']}  {shown}", file=sys.stderr, flush=True)


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
    return line + unlike_note(result)


def unlike_note(result: dict) -> str:
    """The end of a prediction line for an image flagged as unlike the training data ("" otherwise)."""
    unlike = result.get("unlike_training")
    if not (unlike and unlike["flagged"]):
        return ""
    return (
        f"; UNLIKE THE TRAINING DATA (feature distance {unlike['score']:.1f} > {unlike['threshold']:.1f}): "
        "the probabilities above mean little for this image"
    )
