"""Findings datasets read as distributed: NIH ChestX-ray14, CheXpert and a path,labels manifest, on hand-made
CSVs whose every expected value is written out here by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import SHARED, cli
from cxrcore.config import FindingsOptions
from cxrcore.data.findings import FINDING_PREFIX, NO_FINDING, equivalents, match_finding
from cxrcore.data.findings_summary import findings_summary, split_table
from cxrcore.data.index import INDEX_COLUMNS, build_index, summarize
from cxrcore.data.patients import patient_key
from cxrcore.data.splits import assign_splits, leakage_report, shared_patients
from cxrcore.errors import ConfigError, DataError

NIH64 = SHARED / "data" / "nih-findings-64"


def png(path: Path, value: int = 100, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


def values(index: pd.DataFrame, name: str, finding: str) -> float:
    row = index[index["path"].str.endswith(name)]
    assert len(row) == 1, name
    return float(row[FINDING_PREFIX + finding].iloc[0])


# -- NIH ChestX-ray14 ----------------------------------------------------------------------------------

NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
NIH_ROWS = [
    # name, findings, follow-up, patient, age, sex, view
    ("00000231_000.png", "No Finding", 0, 231, 58, "M", "PA"),
    ("00000231_001.png", "Effusion|Infiltration", 1, 231, 58, "M", "AP"),
    ("00000232_000.png", "Cardiomegaly|Effusion", 0, 232, 71, "F", "PA"),
    ("00000233_000.png", "Hernia", 0, 233, 80, "F", "PA"),
    ("00000234_000.png", "Effusion", 0, 234, 45, "M", "AP"),
    ("00000235_000.png", "No Finding", 0, 235, 33, "F", "PA"),  # listed, never downloaded
]


def nih_folder(root: Path, *, lists: bool = True, rows=NIH_ROWS) -> Path:
    """NIH's layout: the CSV, images in images_001/images and images_002/images, the official split lists."""
    lines = [NIH_HEADER]
    for i, (name, found, follow, patient, age, sex, view) in enumerate(rows):
        lines.append(f"{name},{found},{follow},{patient},{age:03d}Y,{sex},{view},2500,2048,0.143,0.143,")
        if name != "00000235_000.png":
            png(root / f"images_00{1 + i % 2}" / "images" / name, 40 * i)
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    if lists:
        (root / "test_list.txt").write_text("00000232_000.png\n")
        names = [r[0] for r in rows if r[0] != "00000232_000.png"]
        (root / "train_val_list.txt").write_text("\n".join(names) + "\n")
    return root


def test_nih_folder_is_read_by_its_columns_with_images_anywhere_below(tmp_path):
    index = build_index(nih_folder(tmp_path / "nih"))
    assert index.attrs["layout"] == "nih"
    # only the findings the CSV names, in NIH's order; "No Finding" is not one of them
    assert index.attrs["findings"] == ["Cardiomegaly", "Effusion", "Infiltration", "Hernia"]
    assert len(index) == 5  # 00000235_000.png is not on disk: skipped and counted, not an error
    assert index.attrs["missing"] == 1 and index.attrs["missing_examples"] == ["00000235_000.png"]
    assert values(index, "00000231_001.png", "Effusion") == 1.0
    assert values(index, "00000231_001.png", "Infiltration") == 1.0
    assert values(index, "00000231_001.png", "Cardiomegaly") == 0.0
    assert values(index, "00000231_000.png", "Effusion") == 0.0
    labels = dict(zip(index["path"].map(lambda p: Path(p).name), index["label"]))
    assert labels["00000231_000.png"] == NO_FINDING
    assert labels["00000232_000.png"] == "Cardiomegaly|Effusion"
    assert labels["00000231_001.png"] == "Effusion|Infiltration"
    assert index["path"].str.contains("images_002/images/").any()
    # the official split: test from test_list.txt, train from train_val_list.txt
    splits = dict(zip(index["path"].map(lambda p: Path(p).name), index["split"]))
    assert splits == {
        "00000231_000.png": "train",
        "00000231_001.png": "train",
        "00000232_000.png": "test",
        "00000233_000.png": "train",
        "00000234_000.png": "train",
    }
    assert "test_list.txt" in index.attrs["official_split"]
    assert index["patient_id"].tolist()[:2] == ["231", "231"]
    assert index["view"].tolist() == ["PA", "AP", "PA", "PA", "AP"]
    assert index["age"].tolist() == [58, 58, 71, 80, 45]
    assert list(index.columns[: len(INDEX_COLUMNS)]) == INDEX_COLUMNS


