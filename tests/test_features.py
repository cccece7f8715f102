"""Training on cached activations: the same training as full passes, in less time, and the same model.

A MobileNetV2-0.35 at 32 px with random "pretrained" weights from a file: a frozen stage exists (as
with ImageNet weights) without ``../shared``.
"""

from __future__ import annotations

import os
import time

import keras
import numpy as np
import pytest

from conftest import make_class_folders, once_per_session
from cxrcore import runs
from cxrcore.config import AugmentConfig, HeadConfig, TrainConfig
from cxrcore.training import activation_store, features
from cxrcore.training.model import build_model
from cxrcore.workflows import train

#: this module's fixtures that train: tests that use them are slow (conftest)
TRAINING_FIXTURES = {"pair"}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    base = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path_factory.mktemp("weights") / "random_mnv2_035.weights.h5"
    base.save_weights(path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("data") / "d", classes=("dark", "bright"), per_class=24)


def config(data, weights, **changes) -> TrainConfig:
    base = dict(
        data=str(data),
        backbone="mobilenetv2_0.35",
        weights=str(weights),
        image_size=32,
        batch_size=8,
        epochs=3,
        fine_tune_epochs=2,
        patience=0,
        reduce_lr_patience=0,
        head=HeadConfig(dense_units=[8], dropout=0.0),
        seed=3,
    )
    return TrainConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def pair(data, weights, tmp_path_factory, shared_runs):
    """The same run trained on cached activations and on full passes: once per session (conftest.once_per_session:
    under xdist this module's tests may run on two workers), read-only."""

    def make():
        fast = train(config(data, weights), out_dir=tmp_path_factory.mktemp("fast"))
        slow = train(config(data, weights, feature_cache=False), out_dir=tmp_path_factory.mktemp("slow"))
        return fast, slow

    fast, slow = once_per_session(tmp_path_factory, "test_features.pair", make)
    for run in (fast, slow):
        shared_runs.freeze(run.path.parent)
    return fast, slow


def test_stage_one_on_cached_activations_is_the_full_pass_and_stage_two_comes_close(pair):
    fast, slow = pair
    assert fast.info()["frozen_cut"] == "head_pool" and "frozen_cut" not in slow.info()
    assert fast.info()["finetune_cut"].startswith("block_")
    a, b = fast.history(), slow.history()
    assert a["stage"].tolist() == b["stage"].tolist() == ["frozen"] * 3 + ["finetune"] * 2
    frozen = a["stage"] == "frozen"
    # the same head on the same features, in the same order: the same numbers
    np.testing.assert_allclose(a.loc[frozen, "val_loss"], b.loc[frozen, "val_loss"], rtol=1e-4)
    np.testing.assert_allclose(a.loc[frozen, "loss"], b.loc[frozen, "loss"], rtol=1e-4)
    # stage 2 sees its batches in another order (a new dataset): close, not equal
    assert abs(a["val_accuracy"].iloc[-1] - b["val_accuracy"].iloc[-1]) <= 0.15


