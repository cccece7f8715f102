"""The reference write-ups as recipes: one training configuration each, as data (no TensorFlow import).

A recipe names the write-up it reproduces (in ``shared/seeds/`` of the project's history; summarised
here), its full training configuration, every setting the write-up states and every one it leaves
open (with what was chosen and why), and the figures it published on which data, so a finished run
can be put beside them (:func:`published_comparison`).

What every recipe keeps from the project rather than from its write-up: each backbone's own
ImageNet preprocessing inside the model (the write-ups' rescaling to [0, 1] by an
``ImageDataGenerator`` is not reproduced: it would feed the pretrained layers inputs they were not
trained on), patient-grouped splits, calibration, operating points and intervals.

Where a write-up trains in one stage (some layers trainable from the first epoch), the recipe has
no frozen stage (``epochs`` 0) and one fine-tuning stage at the stated learning rate
(``fine_tune_lr_factor`` 1). The custom-CNN and ResNet152V2 write-up trains two models: two recipes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class WriteupData:
    """The data a write-up's published figures were measured on."""

    name: str
    classes: tuple[str, ...]  # as the write-up names them
    images: int | None  # how many in all, where stated
    split: str  # how it was split, in words


@dataclass(frozen=True)
class Published:
    """One figure a write-up published, on its test split."""

    metric: str  # a key of metrics.json (accuracy, macro_f1, macro_auc, mean_auc...), or auc:<finding>
    value: float
    note: str = ""


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str  # one line
    writeup: str  # which write-up, in words
    config: dict[str, Any]  # TrainConfig fields (nested ones as dicts); data is the user's
    stated: tuple[str, ...]  # settings the write-up states, as it states them
    chosen: tuple[str, ...]  # settings it leaves open: what was chosen and why
    data: WriteupData
    published: tuple[Published, ...] = ()
    mapping: str = ""  # how the write-up's training maps onto the project's two stages
    label_preset: str = ""  # a cxrcore.config.LABEL_PRESETS entry applied to the data's folder labels
    tags: tuple[str, ...] = field(default_factory=tuple)


_COVID_RADIOGRAPHY_4 = WriteupData(
    "COVID-19 Radiography Database (Kaggle, tawsifurrahman)",
    ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"),
    21165,
    "",
)
_PEDIATRIC = WriteupData(
    "Chest X-Ray Images (Pneumonia), version 3 (Kaggle, tolgadincer): pediatric, Guangzhou; its PNEUMONIA "
    "class is called Abnormal here",
    ("Abnormal", "Normal"),
    5856,
    "the dataset's own train/test folders; validation carved from train",
)
#: what the Pneumonet write-up leaves open, chosen once for both of its models
_PNEUMONET = {
    "batch_size": 32,
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "patience": 5,
    "reduce_lr_patience": 2,
    "class_weights": "balanced",
    "augment": {"zoom": 0.1, "rotation": 10.0},
    "head": {"pooling": "avg", "dense_units": [128], "dropout": 0.3, "batch_norm": False},
}
_ONE_STAGE = (
    "The write-up trains once, with its chosen layers trainable from the first epoch: no frozen stage "
    "(epochs 0), one stage at the stated learning rate (fine_tune_lr_factor 1)."
)

