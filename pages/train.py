"""Train: every training option and what will run with them, background jobs with live progress, and their history.
A findings dataset (several findings per image) trains a multi-label model: its reading options are the Data page's,
and the settings that apply to class-labelled runs only are not offered."""

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from cxrcore import runs as run_files
from cxrcore.config import (
    AUTO,
    LABEL_PRESETS,
    XLA_MODES,
    AugmentConfig,
    FindingsOptions,
    HeadConfig,
    LabelScheme,
    TrainConfig,
    extend_scheme,
    parse_pairs,
    recipe_config,
)
from cxrcore.data.pixels import PixelRules
from cxrcore.errors import ConfigError, CXRError
from cxrcore.evaluation import plots
from cxrcore.evaluation.sanity import learned_nothing
from cxrcore.jobs import queue as job_queue
from cxrcore.jobs.hardware import hardware_summary
from cxrcore.recipes import RECIPES
from cxrcore.training import activation_store
from cxrcore.training.backbones import REGISTRY
from pages.shared import (
    current_dataset,
    dataset_list_builder,
    findings_as_chosen,
    jobs,
    labels_column_input,
    load_index,
    require_app,
    set_dataset,
    show_error,
    synthetic_banner,
)
from pages.train_recipe import CLASS_ONLY_OFF, recipe_picker

require_app()
st.title("Train")
path = current_dataset()
st.caption(f"Dataset: `{path}` (change it on the Data page, or combine several below)")
synthetic_banner(path)
with st.expander("Train on several datasets (a dataset list)", icon=":material/join:"):
    saved = dataset_list_builder("train_list")
    if saved:
        set_dataset(saved)
        st.rerun()


@st.cache_data(ttl=3600, show_spinner=False)
def hardware() -> dict:
    hw = hardware_summary()
    text = (
        ", ".join(f"{g['name']} ({g['memory_mb'] / 1024:.0f} GB)" for g in hw["gpus"])
        if hw["gpus"]
        else f"CPU only ({hw['cpu_count']} cores): small backbones and images train best"
    )
    return {**hw, "text": text}


hw = hardware()
st.info(f"Training runs on: **{hw['text']}**", icon=":material/memory:")

try:
    index, info = load_index(path)
except CXRError as exc:  # a missing folder, an empty class, an unreadable image
    show_error(exc)
    st.stop()

findings = info["task"] == "findings"  # several findings per image: a multi-label model, one sigmoid output each
reading = FindingsOptions()
if findings:
    with st.container(border=True):
        st.markdown("**How the findings are read** (the same choice as on the Data page)")
        reading, index, info = findings_as_chosen(path, index, info, "train")
        st.success(
            f"**Findings dataset**: {len(info['findings'])} finding{'' if len(info['findings']) == 1 else 's'} "
            f"({', '.join(info['findings'])}), an image may hold several. It trains a multi-label model: one sigmoid "
            "output per finding, the loss left out where a label is (uncertain or blank under *ignore*); it is "
            "measured per finding (AUC, AP, operating points) and by the mean AUC over findings.",
            icon=":material/checklist:",
        )
classes = [] if findings else list(info["classes"])

# -- the settings ----------------------------------------------------------------------------
# Not an st.form: every change reruns the page, so "What will run" below the backbone picker
# is always what Start would queue. Weights, image size and unfreeze depth are left to the
# backbone ("auto", 0, 0) until the user sets them; TrainConfig.resolved() fills them.
WEIGHTS = {
    AUTO: "auto (backbone default)",
    "imagenet": "imagenet",
    "none": "none (from scratch)",
    "file": "a weights file",
}

st.subheader("What to train")
recipe_name = recipe_picker(path, set(WEIGHTS), findings)
chosen = st.multiselect(
    "Backbone(s): pick several to queue a comparison (one job each, same settings)",
    list(REGISTRY),
    default=["simple_cnn"],
    key="train_backbones",
    format_func=lambda n: f"{n}: {REGISTRY[n].description}",
)
plan_box = st.container()  # filled once every setting below has been read

