"""Findings datasets on the dashboard (AppTest): the Data page's reading options, counts and warnings, the
built-in findings demo, and the Train page reading a findings dataset as the Data page chose."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest
from test_findings import nih_folder

from conftest import REPO

pytestmark = pytest.mark.slow
APP = str(REPO / "app.py")


@pytest.fixture
def nih(tmp_path):
    return nih_folder(tmp_path / "nih")


@pytest.fixture
def data_page(monkeypatch, tmp_path):
    monkeypatch.setenv("CXRLAB_DEMO_DATA", str(tmp_path / "demo"))
    monkeypatch.setenv("CXRCORE_SCHEDULER_IDLE_EXIT", "2")

    def open_on(dataset: str | None) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=180)
        if dataset:
            at.session_state["dataset"] = dataset
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return open_on


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_data_page_shows_a_findings_dataset_and_its_reading_options(data_page, nih):
    at = data_page(str(nih))
    assert metric(at, "Images") == "5" and metric(at, "Findings") == "4" and metric(at, "Layout") == "nih"
    assert metric(at, "No Finding (all negative)") == "20%"  # 1 of 5 images
    warnings = [w.value for w in at.warning]
    assert any("1 listed image(s) are not on disk" in w and "00000235_000.png" in w for w in warnings)
    assert any(w.startswith("Too few positive images") and "Hernia" in w for w in warnings)
    assert any("test_list.txt" in c.value for c in at.caption)
    assert at.selectbox(key="data_finding").options == [
        "Cardiomegaly",
        "Effusion",
        "Infiltration",
        "Hernia",
        "No Finding",
    ]
    at.selectbox(key="data_views").set_value("pa").run()
    assert not at.exception
    assert metric(at, "Images") == "3"
    assert any("2 film(s) left out by the views chosen (pa)" in i.value for i in at.info)
    at.multiselect(key="data_findings").set_value(["Effusion"]).run()
    assert metric(at, "Findings") == "1"
    assert at.selectbox(key="data_finding").options == ["Effusion", "No Finding"]
    # the Train page trains a findings dataset, read as chosen on the Data page
    at.switch_page("pages/train.py").run()
    assert not at.exception
    assert not any("class-labelled datasets only" in w.value for w in at.warning)
    assert any(s.value.startswith("**Findings dataset**: 1 finding (Effusion)") for s in at.success)
    assert at.multiselect(key="train_findings").value == ["Effusion"]
    assert at.selectbox(key="train_views").value == "pa"


def test_views_on_a_dataset_without_a_view_column_is_an_error_the_page_survives(data_page, tmp_path):
    root = tmp_path / "noview"
    from test_findings import png

    for i in range(3):
        png(root / "images" / f"0000000{i}_000.png", 50 * i)
    (root / "Data_Entry.csv").write_text(
        "Image Index,Finding Labels\n00000000_000.png,Mass\n00000001_000.png,No Finding\n00000002_000.png,Mass|Edema\n"
    )
    at = data_page(str(root))
    assert metric(at, "Findings") == "2"
    at.selectbox(key="data_views").set_value("frontal").run()
    assert any("--views frontal needs a view column" in e.value for e in at.error)
    at.selectbox(key="data_views").set_value("all").run()  # the widgets stay: the user can go back
    assert not at.error and metric(at, "Images") == "3"


def test_the_built_in_findings_demo_opens_from_the_data_page(data_page, nih, tmp_path):
    """The findings demo sits beside the demo data (made small here first, so the page finds it made)."""
    from cxrcore.data.demo import make_findings_demo

    made = make_findings_demo(tmp_path / "demo-findings", n_images=40, image_size=64)
    at = data_page(str(nih))
    at.selectbox(key="data_recent").set_value(str(made))
    at.button(key="data_open").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["dataset"] == str(made.resolve())
    assert metric(at, "Findings") == "5" and metric(at, "Layout") == "findings-manifest"