def test_nih_csv_passed_directly_under_any_name(tmp_path):
    root = nih_folder(tmp_path / "nih", lists=False)
    renamed = root / "my_labels.csv"
    (root / "Data_Entry_2017.csv").rename(renamed)
    index = build_index(renamed)
    assert index.attrs["layout"] == "nih" and len(index) == 5
    assert set(index["split"]) == {""}  # no list files: no official split


def test_nih_views_findings_and_aliases(tmp_path):
    root = nih_folder(tmp_path / "nih")
    pa = build_index(root, options=FindingsOptions(views="pa"))
    assert sorted(Path(p).name for p in pa["path"]) == ["00000231_000.png", "00000232_000.png", "00000233_000.png"]
    ap = build_index(root, options=FindingsOptions(views="ap"))
    assert sorted(Path(p).name for p in ap["path"]) == ["00000231_001.png", "00000234_000.png"]
    # CheXpert's name for NIH's Effusion is its exact equivalent
    kept = build_index(root, options=FindingsOptions(findings=("Pleural Effusion", "Hernia")))
    assert kept.attrs["findings"] == ["Effusion", "Hernia"]
    assert [c for c in kept.columns if c.startswith(FINDING_PREFIX)] == ["finding:Effusion", "finding:Hernia"]
    labels = dict(zip(kept["path"].map(lambda p: Path(p).name), kept["label"]))
    assert labels["00000232_000.png"] == "Effusion"  # Cardiomegaly is no longer an output
    assert labels["00000231_000.png"] == NO_FINDING
    with pytest.raises(DataError, match=r"no finding named 'Emphysema'.*Cardiomegaly, Effusion"):
        build_index(root, options=FindingsOptions(findings=("Emphysema",)))


def test_pa_count_is_by_view_alone(tmp_path):
    """The absent image's row (PA) is counted as missing, not as left out by view."""
    pa = build_index(nih_folder(tmp_path / "nih"), options=FindingsOptions(views="pa"))
    assert pa.attrs["views_left_out"] == 2 and pa.attrs["missing"] == 1


def test_nih_without_a_view_column_refuses_views(tmp_path):
    root = tmp_path / "small"
    png(root / "images" / "00000001_000.png")
    (root / "Data_Entry.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID\n00000001_000.png,Mass,0,1\n"
    )
    assert build_index(root).attrs["findings"] == ["Mass"]
    with pytest.raises(DataError, match=r"--views frontal needs a view column.*Data_Entry.csv has none"):
        build_index(root, options=FindingsOptions(views="frontal"))


def test_nih_bad_rows_are_named(tmp_path):
    root = tmp_path / "bad"
    png(root / "images" / "00000001_000.png")
    (root / "Data_Entry.csv").write_text("Image Index,Finding Labels\n00000001_000.png,\n")
    with pytest.raises(DataError, match=r"Data_Entry.csv, line 2 \(00000001_000.png\): no findings given"):
        build_index(root)
    (root / "Data_Entry.csv").write_text("Image Index,Patient ID\n00000001_000.png,1\n")
    with pytest.raises(DataError, match="looks like NIH's Data_Entry CSV.*lacks the column Finding Labels"):
        build_index(root / "Data_Entry.csv")


# -- CheXpert ------------------------------------------------------------------------------------------