c = st.columns(4)
weights_kind = c[0].selectbox(
    "Weights",
    list(WEIGHTS),
    key="train_weights",
    format_func=WEIGHTS.get,
    help="auto follows the backbone: ImageNet weights (Keras's standard download/cache, "
    "~/.keras/models) for a pretrained backbone, none for simple_cnn. "
    "'What will run' above shows the result.",
)
weights_file = c[1].text_input(
    "Weights file (for 'a weights file')", key="train_weights_file", disabled=weights_kind != "file"
)
size_choice = c[2].number_input(
    "Image size (0 = backbone default)",
    0,
    1024,
    0,
    step=16,
    key="train_size",
    help="Defaults: 224 for pretrained backbones, 128 for simple_cnn.",
)
batch = c[3].number_input("Batch size", 1, 1024, 32, key="train_batch")

st.subheader("Two stages")
c = st.columns(4)
epochs = c[0].number_input("Stage 1 epochs (frozen backbone)", 0, 1000, 10, key="train_epochs")
ft_epochs = c[1].number_input("Stage 2 epochs (fine-tune)", 0, 1000, 5, key="train_ft_epochs")
unfreeze = c[2].number_input(
    "Layers unfrozen in stage 2 (0 = backbone default, -1 = all)", -1, 2000, 0, key="train_unfreeze"
)
ft_factor = c[3].number_input("Stage 2 learning-rate factor", 0.0001, 1.0, 0.1, format="%.4f", key="train_ft_factor")
c = st.columns(5)
optimizer = c[0].selectbox("Optimizer", ["adam", "rmsprop", "adamax", "sgd"], key="train_optimizer")
lr = c[1].number_input("Learning rate", 1e-6, 1.0, 1e-3, format="%.6f", key="train_lr")
patience = c[2].number_input("Early-stopping patience (0 = off)", 0, 100, 5, key="train_patience")
plateau = c[3].number_input("Reduce-on-plateau patience (0 = off)", 0, 100, 2, key="train_plateau")
plateau_factor = c[4].number_input(
    "Reduce-on-plateau factor",
    0.01,
    0.99,
    0.5,
    0.05,
    format="%.2f",
    key="train_plateau_factor",
    disabled=not plateau,
    help="On a plateau of the validation loss the learning rate is multiplied by this (CheXNet: 0.1).",
)

# the settings of class-labelled runs only (cxrcore.training.train.CLASS_ONLY): not offered for a findings dataset
focal, gamma, smoothing = False, TrainConfig.focal_gamma, 0.0
preset, drop, rename, merge = "as in the folders", [], "", ""
balance, drop_single_sources = "none", False
if findings:
    st.subheader("Loss and splits")
    c = st.columns([1, 3])
    weighting = c[0].selectbox(
        "Positive weights",
        ["balanced", "none"],
        key="train_class_weights",
        help="balanced: in the binary cross-entropy each finding's positive labels weigh its negatives / positives "
        "in training (a finding in 1 of 10 images: 9); none: every label weighs 1.",
    )
    c[1].caption(
        "Not offered for a findings dataset (class-labelled runs only): the label scheme, balancing batches by "
        "source, dropping single-class sources, focal loss and label smoothing. Keep a subset of the findings "
        "above instead."
    )
else:
    st.subheader("Loss, classes and splits")
    c = st.columns(4)
    weighting = c[0].selectbox("Class weights", ["balanced", "none"], key="train_class_weights")
    focal = c[1].checkbox("Focal loss", key="train_focal")
    gamma = c[2].number_input("Focal gamma", 0.0, 10.0, 2.0, key="train_gamma")
    smoothing = c[3].number_input("Label smoothing", 0.0, 0.5, 0.0, key="train_smoothing")
    c = st.columns(4)
    preset = c[0].selectbox(
        "Label scheme",
        ["as in the folders", *LABEL_PRESETS],
        key="train_preset",
        help="pneumonia-subtype: PNEUMONIA split into bacterial / viral by file name; "
        "abnormal-vs-normal: COVID and pneumonia classes merged",
    )
    drop = c[1].multiselect("Drop classes", classes, key="train_drop")
    rename = c[2].text_input("Rename (OLD=NEW; ...)", key="train_rename", placeholder="NORMAL=Normal")
    merge = c[3].text_input(
        "Merge (NEW=OLD1,OLD2; ...)", key="train_merge", placeholder="Abnormal=COVID,Viral Pneumonia"
    )
