"""The run configuration: JSON round trip and loud failures."""
from __future__ import annotations

import json

import pytest

from cxrcore.config import AugmentConfig, HeadConfig, LabelScheme, TrainConfig
from cxrcore.errors import ConfigError, WeightsError


def test_round_trip_through_json(tmp_path):
    cfg = TrainConfig(data="/d", backbone="vgg16", epochs=3, augment=AugmentConfig(flip=True, rotation=5),
                      head=HeadConfig(pooling="flatten", dense_units=[64, 32]),
                      labels=LabelScheme(merge={"Abnormal": ["A", "B"]}))
    cfg.save(tmp_path / "c.json")
    again = TrainConfig.load(tmp_path / "c.json")
    assert again == cfg
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


@pytest.mark.parametrize("changes, message", [
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
])
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

    scheme = extend_scheme(LABEL_PRESETS["pneumonia-subtype"], rename=["NORMAL=Normal"],
                           merge=["Abnormal=Bacterial Pneumonia, Viral Pneumonia"], drop=["Other", ""])
    assert scheme.filename_rules == LABEL_PRESETS["pneumonia-subtype"].filename_rules
    assert scheme.rename == {"NORMAL": "Normal"}
    assert scheme.merge == {"Abnormal": ["Bacterial Pneumonia", "Viral Pneumonia"]}
    assert scheme.drop == ["Other"]
    with pytest.raises(ConfigError, match="rename expects KEY=VALUE, got 'NORMAL'"):
        extend_scheme(LabelScheme(), rename=["NORMAL"])
