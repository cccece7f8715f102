"""Recipes: the five reference write-ups as training configurations, checked against what the write-ups say."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import cli, make_class_folders, python_m_cxrcore
from cxrcore.cli import build_parser
from cxrcore.cli.options import config_from_args
from cxrcore.config import LABEL_PRESETS, TrainConfig, recipe_config
from cxrcore.errors import ConfigError, CXRError
from cxrcore.recipes import RECIPES, data_match, get_recipe, published_comparison


def test_there_is_a_recipe_for_each_write_up_and_every_one_is_a_valid_config_that_round_trips():
    # five write-ups (the custom CNN + ResNet152V2 one is two recipes), and CheXNet, the findings reference
    assert len(RECIPES) == 7
    for name, recipe in RECIPES.items():
        config = recipe_config(name, "some/data")
        assert config.recipe == name and config.data == "some/data"
        assert TrainConfig.from_dict(config.to_dict()) == config
        assert set(recipe.config) <= {f.name for f in dataclasses.fields(TrainConfig)}, name
        assert recipe.stated and recipe.chosen and recipe.mapping and recipe.description and recipe.writeup
        assert "\n" not in recipe.description


def test_the_settings_the_write_ups_state():
    resnet = recipe_config("resnet50-4class-rmsprop")  # 256 px, last 10 layers, RMSprop, 30 epochs, one stage
    assert (resnet.backbone, resnet.image_size, resnet.unfreeze, resnet.optimizer) == ("resnet50", 256, 10, "rmsprop")
    assert (resnet.epochs, resnet.fine_tune_epochs, resnet.fine_tune_lr_factor) == (0, 30, 1.0)
    dense = recipe_config("densenet169-adamax")  # Adamax 0.001, flips, batch 16, 100 epochs, 80/10/10
    assert (dense.backbone, dense.optimizer, dense.learning_rate, dense.batch_size) == (
        "densenet169",
        "adamax",
        0.001,
        16,
    )
    assert (
        dense.augment.flip
        and dense.fine_tune_epochs == 100
        and (dense.val_fraction, dense.test_fraction)
        == (
            0.1,
            0.1,
        )
    )
    assert get_recipe("densenet169-adamax").published[0].value == pytest.approx(0.9627)
    cnn, resnet152 = recipe_config("pneumonet-cnn"), recipe_config("pneumonet-resnet152v2")
    assert cnn.backbone == "simple_cnn" and cnn.weights == "none" and cnn.fine_tune_epochs == 0
    assert resnet152.backbone == "resnet152v2" and resnet152.epochs > 0 and resnet152.fine_tune_epochs > 0
    vgg = recipe_config("vgg16-binary")  # pneumonia and COVID grouped against normal; rotation and flips
    assert vgg.backbone == "vgg16" and vgg.labels == LABEL_PRESETS["abnormal-vs-normal"]
    assert vgg.augment.flip and vgg.augment.rotation > 0 and vgg.image_size == 224
    assert get_recipe("vgg16-binary").published[0].value == pytest.approx(0.87)
    two = recipe_config("resnet50-two-stage")  # frozen, then the top 100 layers at LR/10; 70/15/15
    assert (two.unfreeze, two.fine_tune_lr_factor, two.epochs > 0) == (100, 0.1, True)
    assert (two.val_fraction, two.test_fraction) == (0.15, 0.15) and two.head.batch_norm


def test_recipes_cli_prints_one_line_per_recipe_name_first_without_a_header():
    """`recipes` as a user runs it, in its own process (the file's one); `--show` through cxrcore.cli.main."""
    proc = python_m_cxrcore("recipes", check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(RECIPES)
    shown = cli("recipes", "--show", "nope", check=False)
    assert shown.returncode == 2 and "unknown recipe 'nope'; recipes: resnet50-4class-rmsprop" in shown.stderr


def _args(*argv):
    return build_parser().parse_args(["train", *argv])


def test_train_recipe_starts_from_the_recipe_and_other_flags_override_it(tmp_path):
    data = make_class_folders(tmp_path / "d", per_class=2)
    config = config_from_args(_args("--recipe", "densenet169-adamax", "--data", str(data), "--epochs", "1"))
    assert config.recipe == "densenet169-adamax" and config.optimizer == "adamax" and config.batch_size == 16
    assert config.epochs == 1 and config.fine_tune_epochs == 100
    swapped = config_from_args(_args("--recipe", "vgg16-binary", "--data", str(data), "--backbone", "mobilenetv2_0.35"))
    assert swapped.backbone == "mobilenetv2_0.35" and swapped.image_size == 224 and swapped.unfreeze == 20
    assert swapped.labels == LABEL_PRESETS["abnormal-vs-normal"]
    with pytest.raises(CXRError, match="--config and --recipe both"):
        config_from_args(_args("--recipe", "vgg16-binary", "--config", "x.json", "--data", str(data)))
    with pytest.raises(ConfigError, match="unknown recipe 'vgg'"):
        config_from_args(_args("--recipe", "vgg", "--data", str(data)))
    with pytest.raises(ConfigError, match="recipe must be one of"):
        TrainConfig(data="x", recipe="mine").validate()


def test_data_match_compares_classes_without_case_or_punctuation_and_the_size_within_ten_percent():
    recipe = get_recipe("resnet50-two-stage")  # COVID, Lung_Opacity, Normal, Viral Pneumonia; 21,167 images
    same, why = data_match(recipe, ["covid", "Lung Opacity", "NORMAL", "Viral_Pneumonia"], 20000)
    assert same and "not checked" in why
    smaller, why = data_match(recipe, ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"], 2500)
    assert not smaller and "2,500 images against 21,167" in why
    fewer, why = data_match(recipe, ["COVID", "Normal", "Viral Pneumonia"], 21167)
    assert not fewer and "classes COVID, Normal, Viral Pneumonia against" in why
    unsized, _ = data_match(get_recipe("vgg16-binary"), ["Abnormal", "Normal"], 123)  # size not stated
    assert unsized


def test_published_comparison_puts_the_write_up_figure_beside_the_run_and_its_interval():
    recipe = get_recipe("resnet50-two-stage")  # published accuracy 0.95, macro F1 0.94
    metrics = {
        "accuracy": 0.93,
        "macro_f1": 0.90,
        "ci": {"accuracy": {"ci_low": 0.91, "ci_high": 0.96}, "macro_f1": {"ci_low": 0.88, "ci_high": 0.92}},
    }
    rows = published_comparison(recipe, metrics, ["COVID", "Normal", "Viral Pneumonia"], 2500)
    assert [r["metric"] for r in rows] == ["accuracy", "macro_f1"]
    assert (rows[0]["published"], rows[0]["this_run"], rows[0]["within_interval"]) == (0.95, 0.93, True)
    assert (rows[1]["published"], rows[1]["this_run"], rows[1]["within_interval"]) == (0.94, 0.90, False)
    assert rows[0]["data_matches"] is False and "different data" in rows[0]["data"]
    assert published_comparison(get_recipe("pneumonet-cnn"), metrics, ["A", "B"], 10) == []  # nothing published


def test_a_comparison_of_recipes_queues_one_job_each_in_one_group(tmp_path):
    from cxrcore.jobs.queue import submit_group
    from cxrcore.jobs.store import JobStore

    data = make_class_folders(tmp_path / "d", per_class=2)
    store = JobStore(tmp_path / "jobs.sqlite")
    configs = [recipe_config(name, str(data)) for name in ("vgg16-binary", "pneumonet-cnn")]
    group, ids = submit_group(configs, store=store, start_scheduler=False)
    jobs = [store.get(job_id) for job_id in ids]
    assert [job["group_id"] for job in jobs] == [group, group]
    assert [TrainConfig.from_dict(job["config"]).recipe for job in jobs] == [
        "vgg16-binary",
        "pneumonet-cnn",
    ]


def test_jobs_submit_with_several_recipes_queues_one_job_each_with_the_flags_on_top(tmp_path, monkeypatch, capsys):
    from cxrcore.cli import main
    from cxrcore.jobs import queue
    from cxrcore.jobs.store import JobStore

    monkeypatch.setattr(queue, "ensure_scheduler", lambda store: False)  # queue only: nothing trains here
    data = make_class_folders(tmp_path / "d", per_class=2)
    db = tmp_path / "jobs.sqlite"
    code = main(
        ["jobs", "--db", str(db), "submit", "--recipe", "vgg16-binary,pneumonet-cnn", "--data", str(data)]
        + ["--epochs", "1"]
    )
    assert code == 0
    ids = capsys.readouterr().out.split()
    jobs = [JobStore(db).get(job_id) for job_id in ids]
    assert [j["config"]["recipe"] for j in jobs] == ["vgg16-binary", "pneumonet-cnn"]
    assert [j["config"]["backbone"] for j in jobs] == ["vgg16", "simple_cnn"]
    assert all(j["config"]["epochs"] == 1 for j in jobs) and len({j["group_id"] for j in jobs}) == 1