c = st.columns(4)
val_fraction = c[0].number_input("Validation fraction", 0.01, 0.5, 0.1, key="train_val")
test_fraction = c[1].number_input("Test fraction", 0.0, 0.5, 0.1, key="train_test")
cache = c[2].checkbox(
    "Keep decoded images in memory",
    value=True,
    key="train_cache",
    help="Faster epochs after the first; turn off for datasets larger than RAM.",
)
feature_cache = c[3].checkbox(
    "Train on cached backbone activations",
    value=True,
    key="train_feature_cache",
    help="A frozen backbone (stage 1) or its frozen lower part (stage 2) runs once per image, not once per "
    "epoch: its activations are kept on disk and reused by later runs. Off: the whole network every epoch.",
)
if not findings:
    c = st.columns(4)
    BALANCE = {"none": "none", "source": "by source and class"}
    balance = c[0].selectbox(
        "Balance batches",
        list(BALANCE),
        key="train_balance",
        format_func=BALANCE.get,
        help="by source and class: every training batch is drawn evenly from each (source, class) group (a "
        "hospital's normal images, its pneumonia images, ...), times a source's weight, so the largest source does "
        "not set what the model learns. An epoch keeps its number of batches; validation and test are never "
        "rebalanced. Class weights then weigh the classes as the balanced draw gives them (all 1 when every source "
        "holds every class). Needs a source (or hospital, site) column in the manifest.",
    )
    drop_single_sources = c[1].checkbox(
        "Drop single-class sources",
        key="train_drop_single_class_sources",
        help="Leave out the images of every source that holds one class only, before splitting: there the "
        "source alone tells the class, a shortcut the model would learn. The run's log and run.json say which "
        "sources and how many images. Images without a source are kept.",
    )
    named = sorted({str(s) for s in index["source"] if str(s).strip()}) if "source" in index else []
    c[2].caption(
        f"Sources in this dataset: {', '.join(named[:8])}{' ...' if len(named) > 8 else ''}"
        if named
        else "This dataset names no sources: balancing by source and dropping single-class sources need a "
        "source column in its manifest."
    )
with st.expander("Activation cache", icon=":material/storage:"):
    found = activation_store.usage()
    st.caption(
        f"`{found['folder']}`: {found['entries']} entr{'y' if found['entries'] == 1 else 'ies'}, "
        f"{found['bytes'] / 1e6:,.1f} MB (the least recently used go beyond "
        f"{activation_store.LIMIT_BYTES / 1024**3:.0f} GiB). Runs that share a backbone, its weights, the image size, "
        "the pixel rules and the images reuse them."
    )
    if found["items"]:
        st.dataframe(
            pd.DataFrame(found["items"]).assign(MB=lambda t: (t["bytes"] / 1e6).round(1)).drop(columns="bytes"),
            hide_index=True,
            width="stretch",
        )
        if st.button("Clear the activation cache", key="train_clear_activations"):
            freed = activation_store.clear()
            st.success(f"Cleared: {freed / 1e6:,.1f} MB freed.")

