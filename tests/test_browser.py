"""End to end in a real headless browser: Debian's chromium driven by Playwright.

Starts `streamlit run app.py` on a free port with a tiny trained run, opens every page,
uploads an image on Predict and waits for the Grad-CAM overlay. Then, as a newcomer would,
opens real chest X-rays on the Data page and fine-tunes a pretrained backbone from the Train
page (that part needs ``../shared``: it skips with the reason without it). Screenshots are
kept in test-artifacts/browser/. Skips (with the reason) where chromium or playwright is
missing, except under CI, where their absence is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from conftest import (
    CXR_DEV,
    CXR_NIH,
    MNV2_035,
    REPO,
    copy_run,
    copy_weights_to_keras_home,
    needs_cxr_dev,
    needs_weights,
)
from cxrcore.config import HeadConfig, TrainConfig
from cxrcore.data.demo import make_demo_dataset
from cxrcore.workflows import train

pytestmark = pytest.mark.slow
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ON_CI = bool(os.environ.get("CI"))

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

if not ON_CI and (CHROMIUM is None or sync_playwright is None):
    pytest.skip(
        "needs Debian's chromium and the playwright package (apt-get install chromium; "
        "pip install playwright); CI installs both",
        allow_module_level=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    assert CHROMIUM and sync_playwright, "chromium and playwright must be installed on CI (.ci/run installs them)"
    root = tmp_path_factory.mktemp("browser")
    demo = make_demo_dataset(root / "demo", n_per_class=12, image_size=64)
    models = root / "models"
    train(
        TrainConfig(
            data=str(demo),
            backbone="simple_cnn",
            weights="none",
            image_size=48,
            batch_size=8,
            epochs=1,
            fine_tune_epochs=0,
            patience=0,
            reduce_lr_patience=0,
            head=HeadConfig(dense_units=[8]),
        ),
        out_dir=models,
    )
    port = free_port()
    env = {
        **os.environ,
        "CXRCORE_MODELS": str(models),
        "CXRLAB_DEMO_DATA": str(demo),
        "CXRCORE_CACHE": str(root / "cache"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "CXRCORE_SCHEDULER_IDLE_EXIT": "3",
    }
    env.pop("CXRCORE_MAX_STEPS", None)
    if MNV2_035.is_file():  # the shared ImageNet weights where Keras looks for them: `weights="imagenet"`, offline
        env["KERAS_HOME"] = str(copy_weights_to_keras_home(root / "keras"))
    log = open(root / "streamlit.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise AssertionError(f"streamlit did not start: {(root / 'streamlit.log').read_text()[-2000:]}")
    yield SimpleNamespace(url=url, demo=demo, models=models)
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


#: the script's state, as Streamlit marks it on the app's root (what its own browser tests wait on): ``running``
#: from the server's word that a run began until that run ends, then ``notRunning``
SCRIPT_STATE = "document.querySelector('[data-testid=\"stApp\"]')?.getAttribute('data-test-script-state')"


def wait_idle(page, timeout=90_000):
    """Until the app has finished running its script (the 'Running...' widget is gone).

    The run an action asks for is given up to 0.8 s to begin (a busy machine starts it late); once it is seen
    to run, or after that, the script must be done and no 'Running...' widget shown (it shows only after half
    a second of running)."""
    try:
        page.wait_for_function(f"() => {SCRIPT_STATE} !== 'notRunning'", timeout=800)
    except PlaywrightTimeout:
        pass  # done already, or no run was asked for
    page.wait_for_function(
        f"() => {SCRIPT_STATE} === 'notRunning' && !document.querySelector('[data-testid=\"stStatusWidget\"]')",
        timeout=timeout,
    )
    # and the charts have drawn (plotly loads lazily: a skeleton stands in until then)
    page.wait_for_function(
        """() => !document.querySelector('[data-testid="stSkeleton"]') &&
        [...document.querySelectorAll('[data-testid="stPlotlyChart"]')].filter(e => e.offsetParent !== null)
            .every(e => e.querySelector('.main-svg'))""",
        timeout=timeout,
    )


def launch(p):
    return p.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
    )


@pytest.fixture(scope="module")
def browser(server):
    """One chromium for the module's tests (each opens its pages in a context of its own)."""
    with sync_playwright() as p:
        browser = launch(p)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A new page in a new browser context: no cookies or session shared with another test."""
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    yield context.new_page()
    context.close()


def set_number(page, label: str, value) -> None:
    """Type into a number input and leave it, as a user does; the page reruns with the new value."""
    field = page.get_by_role("spinbutton", name=label, exact=True)
    field.fill(str(value))
    field.press("Tab")
    wait_idle(page)


def test_every_page_and_the_predict_flow_in_chromium(server, page):
    url, demo = server.url, server.demo
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    image = next((demo / "Pneumonia").glob("*.png"))
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # the first request to the fresh server is a page URL (a bookmark), not the app's root
    for name, heading in [
        ("evaluate", "Evaluate"),
        ("", "Data"),
        ("train", "Train"),
        ("compare", "Compare"),
        ("predict", "Predict"),
    ]:
        page.goto(f"{url}/{name}")
        page.get_by_role("heading", name=heading, exact=True).wait_for(timeout=90_000)
        wait_idle(page)
        if heading == "Data":  # the shortcut check runs last, in its own fragment
            verdict = page.get_by_text("by chance", exact=False).first
            verdict.wait_for(timeout=120_000)
            wait_idle(page)
            verdict.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "data-shortcut-check.png"))
            page.get_by_role("heading", name=heading, exact=True).scroll_into_view_if_needed()
        assert page.locator('[data-testid="stException"]').count() == 0, f"{heading} page raised"
        nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
        assert "Evaluate" in nav and "shared" not in nav, f"not the app's navigation: {nav!r}"
        page.screenshot(path=str(ARTIFACTS / f"{heading.lower()}.png"), full_page=True)
    page.get_by_text("Research software, not a medical device").first.wait_for(state="visible", timeout=60_000)
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(image))
    overlay = page.get_by_text("Grad-CAM for", exact=False).first
    overlay.wait_for(timeout=120_000)
    wait_idle(page)
    # a busy machine can show the "running" widget late, so wait for elements rather than trust idleness
    images = page.locator('[data-testid="stImage"] img, [data-testid="stFullScreenFrame"] img')
    images.nth(1).wait_for(timeout=60_000)  # the model's input and the Grad-CAM overlay
    page.get_by_role("button", name="Download overlay (PNG)").wait_for(state="visible", timeout=60_000)
    page.get_by_text("Decision at target sensitivity 0.95:").first.wait_for(timeout=30_000)
    # the map's faithfulness, with the settings stated
    page.get_by_text("20 steps; removed pixels replaced by a blurred copy of the image").first.wait_for(timeout=30_000)
    assert page.locator('[data-testid="stMetricLabel"]').filter(has_text="Deletion").count() == 1
    page.screenshot(path=str(ARTIFACTS / "predict-gradcam.png"), full_page=True)

    # train a second small model from the Train page, as a newcomer would, then compare the two
    page.goto(f"{url}/train")
    page.get_by_role("heading", name="Train", exact=True).wait_for(timeout=90_000)
    wait_idle(page)
    for label, value in [
        ("Stage 1 epochs (frozen backbone)", "2"),
        ("Stage 2 epochs (fine-tune)", "0"),
        ("Image size (0 = backbone default)", "48"),
        ("Max batches per epoch (0 = all)", "2"),
    ]:
        set_number(page, label, value)
    # simple_cnn, left on auto weights: it trains from scratch, and the page says so before the start
    page.get_by_text("Start queues simple_cnn (from scratch, 48 px, 2 + 0 epochs)").wait_for(timeout=30_000)
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("submitted: it runs in the background").wait_for(timeout=60_000)
    page.get_by_text("Nothing running.").wait_for(timeout=180_000)  # the live view saw it finish
    # and the job history below it followed without a reload
    page.locator('[role="gridcell"]').filter(has_text=re.compile(r"^succeeded$")).wait_for(
        state="attached", timeout=30_000
    )
    page.screenshot(path=str(ARTIFACTS / "train-after-job.png"), full_page=True)
    page.goto(f"{url}/compare")
    page.get_by_role("heading", name="Compare", exact=True).wait_for(timeout=90_000)
    wait_idle(page)
    page.get_by_text("Metrics (best in green, where they can be ranked)").wait_for(state="visible", timeout=60_000)
    assert page.locator('[data-testid="stException"]').count() == 0
    page.screenshot(path=str(ARTIFACTS / "compare-two-runs.png"), full_page=True)
    assert errors == []


def real_subset(folder: Path, per_class: int = 70, source: Path = CXR_DEV) -> Path:
    """A CSV manifest of ``per_class`` images per class of ``source`` (absolute paths, patient ids kept)."""
    manifest = pd.read_csv(source / "manifest.csv", dtype=str, keep_default_na=False)
    subset = pd.concat([group.sample(per_class, random_state=0) for _, group in manifest.groupby("label")])
    subset = subset.assign(path=[str(source / rel) for rel in subset["path"]])
    folder.mkdir(parents=True, exist_ok=True)
    subset[["path", "label", "patient_id"]].to_csv(folder / "manifest.csv", index=False)
    return (folder / "manifest.csv").resolve()


@needs_cxr_dev
@needs_weights
def test_a_newcomer_fine_tunes_a_pretrained_backbone_on_real_images(server, page, tmp_path):
    """The reported bug, the way a user met it: open real X-rays, replace the default simple_cnn with
    mobilenetv2_0.35, set 2 + 1 epochs and start. The weights must follow the backbone to ImageNet
    (they stayed at simple_cnn's 'none', and the job trained from scratch to chance: 0.32 accuracy,
    every image called Normal), the page must say so before the start, and the run must beat chance."""
    manifest = real_subset(tmp_path / "cxr-subset")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    before = {r.name for r in server.models.iterdir()}
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url)
    page.get_by_role("heading", name="Data", exact=True).wait_for(timeout=90_000)
    wait_idle(page)
    page.get_by_text("Open a dataset").click()
    path_box = page.get_by_label("...or a folder / CSV path")
    path_box.fill(str(manifest))
    path_box.press("Enter")
    wait_idle(page)
    page.get_by_test_id("stBaseButton-primary").filter(has_text="Open").click()
    page.get_by_role("heading", name=str(manifest), exact=True).wait_for(timeout=90_000)
    wait_idle(page)
    assert "Synthetic demo data" not in page.content()

    # to the Train page through the sidebar: the same session, so the dataset stays chosen
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Train", exact=True).click()
    page.get_by_role("heading", name="Train", exact=True).wait_for(timeout=90_000)
    wait_idle(page)
    page.get_by_text(str(manifest)).first.wait_for(timeout=30_000)
    page.get_by_role("button", name="Remove simple_cnn", exact=False).click()
    wait_idle(page)
    picker = page.get_by_role("combobox", name="Backbone(s)", exact=False)
    picker.fill("mobilenetv2_0.35")
    picker.press("Enter")
    picker.press("Escape")
    wait_idle(page)
    set_number(page, "Stage 1 epochs (frozen backbone)", 2)
    set_number(page, "Stage 2 epochs (fine-tune)", 1)
    # what will run, before the start: ImageNet weights, the backbone's size and unfreeze depth
    page.get_by_text(
        "Start queues mobilenetv2_0.35 (ImageNet weights, 224 px, 2 + 1 epochs, stage 2 unfreezes top 20)"
    ).wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "train-pretrained-before-start.png"), full_page=True)
    started = time.time()
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("submitted: it runs in the background").wait_for(timeout=60_000)
    page.get_by_text("Nothing running.").wait_for(timeout=900_000)  # the live view saw it finish
    page.locator('[role="gridcell"]').filter(has_text=re.compile(r"^succeeded$")).first.wait_for(
        state="attached", timeout=30_000
    )
    trained_in = time.time() - started
    page.screenshot(path=str(ARTIFACTS / "train-pretrained-after-job.png"), full_page=True)

    new = [
        server.models / n
        for n in {r.name for r in server.models.iterdir()} - before
        if (server.models / n / "config.json").is_file()
    ]
    assert len(new) == 1, f"expected one new run, found {new}"
    run = new[0]
    config = json.loads((run / "config.json").read_text())
    assert (config["backbone"], config["weights"], config["image_size"]) == ("mobilenetv2_0.35", "imagenet", 224)
    assert (config["epochs"], config["fine_tune_epochs"]) == (2, 1)
    assert Path(config["data"]) == manifest
    metrics = json.loads((run / "metrics.json").read_text())
    chance = 1 / len(metrics["per_class"])
    # from scratch, this run ended at 0.33 accuracy and 0.5 AUC (one class for every image); from
    # ImageNet features, 0.86 accuracy and 0.96 AUC on the 21 test images seen here
    assert len(metrics["per_class"]) == 3 and metrics["n"] >= 20
    assert metrics["accuracy"] >= chance + 0.25, metrics["accuracy"]
    assert metrics["macro_auc"] >= 0.8, metrics["macro_auc"]

    # and the Evaluate page shows that run, with those numbers
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Evaluate", exact=True).click()
    page.get_by_role("heading", name="Evaluate", exact=True).wait_for(timeout=90_000)
    wait_idle(page)
    page.get_by_text("mobilenetv2_0.35 at 224 px").first.wait_for(timeout=60_000)
    accuracy = page.locator('[data-testid="stMetric"]').filter(has_text="Accuracy").first.inner_text()
    assert f"{metrics['accuracy']:.3f}" in accuracy, accuracy
    page.screenshot(path=str(ARTIFACTS / "evaluate-pretrained.png"), full_page=True)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert errors == []
    print(f"pretrained job from Start to finished: {trained_in:.0f} s")


@needs_cxr_dev
@needs_weights
@pytest.mark.skipif(not (CXR_NIH / "manifest.csv").is_file(), reason=f"external X-ray set not found at {CXR_NIH}")
def test_evaluate_shows_external_validation_and_the_model_card(server, page, tmp_path):
    """A run trained on cxr-dev (abnormal vs normal) with another hospital's images as its external set:
    the Evaluate page shows both side by side with the drop, and the model card with its limitations."""
    from cxrcore.config import LABEL_PRESETS

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    run = train(
        TrainConfig(
            data=str(real_subset(tmp_path / "dev", per_class=60)),
            backbone="mobilenetv2_0.35",
            weights=str(MNV2_035),
            image_size=64,
            epochs=2,
            fine_tune_epochs=0,  # what the page shows of a run does not depend on its stages: one is enough
            labels=LABEL_PRESETS["abnormal-vs-normal"],
            external=[str(real_subset(tmp_path / "nih", per_class=40, source=CXR_NIH))],
            seed=0,
        ),
        out_dir=server.models,
    )
    (external,) = run.external_evaluations()
    assert external.metrics["n"] == 80 and run.model_card() is not None
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server.url}/evaluate")
    page.get_by_role("heading", name="Evaluate", exact=True).wait_for(timeout=90_000)
    wait_idle(page)
    page.get_by_role("combobox").first.click()  # the run picker: choose this run
    page.get_by_role("option").filter(has_text=run.run_id).first.click()
    wait_idle(page)
    page.get_by_text("Operating points").first.wait_for(timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "evaluate-operating-points.png"), full_page=True)
    page.get_by_role("tab", name="External validation").click()
    wait_idle(page)
    page.get_by_text("against the run's own test split").first.wait_for(timeout=60_000)
    page.get_by_text("internal (test split)").first.wait_for(state="attached", timeout=30_000)
    assert page.locator('[data-testid="stException"]').count() == 0
    page.screenshot(path=str(ARTIFACTS / "evaluate-external.png"), full_page=True)
    page.get_by_role("tab", name="Model card").click()
    wait_idle(page)
    page.get_by_role("heading", name=f"Model card: {run.run_id}").wait_for(timeout=60_000)
    page.get_by_role("heading", name="Limitations").wait_for(timeout=30_000)
    page.get_by_role("button", name="Download MODEL_CARD.md").wait_for(state="visible", timeout=30_000)
    assert page.get_by_text("not a medical device", exact=False).count() >= 1
    page.screenshot(path=str(ARTIFACTS / "evaluate-model-card.png"), full_page=True)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert errors == []


NIH64 = CXR_DEV.parent / "nih-findings-64"


@pytest.mark.skipif(not (NIH64 / "Data_Entry.csv").is_file(), reason=f"the NIH findings set not found at {NIH64}")
def test_nih_findings_are_read_and_shown_on_the_data_page(server, page):
    """NIH's CSV format opened as a user would (a folder path typed on the Data page): 14 findings, not one
    class named after the images folder; the counts, the rare findings, the heatmap and samples per finding."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server.url}/")
    page.get_by_role("heading", name="Data", exact=True).wait_for(timeout=90_000)
    wait_idle(page)
    page.get_by_text("Open a dataset").click()
    page.get_by_label("...or a folder / CSV path").fill(str(NIH64))
    page.keyboard.press("Tab")
    page.locator(".st-key-data_open button").click()
    page.get_by_text("How the findings are read").wait_for(timeout=120_000)
    wait_idle(page)
    metrics = page.locator('[data-testid="stMetric"]')
    assert "14" in metrics.filter(has_text="Findings").first.inner_text()
    assert "50%" in metrics.filter(has_text="No Finding (all negative)").first.inner_text()
    assert "920" in metrics.filter(has_text="Images").first.inner_text()
    page.get_by_text("Too few positive images to train or measure").wait_for(timeout=30_000)
    assert "Hernia" in page.get_by_text("Too few positive images to train or measure").inner_text()
    page.get_by_text("Findings together (images holding both)").wait_for(timeout=30_000)
    page.get_by_text(re.compile(r"^\d{8}_\d{3}\.png: Atelectasis")).first.wait_for(timeout=30_000)
    assert page.locator('[data-testid="stException"]').count() == 0
    page.screenshot(path=str(ARTIFACTS / "data-nih-findings.png"), full_page=True)
    assert errors == []