CHEXPERT_HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Cardiomegaly,Edema,Pleural Effusion,Support Devices"


def chexpert_folder(root: Path, *, valid: bool = True, bad: str | None = None) -> Path:
    """CheXpert-v1.0-small/{train.csv, valid.csv, train/patientNNNNN/studyN/viewN_*.jpg}."""
    base = root / "CheXpert-v1.0-small"
    train = [
        # Path (below the CSV's folder; the CSV says CheXpert-v1.0-small/train/...), sex, age, view, AP/PA, the
        # five observations
        ("train/patient00001/study1/view1_frontal.jpg", "Female", 68, "Frontal", "AP", "", "1.0", "-1.0", "", "1.0"),
        ("train/patient00001/study1/view2_lateral.jpg", "Female", 68, "Lateral", "", "", "1.0", "-1.0", "", ""),
        ("train/patient00002/study1/view1_frontal.jpg", "Male", 41, "Frontal", "PA", "1.0", "0.0", "", "0.0", ""),
        ("train/patient00003/study2/view1_frontal.jpg", "Male", 77, "Frontal", "AP", "", "", "1.0", "-1.0", "0.0"),
    ]
    if bad:
        train.append(("train/patient00004/study1/view1_frontal.jpg", "Male", 50, "Frontal", "PA", "", bad, "", "", ""))
    rows = [",".join(map(str, [f"{base.name}/{r[0]}", *r[1:]])) for r in train]
    base.mkdir(parents=True)
    (base / "train.csv").write_text(CHEXPERT_HEADER + "\n" + "\n".join(rows) + "\n")
    files = [r[0] for r in train[:3]]  # patient00003's film was never downloaded
    if valid:
        v = ("valid/patient64541/study1/view1_frontal.jpg", "Male", 73, "Frontal", "AP", "", "1.0", "0.0", "1.0", "")
        (base / "valid.csv").write_text(CHEXPERT_HEADER + "\n" + ",".join(map(str, [f"{base.name}/{v[0]}", *v[1:]])))
        files.append(v[0])
    for name in files:
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((10, 12), 90, np.uint8)).save(base / name)
    return base


@pytest.fixture
def chexpert(tmp_path):
    return chexpert_folder(tmp_path)


def test_chexpert_is_read_with_valid_csv_as_the_test_split(chexpert):
    index = build_index(chexpert)
    assert index.attrs["layout"] == "chexpert"
    assert index.attrs["findings"] == ["Cardiomegaly", "Edema", "Pleural Effusion", "Support Devices"]
    assert len(index) == 4 and index.attrs["missing"] == 1
    assert index.attrs["missing_examples"] == ["train/patient00003/study2/view1_frontal.jpg"]
    by_name = index.set_index(index["path"].str.split("CheXpert-v1.0-small/").str[1])
    assert by_name.loc["valid/patient64541/study1/view1_frontal.jpg", "split"] == "test"
    assert by_name.loc["train/patient00001/study1/view1_frontal.jpg", "split"] == "train"
    assert by_name["patient_id"].tolist() == ["patient00001", "patient00001", "patient00002", "patient64541"]
    assert by_name["view"].tolist() == ["AP", "LATERAL", "PA", "AP"]
    assert by_name["sex"].tolist() == ["F", "F", "M", "M"]