st.subheader("Augmentation and head")
c = st.columns(5)
augment = AugmentConfig(
    flip=c[0].checkbox("Horizontal flip", key="train_flip"),
    rotation=c[1].number_input("Rotation (deg)", 0.0, 180.0, 0.0, key="train_rot"),
    zoom=c[2].number_input("Zoom", 0.0, 0.9, 0.0, key="train_zoom"),
    contrast=c[3].number_input("Contrast", 0.0, 0.9, 0.0, key="train_contrast"),
    brightness=c[4].number_input("Brightness", 0.0, 0.9, 0.0, key="train_brightness"),
)
c = st.columns([1, 4])
augment_views = c[0].number_input(
    "Augmented views cached",
    0,
    64,
    4,
    key="train_augment_views",
    help="With augmentation and cached activations: this many augmented versions of each training image are "
    "cached, one drawn per epoch. 0: augmenting runs the whole network every epoch.",
)
c = st.columns([1, 1, 1, 1, 2])
pixels = PixelRules(
    crop_border=float(
        c[0].number_input(
            "Crop border (fraction per side)",
            0.0,
            0.35,
            0.0,
            0.05,
            key="train_crop_border",
            help="Cut this share of the width and height from each side before resizing: film edges, markers, "
            "collimation. Applied in training, evaluation and prediction.",
        )
    ),
    equalize=c[1].checkbox(
        "Equalise histogram",
        key="train_equalize",
        help="Histogram equalisation of every image (training, evaluation and prediction): evens out exposure and "
        "contrast between sites.",
    ),
    lung_crop=c[2].checkbox(
        "Crop to the lungs",
        key="train_lung_crop",
        help="Cut every image to the box around both lungs, with a margin, found by the built-in lung model: the "
        "shoulders, the neck, markers and film edges are left out. An image where two lungs are not found is kept "
        "whole. Applied in training, evaluation and prediction.",
    ),
    lung_mask=c[3].checkbox(
        "Black out outside the lungs",
        key="train_lung_mask",
        help="Set every pixel outside the lung fields (found by the built-in lung model, grown by 2% of the side) to "
        "black, so the model can only use the lungs. Applied in training, evaluation and prediction.",
    ),
)
c[4].caption(
    "Pixel rules are part of the run: its model sees every image through them, at training and after. "
    "docs/close-the-gap.md's external-validation table shows what each changed on cxr-dev -> another hospital."
)
c = st.columns(4)
pooling = c[0].selectbox("Pooling", ["avg", "max", "flatten"], key="train_pooling")
units = c[1].text_input("Dense units (comma-separated, empty = none)", "256", key="train_units")
dropout = c[2].number_input("Dropout", 0.0, 0.9, 0.3, key="train_dropout")
head_bn = c[3].checkbox("Batch norm in head", key="train_head_bn")
c = st.columns(4)
seed = c[0].number_input("Seed", 0, 2**31 - 1, 42, key="train_seed")
mixed = c[1].checkbox("Mixed precision (GPU only)", key="train_mixed", disabled=not hw["gpus"])
xla = c[1].selectbox(
    "XLA",
    XLA_MODES,
    key="train_xla",
    help="XLA-compile the training step. auto: on a GPU only (Keras's default); on a CPU it is slower. "
    "run.json records whether each stage used it.",
)
max_steps = c[2].number_input("Max batches per epoch (0 = all)", 0, 100000, 0, key="train_max_steps")
target_sensitivity = c[3].number_input(
    "Target sensitivity",
    0.5,
    0.999,
    0.95,
    0.01,
    key="train_target_sensitivity",
    help=f"Per {'finding' if findings else 'class'}, the decision threshold chosen on the validation split to reach "
    "this sensitivity (Youden's J is chosen too). Evaluate and Predict show both.",
)

st.subheader("External validation")
external_map, external_skip, external_column = "", False, ""
if findings:
    st.caption(
        "Labelled data from elsewhere (another hospital, another public set), evaluated once the model is trained "
        "and kept apart from the test split: a model that scores well inside one dataset can fall to chance on "
        "another's. Findings datasets (NIH, CheXpert, a path,labels manifest), or manifests with a column of "
        "findings; their findings are matched to the model's by name, and those they lack are not evaluated."
    )
    c = st.columns([3, 2])
    external = c[0].text_area("Datasets (one folder or CSV manifest per line)", key="train_external", height=80)
    external_column = labels_column_input(c[1], "train_external_labels_column")
else:
    st.caption(
        "Labelled data from elsewhere (another hospital, another public set), evaluated once the model is trained "
        "and kept apart from the test split: a model that scores well inside one dataset can fall to chance on "
        "another's. Its classes must map to the model's; that is checked before training starts."
    )
    c = st.columns([3, 2, 1])
    external = c[0].text_area("Datasets (one folder or CSV manifest per line)", key="train_external", height=80)
    external_map = c[1].text_input(
        "Map their class names (NAME=CLASS; ...)", key="train_external_map", placeholder="Pneumonia=Abnormal"
    )
    external_skip = c[2].checkbox("Skip unknown classes", key="train_external_skip")


