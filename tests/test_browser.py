"""End to end in a real headless browser: Debian's chromium driven by Playwright.

Starts `streamlit run app.py` on a free port with a tiny trained run, opens every page,
uploads an image on Predict and waits for the Grad-CAM overlay. Screenshots are kept in
test-artifacts/browser/. Skips (with the reason) where chromium or playwright is missing,
except under CI, where their absence is a failure.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from cxrcore.config import HeadConfig, TrainConfig
from cxrcore.data.demo import make_demo_dataset
from cxrcore.training.train import train

pytestmark = pytest.mark.slow
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ON_CI = bool(os.environ.get("CI"))

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

if not ON_CI and (CHROMIUM is None or sync_playwright is None):
    pytest.skip("needs Debian's chromium and the playwright package (apt-get install chromium; "
                "pip install playwright); CI installs both", allow_module_level=True)


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
    train(TrainConfig(data=str(demo), backbone="simple_cnn", weights="none", image_size=48, batch_size=8,
                      epochs=1, fine_tune_epochs=0, patience=0, reduce_lr_patience=0,
                      head=HeadConfig(dense_units=[8])), out_dir=models)
    port = free_port()
    env = {**os.environ, "CXRCORE_MODELS": str(models), "CXRLAB_DEMO_DATA": str(demo),
           "CXRCORE_CACHE": str(root / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3", "CXRCORE_SCHEDULER_IDLE_EXIT": "3"}
    log = open(root / "streamlit.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
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
    yield url, demo
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


def wait_idle(page, timeout=90_000):
    """Until the app has finished running its script (the 'Running...' widget is gone)."""
    page.wait_for_timeout(800)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout)
    # and the charts have drawn (plotly loads lazily: a skeleton stands in until then)
    page.wait_for_function("""() => !document.querySelector('[data-testid="stSkeleton"]') &&
        [...document.querySelectorAll('[data-testid="stPlotlyChart"]')].filter(e => e.offsetParent !== null)
            .every(e => e.querySelector('.main-svg'))""", timeout=timeout)


def test_every_page_and_the_predict_flow_in_chromium(server, tmp_path):
    url, demo = server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    image = next((demo / "Pneumonia").glob("*.png"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # the first request to the fresh server is a page URL (a bookmark), not the app's root
        for name, heading in [("evaluate", "Evaluate"), ("", "Data"), ("train", "Train"), ("compare", "Compare"),
                              ("predict", "Predict")]:
            page.goto(f"{url}/{name}")
            page.get_by_role("heading", name=heading, exact=True).wait_for(timeout=90_000)
            wait_idle(page)
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
        images.nth(1).wait_for(timeout=60_000)          # the model's input and the Grad-CAM overlay
        page.get_by_role("button", name="Download overlay (PNG)").wait_for(state="visible", timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "predict-gradcam.png"), full_page=True)

        # train a second small model from the Train page, as a newcomer would, then compare the two
        page.goto(f"{url}/train")
        page.get_by_role("heading", name="Train", exact=True).wait_for(timeout=90_000)
        wait_idle(page)
        for label, value in [("Stage 1 epochs (frozen backbone)", "2"), ("Stage 2 epochs (fine-tune)", "0"),
                             ("Image size (0 = backbone default)", "48"), ("Max batches per epoch (0 = all)", "2")]:
            field = page.get_by_role("spinbutton", name=label, exact=True)
            field.fill(value)
            field.press("Tab")
        page.get_by_role("button", name="Start training").click()
        page.get_by_text("submitted: it runs in the background").wait_for(timeout=60_000)
        page.get_by_text("Nothing running.").wait_for(timeout=180_000)     # the live view saw it finish
        # and the job history below it followed without a reload
        page.locator('[role="gridcell"]').filter(has_text=re.compile(r"^succeeded$")).wait_for(
            state="attached", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "train-after-job.png"), full_page=True)
        page.goto(f"{url}/compare")
        page.get_by_role("heading", name="Compare", exact=True).wait_for(timeout=90_000)
        wait_idle(page)
        page.get_by_text("Metrics (best in green)").wait_for(state="visible", timeout=60_000)
        assert page.locator('[data-testid="stException"]').count() == 0
        page.screenshot(path=str(ARTIFACTS / "compare-two-runs.png"), full_page=True)
        browser.close()
    assert errors == []