#: CheXNet's published test AUC per finding, as the paper names them (Rajpurkar et al. 2017, table 1)
_CHEXNET_AUC = {
    "Atelectasis": 0.8094,
    "Cardiomegaly": 0.9248,
    "Effusion": 0.8638,
    "Infiltration": 0.7345,
    "Mass": 0.8676,
    "Nodule": 0.7802,
    "Pneumonia": 0.7680,
    "Pneumothorax": 0.8887,
    "Consolidation": 0.7901,
    "Edema": 0.8878,
    "Emphysema": 0.9371,
    "Fibrosis": 0.8047,
    "Pleural Thickening": 0.8062,
    "Hernia": 0.9164,
}

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            name="resnet50-4class-rmsprop",
            description="ResNet50 at 256 px, last 10 layers trainable, RMSprop, 30 epochs with early stopping",
            writeup="Chest Condition Analysis: ResNet50, four classes (COVID-19, healthy, viral and bacterial "
            "pneumonia), last 10 layers unfrozen, RMSprop",
            config={
                "backbone": "resnet50",
                "weights": "auto",
                "image_size": 256,
                "batch_size": 32,
                "epochs": 0,
                "fine_tune_epochs": 30,
                "unfreeze": 10,
                "optimizer": "rmsprop",
                "learning_rate": 1e-3,
                "fine_tune_lr_factor": 1.0,
                "patience": 5,
                "reduce_lr_patience": 0,
                "class_weights": "none",
                "head": {"pooling": "avg", "dense_units": [256, 128], "dropout": 0.3, "batch_norm": False},
            },
            stated=(
                "ResNet50 with ImageNet weights, no top, input 256 x 256",
                "the last 10 layers of the base model unfrozen, the rest frozen",
                "head: average pooling, flatten, dense layers with ReLU, dropout, softmax",
                "categorical cross-entropy, RMSprop, accuracy",
                "early stopping and a best-model checkpoint; 30 epochs",
                "four classes: Covid-19, Healthy, Viral Pneumonia, Bacterial Pneumonia",
            ),
            chosen=(
                "learning rate 0.001: RMSprop's default (the write-up names the optimizer only)",
                "batch size 32: ImageDataGenerator.flow_from_directory's default",
                "dense layers 256 and 128, dropout 0.3: the write-up says 'dense layers' and 'dropout' without sizes",
                "early-stopping patience 5 on validation loss: not stated",
                "class weights none: not mentioned (the write-up suggests them as a later improvement)",
                "labels as in the data: its four classes need a dataset with bacterial and viral pneumonia "
                "told apart (the pediatric set's file names do that: add --label-preset pneumonia-subtype)",
            ),
            data=WriteupData(
                "not named: chest X-ray folders with four classes",
                ("Covid-19", "Healthy", "Viral Pneumonia", "Bacterial Pneumonia"),
                None,
                "ImageDataGenerator's validation split; a separate test folder",
            ),
            published=(),
            mapping=_ONE_STAGE,
        ),
        Recipe(
            name="densenet169-adamax",
            description="DenseNet169, Adamax 0.001, horizontal flips, batch 16, 80/10/10, all layers trained",
            writeup="Chest X-Ray Classification Project: DenseNet169 on the COVID-19 Radiography Database, "
            "Adamax, flips, 80/10/10, ~96% test accuracy",
            config={
                "backbone": "densenet169",
                "weights": "auto",
                "image_size": 224,
                "batch_size": 16,
                "epochs": 0,
                "fine_tune_epochs": 100,
                "unfreeze": -1,
                "optimizer": "adamax",
                "learning_rate": 1e-3,
                "fine_tune_lr_factor": 1.0,
                "patience": 5,
                "reduce_lr_patience": 2,
                "class_weights": "none",
                "augment": {"flip": True},
                "head": {"pooling": "avg", "dense_units": [256], "dropout": 0.3, "batch_norm": False},
                "val_fraction": 0.1,
                "test_fraction": 0.1,
            },
            stated=(
                "DenseNet169, pretrained, with a custom dense layer for classification",
                "Adamax, learning rate 0.001; categorical cross-entropy; accuracy",
                "horizontal flipping during training",
                "80% training, 10% validation, 10% test",
                "100 epochs, batch size 16",
                "a custom callback that adjusts the learning rate during training",
            ),
            chosen=(
                "all layers trained from the first epoch: the write-up freezes nothing it mentions",
                "image size 224: DenseNet169's ImageNet size (not stated)",
                "the learning-rate callback as reduce-on-plateau (x0.5 after 2 epochs without a better "
                "validation loss), and early stopping after 5: the callback's rules are not stated",
                "one dense layer of 256 with dropout 0.3: the write-up says 'a custom dense layer'",
                "class weights none: not mentioned",
            ),
            data=WriteupData(
                _COVID_RADIOGRAPHY_4.name,
                _COVID_RADIOGRAPHY_4.classes,
                21165,
                "80/10/10",
            ),
            published=(Published("accuracy", 0.9627, "test set"),),
            mapping=_ONE_STAGE,
        ),
        Recipe(
            name="pneumonet-cnn",
            description="The custom CNN from scratch, binary (pneumonia vs normal), judged by ROC-AUC",
            writeup="Pneumonet: a custom CNN, then ResNet152V2 transfer learning and fine-tuning, on the "
            "pediatric pneumonia set, with ROC-AUC (this recipe: the custom CNN)",
            config={
                **_PNEUMONET,
                "backbone": "simple_cnn",
                "weights": "none",
                "image_size": 128,
                "epochs": 20,
                "fine_tune_epochs": 0,
            },
            label_preset="abnormal-vs-normal",
            stated=(
                "a simple CNN built from scratch",
                "binary: NORMAL / PNEUMONIA",
                "data generators with image augmentation",
                "accuracy, confusion matrix, classification report and the ROC-AUC curve",
            ),
            chosen=(
                "the project's small CNN (four conv blocks) at 128 px: the write-up gives no architecture",
                "Adam 0.001, batch 32, 20 epochs with early stopping after 5: not stated",
                "augmentation zoom 10% and rotation 10 degrees: 'image augmentation' without its kinds",
                "balanced class weights: the pediatric set is about 3:1 pneumonia to normal",
                "every abnormal class merged into Abnormal, so the recipe is binary on any of the "
                "datasets here (on the pediatric set that only renames PNEUMONIA)",
            ),
            data=_PEDIATRIC,
            published=(),
            mapping="One model trained from scratch: one stage (the frozen stage of a network without "
            "pretrained weights trains everything).",
        ),
        Recipe(
            name="pneumonet-resnet152v2",
            description="ResNet152V2 as a frozen feature extractor, then its last layers fine-tuned; binary",
            writeup="Pneumonet: a custom CNN, then ResNet152V2 transfer learning and fine-tuning, on the "
            "pediatric pneumonia set, with ROC-AUC (this recipe: ResNet152V2)",
            config={
                **_PNEUMONET,
                "backbone": "resnet152v2",
                "weights": "auto",
                "image_size": 224,
                "epochs": 10,
                "fine_tune_epochs": 10,
                "unfreeze": 30,
                "fine_tune_lr_factor": 0.1,
            },
            label_preset="abnormal-vs-normal",
            stated=(
                "ResNet152V2, pretrained, as a feature extractor with frozen layers and a custom head",
                "then fine-tuning: the last few layers unfrozen",
                "binary: NORMAL / PNEUMONIA",
                "accuracy, confusion matrix, classification report and the ROC-AUC curve",
            ),
            chosen=(
                "the last 30 layers unfrozen: 'the last few layers' without a number (ResNet152V2's default here)",
                "fine-tuning at a tenth of the learning rate: the usual practice; not stated",
                "Adam 0.001, batch 32, 10 + 10 epochs with early stopping after 5: not stated",
                "224 px, augmentation zoom 10% and rotation 10 degrees, balanced class weights: as the custom CNN",
                "every abnormal class merged into Abnormal (binary on any dataset here)",
            ),
            data=_PEDIATRIC,
            published=(),
            mapping="Transfer learning is the frozen stage and fine-tuning the second: the write-up's two "
            "steps are the project's two stages of one run.",
        ),
        Recipe(
            name="vgg16-binary",
            description="VGG16, abnormal (pneumonia or COVID) vs normal, rotation and flips, Grad-CAM",
            writeup="X-Ray Classification Project using VGG16: pneumonia/COVID-19 vs normal, 87% test accuracy, "
            "Grad-CAM",
            config={
                "backbone": "vgg16",
                "weights": "auto",
                "image_size": 224,
                "batch_size": 32,
                "epochs": 10,
                "fine_tune_epochs": 10,
                "unfreeze": 4,
                "optimizer": "adam",
                "learning_rate": 1e-3,
                "fine_tune_lr_factor": 0.1,
                "patience": 5,
                "reduce_lr_patience": 2,
                "class_weights": "balanced",
                "augment": {"flip": True, "rotation": 10.0},
                "head": {"pooling": "avg", "dense_units": [256], "dropout": 0.3, "batch_norm": False},
            },
            label_preset="abnormal-vs-normal",
            stated=(
                "VGG16 pretrained, without its top layers, with custom fully connected layers",
                "two classes: pneumonia and COVID-19 grouped together, against normal",
                "images resized to 224 x 224; augmentation by rotation and horizontal flip",
                "the model's top layers fine-tuned; early stopping",
                "train, validation and test splits; accuracy, precision, recall, F1",
                "Grad-CAM heatmaps on COVID-19 images",
            ),
            chosen=(
                "the top 4 layers (VGG16's block 5 convolutions) unfrozen in a second stage at a tenth of "
                "the learning rate: 'top layers' without a number",
                "rotation up to 10 degrees: the angle is not stated",
                "Adam 0.001, batch 32, 10 + 10 epochs with early stopping after 5: not stated",
                "one dense layer of 256 with dropout 0.3: 'custom fully connected layers' without sizes",
                "balanced class weights: the abnormal group outnumbers normal",
                "validation and test 10% each: the fractions are not stated",
            ),
            data=WriteupData(
                "not named: pneumonia, COVID-19 and normal X-rays from downloaded sets, pneumonia and COVID-19 "
                "grouped (Abnormal here)",
                ("Abnormal", "Normal"),
                None,
                "train, validation and test (fractions not stated)",
            ),
            published=(Published("accuracy", 0.87, "test set"),),
            mapping="Training the head, then the top layers, is the project's two stages.",
        ),
        Recipe(
            name="resnet50-two-stage",
            description="ResNet50: frozen, then the top 100 layers at a tenth of the learning rate; 4 classes",
            writeup="COVID 19 Radiography: two-stage ResNet50 (frozen, then the top 100 layers at LR/10) on the "
            "COVID-19 Radiography Database; precision, recall, F1, AUC",
            config={
                "backbone": "resnet50",
                "weights": "auto",
                "image_size": 224,
                "batch_size": 32,
                "epochs": 10,
                "fine_tune_epochs": 10,
                "unfreeze": 100,
                "optimizer": "adam",
                "learning_rate": 1e-3,
                "fine_tune_lr_factor": 0.1,
                "patience": 5,
                "reduce_lr_patience": 2,
                "class_weights": "balanced",
                "head": {"pooling": "avg", "dense_units": [256], "dropout": 0.3, "batch_norm": True},
                "val_fraction": 0.15,
                "test_fraction": 0.15,
            },
            stated=(
                "ResNet50 with ImageNet weights; 24,122,500 parameters in all",
                "head: global average pooling, batch normalisation, dropout, dense layers",
                "step 1: every backbone layer frozen; step 2: the upper 100 layers unfrozen, learning rate / 10",
                "14,816 training, 3,172 validation and 3,179 test images (70/15/15)",
                "accuracy, precision, recall, F1, AUC, confusion matrix, ROC curve",
            ),
            chosen=(
                "one dense layer of 256 after batch normalisation, dropout 0.3: the parameter count fits a "
                "256-unit layer (the write-up's 24,122,500 also counts a second batch normalisation, "
                "1,024 parameters, that this head does not have)",
                "Adam 0.001 (then 0.0001), batch 32, 10 + 10 epochs with early stopping after 5: not stated",
                "224 px: ResNet50's ImageNet size (not stated)",
                "balanced class weights: the database is about half Normal",
            ),
            data=WriteupData(
                _COVID_RADIOGRAPHY_4.name,
                _COVID_RADIOGRAPHY_4.classes,
                21167,
                "70/15/15 (14,816 / 3,172 / 3,179)",
            ),
            published=(
                Published("accuracy", 0.95, "test set, 3,179 images"),
                Published("macro_f1", 0.94, "macro average"),
            ),
            mapping="The write-up's two steps are the project's two stages.",
        ),
        Recipe(
            name="chexnet",
            description="CheXNet: DenseNet121 at 224 px on NIH ChestX-ray14's 14 findings, Adam 0.001, batch 16, "
            "learning rate / 10 on a plateau",
            writeup="CheXNet (Rajpurkar et al. 2017, arXiv:1711.05225): DenseNet121 fine-tuned end to end on NIH "
            "ChestX-ray14, one sigmoid output per finding; 0.841 mean AUC over the 14 findings, 0.768 for pneumonia "
            "(not one of the five seed write-ups: the field's reference result for findings)",
            config={
                "backbone": "densenet121",
                "weights": "auto",
                "image_size": 224,
                "batch_size": 16,
                "epochs": 0,
                "fine_tune_epochs": 30,
                "unfreeze": -1,
                "optimizer": "adam",
                "learning_rate": 1e-3,
                "fine_tune_lr_factor": 1.0,
                "patience": 5,
                "reduce_lr_patience": 1,
                "reduce_lr_factor": 0.1,
                "class_weights": "balanced",
                "augment": {"flip": True},
                "head": {"pooling": "avg", "dense_units": [], "dropout": 0.0, "batch_norm": False},
                "val_fraction": 0.1,
                "test_fraction": 0.2,
            },
            stated=(
                "DenseNet121 with ImageNet weights, every layer trained; the final layer replaced by one "
                "sigmoid output per finding",
                "images downscaled to 224 x 224 and normalised by ImageNet's mean and standard deviation",
                "random horizontal flips in training",
                "Adam (beta1 0.9, beta2 0.999), initial learning rate 0.001, divided by 10 each time the "
                "validation loss plateaus after an epoch; mini-batches of 16",
                "weighted binary cross-entropy: positives weighted by the share of negatives, negatives by the "
                "share of positives (per finding)",
                "NIH ChestX-ray14: 112,120 frontal films of 30,805 patients, split 70/10/20 with no patient in "
                "two splits",
            ),
            chosen=(
                "the weighted loss as 'balanced' positive weights, negatives / positives per finding on the "
                "training split: the paper's |N|/(|P|+|N|) and |P|/(|P|+|N|) scaled so a negative weighs 1 "
                "(the same ratio)",
                "30 epochs at most, early stopping after 5 without a better validation loss: the paper states neither",
                "the split: NIH's official test list where the download has it (test_list.txt), else 70/10/20 "
                "by patient; CheXNet's own random split was not published",
            ),
            data=WriteupData(
                "NIH ChestX-ray14 (Wang et al. 2017)",
                tuple(_CHEXNET_AUC),
                112120,
                "70/10/20 by patient",
            ),
            published=(
                Published("mean_auc", 0.8414, "mean over the 14 findings, CheXNet's test split"),
                *(Published(f"auc:{name}", value, "CheXNet's test split") for name, value in _CHEXNET_AUC.items()),
            ),
            mapping=_ONE_STAGE,
            tags=("findings",),
        ),
    ]
}


