"""Dataset lists: several datasets read as one, each image carrying its source (cxrcore.data.index)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_class_folders, write_image
from cxrcore.data.index import build_index, read_dataset_list
from cxrcore.errors import DataError


def write_list(path: Path, datasets) -> Path:
    path.write_text(json.dumps({"datasets": datasets}))
    return path


@pytest.fixture
def two_sets(tmp_path):
    """``north``: class folders TB (3) and Normal (4); ``south.csv``: a manifest with its own source column,
    hospitals east (TB 1, Normal 1) and west (Normal 2)."""
    make_class_folders(tmp_path / "north", classes=("TB", "Normal"), per_class=3)
    write_image(tmp_path / "north" / "Normal" / "extra.png")
    rows = ["path,label,patient_id,source"]
    for i, (label, hospital) in enumerate([("TB", "east"), ("Normal", "east"), ("Normal", "west"), ("Normal", "west")]):
        write_image(tmp_path / "south" / f"{i}.png", seed=i)
        rows.append(f"south/{i}.png,{label},p{i},{hospital}")
    (tmp_path / "south.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_labels_are_mapped_sources_named_and_nulls_left_out(two_sets):
    lists = two_sets / "lists"  # paths are relative to the list's folder
    lists.mkdir()
    listed = write_list(
        lists / "both.json",
        [
            {"path": "../north", "name": "North", "labels": {"TB": "Abnormal"}, "weight": 2},
            {"path": "../south.csv", "name": "South", "labels": {"TB": None}},
        ],
    )
    index = build_index(listed)
    assert index.attrs["layout"] == "dataset-list"
    counts = index.groupby(["source", "label"]).size().to_dict()
    # north's images carry the list's name; south's carry their own source column; south's TB is left out
    assert counts == {("North", "Abnormal"): 3, ("North", "Normal"): 4, ("east", "Normal"): 1, ("west", "Normal"): 2}
    assert set(index.loc[index["source"] == "North", "weight"]) == {2.0}
    assert set(index.loc[index["source"] != "North", "weight"]) == {1.0}
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in index["path"])
    # patients are kept apart per dataset: south's p1 is "South/p1"
    assert "South/p1" in set(index["patient_id"])


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"path": "nowhere"}, "nowhere does not exist"),
        (
            {"path": "north", "labels": {"Tuberculosis": "Abnormal"}},
            "'Tuberculosis', which it does not have; its labels: Normal, TB",
        ),
        ({"path": "north", "weight": 0}, "weight must be a positive number"),
        ({"path": "north", "colour": "red"}, "unknown key(s) colour"),
        ({"path": "north", "labels": {"TB": None, "Normal": None}}, "every label is mapped to null"),
        ({"name": "no path"}, "each dataset needs a path"),
    ],
)
def test_a_bad_list_is_refused_naming_the_entry(two_sets, entry, message):
    listed = write_list(two_sets / "list.json", [{"path": "south.csv"}, entry])
    with pytest.raises(DataError) as found:
        build_index(listed)
    assert "datasets[1]" in str(found.value) and message in str(found.value)


def test_a_list_is_recognised_by_its_content_and_lists_cannot_nest(two_sets):
    listed = write_list(two_sets / "my-sets.txt", [{"path": "north"}])  # not named .json
    assert set(build_index(listed)["source"]) == {"north"}  # the folder's name when none is given
    outer = write_list(two_sets / "outer.json", [{"path": "my-sets.txt"}])
    with pytest.raises(DataError, match="is itself a dataset list"):
        read_dataset_list(outer)
    (two_sets / "empty.json").write_text(json.dumps({"sets": []}))
    with pytest.raises(DataError, match="expected"):
        build_index(two_sets / "empty.json")


def test_a_list_saved_from_the_pages_reads_back_and_a_bad_one_is_not_written(two_sets):
    from cxrcore.data.index import labels_of, save_dataset_list

    assert labels_of(two_sets / "south.csv") == ["Normal", "TB"]
    saved = save_dataset_list(
        two_sets / "lists" / "mine.json",
        [{"path": str(two_sets / "north"), "name": "North", "labels": {"TB": "Abnormal"}, "weight": 1.5}],
    )
    assert json.loads(saved.read_text())["datasets"][0]["path"] == str((two_sets / "north").resolve())
    assert set(build_index(saved)["label"]) == {"Abnormal", "Normal"}
    inside = save_dataset_list(two_sets / "here.json", [{"path": str(two_sets / "south.csv"), "name": "S"}])
    assert json.loads(inside.read_text())["datasets"][0]["path"] == "south.csv"  # below the list: relative
    with pytest.raises(DataError, match="'Tuberculosis', which it does not have"):
        save_dataset_list(two_sets / "bad.json", [{"path": str(two_sets / "north"), "labels": {"Tuberculosis": "X"}}])
    assert not (two_sets / "bad.json").exists() and not list(two_sets.glob(".bad.json.tmp*"))


def test_the_data_page_builds_saves_and_opens_a_list(two_sets, monkeypatch, demo_data):
    from streamlit.testing.v1 import AppTest

    from conftest import REPO
    from pages.shared import remember_dataset

    monkeypatch.setenv("CXRLAB_DEMO_DATA", str(demo_data))
    for path in (two_sets / "north", two_sets / "south.csv"):
        remember_dataset(path)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.run()
    at.multiselect(key="data_list_picked").set_value([str(two_sets / "north"), str((two_sets / "south.csv").resolve())])
    at.run()
    at.text_input(key="data_list_name_0").set_value("North")
    at.text_input(key="data_list_save").set_value(str(two_sets / "lists" / "combined.json"))
    at.run()
    at.button(key="data_list_save_go").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    saved = json.loads((two_sets / "lists" / "combined.json").read_text())["datasets"]
    assert [d["name"] for d in saved] == ["North", "south"] and saved[0]["labels"] == {}
    assert any(str(two_sets / "lists" / "combined.json") in h.value for h in at.subheader)  # opened
    assert any(m.label == "Layout" and m.value == "dataset-list" for m in at.metric)
