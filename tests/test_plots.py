"""plotly builders: the figure carries the data it was given."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrcore.evaluation import plots
from cxrcore.evaluation.metrics import classification_metrics


def metrics():
    y = [0, 0, 1, 1, 2, 2]
    probs = np.array(
        [[0.8, 0.1, 0.1], [0.4, 0.5, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.6, 0.1, 0.3]]
    )
    return classification_metrics(y, probs, ["a", "b", "c"])


def test_class_distribution_has_one_bar_group_per_split():
    idx = pd.DataFrame({"label": ["a", "a", "b", "b", "b"], "split": ["train", "test", "train", "train", "val"]})
    fig = plots.class_distribution(idx)
    bars = {t.name: dict(zip(t.x, t.y)) for t in fig.data}
    assert bars["train"] == {"a": 1, "b": 2}
    assert bars["test"] == {"a": 1, "b": 0}
    assert list(bars) == ["train", "val", "test"]


def test_confusion_matrix_counts_and_normalised():
    m = metrics()
    counts = plots.confusion_matrix(m)
    assert [list(r) for r in counts.data[0].z] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    norm = plots.confusion_matrix(m, normalized=True)
    assert list(norm.data[0].z[0]) == [0.5, 0.5, 0.0]
    assert norm.data[0].text[0][0] == "0.50"


def test_roc_has_a_curve_per_class_with_auc_in_name_and_a_chance_line():
    fig = plots.roc_curves(metrics())
    names = [t.name for t in fig.data]
    assert len(names) == 4 and names[-1] == "chance"
    assert names[0].startswith("a (AUC ")


def test_pr_curves_and_probability_bars():
    assert len(plots.pr_curves(metrics()).data) == 3
    fig = plots.probability_bars({"a": 0.1, "b": 0.7, "c": 0.2})
    assert list(fig.data[0].y) == ["a", "c", "b"]  # highest last = on top


def test_training_curves_mark_the_fine_tuning_stage():
    hist = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "stage": ["frozen", "frozen", "finetune"],
            "loss": [1, 0.8, 0.6],
            "val_loss": [1.1, 0.9, 0.7],
            "accuracy": [0.5, 0.6, 0.7],
            "val_accuracy": [0.4, 0.5, 0.6],
        }
    )
    fig = plots.training_curves(hist)
    assert {t.name for t in fig.data} == {"loss", "val_loss", "accuracy", "val_accuracy"}
    assert fig.layout.shapes[0].x0 == 2.5
    assert "no epochs" in plots.training_curves(pd.DataFrame()).layout.title.text
