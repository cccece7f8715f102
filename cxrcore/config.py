"""Run configuration: one typed object, saved as ``config.json`` beside each run.

``TrainConfig.from_dict(cfg.to_dict()) == cfg`` always holds, and unknown keys or
out-of-range values raise :class:`ConfigError` naming the field, so a config file
written by hand fails loudly instead of being half-applied.

Weights, image size and unfreeze depth may be left to the backbone (``"auto"``, None, None);
:meth:`TrainConfig.resolved` fills them from the backbone registry, and is the only place
that rule lives.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data.pixels import PixelRules
from .errors import ConfigError, WeightsError
from .recipes import RECIPES, get_recipe
from .training.backbones import get_backbone

OPTIMIZERS = ("adam", "rmsprop", "adamax", "sgd")
POOLINGS = ("avg", "max", "flatten")
CLASS_WEIGHTS = ("none", "balanced")
BALANCE_MODES = ("none", "source")  # source: each batch drawn evenly over (source, class) groups
XLA_MODES = ("auto", "on", "off")  # auto: Keras's choice (XLA on a GPU, not on a CPU or under tf.distribute)
AUTO = "auto"  # weights: the backbone's default (see TrainConfig.resolved)


@dataclass
class AugmentConfig:
    """Training-time augmentation. Off by default: X-rays are not left-right symmetric
    (heart on the left), so flips are a choice, not a hidden default."""

    flip: bool = False  # random horizontal flip
    rotation: float = 0.0  # max rotation, degrees
    zoom: float = 0.0  # max zoom in/out, fraction (0.1 = +-10%)
    contrast: float = 0.0  # max contrast change, fraction
    brightness: float = 0.0  # max brightness change, fraction of the 0..255 range

    @property
    def enabled(self) -> bool:
        return bool(self.flip or self.rotation or self.zoom or self.contrast or self.brightness)


@dataclass
class HeadConfig:
    """Classification head placed on the backbone's last feature map."""

    pooling: str = "avg"  # avg | max | flatten
    dense_units: list[int] = field(default_factory=lambda: [256])
    dropout: float = 0.3
    batch_norm: bool = False


@dataclass
class LabelScheme:
    """How folder labels become training classes: filename rules, then rename, merge, drop.

    ``filename_rules`` maps a substring of the file name to a new label, e.g.
    ``{"_bacteria_": "Bacterial Pneumonia", "_virus_": "Viral Pneumonia"}`` splits the
    pediatric set's PNEUMONIA folder by cause. ``merge`` maps a new class to the old
    classes it absorbs, e.g. ``{"Abnormal": ["COVID", "Viral Pneumonia"]}``.
    """

    filename_rules: dict[str, str] = field(default_factory=dict)
    rename: dict[str, str] = field(default_factory=dict)
    merge: dict[str, list[str]] = field(default_factory=dict)
    drop: list[str] = field(default_factory=list)

    @property
    def is_identity(self) -> bool:
        return not (self.filename_rules or self.rename or self.merge or self.drop)

    def describe(self) -> str:
        """The scheme in words, e.g. ``"merged Abnormal = COVID + Viral Pneumonia; dropped Other"``."""
        parts = [f"file names containing '{k}' become {v}" for k, v in self.filename_rules.items()]
        parts += [f"renamed {old} to {new}" for old, new in self.rename.items()]
        parts += [f"merged {new} = {' + '.join(old)}" for new, old in self.merge.items()]
        parts += [f"dropped {', '.join(self.drop)}"] if self.drop else []
        return "; ".join(parts) or "folder labels as they are"


UNCERTAIN_POLICIES = (
    "ignore",
    "ones",
    "zeros",
)  # CheXpert's -1: left out, positive, negative (U-Ignore, U-Ones, U-Zeros)
BLANK_POLICIES = ("negative", "ignore")  # CheXpert's blank: negative (as most CheXpert work does), or left out
VIEWS = ("all", "frontal", "pa", "ap")


