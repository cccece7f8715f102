"""The Train page's "Start from a recipe": a reference write-up's configuration put into the form in one click.

Not a page of its own (the app's navigation lists its pages); the Train page calls :func:`recipe_picker`
before it draws the form, so the widgets it fills (by their keys) take the recipe's values.
"""

import streamlit as st

from cxrcore.config import LABEL_PRESETS, LabelScheme, recipe_config
from cxrcore.recipes import RECIPES, describe

NO_RECIPE = "(none: set everything below)"
#: the settings of class-labelled runs only (cxrcore.training.train.CLASS_ONLY) turned off: a recipe's
#: configuration on a findings dataset, which refuses them
CLASS_ONLY_OFF = dict(
    labels=LabelScheme(), balance="none", drop_single_class_sources=False, focal_loss=False, label_smoothing=0.0
)


def for_findings(name: str) -> bool:
    """Whether the recipe reproduces a findings write-up (several findings per image, e.g. CheXNet)."""
    return "findings" in RECIPES[name].tags


def _fill_from_recipe(path: str, weight_choices: set[str]) -> None:
    """Put the chosen recipe's configuration into the form's widgets (one click)."""
    name = st.session_state["train_recipe"]
    if name == NO_RECIPE:
        return
    cfg = recipe_config(name, path)
    preset = next((k for k, scheme in LABEL_PRESETS.items() if scheme == cfg.labels), "as in the folders")
    st.session_state.update(
        {
            "train_backbones": [cfg.backbone],
            "train_weights": cfg.weights if cfg.weights in weight_choices else "file",
            "train_weights_file": "" if cfg.weights in weight_choices else cfg.weights,
            "train_size": cfg.image_size or 0,
            "train_batch": cfg.batch_size,
            "train_epochs": cfg.epochs,
            "train_ft_epochs": cfg.fine_tune_epochs,
            "train_unfreeze": cfg.unfreeze or 0,
            "train_ft_factor": cfg.fine_tune_lr_factor,
            "train_optimizer": cfg.optimizer,
            "train_lr": cfg.learning_rate,
            "train_patience": cfg.patience,
            "train_plateau": cfg.reduce_lr_patience,
            "train_plateau_factor": cfg.reduce_lr_factor,
            "train_class_weights": cfg.class_weights,
            "train_focal": cfg.focal_loss,
            "train_gamma": cfg.focal_gamma,
            "train_smoothing": cfg.label_smoothing,
            "train_preset": preset,
            "train_rename": "",
            "train_merge": "",
            "train_drop": [],
            "train_val": cfg.val_fraction,
            "train_test": cfg.test_fraction,
            "train_flip": cfg.augment.flip,
            "train_rot": cfg.augment.rotation,
            "train_zoom": cfg.augment.zoom,
            "train_contrast": cfg.augment.contrast,
            "train_brightness": cfg.augment.brightness,
            "train_pooling": cfg.head.pooling,
            "train_units": ",".join(str(u) for u in cfg.head.dense_units),
            "train_dropout": cfg.head.dropout,
            "train_head_bn": cfg.head.batch_norm,
        }
    )


def recipe_picker(path: str, weight_choices: set[str], findings: bool = False) -> str:
    """The recipe selector and what the chosen recipe reproduces; returns its name ("" for none).
    ``weight_choices``: the weights the form's selector offers (anything else is a weights file); ``findings``:
    whether the dataset is a findings dataset (a recipe written for the other kind of data says so)."""
    c = st.columns([2, 3])
    recipe_name = c[0].selectbox(
        "Start from a recipe",
        [NO_RECIPE, *RECIPES],
        key="train_recipe",
        on_change=_fill_from_recipe,
        args=(path, weight_choices),
        format_func=lambda n: (
            n if n == NO_RECIPE else f"{n}{' (findings)' if for_findings(n) else ''}: {RECIPES[n].description}"
        ),
        help="A reference write-up's configuration (`python -m cxrcore recipes`): choosing one fills the form below; "
        "change anything before starting. The run records the recipe, and Evaluate puts the write-up's published "
        "figure beside the run's.",
    )
    if recipe_name != NO_RECIPE and for_findings(recipe_name) != findings:
        c[0].caption(
            f"{recipe_name} was written for {'findings' if for_findings(recipe_name) else 'class-labelled'} data, and "
            f"this dataset is {'a findings dataset' if findings else 'class-labelled'}: its settings still apply"
            + (", but the class-only ones (label scheme, focal loss...) are not offered." if findings else ".")
        )
    if recipe_name != NO_RECIPE:
        with c[1].expander(f"What {recipe_name} reproduces, and what it had to choose", icon=":material/menu_book:"):
            st.markdown(describe(RECIPES[recipe_name]))
    return "" if recipe_name == NO_RECIPE else recipe_name