def test_a_findings_run_on_the_evaluate_and_predict_pages(server, page, findings_run):
    """The session's findings run (copied into the server's models folder) as a user meets it: Evaluate per
    finding (the mean AUC, each finding with its interval), then Predict on one of its images, each finding with
    its probability and decision, and the map of a chosen finding."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    run = copy_run(findings_run.run, server.models)
    findings = run.labels()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server.url}/evaluate")
    page.get_by_role("heading", name="Evaluate", exact=True).wait_for(timeout=90_000)
    wait_idle(page)
    page.get_by_role("combobox").first.click()  # the run picker: choose the findings run
    page.get_by_role("option").filter(has_text=run.run_id).first.click()
    wait_idle(page)
    mean = page.locator('[data-testid="stMetric"]').filter(has_text="Mean AUC").first
    mean.wait_for(timeout=60_000)
    assert f"{run.metrics()['mean_auc']:.3f}" in mean.inner_text()
    table = page.get_by_text("AUC per finding (95% CI)").first
    table.wait_for(timeout=30_000)
    assert page.locator('[data-testid="stException"]').count() == 0
    page.screenshot(path=str(ARTIFACTS / "evaluate-findings.png"), full_page=True)

    page.goto(f"{server.url}/predict")
    page.get_by_role("heading", name="Predict", exact=True).wait_for(timeout=90_000)
    wait_idle(page)
    page.get_by_role("combobox").first.click()
    page.get_by_role("option").filter(has_text=run.run_id).first.click()
    wait_idle(page)
    page.get_by_role("combobox").nth(2).click()  # Explain: a chosen finding rather than the most probable one
    page.get_by_role("option", name=findings[-1], exact=True).click()
    wait_idle(page)
    image = sorted((findings_run.data / "images").glob("*.png"))[0]
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(image))
    page.get_by_text(f"Grad-CAM for {findings[-1]}").first.wait_for(timeout=120_000)
    wait_idle(page)
    page.get_by_text("Positive at target sensitivity", exact=False).first.wait_for(timeout=30_000)
    grid = page.locator('[data-testid="stDataFrame"]').first
    grid.wait_for(timeout=30_000)
    page.locator('[data-testid="stMetricLabel"]').filter(has_text="Deletion").first.wait_for(timeout=30_000)
    assert page.locator('[data-testid="stException"]').count() == 0
    page.screenshot(path=str(ARTIFACTS / "predict-findings.png"), full_page=True)
    assert errors == []