@dataclass(frozen=True)
class FindingsOptions:
    """How a findings dataset's labels and views are read (NIH ChestX-ray14, CheXpert, a ``path,labels``
    manifest; :mod:`cxrcore.data.findings`). ``uncertain`` (CheXpert's -1) and ``blank`` say what becomes of
    those labels: ``ignore`` leaves the label out of the loss and the metrics for that finding only.
    ``findings`` keeps a subset, by name as the dataset spells it or its exact equivalent in the other
    dataset (empty: all); ``views`` keeps frontal films, or PA or AP ones (``all``: every film).
    ``labels_column`` reads a manifest (``path`` and that column, findings separated by ``|``, "No Finding" for
    none) as a findings dataset, whatever its other columns: ``nih_labels`` of a class-labelled manifest that
    also records NIH's findings."""

    uncertain: str = "ignore"
    blank: str = "negative"
    findings: tuple[str, ...] = ()
    views: str = "all"
    labels_column: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "findings", tuple(self.findings))

    def validate(self) -> FindingsOptions:
        """Raises :class:`ConfigError` naming the field; returns self."""
        for name, value, allowed in (
            ("uncertain", self.uncertain, UNCERTAIN_POLICIES),
            ("blank", self.blank, BLANK_POLICIES),
            ("views", self.views, VIEWS),
        ):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if not all(isinstance(f, str) and f.strip() for f in self.findings):
            raise ConfigError(f"findings must be a list of finding names, got {list(self.findings)!r}")
        if not isinstance(self.labels_column, str):
            raise ConfigError(f"labels_column must be a column name, got {self.labels_column!r}")
        return self

    @property
    def is_default(self) -> bool:
        return self == FindingsOptions()

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "findings": list(self.findings)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FindingsOptions:
        return _build(cls, data, "findings options").validate()

    def describe(self) -> str:
        """The options in words, e.g. ``"uncertain: ignore; blank: negative; views: all"``."""
        kept = f"; findings: {', '.join(self.findings)}" if self.findings else ""
        column = f"; labels from column {self.labels_column}" if self.labels_column else ""
        return f"uncertain: {self.uncertain}; blank: {self.blank}; views: {self.views}{kept}{column}"


def parse_findings(text: str | None) -> tuple[str, ...]:
    """``"A,B"`` (the CLI's ``--findings``) -> ``("A", "B")``; empty or None -> ``()`` (all)."""
    return tuple(name.strip() for name in (text or "").split(",") if name.strip())


def parse_pairs(items, what: str) -> dict[str, str]:
    """``["OLD=NEW", ...]`` -> ``{"OLD": "NEW"}``; ConfigError naming ``what`` for a malformed item."""
    out = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"{what} expects KEY=VALUE, got '{item}'")
        out[key.strip()] = value.strip()
    return out


def extend_scheme(base: LabelScheme, *, filename_rules=(), rename=(), merge=(), drop=()) -> LabelScheme:
    """``base`` plus rules written as text: ``"SUBSTRING=LABEL"``, ``"OLD=NEW"``, ``"NEW=OLD1,OLD2"``."""
    merged = {k: [c.strip() for c in v.split(",") if c.strip()] for k, v in parse_pairs(merge, "merge").items()}
    return LabelScheme(
        filename_rules={**base.filename_rules, **parse_pairs(filename_rules, "filename rule")},
        rename={**base.rename, **parse_pairs(rename, "rename")},
        merge={**base.merge, **merged},
        drop=[*base.drop, *[d for d in drop if d]],
    )


LABEL_PRESETS: dict[str, LabelScheme] = {
    "pneumonia-subtype": LabelScheme(
        filename_rules={"_bacteria_": "Bacterial Pneumonia", "_virus_": "Viral Pneumonia"}
    ),
    "abnormal-vs-normal": LabelScheme(
        merge={
            "Abnormal": [
                "COVID",
                "COVID-19",
                "Viral Pneumonia",
                "Pneumonia",
                "PNEUMONIA",
                "Lung_Opacity",
                "Lung Opacity",
                "Bacterial Pneumonia",
            ]
        }
    ),
}


