"""Training on sources: batches balanced over (source, class) groups, in the image pipeline and on cached
activations, and sources that hold one class left out before splitting."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest

import conftest
from conftest import write_image
from cxrcore.config import TrainConfig
from cxrcore.data.index import build_index
from cxrcore.data.io import prepare_image
from cxrcore.data.splits import (
    describe_drop,
    drop_single_class_sources,
    source_groups,
    source_weights,
    training_class_weights,
)
from cxrcore.errors import DataError

#: (source, class) -> images: three groups of very different sizes, one source holding both classes
GROUPS = {("S1", "A"): 24, ("S1", "B"): 6, ("S2", "A"): 3}
#: a drawn share must be within this of its expected value (about 4 standard deviations at the draws below)
TOLERANCE = 0.06


def write_manifest(root, groups: dict[tuple[str, str], int], size: int = 12):
    """ROOT/labels.csv with a ``source`` column and one random image per row (every image distinct)."""
    rows = []
    for g, ((source, label), count) in enumerate(groups.items()):
        for i in range(count):
            name = f"images/{source or 'nosource'}_{label}_{i:03d}.png"
            write_image(root / name, size=size, seed=1000 * g + i)
            rows.append({"path": name, "label": label, "patient_id": f"{source}-{label}-{i}", "source": source})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


@pytest.fixture
def frame(tmp_path):
    return build_index(write_manifest(tmp_path / "d", GROUPS))


def shares(names: list, drawn: list) -> dict:
    counts = Counter(drawn)
    return {name: counts[name] / len(drawn) for name in names}


def assert_shares(found: dict, expected: dict) -> None:
    for name, share in expected.items():
        assert abs(found[name] - share) < TOLERANCE, (name, found, expected)


# -- the groups ---------------------------------------------------------------------------------------


def test_groups_are_source_and_class_drawn_evenly_times_the_source_weight(frame):
    groups = source_groups(frame)
    assert groups.names == [("S1", "A"), ("S1", "B"), ("S2", "A")]
    assert groups.sizes.tolist() == [24, 6, 3]
    np.testing.assert_allclose(groups.probabilities, [1 / 3] * 3)
    assert [groups.names[c] for c in groups.codes[[0, 24, 30]]] == [("S1", "A"), ("S1", "B"), ("S2", "A")]
    weighted = source_groups(frame.assign(weight=frame["source"].map({"S1": 1.0, "S2": 2.0})))
    np.testing.assert_allclose(weighted.probabilities, [0.25, 0.25, 0.5])
    assert weighted.class_shares() == pytest.approx({"A": 0.75, "B": 0.25})
    assert source_weights(frame).eq(1.0).all()  # no weight column: every source weighs 1
    with pytest.raises(DataError, match="source weight"):
        source_weights(frame.assign(weight=-1.0))


def test_balancing_needs_a_known_source(frame):
    with pytest.raises(DataError, match=r"--balance source.*no image of this dataset has a source"):
        source_groups(frame.assign(source=""))
    with pytest.raises(DataError, match="no image of this dataset has a source"):
        source_groups(frame.drop(columns="source"))


def test_class_weights_on_a_balanced_draw_weigh_what_the_draw_gives():
    even = pd.DataFrame({"label": ["A"] * 30 + ["B"] * 3 + ["A"] * 5 + ["B"] * 50, "source": ["S1"] * 33 + ["S2"] * 55})
    groups = source_groups(even)
    # every source holds both classes: the draw is already even over classes, so the weights are all 1
    assert training_class_weights(even, ["A", "B"], "balanced", groups) == pytest.approx({0: 1.0, 1: 1.0})
    assert training_class_weights(even, ["A", "B"], "none", groups) is None
    # without balancing, the weights follow the image counts as before
    assert training_class_weights(even, ["A", "B"], "balanced") == pytest.approx({0: 88 / 70, 1: 88 / 106})
    lopsided = pd.DataFrame({"label": ["A", "B", "A"], "source": ["S1", "S1", "S2"]})  # S2 holds A only
    weights = training_class_weights(lopsided, ["A", "B"], "balanced", source_groups(lopsided))
    assert weights == pytest.approx({0: 1 / (2 * 2 / 3), 1: 1 / (2 * 1 / 3)})


# -- balanced batches in the image pipeline ------------------------------------------------------------


def test_the_image_pipeline_draws_each_group_evenly_and_keeps_the_number_of_batches(frame):
    from cxrcore.training.pipeline import make_dataset

    lookup = {prepare_image(p, 8).tobytes(): i for i, p in enumerate(frame["path"])}
    groups = source_groups(frame)

    def drawn_groups(ds, epochs):
        out = []
        for _ in range(epochs):
            for images, _labels in ds:
                out += [groups.names[groups.codes[lookup[im.astype(np.uint8).tobytes()]]] for im in images.numpy()]
        return out

    plain = make_dataset(frame, ["A", "B"], 8, batch_size=8, training=True, seed=1)
    ds = make_dataset(frame, ["A", "B"], 8, batch_size=8, training=True, seed=1, balance="source")
    steps = math.ceil(len(frame) / 8)
    assert int(ds.cardinality()) == int(plain.cardinality()) == steps
    drawn = drawn_groups(ds, 30)
    assert len(drawn) == 30 * len(frame)  # an epoch is as many examples as there are images
    assert_shares(shares(groups.names, drawn), {name: 1 / 3 for name in groups.names})
    # unbalanced, the draw follows the group sizes (24:6:3)
    assert shares(groups.names, drawn_groups(plain, 1))[("S1", "A")] == pytest.approx(24 / 33)

    weighted = frame.assign(weight=frame["source"].map({"S1": 1.0, "S2": 2.0}))
    ds = make_dataset(weighted, ["A", "B"], 8, batch_size=8, training=True, seed=1, balance="source")
    expected = {("S1", "A"): 0.25, ("S1", "B"): 0.25, ("S2", "A"): 0.5}
    assert_shares(shares(groups.names, drawn_groups(ds, 30)), expected)


def test_validation_is_never_rebalanced_and_a_source_is_needed(frame):
    from cxrcore.training.pipeline import make_dataset

    ordered = make_dataset(frame, ["A", "B"], 8, batch_size=64, balance="source")  # not training
    images, labels = next(iter(ordered))
    assert len(images) == len(frame)
    assert labels.numpy().argmax(1).tolist() == frame["label"].map({"A": 0, "B": 1}).tolist()
    with pytest.raises(DataError, match="no image of this dataset has a source"):
        make_dataset(frame.assign(source=""), ["A", "B"], 8, training=True, balance="source")


# -- balanced batches on cached activations ------------------------------------------------------------


@pytest.mark.parametrize("views", [0, 2])
def test_cached_activations_are_drawn_by_the_same_groups_by_row(frame, views):
    from cxrcore.training.features import dataset

    n = len(frame)
    rows = np.repeat(np.arange(n, dtype=np.float32)[:, None], 3, axis=1)  # each activation holds its row
    acts = np.stack([rows + 1000 * v for v in range(views)]) if views else rows
    labels = frame["label"].map({"A": 0, "B": 1}).to_numpy()

    def drawn(groups, epochs=60):
        ds = dataset(acts, np.eye(2, dtype=np.float32)[labels], batch_size=8, training=True, seed=5, groups=groups)
        assert int(ds.cardinality()) == math.ceil(n / 8)
        out = []
        for _ in range(epochs):
            for x, y in ds:
                for value, onehot in zip(x.numpy()[:, 0], y.numpy()):
                    row = int(value) % 1000
                    assert onehot.argmax() == labels[row]  # the label travels with its row
                    out.append(groups.names[groups.codes[row]])
        assert len(out) == epochs * n
        return out

    groups = source_groups(frame)
    assert_shares(shares(groups.names, drawn(groups)), {name: 1 / 3 for name in groups.names})
    weighted = source_groups(frame.assign(weight=frame["source"].map({"S1": 1.0, "S2": 2.0})))
    expected = {("S1", "A"): 0.25, ("S1", "B"): 0.25, ("S2", "A"): 0.5}
    assert_shares(shares(groups.names, drawn(weighted)), expected)
    # validation: every row once, in order, whatever the groups
    val = dataset(acts, np.eye(2, dtype=np.float32)[labels], batch_size=64, training=False, seed=5, groups=groups)
    assert (next(iter(val))[0].numpy()[:, 0].astype(int) % 1000).tolist() == [*range(n)]


# -- sources that hold one class -----------------------------------------------------------------------

MIXED = {
    ("S1", "A"): 10,
    ("S1", "B"): 10,
    ("S2", "A"): 6,  # S2 holds A only
    ("S3", "B"): 4,  # S3 holds B only
    ("", "A"): 3,  # no source: never dropped
    ("", "B"): 3,
}


def test_single_class_sources_are_dropped_saying_which_and_how_many(tmp_path):
    index = build_index(write_manifest(tmp_path / "d", MIXED))
    kept, report = drop_single_class_sources(index)
    assert report == {
        "dropped": {"S2": {"class": "A", "images": 6}, "S3": {"class": "B", "images": 4}},
        "images_dropped": 10,
        "unknown_kept": 6,
    }
    assert len(kept) == len(index) - 10 and set(kept["source"]) == {"S1", ""}
    assert kept.attrs["root"] == index.attrs["root"]
    line = describe_drop(report)
    assert "dropped 2 single-class source(s), 10 image(s): S2 (6 A), S3 (4 B)" in line
    assert "6 image(s) without a source kept" in line


def test_dropping_refuses_when_nothing_or_one_class_would_be_left_or_no_source_is_known(tmp_path):
    only_single = build_index(write_manifest(tmp_path / "a", {("S1", "A"): 3, ("S2", "B"): 3}))
    with pytest.raises(DataError, match=r"leaves no images: every source holds one class \(S1 \(3 A\), S2 \(3 B\)\)"):
        drop_single_class_sources(only_single)
    one_left = build_index(write_manifest(tmp_path / "b", {("S1", "A"): 3, ("S2", "B"): 3, ("", "A"): 2}))
    with pytest.raises(DataError, match=r"leaves one class only \(A\)"):
        drop_single_class_sources(one_left)
    unknown = build_index(write_manifest(tmp_path / "c", {("", "A"): 3, ("", "B"): 3}))
    with pytest.raises(DataError, match="dropping single-class sources.*no image of this dataset has a source"):
        drop_single_class_sources(unknown)


def test_prepare_data_drops_before_splitting_and_refuses_balance_without_sources(tmp_path):
    from cxrcore.training.train import prepare_data

    data = write_manifest(tmp_path / "d", MIXED)
    config = TrainConfig(data=str(data), backbone="simple_cnn", drop_single_class_sources=True, val_fraction=0.2)
    frame, classes = prepare_data(config)
    assert classes == ["A", "B"] and len(frame) == 26 and not {"S2", "S3"} & set(frame["source"])
    assert frame.attrs["sources"]["images_dropped"] == 10
    kept, _ = prepare_data(TrainConfig(data=str(data), backbone="simple_cnn", val_fraction=0.2))
    assert len(kept) == 36 and "sources" not in kept.attrs
    nameless = write_manifest(tmp_path / "e", {("", "A"): 10, ("", "B"): 10})
    with pytest.raises(DataError, match="--balance source"):
        prepare_data(TrainConfig(data=str(nameless), backbone="simple_cnn", balance="source"))


def test_jobs_check_the_sources_at_submission(tmp_path):
    from cxrcore.jobs import queue as job_queue
    from cxrcore.jobs.store import JobStore

    store = JobStore(tmp_path / "jobs.sqlite")
    nameless = write_manifest(tmp_path / "e", {("", "A"): 4, ("", "B"): 4})
    with pytest.raises(DataError, match="--balance source"):
        job_queue.submit(conftest.tiny_config(nameless, balance="source"), store=store, start_scheduler=False)
    single = write_manifest(tmp_path / "s", {("S1", "A"): 4, ("S2", "B"): 4})
    with pytest.raises(DataError, match="leaves no images"):
        job_queue.submit(
            conftest.tiny_config(single, drop_single_class_sources=True), store=store, start_scheduler=False
        )
    good = write_manifest(tmp_path / "g", MIXED)
    config = conftest.tiny_config(good, balance="source", drop_single_class_sources=True)
    job = job_queue.get(job_queue.submit(config, store=store, start_scheduler=False), store=store)
    assert TrainConfig.from_dict(job["config"]) == config


@pytest.mark.slow
def test_a_tiny_run_balances_by_source_and_records_what_it_dropped(tmp_path):
    """simple_cnn at 32 px, 1 epoch on full passes: the run's record says what the sources did."""
    from cxrcore.training.train import train

    data = write_manifest(tmp_path / "d", MIXED, size=32)
    config = conftest.tiny_config(data, epochs=1, balance="source", drop_single_class_sources=True, val_fraction=0.2)
    info = train(config, out_dir=tmp_path / "m").info()
    assert info["status"] == "succeeded"
    assert info["dropped_sources"]["dropped"] == {"S2": {"class": "A", "images": 6}, "S3": {"class": "B", "images": 4}}
    groups = {(g["source"], g["class"]): g["share"] for g in info["balance_groups"]}
    assert set(groups) == {("S1", "A"), ("S1", "B"), ("", "A"), ("", "B")}
    assert sum(groups.values()) == pytest.approx(1.0, abs=1e-3)