def build_config(backbone: str) -> TrainConfig:
    """The settings as the user left them: weights, size and unfreeze depth may still be open."""
    labels = extend_scheme(
        LABEL_PRESETS[preset] if preset in LABEL_PRESETS else LabelScheme(),
        rename=[r for r in rename.split(";") if r.strip()],
        merge=[m for m in merge.split(";") if m.strip()],
        drop=list(drop),
    )
    if weights_kind == "file" and not weights_file.strip():
        raise ConfigError("weights: type the path of a weights file, or choose auto, imagenet or none")
    weights = weights_file.strip() if weights_kind == "file" else weights_kind
    try:
        dense = [int(u) for u in units.split(",") if u.strip()]
    except ValueError:
        raise job_queue.JobError(f"dense units must be numbers like 256,128, not '{units}'") from None
    return TrainConfig(
        data=path,
        backbone=backbone,
        weights=weights,
        image_size=int(size_choice) or None,
        batch_size=int(batch),
        epochs=int(epochs),
        fine_tune_epochs=int(ft_epochs),
        unfreeze=int(unfreeze) or None,
        optimizer=optimizer,
        learning_rate=float(lr),
        fine_tune_lr_factor=float(ft_factor),
        patience=int(patience),
        reduce_lr_patience=int(plateau),
        reduce_lr_factor=float(plateau_factor),
        class_weights=weighting,
        focal_loss=focal,
        focal_gamma=float(gamma),
        label_smoothing=float(smoothing),
        augment=augment,
        pixels=pixels,
        head=HeadConfig(pooling=pooling, dense_units=dense, dropout=float(dropout), batch_norm=head_bn),
        labels=labels,
        findings=reading,
        val_fraction=float(val_fraction),
        test_fraction=float(test_fraction),
        balance=balance,
        drop_single_class_sources=bool(drop_single_sources),
        mixed_precision=mixed,
        xla=xla,
        cache=cache,
        feature_cache=feature_cache,
        augment_views=int(augment_views),
        max_steps=int(max_steps) or None,
        seed=int(seed),
        target_sensitivity=float(target_sensitivity),
        external=[line.strip() for line in external.splitlines() if line.strip()],
        external_map=parse_pairs([m for m in external_map.split(";") if m.strip()], "external class map"),
        external_skip_unknown=external_skip,
        external_labels_column=external_column.strip(),
        recipe=recipe_name,
    ).validate()


def plan() -> tuple[TrainConfig | None, list[TrainConfig]]:
    """(the settings, one resolved config per chosen backbone): exactly what Start queues."""
    if not chosen:
        raise job_queue.JobError("pick at least one backbone")
    base = build_config(chosen[0])
    if len(chosen) == 1:
        return base, [base.resolved()]
    return base, [base.for_backbone(name) for name in chosen]  # the comparison's jobs, one per backbone


def _unfrozen(cfg: TrainConfig) -> str:
    if cfg.weights == "none":
        return "all (trains from scratch)"
    return "all" if cfg.unfreeze == -1 else f"top {cfg.unfreeze}"


def _in_words(cfg: TrainConfig) -> str:
    weights = {"imagenet": "ImageNet weights", "none": "from scratch"}.get(cfg.weights, f"weights {cfg.weights}")
    unfrozen = "" if cfg.weights == "none" else f", stage 2 unfreezes {_unfrozen(cfg)}"
    return (
        f"**{cfg.backbone}** ({weights}, {cfg.image_size} px, {cfg.epochs} + {cfg.fine_tune_epochs} epochs{unfrozen})"
    )


try:
    base, planned = plan()
    plan_error = None
except CXRError as exc:
    base, planned, plan_error = None, [], exc
