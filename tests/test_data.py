"""Tests for cxrcore.data.index: layout detection, the image index, its cache and the summary."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cxrcore.data.index as data_mod
from conftest import make_class_folders, write_image
from cxrcore.data.index import build_index, patient_from_filename, scan_layout, summarize
from cxrcore.errors import DataError

COLUMNS = ["path", "label", "split", "patient_id", "source", "weight", "width", "height", "mode", "bytes"]


# ---------------------------------------------------------------- helpers


def tiny(path: Path, size: int = 8, mode: str = "L", seed: int = 0) -> Path:
    return write_image(path, size=size, mode=mode, seed=seed)


def write_csv(path: Path, header: str, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


@pytest.fixture
def header_reads(monkeypatch):
    """Counts the files whose headers build_index reads (as resolved path strings)."""
    reads: list[str] = []
    real = data_mod.read_header

    def counting(path):
        reads.append(str(Path(path).resolve()))
        return real(path)

    monkeypatch.setattr(data_mod, "read_header", counting)
    return reads


def rel_paths(index, root: Path) -> set[str]:
    root = root.resolve()
    return {Path(p).relative_to(root).as_posix() for p in index["path"]}


# ---------------------------------------------------------------- layouts


def test_class_folders_layout(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("NORMAL", "PNEUMONIA"), per_class=3, size=8)
    tiny(root / "NORMAL" / "nested" / "deep.png")  # sub-folders are searched
    (root / "NORMAL" / "notes.txt").write_text("not an image")
    tiny(root / "PNEUMONIA" / ".hidden.png")  # hidden files ignored
    index = build_index(root)
    assert index.attrs["layout"] == "class-folders"
    assert index.attrs["root"] == str(root.resolve())
    assert Counter(index["label"]) == {"NORMAL": 4, "PNEUMONIA": 3}
    assert set(index["split"]) == {""}
    assert "NORMAL/nested/deep.png" in rel_paths(index, root)
    assert index.loc[index["path"].str.endswith("deep.png"), "label"].item() == "NORMAL"
    assert not any(p.endswith((".txt", ".hidden.png")) for p in index["path"])


def test_class_folders_skip_mask_folders(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("A", "B"), per_class=2, size=8)
    tiny(root / "A" / "masks" / "img_000.png")  # a segmentation mask inside a class
    tiny(root / "masks" / "m.png")  # a top-level masks folder is not a class
    index = build_index(root)
    assert index.attrs["layout"] == "class-folders"
    assert Counter(index["label"]) == {"A": 2, "B": 2}
    assert not index["path"].str.contains("/masks/", regex=False).any()


@pytest.mark.parametrize(
    "split_dirs, expected",
    [
        (("train", "val", "test"), {"train", "val", "test"}),
        (("train", "test"), {"train", "test"}),  # chest_xray style
        (("train", "valid", "test"), {"train", "val", "test"}),  # 'valid' means val
    ],
)
def test_split_folders_layout(tmp_path, split_dirs, expected):
    root = make_class_folders(
        tmp_path / "chest_xray", classes=("NORMAL", "PNEUMONIA"), per_class=2, size=8, split_dirs=split_dirs
    )
    index = build_index(root)
    assert index.attrs["layout"] == "split-folders"
    assert set(index["split"]) == expected
    assert len(index) == 2 * 2 * len(split_dirs)
    for split_dir in split_dirs:
        for label in ("NORMAL", "PNEUMONIA"):
            rows = index[index["path"].str.contains(f"/{split_dir}/{label}/", regex=False)]
            assert len(rows) == 2
            assert set(rows["label"]) == {label}
            assert set(rows["split"]) == {"val" if split_dir == "valid" else split_dir}


def test_covid_radiography_layout_ignores_masks(tmp_path):
    root = tmp_path / "COVID-19_Radiography_Dataset"
    for label, n in (("COVID", 3), ("Normal", 2)):
        for i in range(1, n + 1):
            tiny(root / label / "images" / f"{label}-{i}.png", seed=i)
            tiny(root / label / "masks" / f"{label}-{i}.png", seed=10 + i)
    (root / "COVID.metadata.csv.txt").write_text("ignored")
    index = build_index(root)
    assert index.attrs["layout"] == "covid-radiography"
    assert rel_paths(index, root) == {
        "COVID/images/COVID-1.png",
        "COVID/images/COVID-2.png",
        "COVID/images/COVID-3.png",
        "Normal/images/Normal-1.png",
        "Normal/images/Normal-2.png",
    }
    assert Counter(index["label"]) == {"COVID": 3, "Normal": 2}
    assert set(index["patient_id"]) == {""}


def _manifest_dataset(root: Path) -> list[str]:
    tiny(root / "imgs" / "a.png", seed=1)
    tiny(root / "imgs" / "b.png", seed=2)
    tiny(root / "imgs" / "c.png", seed=3)
    tiny(root / "other" / "person3_virus_9.png", seed=4)
    return [
        "imgs/a.png,NORMAL,p1,train",
        "imgs/b.png,NORMAL,p1,valid",
        "imgs/c.png,PNEUMONIA,p2,test",
        "other/person3_virus_9.png,PNEUMONIA,,",
    ]  # no patient id: taken from the name


@pytest.mark.parametrize("given", ["csv-path", "root-manifest"])
def test_manifest_layout(tmp_path, given):
    root = tmp_path / "m"
    lines = _manifest_dataset(root)
    if given == "csv-path":
        arg = write_csv(root / "list.csv", "path,label,patient_id,split", lines)
    else:
        write_csv(root / "manifest.csv", "path,label,patient_id,split", lines)
        arg = root
    index = build_index(arg)
    assert index.attrs["layout"] == "manifest"
    assert index.attrs["root"] == str(root.resolve())
    by_name = {Path(p).name: row for p, row in zip(index["path"], index.to_dict("records"))}
    assert set(by_name) == {"a.png", "b.png", "c.png", "person3_virus_9.png"}
    assert by_name["a.png"]["path"] == str(root.resolve() / "imgs" / "a.png")
    expected = {
        "a.png": ("NORMAL", "train", "p1"),
        "b.png": ("NORMAL", "val", "p1"),
        "c.png": ("PNEUMONIA", "test", "p2"),
        "person3_virus_9.png": ("PNEUMONIA", "", "person3"),
    }
    for name, (label, split, patient) in expected.items():
        assert (by_name[name]["label"], by_name[name]["split"], by_name[name]["patient_id"]) == (label, split, patient)


def test_manifest_without_optional_columns(tmp_path):
    root = tmp_path / "m"
    tiny(root / "x.png")
    tiny(root / "IM-0115-0001.jpeg")
    write_csv(root / "manifest.csv", "label,path", ["A,x.png", "B,IM-0115-0001.jpeg"])
    index = build_index(root)
    assert list(index["label"]) == ["A", "B"]
    assert list(index["split"]) == ["", ""]
    assert list(index["patient_id"]) == ["", "IM-0115"]


def test_scan_layout_lists_rows_without_opening_images(tmp_path, header_reads):
    root = tmp_path / "d"
    (root / "A").mkdir(parents=True)
    (root / "A" / "not_really.png").write_bytes(b"garbage")  # would fail if it were opened
    got_root, layout, rows = scan_layout(root)
    assert got_root == root.resolve()
    assert layout == "class-folders"
    assert rows == [{"relpath": "A/not_really.png", "label": "A", "split": "", "patient_id": ""}]
    assert header_reads == []


# ---------------------------------------------------------------- index columns


def test_index_columns_and_header_facts(tmp_path):
    root = tmp_path / "d"
    rgb = np.random.default_rng(0).integers(0, 256, (10, 20, 3), dtype=np.uint8)
    (root / "A").mkdir(parents=True)
    Image.fromarray(rgb).save(root / "A" / "wide.png")
    tiny(root / "B" / "gray.png", size=12)
    Image.fromarray(np.zeros((3, 5), dtype=np.uint16)).save(root / "B" / "deep.png")
    index = build_index(root)
    assert list(index.columns) == COLUMNS
    rows = {Path(p).name: r for p, r in zip(index["path"], index.to_dict("records"))}
    assert (rows["wide.png"]["width"], rows["wide.png"]["height"], rows["wide.png"]["mode"]) == (20, 10, "RGB")
    assert (rows["gray.png"]["width"], rows["gray.png"]["height"], rows["gray.png"]["mode"]) == (12, 12, "L")
    assert (rows["deep.png"]["width"], rows["deep.png"]["height"]) == (5, 3)
    for name, folder in (("wide.png", "A"), ("gray.png", "B"), ("deep.png", "B")):
        assert rows[name]["bytes"] == os.path.getsize(root / folder / name)
        assert rows[name]["label"] == folder


def test_index_header_facts_survive_the_cache(tmp_path, header_reads):
    from test_io import write_dicom

    root = tmp_path / "d"
    write_dicom(root / "A" / "scan.dcm", np.arange(12, dtype=np.uint16).reshape(3, 4), bits_stored=12)
    (root / "B").mkdir()
    Image.fromarray(np.zeros((3, 5), dtype=np.uint16)).save(root / "B" / "deep.png")
    first = build_index(root)
    second = build_index(root)
    assert len(header_reads) == 2  # the second build read nothing
    dcm = first[first["path"].str.endswith("scan.dcm")].iloc[0]
    assert (dcm["width"], dcm["height"], dcm["mode"]) == (4, 3, "MONOCHROME2 12-bit")
    deep = first[first["path"].str.endswith("deep.png")].iloc[0]
    assert (deep["width"], deep["height"]) == (5, 3)
    assert first.to_dict("records") == second.to_dict("records")


# ---------------------------------------------------------------- patient ids


@pytest.mark.parametrize(
    "name, patient",
    [
        ("person123_virus_456.jpeg", "person123"),
        ("person7_bacteria_29.jpeg", "person7"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
        ("00000013_005.png", "00000013"),
        ("COVID-12.png", ""),
        ("train/PNEUMONIA/person1_bacteria_1.jpeg", "person1"),  # folders do not matter
        ("Normal-7.png", ""),
        ("random_name.png", ""),
    ],
)
def test_patient_from_filename(name, patient):
    assert patient_from_filename(name) == patient


def test_index_fills_patient_ids_from_names(tmp_path):
    root = tmp_path / "d"
    tiny(root / "PNEUMONIA" / "person5_virus_1.jpeg")
    tiny(root / "PNEUMONIA" / "person5_bacteria_2.jpeg")
    tiny(root / "NORMAL" / "IM-0001-0001.jpeg")
    tiny(root / "NORMAL" / "scan.png")
    index = build_index(root)
    got = {Path(p).name: pid for p, pid in zip(index["path"], index["patient_id"])}
    assert got == {
        "person5_virus_1.jpeg": "person5",
        "person5_bacteria_2.jpeg": "person5",
        "IM-0001-0001.jpeg": "IM-0001",
        "scan.png": "",
    }


# ---------------------------------------------------------------- errors


def _missing(tmp):
    return tmp / "does-not-exist", ["dataset not found", str(tmp / "does-not-exist")]


def _empty_class(tmp):
    root = tmp / "d"
    tiny(root / "A" / "a.png")
    (root / "B").mkdir()
    return root, ["no images", str((root / "B").resolve())]


def _empty_class_in_split(tmp):
    root = tmp / "d"
    tiny(root / "train" / "A" / "a.png")
    tiny(root / "val" / "A" / "a.png")
    (root / "val" / "B").mkdir()
    return root, ["no images", str((root / "val" / "B").resolve())]


def _no_class_folders(tmp):
    root = tmp / "d"
    tiny(root / "loose.png")
    return root, ["no class folders"]


def _empty_root(tmp):
    root = tmp / "d"
    root.mkdir()
    return root, ["no class folders"]


def _not_a_csv(tmp):
    path = tiny(tmp / "single.png")
    return path, ["is a file"]


def _manifest_no_label(tmp):
    root = tmp / "m"
    tiny(root / "a.png")
    return write_csv(root / "manifest.csv", "path,split", ["a.png,train"]), ["lacks column", "label"]


def _manifest_missing_file(tmp):
    root = tmp / "m"
    tiny(root / "a.png")
    return write_csv(root / "list.csv", "path,label", ["a.png,A", "ghost.png,B"]), ["do not exist", "ghost.png"]


def _manifest_bad_split(tmp):
    root = tmp / "m"
    tiny(root / "a.png")
    return write_csv(root / "list.csv", "path,label,split", ["a.png,A,holdout"]), ["unknown split", "holdout"]


def _manifest_empty_label(tmp):
    root = tmp / "m"
    tiny(root / "a.png")
    return write_csv(root / "list.csv", "path,label", ["a.png, "]), ["empty label", "a.png"]


def _manifest_no_rows(tmp):
    return write_csv(tmp / "m" / "list.csv", "path,label", []), ["lists no images"]


ERROR_CASES = {
    f.__name__.lstrip("_"): f
    for f in (
        _missing,
        _empty_class,
        _empty_class_in_split,
        _no_class_folders,
        _empty_root,
        _not_a_csv,
        _manifest_no_label,
        _manifest_missing_file,
        _manifest_bad_split,
        _manifest_empty_label,
        _manifest_no_rows,
    )
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_build_index_errors(tmp_path, case):
    arg, fragments = ERROR_CASES[case](tmp_path)
    with pytest.raises(DataError) as info:
        build_index(arg)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message


def test_one_unreadable_image_is_named(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=2, size=8)
    bad = root / "B" / "broken.png"
    bad.write_text("not an image")
    with pytest.raises(DataError) as info:
        build_index(root)
    assert str(bad.resolve()) in str(info.value)
    assert "more" not in str(info.value)


def test_several_unreadable_images_are_counted(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=2, size=8)
    for name in ("A/bad1.png", "A/bad2.png", "B/bad3.jpg"):
        (root / name).write_bytes(b"\x00" * 40)
    with pytest.raises(DataError) as info:
        build_index(root)
    message = str(info.value)
    assert str((root / "A" / "bad1.png").resolve()) in message  # the first in walk order
    assert "2 more" in message


# ---------------------------------------------------------------- cache


def test_cache_rereads_only_changed_and_new_files(tmp_path, header_reads):
    root = make_class_folders(tmp_path / "d", per_class=4, size=8)
    n = 8
    first = build_index(root)
    assert len(first) == n and len(header_reads) == n

    header_reads.clear()
    build_index(root)
    assert header_reads == []  # unchanged: no header read

    changed = tiny(root / "A" / "img_001.png", size=30, seed=42)  # different size on disk
    added = tiny(root / "B" / "new.png", size=16)
    header_reads.clear()
    third = build_index(root)
    assert sorted(header_reads) == sorted([str(changed.resolve()), str(added.resolve())])
    assert len(third) == n + 1
    row = third[third["path"] == str(changed.resolve())].iloc[0]
    assert (row["width"], row["height"], row["bytes"]) == (30, 30, os.path.getsize(changed))

    header_reads.clear()
    build_index(root, use_cache=False)
    assert len(header_reads) == n + 1


def test_cache_rereads_a_touched_file_of_the_same_size(tmp_path, header_reads):
    root = make_class_folders(tmp_path / "d", per_class=2, size=8)
    build_index(root)
    touched = root / "B" / "img_001.png"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    header_reads.clear()
    build_index(root)
    assert header_reads == [str(touched.resolve())]


def test_removed_file_disappears_from_cached_index(tmp_path, header_reads):
    root = make_class_folders(tmp_path / "d", per_class=3, size=8)
    build_index(root)
    (root / "A" / "img_000.png").unlink()
    header_reads.clear()
    index = build_index(root)
    assert header_reads == []
    assert len(index) == 5
    assert not index["path"].str.endswith("A/img_000.png").any()


def test_moved_file_gets_its_new_label(tmp_path, header_reads):
    root = make_class_folders(tmp_path / "d", per_class=3, size=8)
    build_index(root)
    moved = root / "B" / "moved_from_A.png"
    shutil.move(root / "A" / "img_000.png", moved)
    header_reads.clear()
    index = build_index(root)
    assert Counter(index["label"]) == {"A": 2, "B": 4}
    assert index.loc[index["path"] == str(moved.resolve()), "label"].item() == "B"
    assert header_reads == [str(moved.resolve())]  # the others came from the cache


def test_manifest_relabel_shows_up_with_cached_headers(tmp_path, header_reads):
    root = tmp_path / "m"
    tiny(root / "a.png", seed=1)
    tiny(root / "b.png", seed=2)
    write_csv(root / "manifest.csv", "path,label,split", ["a.png,NORMAL,train", "b.png,NORMAL,test"])
    build_index(root)
    assert len(header_reads) == 2
    write_csv(root / "manifest.csv", "path,label,split", ["a.png,NORMAL,train", "b.png,PNEUMONIA,val"])
    header_reads.clear()
    index = build_index(root)
    assert header_reads == []
    assert list(index["label"]) == ["NORMAL", "PNEUMONIA"]
    assert list(index["split"]) == ["train", "val"]


def test_cache_is_written_under_cxrcore_cache(tmp_path, fresh_cache):
    root = make_class_folders(tmp_path / "d", per_class=1, size=8)
    build_index(root)
    cache_root = Path(os.environ["CXRCORE_CACHE"])
    assert len(list((cache_root / "index").glob("*.csv"))) == 1


def _cache_file() -> Path:
    (cache_file,) = (Path(os.environ["CXRCORE_CACHE"]) / "index").glob("*.csv")
    return cache_file


@pytest.mark.parametrize(
    "content",
    [
        'this is "not a valid\ncache',  # parses, but has none of the columns
        "relpath,bytes\nA/img_000.png,12\n",  # some columns missing
        "",  # empty file
    ],
)
def test_damaged_cache_is_ignored(tmp_path, fresh_cache, header_reads, content):
    root = make_class_folders(tmp_path / "d", per_class=2, size=8)
    build_index(root)
    _cache_file().write_text(content)
    header_reads.clear()
    index = build_index(root)
    assert len(index) == 4 and len(header_reads) == 4
    assert list(index["width"]) == [8, 8, 8, 8]


def test_damaged_cache_row_is_read_again(tmp_path, fresh_cache, header_reads):
    root = make_class_folders(tmp_path / "d", per_class=2, size=8)
    build_index(root)
    lines = _cache_file().read_text().splitlines()
    assert lines[0].split(",") == ["relpath", "bytes", "mtime_ns", "width", "height", "mode"]
    damaged_relpath = lines[1].split(",")[0]
    fields = lines[1].split(",")
    fields[1] = "not-a-number"
    _cache_file().write_text("\n".join([lines[0], ",".join(fields), *lines[2:]]) + "\n")
    header_reads.clear()
    index = build_index(root)
    assert header_reads == [str((root / damaged_relpath).resolve())]
    assert len(index) == 4


# ---------------------------------------------------------------- progress


@pytest.mark.parametrize("n_per_class", [3, 30])
def test_progress_ends_with_n_of_n(tmp_path, n_per_class):
    root = make_class_folders(tmp_path / "d", per_class=n_per_class, size=8)
    n = 2 * n_per_class
    for _ in range(2):  # fresh, then from the cache
        calls = []
        build_index(root, progress=lambda done, total, calls=calls: calls.append((done, total)))
        assert calls, "progress was never called"
        assert calls[-1] == (n, n)
        assert all(total == n and 0 < done <= n for done, total in calls)
        assert [d for d, _ in calls] == sorted(d for d, _ in calls)


# ---------------------------------------------------------------- summarize


def test_summarize_class_folders(tmp_path):
    root = tmp_path / "d"
    for i in range(30):
        tiny(root / "PNEUMONIA" / f"person{1 + i % 2}_virus_{i}.png", seed=i)
    for i in range(10):
        tiny(root / "NORMAL" / f"scan_{i}.png", seed=100 + i)
    summary = summarize(build_index(root))
    assert summary["images"] == 40
    assert summary["classes"] == {"NORMAL": 10, "PNEUMONIA": 30}
    assert summary["imbalance_ratio"] == pytest.approx(3.0)
    assert summary["by_split"] == {"NORMAL": {"unassigned": 10}, "PNEUMONIA": {"unassigned": 30}}
    assert summary["patients"] == 2
    assert summary["layout"] == "class-folders"
    assert summary["root"] == str(root.resolve())
    assert summary["modes"] == {"L": 40}


def test_summarize_split_folders(tmp_path):
    root = tmp_path / "d"
    layout = {("train", "A"): 4, ("train", "B"): 2, ("test", "A"): 2, ("test", "B"): 1}
    for (split, label), n in layout.items():
        for i in range(n):
            tiny(root / split / label / f"{i}.png", seed=i)
    summary = summarize(build_index(root))
    assert summary["images"] == 9
    assert summary["classes"] == {"A": 6, "B": 3}
    assert summary["by_split"] == {"A": {"train": 4, "test": 2}, "B": {"train": 2, "test": 1}}
    assert summary["imbalance_ratio"] == pytest.approx(2.0)
    assert summary["patients"] == 0
    assert summary["layout"] == "split-folders"