def describe(recipe: Recipe) -> str:
    """A recipe in words, as Markdown that also reads as plain text: the write-up, how it maps, what it
    states, what was chosen, its data and published figures (the CLI's ``recipes --show`` and the Train
    page both show this)."""
    data = recipe.data
    figures = "; ".join(f"{f.metric} {f.value:g} ({f.note})" for f in recipe.published) or "no figure"
    return "\n".join(
        [
            f"{recipe.name}: {recipe.description}",
            "",
            f"Write-up: {recipe.writeup}. {recipe.mapping}",
            "",
            "Stated by the write-up:",
            "",
            *(f"- {line}" for line in recipe.stated),
            "",
            "Not stated, chosen here:",
            "",
            *(f"- {line}" for line in recipe.chosen),
            "",
            f"Its data: {data.name}; classes {', '.join(data.classes)}; "
            f"{f'{data.images:,}' if data.images else 'an unstated number of'} images. Published: {figures}.",
            "",
            "The project's preprocessing for the backbone is kept: the write-up's own rescaling is not reproduced.",
        ]
    )


def get_recipe(name: str) -> Recipe:
    """A recipe by name; :class:`ConfigError` listing the names otherwise."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown recipe '{name}'; recipes: {', '.join(RECIPES)}") from None


def _norm(label: str) -> str:
    return "".join(ch for ch in label.lower() if ch.isalnum())


def data_match(recipe: Recipe, classes: list[str], images: int) -> tuple[bool, str]:
    """Whether a run's data (its classes, after its label scheme, and how many images) looks like the
    data the write-up's figures were measured on: ``(matches, the reason in words)``. Class names are
    compared without case, spaces or punctuation; the size within 10% where the write-up states it."""
    theirs = {_norm(c) for c in recipe.data.classes}
    mine = {_norm(c) for c in classes}
    differences = []
    if theirs != mine:
        differences.append(f"classes {', '.join(classes)} against the write-up's {', '.join(recipe.data.classes)}")
    if recipe.data.images and abs(images - recipe.data.images) > 0.1 * recipe.data.images:
        differences.append(f"{images:,} images against {recipe.data.images:,}")
    if differences:
        return False, f"different data: {'; '.join(differences)} ({recipe.data.name})"
    return True, f"the write-up's classes and size ({recipe.data.name}); that it is the same data is not checked"


def figure_of(metrics: dict, metric: str) -> tuple[float | None, dict]:
    """``(value, its interval)`` of a published figure's ``metric`` in a run's metrics.json: a key
    (``accuracy``, ``mean_auc``...) or ``auc:<finding>``, a finding's AUC (a findings run's ``findings``)."""
    if metric.startswith("auc:"):  # names compared without case, spaces or punctuation (Pleural_Thickening)
        findings = metrics.get("findings") or {}
        found = next((v for k, v in findings.items() if _norm(k) == _norm(metric[4:])), None) or {}
        return found.get("auc"), (found.get("ci") or {}).get("auc") or {}
    return metrics.get(metric), (metrics.get("ci") or {}).get(metric) or {}


def published_comparison(recipe: Recipe, metrics: dict, classes: list[str], images: int) -> list[dict]:
    """One row per published figure: the write-up's value and this run's with its interval, and
    whether the data matches (:func:`data_match`)."""
    matches, why = data_match(recipe, classes, images)
    rows = []
    for figure in recipe.published:
        value, ci = figure_of(metrics, figure.metric)
        rows.append(
            {
                "metric": figure.metric,
                "published": figure.value,
                "published_note": figure.note,
                "this_run": value,
                "ci_low": ci.get("ci_low"),
                "ci_high": ci.get("ci_high"),
                "within_interval": (ci.get("ci_low") is not None and ci["ci_low"] <= figure.value <= ci["ci_high"]),
                "data_matches": matches,
                "data": why,
            }
        )
    return rows


def writeup_comparison(run) -> dict | None:
    """For a run started from a recipe (a :class:`cxrcore.runs.RunDir`): the recipe, its write-up, and
    :func:`published_comparison` on the run's test metrics; None for a run without a recipe or test
    metrics. Size is the run's images in all splits (after its label scheme)."""
    try:
        name = run.config().recipe
    except ConfigError:
        return None
    metrics = run.metrics()
    if not name or name not in RECIPES or not metrics:
        return None
    recipe = RECIPES[name]
    info = run.info()
    images = sum(int(info.get(k) or 0) for k in ("n_train", "n_val", "n_test"))
    matches, why = data_match(recipe, run.labels(), images)
    return {
        "recipe": recipe,
        "rows": published_comparison(recipe, metrics, run.labels(), images),
        "data_matches": matches,
        "data": why,
    }