with plan_box:
    st.markdown("**What will run**")
    if plan_error is not None:
        show_error(plan_error)
    else:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "backbone": cfg.backbone,
                        "weights": cfg.weights,
                        "image size": cfg.image_size,
                        "stage 1 epochs": cfg.epochs,
                        "stage 2 epochs": cfg.fine_tune_epochs,
                        "stage 2 unfreezes": _unfrozen(cfg),
                        "pixels": cfg.pixels.describe(),
                        "Grad-CAM layer": REGISTRY[cfg.backbone].gradcam_layer,
                        **(
                            {"outputs": f"{len(info['findings'])} findings (sigmoid)", "read": cfg.findings.describe()}
                            if findings
                            else {}
                        ),
                    }
                    for cfg in planned
                ]
            ),
            hide_index=True,
            width="stretch",
            column_config={
                "weights": st.column_config.TextColumn(
                    help="imagenet: fine-tunes from ImageNet features; none: learns from scratch"
                )
            },
        )
        with st.expander("The configuration (config.json)", icon=":material/data_object:"):
            st.caption(
                "What the first job saves as its config.json"
                + (" (each job of the comparison has its backbone's)." if len(planned) > 1 else ".")
            )
            st.json(planned[0].to_dict(), expanded=True)

st.caption(
    "Start queues "
    + (
        "; ".join(_in_words(cfg) for cfg in planned)
        if planned
        else "nothing yet: see the problem under 'What will run'"
    )
)
submitted = st.button("Start training", type="primary", key="train_start")
with st.expander("Queue several recipes as one comparison", icon=":material/playlist_add:"):
    several = st.multiselect("Recipes", list(RECIPES), key="train_recipes_many")
    st.caption(
        "Each runs with its own full configuration on this dataset (the form above is not applied); "
        "they appear together on the Compare page."
        + (
            " On this findings dataset each reads the findings as chosen above, without the settings of "
            "class-labelled runs (label scheme, focal loss, label smoothing, balancing by source)."
            if findings
            else ""
        )
    )
    if st.button("Queue these recipes", key="train_recipes_start", disabled=not several):
        extra = {"findings": reading, **CLASS_ONLY_OFF} if findings else {}
        try:
            configs = [recipe_config(name, path, **extra) for name in several]
            group, ids = job_queue.submit_group(configs, store=jobs())
            st.session_state["train_notice"] = (
                f"Comparison `{group}` submitted: {len(ids)} recipes, one job each, run in the background.",
                ids,
            )
        except CXRError as exc:
            show_error(exc)

if submitted:
    try:
        if plan_error is not None:
            raise plan_error
        store = jobs()
        if len(planned) == 1:
            ids = [job_queue.submit(planned[0], store=store)]
            notice = f"Job `{ids[0]}` submitted: it runs in the background; closing this page does not stop it."
        else:
            # `base` leaves weights, size and unfreeze depth open, so that each job's follow its
            # backbone (TrainConfig.for_backbone), as `planned` shows
            group, ids = job_queue.submit_comparison(base, chosen, store=store)
            notice = f"Comparison `{group}` submitted: {len(ids)} jobs, one per backbone, run in the background."
        st.session_state["train_notice"] = (notice, ids)
    except CXRError as exc:
        show_error(exc)


# -- live progress (reads the job queue and the runs every 2 s; the workers write them) ----------
def _fmt_eta(seconds) -> str:
    if seconds is None:
        return "estimating..."
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds >= 60 else f"{seconds:.0f} s"


def _statuses(rows: list[dict]) -> dict:
    return {j["id"]: j["status"] for j in rows}


