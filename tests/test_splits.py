"""Label schemes, patient-grouped stratified splits, class weights, leakage."""

from __future__ import annotations

import pandas as pd
import pytest

from cxrcore.config import LABEL_PRESETS, LabelScheme
from cxrcore.data.splits import apply_label_scheme, assign_splits, check_trainable, class_weights, leakage_report
from cxrcore.errors import ConfigError, DataError


def frame(rows):
    return pd.DataFrame([{"path": p, "label": label, "split": s, "patient_id": pid} for p, label, s, pid in rows])


def synthetic_index(n_per_class=(100, 60), with_patients=True):
    rows = []
    for c, n in zip("AB", n_per_class):
        for i in range(n):
            pid = f"{c}p{i // 3}" if with_patients else ""  # 3 images per patient
            rows.append((f"/d/{c}/{i}.png", c, "", pid))
    return frame(rows)


def test_default_split_is_80_10_10_per_class():
    out = assign_splits(synthetic_index(with_patients=False), seed=1)
    counts = out.groupby(["label", "split"]).size().unstack()
    assert counts.loc["A"].to_dict() == {"test": 10, "train": 80, "val": 10}
    assert counts.loc["B"].to_dict() == {"test": 6, "train": 48, "val": 6}


def test_no_patient_is_in_two_splits_and_proportions_hold():
    out = assign_splits(synthetic_index(), seed=3)
    assert out.groupby("patient_id")["split"].nunique().max() == 1
    assert leakage_report(out).empty
    share = out["split"].value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.8, abs=0.05)
    assert share["val"] == pytest.approx(0.1, abs=0.05)
    assert share["test"] == pytest.approx(0.1, abs=0.05)


def test_split_is_reproducible_under_a_seed_and_changes_with_it():
    a = assign_splits(synthetic_index(), seed=7)["split"].tolist()
    b = assign_splits(synthetic_index(), seed=7)["split"].tolist()
    c = assign_splits(synthetic_index(), seed=8)["split"].tolist()
    assert a == b
    assert a != c


def test_existing_split_is_kept_and_missing_val_is_carved_from_train():
    rows = [(f"/tr/{c}{i}", c, "train", "") for c in "AB" for i in range(40)]
    rows += [(f"/te/{c}{i}", c, "test", "") for c in "AB" for i in range(5)]
    out = assign_splits(frame(rows), val_fraction=0.1, seed=0)
    assert (out.loc[out["path"].str.startswith("/te/"), "split"] == "test").all()
    carved = out.loc[out["path"].str.startswith("/tr/"), "split"].value_counts()
    assert carved["val"] == 8 and carved["train"] == 72  # 10% of each class's 40 training images


def test_missing_test_split_is_carved_from_train():
    rows = [(f"/tr/{c}{i}", c, "train", "") for c in "AB" for i in range(20)]
    rows += [(f"/va/{c}{i}", c, "val", "") for c in "AB" for i in range(4)]
    out = assign_splits(frame(rows), test_fraction=0.1, seed=0)
    assert (out["split"] == "test").sum() == 4
    assert (out.loc[out["path"].str.startswith("/va/"), "split"] == "val").all()


def test_label_scheme_filename_rules_rename_merge_drop():
    idx = frame(
        [
            ("/x/person1_bacteria_1.jpeg", "PNEUMONIA", "", ""),
            ("/x/person2_virus_3.jpeg", "PNEUMONIA", "", ""),
            ("/x/IM-0001-0001.jpeg", "NORMAL", "", ""),
            ("/x/c.png", "COVID", "", ""),
            ("/x/o.png", "Other", "", ""),
        ]
    )
    out = apply_label_scheme(idx, LABEL_PRESETS["pneumonia-subtype"])
    assert out["label"].tolist() == ["Bacterial Pneumonia", "Viral Pneumonia", "NORMAL", "COVID", "Other"]
    scheme = LabelScheme(rename={"NORMAL": "Normal"}, merge={"Abnormal": ["COVID", "PNEUMONIA"]}, drop=["Other"])
    out = apply_label_scheme(idx, scheme)
    assert out["label"].tolist() == ["Abnormal", "Abnormal", "Normal", "Abnormal"]


@pytest.mark.parametrize(
    "scheme, message",
    [
        (LabelScheme(rename={"Nope": "X"}), "rename: no class named Nope"),
        (LabelScheme(merge={"X": ["Nope", "Nada"]}), "merge into X: no class named Nada, Nope"),
        (LabelScheme(drop=["Nope"]), "drop: no class named Nope"),
        (LabelScheme(drop=["A", "B"]), "leaves no images"),
    ],
)
def test_label_scheme_errors_name_the_problem(scheme, message):
    idx = frame([("/a.png", "A", "", ""), ("/b.png", "B", "", "")])
    with pytest.raises(ConfigError, match=message):
        apply_label_scheme(idx, scheme)


def test_presets_apply_to_the_datasets_they_were_written_for():
    covid_db = frame([("/c.png", "COVID", "", ""), ("/v.png", "Viral Pneumonia", "", ""), ("/n.png", "Normal", "", "")])
    out = apply_label_scheme(covid_db, LABEL_PRESETS["abnormal-vs-normal"])
    assert out["label"].tolist() == ["Abnormal", "Abnormal", "Normal"]
    kermany = frame([("/x/person1_virus_2.jpeg", "PNEUMONIA", "", ""), ("/x/IM-1-1.jpeg", "NORMAL", "", "")])
    assert apply_label_scheme(kermany, LABEL_PRESETS["abnormal-vs-normal"])["label"].tolist() == ["Abnormal", "NORMAL"]


def test_balanced_class_weights_hand_computed():
    labels = pd.Series(["A"] * 30 + ["B"] * 10)
    # n / (k * count): 40 / (2 * 30) and 40 / (2 * 10)
    assert class_weights(labels, ["A", "B"]) == {0: pytest.approx(2 / 3), 1: pytest.approx(2.0)}
    assert class_weights(labels, ["A", "B"], "none") is None


def test_leakage_report_lists_patients_in_two_splits():
    idx = frame(
        [("/1", "A", "train", "p1"), ("/2", "A", "test", "p1"), ("/3", "B", "train", "p2"), ("/4", "B", "train", "")]
    )
    report = leakage_report(idx)
    assert report.to_dict("records") == [{"patient_id": "p1", "splits": "test,train", "images": 2}]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([("/1", "A", "train", ""), ("/2", "A", "val", "")], "at least two classes"),
        ([("/1", "A", "train", ""), ("/2", "B", "val", ""), ("/3", "A", "val", "")], "B have no training images"),
        ([("/1", "A", "train", ""), ("/2", "B", "train", "")], "validation split is empty"),
    ],
)
def test_check_trainable_rejects_unusable_splits(rows, message):
    with pytest.raises(DataError, match=message):
        check_trainable(frame(rows))