@pytest.mark.parametrize(
    ("uncertain", "blank", "edema", "effusion"),
    [
        # patient00001's first film: Edema -1 (uncertain), Pleural Effusion blank
        ("ignore", "negative", None, 0.0),
        ("ones", "negative", 1.0, 0.0),
        ("zeros", "negative", 0.0, 0.0),
        ("ignore", "ignore", None, None),
        ("ones", "ignore", 1.0, None),
    ],
)
def test_chexpert_uncertain_and_blank_policies(chexpert, uncertain, blank, edema, effusion):
    index = build_index(chexpert, options=FindingsOptions(uncertain=uncertain, blank=blank))
    name = "patient00001/study1/view1_frontal.jpg"
    got_edema, got_effusion = values(index, name, "Edema"), values(index, name, "Pleural Effusion")
    assert math.isnan(got_edema) if edema is None else got_edema == edema
    assert math.isnan(got_effusion) if effusion is None else got_effusion == effusion
    assert values(index, name, "Cardiomegaly") == 1.0  # 1.0 and 0.0 are kept under every policy
    assert values(index, "patient00002/study1/view1_frontal.jpg", "Cardiomegaly") == 0.0
    label = index.loc[index["path"].str.endswith(name), "label"].iloc[0]
    assert label == ("Cardiomegaly|Edema|Support Devices" if edema == 1.0 else "Cardiomegaly|Support Devices")


def test_chexpert_views(chexpert):
    frontal = build_index(chexpert, options=FindingsOptions(views="frontal"))
    assert len(frontal) == 3 and frontal.attrs["views_left_out"] == 1  # the lateral film
    assert set(build_index(chexpert, options=FindingsOptions(views="pa"))["view"]) == {"PA"}
    assert set(build_index(chexpert, options=FindingsOptions(views="ap"))["view"]) == {"AP"}


def test_chexpert_value_outside_its_format_names_file_line_and_column(tmp_path):
    base = chexpert_folder(tmp_path, valid=False, bad="2.0")
    with pytest.raises(
        DataError, match=r"train.csv, line 6 \(CheXpert-v1.0-small/train/patient00004.*\): Cardiomegaly is '2.0'"
    ):
        build_index(base)
    with pytest.raises(DataError, match=r"train.csv, line 6"):
        build_index(base / "train.csv")


def test_chexpert_csv_passed_directly_keeps_valid_as_test(chexpert):
    index = build_index(chexpert / "train.csv")
    assert (index["split"] == "test").sum() == 1
    alone = build_index(chexpert / "valid.csv")  # valid.csv alone: just its rows, no split of its own
    assert len(alone) == 1 and set(alone["split"]) == {""}


# -- a generic manifest: path,labels[,patient_id][,split] ----------------------------------------------------


def test_findings_manifest(tmp_path):
    root = tmp_path / "m"
    for name in ("a.png", "b.png", "c.png", "d.png"):
        png(root / "img" / name)
    (root / "manifest.csv").write_text(
        "path,labels,patient_id,split\n"
        "img/a.png,Mass|Nodule,p1,train\n"
        "img/b.png,No Finding,p2,valid\n"
        "img/c.png,,p3,\n"
        "img/d.png,Nodule,,test\n"
    )
    index = build_index(root)
    assert index.attrs["layout"] == "findings-manifest"
    assert index.attrs["findings"] == ["Mass", "Nodule"]
    assert index["label"].tolist() == ["Mass|Nodule", NO_FINDING, NO_FINDING, "Nodule"]
    assert index["split"].tolist() == ["train", "val", "", "test"]
    assert index["patient_id"].tolist() == ["p1", "p2", "p3", ""]
    (root / "img" / "d.png").unlink()
    with pytest.raises(DataError, match=r"1 listed file\(s\) do not exist"):
        build_index(root)


# -- class-labelled datasets are read as before ------------------------------------------------------------


def test_class_datasets_take_only_views_with_a_view_column(tmp_path):
    root = tmp_path / "classes"
    for label in ("A", "B"):
        png(root / label / "x.png")
    with pytest.raises(DataError, match="class-labelled dataset: --findings, --uncertain and --blank apply"):
        build_index(root, options=FindingsOptions(findings=("A",)))
    with pytest.raises(DataError, match="--views pa needs a view column"):
        build_index(root, options=FindingsOptions(views="pa"))
    (root / "manifest.csv").write_text("path,label,view\nA/x.png,A,PA\nB/x.png,B,AP\n")
    index = build_index(root, options=FindingsOptions(views="ap"))
    assert index["label"].tolist() == ["B"]
    assert list(index.columns) == INDEX_COLUMNS  # no findings columns, no view column: today's index