@st.fragment(run_every=2)
def live_jobs() -> None:
    store = jobs()
    rows = job_queue.list_jobs(store=store)
    if _statuses(rows) != st.session_state.get("train_statuses"):
        st.rerun(scope="app")  # a job started, finished or failed: refresh the history below too
    active = sorted(
        (j for j in rows if j["status"] in ("running", "queued")),
        key=lambda j: (j["status"] != "running", j["created"]),
    )
    st.subheader("Running and queued")
    if not active:
        st.caption("Nothing running. Jobs you start appear here with live progress.")
        return
    for job in active:
        with st.container(border=True):
            top = st.columns([4, 1])
            where = f"{job['stage'] or 'starting'} · epoch {job['epoch'] or 0}/{job['epochs'] or '?'}"
            top[0].markdown(
                f"**{job['backbone']}** · `{job['id']}` · {job['status']} · "
                f"{where if job['status'] == 'running' else 'waiting for a free slot'}"
                + (f" · {job['device']}" if job["device"] else "")
                + (" · cancel requested" if job["cancel_requested"] else "")
            )
            if top[1].button("Cancel", key=f"train_cancel_{job['id']}"):
                try:
                    job_queue.cancel(job["id"], store=store)
                except CXRError as exc:
                    show_error(exc)
            if job["status"] != "running" or not job["run_dir"]:
                continue
            run = run_files.RunDir(job["run_dir"])
            history = run.history()
            if (verdict := learned_nothing(run)) is not None:  # say it now, not after the last epoch
                st.warning(verdict)
            if job["batches"]:
                eta = _fmt_eta(job_queue.eta_seconds(job, history))
                st.progress(
                    min(1.0, (job["batch"] or 0) / job["batches"]),
                    text=f"batch {job['batch']}/{job['batches']} · ETA {eta}",
                )
            if len(history):
                left, right = st.columns(2)
                left.plotly_chart(
                    plots.training_curves(history, ("loss",), title="Loss"),
                    width="stretch",
                    key=f"train_loss_{job['id']}_{len(history)}",
                )
                # a findings run records its mean AUC over findings (auc), no accuracy
                mean_auc = run.task() == "findings" or ("auc" in history and "accuracy" not in history)
                right.plotly_chart(
                    plots.training_curves(history, ("auc",), title="Mean AUC over findings")
                    if mean_auc
                    else plots.training_curves(history, ("accuracy",), title="Accuracy"),
                    width="stretch",
                    key=f"train_acc_{job['id']}_{len(history)}",
                )


past = job_queue.list_jobs(store=jobs())
st.session_state["train_statuses"] = statuses = _statuses(past)  # what "All jobs" shows; the live view watches it
if "train_notice" in st.session_state:  # the last submission's notice, while its jobs are not done
    notice, ids = st.session_state["train_notice"]
    if any(statuses.get(i) in ("queued", "running") for i in ids):
        st.success(notice)
    else:
        del st.session_state["train_notice"]
live_jobs()

# -- history ---------------------------------------------------------------------------------
st.subheader("All jobs")
st.caption(
    "A job's status is its run's once it has one (the same as on the Evaluate page): succeeded, failed, "
    "cancelled, or interrupted when its process died without recording an end."
)
if not past:
    st.caption("No jobs yet.")
else:
    table = pd.DataFrame(
        [
            {
                "id": j["id"],
                "status": j["status"],
                "backbone": j["backbone"],
                "group": j["group_id"] or "",
                "epochs done": j["epochs_completed"] if j["epochs_completed"] is not None else "",
                "device": j["device"] or "",
                "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(j["created"])),
                "error": j["error"] or "",
                "run": Path(j["run_dir"]).name if j["run_dir"] else "",
            }
            for j in past
        ]
    )
    st.dataframe(
        table,
        width="stretch",
        hide_index=True,
        column_config={
            "status": st.column_config.TextColumn(width=90),
            "backbone": st.column_config.TextColumn(width=130),
            "created": st.column_config.TextColumn(width=130),
            "run": st.column_config.TextColumn(width=230, help="the run's folder name"),
        },
    )
    resumable = [j for j in past if j["status"] in ("failed", "cancelled", "interrupted")]
    if resumable:
        c = st.columns([3, 1])
        pick = c[0].selectbox(
            "Resume a job that did not finish (its run continues from its last completed epoch)",
            resumable,
            key="train_resume_pick",
            format_func=lambda j: (
                f"{j['id']} · {j['backbone']} · {j['status']}" + (f" · {j['error']}" if j["error"] else "")
            ),
        )
        if c[1].button("Resume", key="train_resume"):
            try:
                job_queue.resume(pick["id"], store=jobs())
                st.rerun()
            except CXRError as exc:
                show_error(exc)
