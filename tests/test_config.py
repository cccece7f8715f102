"""The run configuration: JSON round trip and loud failures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cxrcore.config import AugmentConfig, HeadConfig, LabelScheme, TrainConfig
from cxrcore.data.pixels import PixelRules
from cxrcore.errors import ConfigError, WeightsError


def test_round_trip_through_json(tmp_path):
    cfg = TrainConfig(
        data="/d",
        backbone="vgg16",
        epochs=3,
        augment=AugmentConfig(flip=True, rotation=5),
        head=HeadConfig(pooling="flatten", dense_units=[64, 32]),
        labels=LabelScheme(merge={"Abnormal": ["A", "B"]}),
        pixels=PixelRules(crop_border=0.1, equalize=True),
        target_sensitivity=0.9,
    )
    cfg.save(tmp_path / "c.json")
    again = TrainConfig.load(tmp_path / "c.json")
    assert again == cfg
    assert again.pixels == PixelRules(0.1, True) and again.target_sensitivity == 0.9
    assert isinstance(again.augment, AugmentConfig) and again.augment.rotation == 5
    assert json.loads((tmp_path / "c.json").read_text())["head"]["dense_units"] == [64, 32]


def test_unknown_keys_are_rejected_with_their_path():
    with pytest.raises(ConfigError, match="unknown option.*learnin_rate"):
        TrainConfig.from_dict({"learnin_rate": 0.1})
    with pytest.raises(ConfigError, match=r"config.head: unknown option.*units"):
        TrainConfig.from_dict({"head": {"units": 3}})


def test_bad_json_file_is_reported(tmp_path):
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        TrainConfig.load(tmp_path / "c.json")
    with pytest.raises(ConfigError, match="not found"):
        TrainConfig.load(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": 0, "fine_tune_epochs": 0}, "nothing to train"),
        ({"optimizer": "adagrad"}, "optimizer must be one of"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"unfreeze": -2}, "unfreeze"),
        ({"class_weights": "auto"}, "class_weights"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "leave images to train on"),
        ({"image_size": 16}, "image_size"),
        ({"head": HeadConfig(pooling="sum")}, "head.pooling"),
        ({"augment": AugmentConfig(zoom=1.5)}, "augmentation"),
        ({"backbone": "resnet51"}, "unknown backbone 'resnet51'; choose one of: resnet50"),
    ],
)
def test_validate_rejects_out_of_range_values(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(data="/d", **changes).validate()


def test_imagenet_weights_for_a_backbone_that_has_none_fail_at_validation():
    with pytest.raises(WeightsError, match="simple_cnn has no ImageNet weights; use --weights none"):
        TrainConfig(data="/d", backbone="simple_cnn", weights="imagenet").validate()
    assert TrainConfig(data="/d", backbone="simple_cnn", weights="none").validate().weights == "none"


def test_defaults_are_valid_and_augmentation_is_off_by_default():
    cfg = TrainConfig(data="/d").validate()
    assert not cfg.augment.enabled
    assert AugmentConfig(flip=True).enabled


def test_label_rules_written_as_text_extend_a_scheme():
    from cxrcore.config import LABEL_PRESETS, extend_scheme

    scheme = extend_scheme(
        LABEL_PRESETS["pneumonia-subtype"],
        rename=["NORMAL=Normal"],
        merge=["Abnormal=Bacterial Pneumonia, Viral Pneumonia"],
        drop=["Other", ""],
    )
    assert scheme.filename_rules == LABEL_PRESETS["pneumonia-subtype"].filename_rules
    assert scheme.rename == {"NORMAL": "Normal"}
    assert scheme.merge == {"Abnormal": ["Bacterial Pneumonia", "Viral Pneumonia"]}
    assert scheme.drop == ["Other"]
    with pytest.raises(ConfigError, match="rename expects KEY=VALUE, got 'NORMAL'"):
        extend_scheme(LabelScheme(), rename=["NORMAL"])


# -- settings that follow the backbone: TrainConfig.resolved() is the one place they are filled --


@pytest.mark.parametrize(
    "backbone, expected",
    [
        # (weights, image_size, unfreeze): a pretrained backbone fine-tunes from ImageNet at its own size and
        # depth; simple_cnn has no ImageNet weights, so it trains from scratch, whole (-1 = all layers)
        ("mobilenetv2_0.35", ("imagenet", 224, 20)),
        ("resnet50", ("imagenet", 224, 30)),
        ("vgg16", ("imagenet", 224, 4)),
        ("simple_cnn", ("none", 128, -1)),
    ],
)
def test_resolved_fills_what_was_left_to_the_backbone(backbone, expected):
    cfg = TrainConfig(data="/d", backbone=backbone)
    assert (cfg.weights, cfg.image_size, cfg.unfreeze) == ("auto", None, None)  # left open
    done = cfg.resolved()
    assert (done.weights, done.image_size, done.unfreeze) == expected
    assert (cfg.weights, cfg.image_size, cfg.unfreeze) == ("auto", None, None)  # a copy: cfg unchanged


def test_resolved_agrees_with_the_registry_for_every_backbone():
    from cxrcore.training.backbones import REGISTRY

    for name, spec in REGISTRY.items():
        done = TrainConfig(data="/d", backbone=name).resolved()
        assert done.weights == ("imagenet" if spec.pretrained else "none"), name
        assert done.image_size == spec.input_size, name
        assert done.unfreeze == (spec.unfreeze if spec.pretrained else -1), name


def test_resolved_keeps_what_was_set_explicitly():
    cfg = TrainConfig(data="/d", backbone="mobilenetv2_0.35", weights="/w/mine.h5", image_size=96, unfreeze=5)
    assert cfg.resolved() == cfg
    scratch = TrainConfig(data="/d", backbone="mobilenetv2_0.35", weights="none").resolved()
    assert (scratch.weights, scratch.unfreeze) == ("none", -1)  # from scratch: everything trains
    assert TrainConfig(data="/d", backbone="simple_cnn", unfreeze=0).resolved().unfreeze == 0


def test_a_changed_backbone_carries_the_settings_that_follow_it():
    from dataclasses import replace

    cfg = TrainConfig(data="/d", backbone="simple_cnn", epochs=2, fine_tune_epochs=1)
    assert cfg.resolved().weights == "none"
    switched = replace(cfg, backbone="mobilenetv2_0.35").resolved()  # the user's switch on the Train page
    assert (switched.weights, switched.image_size, switched.unfreeze) == ("imagenet", 224, 20)
    assert (switched.epochs, switched.fine_tune_epochs) == (2, 1)
    # a config resolved for one backbone pins its values: resolve after the choice, not before
    pinned = replace(cfg.resolved(), backbone="mobilenetv2_0.35").resolved()
    assert pinned.weights == "none"


def test_resolved_is_idempotent_and_round_trips_through_json(tmp_path):
    done = TrainConfig(data="/d", backbone="densenet121", epochs=1).resolved()
    assert done.resolved() == done
    done.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == done
    assert json.loads((tmp_path / "c.json").read_text())["weights"] == "imagenet"
    open_cfg = TrainConfig(data="/d")
    assert TrainConfig.from_dict(open_cfg.to_dict()) == open_cfg  # "auto" round-trips too


def test_resolved_stays_strict():
    with pytest.raises(WeightsError, match="simple_cnn has no ImageNet weights"):
        TrainConfig(data="/d", backbone="simple_cnn", weights="imagenet").resolved()
    with pytest.raises(ConfigError, match="unknown backbone 'mobilenetv3'"):
        TrainConfig(data="/d", backbone="mobilenetv3").resolved()
    with pytest.raises(ConfigError, match="image_size"):
        TrainConfig(data="/d", backbone="vgg16", image_size=8).resolved()
    with pytest.raises(ConfigError, match="unknown option.*weight"):
        TrainConfig.from_dict({"weight": "auto"})


def test_one_comparison_job_per_backbone_follows_each_backbone():
    base = TrainConfig(data="/d", epochs=3, weights="auto")
    jobs = {name: base.for_backbone(name) for name in ("simple_cnn", "mobilenetv2_0.35", "vgg16")}
    assert {n: (c.backbone, c.weights, c.image_size, c.unfreeze) for n, c in jobs.items()} == {
        "simple_cnn": ("simple_cnn", "none", 128, -1),
        "mobilenetv2_0.35": ("mobilenetv2_0.35", "imagenet", 224, 20),
        "vgg16": ("vgg16", "imagenet", 224, 4),
    }
    assert all(c.epochs == 3 for c in jobs.values())
    # "imagenet" in a comparison means "where the backbone has them"; the rest stays as set
    mixed = TrainConfig(data="/d", weights="imagenet", image_size=160)
    assert mixed.for_backbone("simple_cnn").weights == "none"
    assert mixed.for_backbone("resnet50").weights == "imagenet"
    assert {mixed.for_backbone(n).image_size for n in ("simple_cnn", "resnet50")} == {160}


# -- the CLI's flags become a resolved config through the same rule --


def _cli_config(*argv, **kwargs):
    from cxrcore.cli import build_parser
    from cxrcore.cli.options import config_from_args

    return config_from_args(build_parser().parse_args(["train", *argv]), **kwargs)


def test_cli_defaults_follow_the_backbone():
    assert _cli_config("--data", "/d", "--backbone", "simple_cnn").weights == "none"
    cfg = _cli_config("--data", "/d", "--backbone", "mobilenetv2_0.35")
    assert (cfg.weights, cfg.image_size, cfg.unfreeze) == ("imagenet", 224, 20)
    cfg = _cli_config("--data", "/d", "--backbone", "mobilenetv2_0.35", "--weights", "none", "--image-size", "96")
    assert (cfg.weights, cfg.image_size, cfg.unfreeze) == ("none", 96, -1)
    with pytest.raises(WeightsError, match="simple_cnn has no ImageNet weights"):
        _cli_config("--data", "/d", "--backbone", "simple_cnn", "--weights", "imagenet")
    left_open = _cli_config("--data", "/d", "--backbone", "simple_cnn", resolve=False)
    assert (left_open.weights, left_open.image_size, left_open.unfreeze) == ("auto", None, None)


def test_cli_backbone_over_a_saved_config_lets_its_settings_follow(tmp_path):
    TrainConfig(data="/d", backbone="simple_cnn", epochs=7).resolved().save(tmp_path / "c.json")
    cfg = _cli_config("--config", str(tmp_path / "c.json"), "--backbone", "mobilenetv2_0.35")
    assert (cfg.weights, cfg.image_size, cfg.unfreeze, cfg.epochs) == ("imagenet", 224, 20, 7)
    same = _cli_config("--config", str(tmp_path / "c.json"), "--epochs", "2")
    assert (same.backbone, same.weights, same.image_size, same.epochs) == ("simple_cnn", "none", 128, 2)
    kept = _cli_config("--config", str(tmp_path / "c.json"), "--backbone", "vgg16", "--image-size", "64")
    assert (kept.weights, kept.image_size) == ("imagenet", 64)


def test_external_validation_options_from_the_command_line(tmp_path):
    from cxrcore.cli import build_parser
    from cxrcore.cli.options import config_from_args

    (tmp_path / "A").mkdir()
    args = build_parser().parse_args(
        [
            "train",
            "--data",
            str(tmp_path),
            "--backbone",
            "simple_cnn",
            "--external",
            str(tmp_path / "b"),
            "--external",
            "c",
            "--external-map",
            "Pneumonia=Abnormal",
            "--external-skip-unknown",
        ]
    )
    config = config_from_args(args)
    assert config.external == [str((tmp_path / "b").resolve()), str(Path("c").resolve())]
    assert config.external_map == {"Pneumonia": "Abnormal"} and config.external_skip_unknown
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="external_map"):
        TrainConfig(external_map={"a": 1}).validate()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pixels": {"crop_border": 0.5}}, "pixels.crop_border must be in"),
        ({"pixels": {"crop_border": "wide"}}, "pixels.crop_border must be a number"),
        ({"pixels": {"equalize": "yes"}}, "pixels.equalize must be true or false"),
        ({"pixels": {"lung_crop": 1}}, "pixels.lung_crop must be true or false"),
        ({"pixels": {"lung_mask": "no"}}, "pixels.lung_mask must be true or false"),
        ({"pixels": {"sharpen": True}}, "config.pixels: unknown option(s) sharpen"),
        ({"target_sensitivity": 1.0}, "target_sensitivity must be between 0 and 1"),
    ],
)
def test_pixel_rules_and_target_sensitivity_are_checked_by_name(change, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig.from_dict({"data": "/d", **change}).validate()


def test_a_config_written_before_pixel_rules_reads_with_the_defaults():
    cfg = TrainConfig.from_dict({"data": "/d", "backbone": "simple_cnn"})
    assert cfg.pixels == PixelRules() and cfg.pixels.is_default and cfg.pixels.describe() == "as decoded"
    assert cfg.target_sensitivity == 0.95


def test_cli_pixel_rules_and_target_sensitivity(tmp_path):
    cfg = _cli_config("--data", "/d", "--crop-border", "0.1", "--equalize", "--target-sensitivity", "0.9")
    assert cfg.pixels == PixelRules(crop_border=0.1, equalize=True) and cfg.target_sensitivity == 0.9
    cfg.save(tmp_path / "c.json")
    only_crop = _cli_config("--config", str(tmp_path / "c.json"), "--crop-border", "0.05")
    assert only_crop.pixels == PixelRules(crop_border=0.05, equalize=True)  # the saved equalize is kept
    with pytest.raises(ConfigError, match=re.escape("pixels.crop_border must be in [0, 0.4)")):
        _cli_config("--data", "/d", "--crop-border", "0.5")
    lungs = _cli_config("--config", str(tmp_path / "c.json"), "--lung-crop", "--lung-mask")
    assert lungs.pixels == PixelRules(crop_border=0.1, equalize=True, lung_crop=True, lung_mask=True)
    assert lungs.pixels.describe() == (
        "10% border cropped, histogram equalised, cropped to the lungs, outside the lungs blacked out"
    )
    assert TrainConfig.from_dict(lungs.to_dict()).pixels == lungs.pixels


# -- training on sources: balanced batches, single-class sources left out --


def test_source_options_are_checked_by_name_and_round_trip(tmp_path):
    cfg = TrainConfig(data="/d", balance="source", drop_single_class_sources=True).validate()
    cfg.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=re.escape("balance must be one of none, source")):
        TrainConfig(data="/d", balance="hospital").validate()
    with pytest.raises(ConfigError, match="balance must be one of"):
        TrainConfig.from_dict({"data": "/d", "balance": ["source"]}).validate()
    with pytest.raises(ConfigError, match="drop_single_class_sources must be true or false"):
        TrainConfig.from_dict({"data": "/d", "drop_single_class_sources": "yes"}).validate()


def test_a_config_written_before_the_source_options_reads_with_them_off(tmp_path):
    old = TrainConfig(data="/d", backbone="simple_cnn").to_dict()
    del old["balance"], old["drop_single_class_sources"]
    (tmp_path / "c.json").write_text(json.dumps(old))
    cfg = TrainConfig.load(tmp_path / "c.json")
    assert (cfg.balance, cfg.drop_single_class_sources) == ("none", False)


def test_cli_source_options_and_recipes_combine(tmp_path):
    from cxrcore.config import recipe_config

    cfg = _cli_config("--data", "/d", "--balance", "source", "--drop-single-class-sources")
    assert (cfg.balance, cfg.drop_single_class_sources) == ("source", True)
    plain = _cli_config("--data", "/d")
    assert (plain.balance, plain.drop_single_class_sources) == ("none", False)
    cfg.save(tmp_path / "c.json")
    kept = _cli_config("--config", str(tmp_path / "c.json"), "--epochs", "2")  # a saved config keeps them
    assert (kept.balance, kept.drop_single_class_sources) == ("source", True)
    recipe = _cli_config("--recipe", "vgg16-binary", "--data", "/d", "--balance", "source")
    assert (recipe.recipe, recipe.balance) == ("vgg16-binary", "source")
    assert recipe_config("pneumonet-cnn", "/d", drop_single_class_sources=True).drop_single_class_sources
    with pytest.raises(SystemExit):
        _cli_config("--data", "/d", "--balance", "hospital")