def test_options_are_validated_naming_the_field():
    with pytest.raises(ConfigError, match="uncertain must be one of ignore, ones, zeros"):
        FindingsOptions(uncertain="maybe").validate()
    assert FindingsOptions.from_dict(FindingsOptions(findings=("A",), views="pa").to_dict()) == FindingsOptions(
        findings=("A",), views="pa"
    )


def test_aliases_are_exact_equivalents_only():
    assert equivalents("Effusion") == ("Effusion", "Pleural Effusion")
    assert equivalents("Pleural Effusion") == ("Pleural Effusion", "Effusion")
    assert match_finding("Effusion", ["Pleural Effusion", "Edema"]) == "Pleural Effusion"
    assert match_finding("Infiltration", ["Lung Opacity"]) is None  # approximate: not mapped
    assert match_finding("Pleural_Thickening", ["Pleural Other"]) is None


# -- patients ----------------------------------------------------------------------------------------------


def test_patient_spellings_are_one_patient(tmp_path):
    assert patient_key("00000231") == patient_key("231") == "231"
    assert patient_key("0000") == "0" and patient_key("p0007") == "p0007"
    frame = pd.DataFrame(
        {"path": ["a", "b", "c"], "patient_id": ["231", "00000231", "232"], "split": ["train", "test", "train"]}
    )
    leaks = leakage_report(frame)
    assert leaks["splits"].tolist() == ["test,train"] and leaks["images"].tolist() == [2]
    # across sets: NIH's CSV says 231, another set's file names say 00000231
    index = build_index(nih_folder(tmp_path / "nih"))
    other = pd.DataFrame({"patient_id": ["00000231", "00009999"]})
    assert shared_patients(index, other) == ["231"]


def test_assigned_splits_keep_a_patient_whole_and_each_finding_in_val_and_test():
    rng = np.random.default_rng(0)
    rows = []
    for p in range(120):
        for k in range(int(rng.integers(1, 4))):
            rows.append({"path": f"p{p}_{k}.png", "patient_id": f"{p:08d}", "split": "", "label": "x"})
    frame = pd.DataFrame(rows)
    n = len(frame)
    rare = np.zeros(n, np.float32)
    rare[frame.index[frame["patient_id"].isin([f"{p:08d}" for p in (3, 50, 90, 110)])]] = 1.0  # 4 patients
    common = (rng.random(n) < 0.3).astype(np.float32)
    frame["finding:Rare"], frame["finding:Common"] = rare, common
    split = assign_splits(frame, seed=1)
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    for column in ("finding:Rare", "finding:Common"):
        assert set(split.loc[split[column] > 0, "split"]) == {"train", "val", "test"}, column
    shares = split["split"].value_counts(normalize=True)
    assert 0.7 < shares["train"] < 0.9 and 0.05 < shares["val"] < 0.15 and 0.05 < shares["test"] < 0.15


# -- what the Data page and `index` show ---------------------------------------------------------------------


def test_findings_summary_by_hand(tmp_path):
    index = build_index(nih_folder(tmp_path / "nih"))
    summary = findings_summary(index)
    # Effusion: 00000231_001 (train), 00000232_000 (test), 00000234_000 (train) -> 3 of 5 images
    assert summary["findings"]["Effusion"] == {
        "positives": 3,
        "prevalence": 0.6,
        "left_out": 0,
        "by_split": {"train": 2, "test": 1},
    }
    assert summary["findings_per_image"] == {"0": 1, "1": 2, "2": 2}
    assert summary["all_negative"] == 1 and summary["all_negative_share"] == 0.2
    assert summary["co_occurrence"]["Effusion"]["Cardiomegaly"] == 1
    assert summary["co_occurrence"]["Effusion"]["Infiltration"] == 1
    assert summary["co_occurrence"]["Effusion"]["Effusion"] == 3
    assert summary["too_few"]["Hernia"] == ["train", "test"]  # 1 and 0 positives: fewer than 10 each
    table = split_table(index)
    assert list(table.columns[:2]) == ["train", "test"] and table.loc["Effusion", "total"] == 3
    info = summarize(index)
    assert info["task"] == "findings" and info["missing"] == 1 and info["patients"] == 4