def test_the_saved_model_is_complete_and_predicts_as_the_same_weights_assembled_the_slow_way(pair):
    run = pair[0]
    saved = keras.saving.load_model(str(run.file(runs.MODEL)), compile=False)
    assert saved.input_shape == (None, 32, 32, 3) and saved.get_layer("Conv1") is not None  # backbone inside
    assembled = build_model("mobilenetv2_0.35", 2, image_size=32, weights="none", head=run.config().head)
    assembled.set_weights(saved.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(saved(x, training=False), assembled(x, training=False), atol=1e-6)


@pytest.mark.slow
def test_activations_are_reused_across_runs_and_recomputed_when_an_image_changes(tmp_path, weights, monkeypatch):
    monkeypatch.setenv("CXRCORE_CACHE", str(tmp_path / "cache"))
    root = make_class_folders(tmp_path / "d", classes=("dark", "bright"), per_class=12)
    train(config(root, weights, fine_tune_epochs=0), out_dir=tmp_path / "m")
    first = activation_store.usage()
    assert first["entries"] == 2  # the training and the validation images' pooled features
    started = time.time()
    # other head settings, same backbone, weights, size and images: nothing new is computed
    train(config(root, weights, fine_tune_epochs=0, head=HeadConfig(dense_units=[4])), out_dir=tmp_path / "m")
    assert activation_store.usage()["entries"] == 2
    assert all(
        os.stat(os.path.join(first["folder"], item["name"])).st_mtime >= started - 1 for item in first["items"]
    )  # both were read (their folders touched)
    image = next(root.rglob("*.png"))
    os.utime(image, ns=(time.time_ns(), time.time_ns() + 10**9))  # the file changed
    train(config(root, weights, fine_tune_epochs=0), out_dir=tmp_path / "m")
    assert activation_store.usage()["entries"] > 2
    assert activation_store.clear() > 0 and activation_store.usage()["entries"] == 0


@pytest.mark.slow
def test_augmentation_uses_cached_views_or_falls_back_to_full_passes(data, weights, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRCORE_CACHE", str(tmp_path / "cache"))
    augment = AugmentConfig(flip=True, brightness=0.2)
    viewed = train(config(data, weights, augment=augment, augment_views=2, fine_tune_epochs=0), out_dir=tmp_path)
    assert viewed.info()["frozen_cut"] == "head_pool"
    shapes = sorted(item["name"] for item in activation_store.usage()["items"])
    assert len(shapes) == 2
    metas = [
        __import__("json").loads((activation_store.cache_root() / name / "meta.json").read_text()) for name in shapes
    ]
    assert sorted(m["views"] for m in metas) == [0, 2]
    assert next(m for m in metas if m["views"] == 2)["shape"][0] == 2  # (views, images, features)
    full = train(config(data, weights, augment=augment, augment_views=0, fine_tune_epochs=0), out_dir=tmp_path)
    assert "frozen_cut" not in full.info()
    assert "full pass (augmentation on and augment_views 0)" in full.file(runs.LOG).read_text()


@pytest.mark.slow
def test_a_cancelled_fast_run_resumes_with_its_optimizer_state(data, weights, tmp_path):
    calls = []

    def should_stop():  # asked after each call into TensorFlow: 8 batches, here a whole 5-batch epoch
        calls.append(1)
        return len(calls) >= 2

    cfg = config(data, weights, epochs=4, fine_tune_epochs=1)
    run = train(cfg, out_dir=tmp_path / "m", should_stop=should_stop)
    assert run.status() == "cancelled" and run.history()["epoch"].tolist() == [1, 2]
    state = keras.saving.load_model(str(run.path / runs.STATE_DIR / run.resume_state()["model"]), compile=True)
    assert state.optimizer.iterations.numpy() == 10  # the head's steps were taken by the complete model's optimizer
    resumed = train(run.config(), run=run, resume=True)
    assert resumed.status() == "succeeded"
    assert resumed.history()["epoch"].tolist() == [1, 2, 3, 4, 5]
    assert resumed.info()["frozen_cut"] == "head_pool"


def test_stage_two_cut_is_clean_and_below_the_first_trainable_layer():
    model = build_model("resnet50", 2, image_size=32, weights="none")
    from cxrcore.training.model import backbone_layers, set_stage

    set_stage(model, "finetune", unfreeze=30, pretrained=True)
    backbone = backbone_layers(model)
    first = next(i for i, layer in enumerate(backbone) if layer.trainable)
    name, extra = features.stage2_cut(model, first, backbone)
    index = [layer.name for layer in backbone].index(name)
    assert index < first and extra == first - 1 - index
    assert name.endswith("_out")  # a residual block's output: inside a block two tensors cross
    assert not features.is_clean_cut(model, "conv5_block3_1_conv")  # the shortcut bypasses it
    lower, upper = features.split_at(model, name)
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(upper(lower([x])), model([x]), atol=1e-5)


def test_feature_statistics_come_from_the_cached_activations_and_equal_a_full_pass(pair):
    """The fast run's validation outputs and unlike-the-training-data statistics are made from the activations
    cached at its stage-2 cut (only the layers above it run), and are what a full pass of its saved model
    gives."""
    from cxrcore.evaluation.calibration import fit_temperature
    from cxrcore.evaluation.evaluate import labels_of, predict_frame

    fast, slow = pair
    cut, info, log = fast.info()["finetune_cut"], fast.info(), fast.file(runs.LOG).read_text()
    for n in (info["n_train"], info["n_val"]):  # every training and every validation image
        assert f"{n} image(s) scored from the activations cached at {cut}" in log
    assert "scored from the activations cached" not in slow.file(runs.LOG).read_text()  # full passes
    split = fast.split()
    train = split[split["split"] == "train"].reset_index(drop=True)
    model = keras.saving.load_model(str(fast.file(runs.MODEL)), compile=False)
    _, features = predict_frame(model, train, fast.labels(), 32, features=True)
    y = labels_of(train, fast.labels())
    expected = np.stack([features[y == c].mean(axis=0) for c in np.unique(y)])
    np.testing.assert_allclose(fast.feature_stats().means, expected, rtol=1e-4, atol=1e-5)
    val = split[split["split"] == "val"].reset_index(drop=True)  # the temperature a full pass would fit
    raw = predict_frame(model, val, fast.labels(), 32)
    assert fast.temperature() == pytest.approx(fit_temperature(raw, labels_of(val, fast.labels())), rel=1e-3)


def test_a_stage_on_cached_activations_draws_its_batches_by_source_and_class(data, weights, tmp_path, monkeypatch):
    """``balance`` "source": plan_stage hands the training rows' (source, class) groups to the dataset of
    cached activations (validation gets none), and the batches follow them."""
    from cxrcore.data.index import build_index
    from cxrcore.data.splits import assign_splits, source_groups

    monkeypatch.setenv("CXRCORE_CACHE", str(tmp_path / "cache"))
    index = build_index(data)
    bright = index["label"] == "bright"
    index["source"] = np.where(bright & (bright.cumsum() > 20), "S2", "S1")  # S2: the last 4 bright images
    frame = assign_splits(index, seed=3)
    classes = ["bright", "dark"]
    cfg = config(data, weights, fine_tune_epochs=0, balance="source")
    model = build_model("mobilenetv2_0.35", 2, image_size=32, weights=str(weights), head=cfg.head)
    given = []
    real = features.dataset
    monkeypatch.setattr(features, "dataset", lambda *a, **k: given.append(k.get("groups")) or real(*a, **k))
    plan = features.plan_stage(model, "frozen", cfg, frame, classes, 32, unfreeze=0)
    train_rows = frame[frame["split"] == "train"].reset_index(drop=True)
    expected = source_groups(train_rows)
    assert given[1] is None  # validation: never rebalanced
    assert given[0].names == expected.names == [("S1", "bright"), ("S1", "dark"), ("S2", "bright")]
    np.testing.assert_array_equal(given[0].codes, expected.codes)
    drawn = np.concatenate([y.numpy().argmax(1) for _ in range(25) for _, y in plan.train])
    assert len(drawn) == 25 * len(train_rows)
    assert abs((drawn == 0).mean() - 2 / 3) < 0.06  # two of the three groups are bright


def test_two_processes_saving_the_same_activations_keep_one_readable_entry(fresh_cache, monkeypatch):
    """Two jobs on the same images compute the same entry; the second to finish finds the first's folder in
    place (it was made between its removal and its rename): it keeps that one, readable, and raises nothing."""
    entry = activation_store.Entry(activation_store.cache_root() / "same-key")
    first = np.arange(6, dtype=np.float32).reshape(2, 3)
    entry.save(first, {"cut": "head_pool"})
    real_rmtree = activation_store.shutil.rmtree

    def keeps_the_other_processes_folder(path, ignore_errors=False):  # the other process's save lands here
        if path != entry.folder:
            real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(activation_store.shutil, "rmtree", keeps_the_other_processes_folder)
    entry.save(first + 0, {"cut": "head_pool"})
    np.testing.assert_array_equal(entry.load(), first)
    assert [p.name for p in entry.folder.parent.iterdir()] == ["same-key"]  # no temporary folder left behind