@dataclass
class TrainConfig:
    """Everything that defines a training run."""

    data: str = ""
    backbone: str = "mobilenetv2_1.0"
    weights: str = "auto"  # auto (the backbone's default) | imagenet | none | path to a file
    image_size: int | None = None  # None: the backbone's default size
    batch_size: int = 32
    epochs: int = 10  # stage 1: frozen backbone
    fine_tune_epochs: int = 5  # stage 2: top layers unfrozen
    unfreeze: int | None = None  # backbone layers unfrozen in stage 2; -1 = all; None = backbone default
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    fine_tune_lr_factor: float = 0.1  # stage 2 learning rate = learning_rate * factor
    patience: int = 5  # early stopping on val_loss; 0 = off
    reduce_lr_patience: int = 2  # reduce-on-plateau on val_loss; 0 = off
    reduce_lr_factor: float = 0.5  # the learning rate is multiplied by this on a plateau (CheXNet: 0.1)
    class_weights: str = "balanced"  # none | balanced
    focal_loss: bool = False
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pixels: PixelRules = field(default_factory=PixelRules)  # crop, equalise: training, evaluation and prediction
    head: HeadConfig = field(default_factory=HeadConfig)
    labels: LabelScheme = field(default_factory=LabelScheme)
    # a findings dataset (NIH, CheXpert, a path,labels manifest): how its labels and views are read
    findings: FindingsOptions = field(default_factory=FindingsOptions)
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    # sources (the index's ``source`` column: a hospital, a site, a public set)
    balance: str = "none"  # none | source: training batches drawn evenly over (source, class) groups
    drop_single_class_sources: bool = False  # leave out sources whose images all hold one class
    mixed_precision: bool = False  # float16 compute; applied only on a GPU
    xla: str = "auto"  # XLA compilation of the training step: auto | on | off (see XLA_MODES)
    cache: bool = True  # keep decoded, resized images in memory
    feature_cache: bool = True  # train frozen parts on cached activations (training.features); False: full passes
    augment_views: int = 4  # with augmentation and feature_cache: augmented views cached per image (0: full pass)
    max_steps: int | None = None  # cap on batches per epoch (quick checks)
    seed: int = 42
    target_sensitivity: float = 0.95  # the operating point chosen on validation for each class
    recipe: str = ""  # the recipe this configuration started from (cxrcore.recipes), if any
    # external validation: labelled datasets evaluated once the model is trained, each kept apart
    external: list[str] = field(default_factory=list)
    external_map: dict[str, str] = field(default_factory=dict)  # an external class -> a model class
    external_skip_unknown: bool = False  # skip external images of classes the model does not know
    external_labels_column: str = ""  # a findings run: the external manifests' column of findings (e.g. nih_labels)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "findings": self.findings.to_dict()}

    def resolved(self) -> TrainConfig:
        """This configuration as it will run: a validated copy with the settings left to the
        backbone (weights ``"auto"``, ``image_size`` and ``unfreeze`` None) taken from its
        registry entry. The one place that rule lives: the dashboard and the CLI call it (and
        :meth:`for_backbone`, for each job of a comparison), so what they show and save is
        what trains.

        - weights ``"auto"``: ``"imagenet"`` for a backbone with ImageNet weights, ``"none"``
          (train from scratch) for one without, e.g. ``simple_cnn``;
        - ``image_size`` None: the backbone's input size;
        - ``unfreeze`` None: the backbone's default depth, or -1 (all) when it trains from
          scratch (without pretrained weights the whole network trains in both stages).

        Values set explicitly are kept, and checked as :meth:`validate` checks them
        (``weights="imagenet"`` for ``simple_cnn`` is still an error). Calling it again
        changes nothing.
        """
        spec = get_backbone(self.backbone)  # ConfigError naming the valid backbones
        weights = self.weights
        if weights == AUTO:
            weights = "imagenet" if spec.pretrained else "none"
        unfreeze = self.unfreeze
        if unfreeze is None:
            unfreeze = -1 if weights in ("none", "") else spec.unfreeze
        return dataclasses.replace(
            self, weights=weights, image_size=self.image_size or spec.input_size, unfreeze=unfreeze
        ).validate()

    def for_backbone(self, backbone: str) -> TrainConfig:
        """These settings on ``backbone``, resolved: one job of a comparison.

        Pass the configuration *before* :meth:`resolved`, so that what was left to the
        backbone follows each backbone. ImageNet weights asked for a backbone that has none
        (``simple_cnn`` in a comparison with pretrained backbones) mean it trains from
        scratch, as ``"auto"`` would; everything else is as :meth:`resolved`.
        """
        config = dataclasses.replace(self, backbone=backbone)
        if config.weights == "imagenet" and not get_backbone(backbone).pretrained:
            config.weights = AUTO
        return config.resolved()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _build(cls, data, "config")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def validate(self) -> TrainConfig:
        """Check ranges; returns self so it can be chained. Raises ConfigError."""
        checks = [
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.epochs >= 0 and self.fine_tune_epochs >= 0, "epochs must be 0 or more"),
            (self.epochs + self.fine_tune_epochs > 0, "nothing to train: epochs and fine_tune_epochs are both 0"),
            (self.unfreeze is None or self.unfreeze >= -1, "unfreeze must be -1 (all) or a number of layers"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (self.fine_tune_lr_factor > 0, "fine_tune_lr_factor must be positive"),
            (self.patience >= 0 and self.reduce_lr_patience >= 0, "patience must be 0 or more"),
            (0 < self.reduce_lr_factor < 1, "reduce_lr_factor must be between 0 and 1 (e.g. 0.5, or 0.1 for CheXNet)"),
            (self.class_weights in CLASS_WEIGHTS, f"class_weights must be one of {', '.join(CLASS_WEIGHTS)}"),
            (
                isinstance(self.balance, str) and self.balance in BALANCE_MODES,
                f"balance must be one of {', '.join(BALANCE_MODES)}",
            ),
            (
                isinstance(self.drop_single_class_sources, bool),
                "drop_single_class_sources must be true or false",
            ),
            (self.xla in XLA_MODES, f"xla must be one of {', '.join(XLA_MODES)}"),
            (not self.recipe or self.recipe in RECIPES, f"recipe must be one of {', '.join(RECIPES)} (or empty)"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (self.head.pooling in POOLINGS, f"head.pooling must be one of {', '.join(POOLINGS)}"),
            (0 <= self.head.dropout < 1, "head.dropout must be in [0, 1)"),
            (all(u > 0 for u in self.head.dense_units), "head.dense_units must be positive"),
            (
                0 < self.val_fraction < 1
                and 0 <= self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1,
                "val_fraction and test_fraction must be fractions that leave images to train on",
            ),
            (self.image_size is None or 32 <= self.image_size <= 1024, "image_size must be between 32 and 1024"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be at least 1"),
            (0 < self.target_sensitivity < 1, "target_sensitivity must be between 0 and 1 (e.g. 0.95)"),
            (0 <= self.augment_views <= 64, "augment_views must be between 0 and 64"),
            (
                isinstance(self.external, list) and all(isinstance(d, str) and d.strip() for d in self.external),
                "external must be a list of dataset paths",
            ),
            (isinstance(self.external_labels_column, str), "external_labels_column must be a column name"),
            (
                isinstance(self.external_map, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in self.external_map.items()),
                "external_map must map external class names to model class names",
            ),
            (
                0 <= self.augment.zoom < 1
                and 0 <= self.augment.contrast < 1
                and 0 <= self.augment.brightness < 1
                and 0 <= self.augment.rotation <= 180,
                "augmentation: zoom, contrast, brightness in [0, 1), rotation in degrees [0, 180]",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

        spec = get_backbone(self.backbone)  # ConfigError naming the valid backbones
        if self.weights == "imagenet" and not spec.pretrained:
            raise WeightsError(f"{spec.name} has no ImageNet weights; use --weights none")
        if not isinstance(self.findings, FindingsOptions):
            raise ConfigError("findings must be an object of findings options")
        self.findings.validate()
        return self


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}")
    kwargs = {}
    for name, value in data.items():
        sub = {
            "augment": AugmentConfig,
            "pixels": PixelRules,
            "head": HeadConfig,
            "labels": LabelScheme,
            "findings": FindingsOptions,
        }.get(name)
        kwargs[name] = _build(sub, value, f"{where}.{name}") if sub and cls is TrainConfig else value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def recipe_config(name: str, data: str = "", **overrides):
    """The recipe's :class:`cxrcore.config.TrainConfig` for ``data``, with ``overrides`` (TrainConfig
    fields) on top, validated. The config remembers the recipe (``recipe``); the recipes themselves are data
    in :mod:`cxrcore.recipes`, below this module."""
    recipe = get_recipe(name)
    config = TrainConfig.from_dict({**recipe.config, "data": data, "recipe": recipe.name})
    if recipe.label_preset:
        config.labels = LABEL_PRESETS[recipe.label_preset]
    return dataclasses.replace(config, **overrides).validate()