def test_index_cli_prints_findings_and_writes_nothing_on_a_bad_name(tmp_path):
    root = nih_folder(tmp_path / "nih")
    out = tmp_path / "index.csv"
    result = cli("index", str(root), "--findings", "Effusion,Hernia", "--csv", str(out))
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["task"] == "findings" and list(info["findings"]) == ["Effusion", "Hernia"]
    assert info["missing"] == 1 and info["missing_examples"] == ["00000235_000.png"]
    assert "1 listed image(s) are not on disk" in result.stderr
    assert pd.read_csv(out)["finding:Effusion"].sum() == 3
    out.unlink()
    bad = cli("index", str(root), "--findings", "Nope", "--csv", str(out), check=False)
    assert bad.returncode != 0 and "no finding named 'Nope'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.skipif(not NIH64.is_dir(), reason=f"needs the NIH findings set at {NIH64}")
def test_nih_findings_64_counts_match_its_source():
    index = build_index(NIH64)
    info = summarize(index)
    # SOURCE.md: 920 images, 259 patients; No Finding 464, Infiltration 143, Effusion 140, ..., Pneumonia 5
    assert info["images"] == 920 and info["patients"] == 259 and info["all_negative"] == 464
    counts = {name: row["positives"] for name, row in info["findings"].items()}
    assert counts["Infiltration"] == 143 and counts["Effusion"] == 140 and counts["Hernia"] == 9
    assert counts["Pneumonia"] == 5 and len(counts) == 14


def test_a_findings_dataset_too_small_to_train_is_refused_with_a_reason(tmp_path):
    from cxrcore.data.splits import check_trainable

    index = assign_splits(build_index(nih_folder(tmp_path / "nih")))  # a handful of images: no validation split
    with pytest.raises(DataError, match="the validation split is empty"):
        check_trainable(index)


def test_a_dataset_list_refuses_a_findings_dataset(tmp_path):
    from cxrcore.data.index import labels_of, save_dataset_list

    nih = nih_folder(tmp_path / "nih")
    with pytest.raises(DataError, match="is a findings dataset \\(nih\\); a dataset list combines class-labelled"):
        labels_of(nih)
    with pytest.raises(DataError, match=r"datasets\[0\]: nih is a findings dataset"):
        save_dataset_list(tmp_path / "list.json", [{"path": str(nih), "name": "nih"}])
    assert not (tmp_path / "list.json").exists()


def test_the_audit_checks_findings_sets_and_says_what_the_shortcut_check_looked_at(tmp_path):
    from cxrcore.data.audit import audit

    root = nih_folder(tmp_path / "nih")
    png(root / "images_001" / "images" / "00000236_000.png", 0)  # a byte-identical copy of 00000231_000.png
    with open(root / "Data_Entry_2017.csv", "a") as fh:
        fh.write("00000236_000.png,Mass,0,236,050Y,M,PA,2500,2048,0.143,0.143,\n")
    (root / "test_list.txt").write_text("00000232_000.png\n00000236_000.png\n")
    result = audit(root, use_cache=False, options=FindingsOptions(views="pa"))
    assert result["task"] == "findings"
    assert result["classes"] == {"Any finding": 3, NO_FINDING: 1}  # the PA films: 231_000, 232, 233, 236
    assert result["duplicates"] == {"groups": 1, "across_splits": 1, "conflicting_labels": 1}
    assert result["shortcut"]["message"].startswith("Checked on a stated summary of the findings, any finding")
