"""Shared test helpers: tiny synthetic image folders, isolated caches, the shared dev data."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CXR_SHARED") or REPO.parent / "shared")
CXR_DEV = SHARED / "data" / "cxr-dev"
CXR_NIH = SHARED / "data" / "cxr-external-nih"  # external validation only: never trained or tuned on
WEIGHTS = SHARED / "weights"
MNV2_035 = WEIGHTS / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"

needs_cxr_dev = pytest.mark.skipif(
    not (CXR_DEV / "manifest.csv").is_file(), reason=f"real chest X-ray dev set not found at {CXR_DEV} (set CXR_SHARED)"
)
#: conftest's fixtures that train a model (or hold trained ones): a test that asks for one is slow
TRAINING_FIXTURES = {"separable_run", "demo_runs", "same_split_runs", "rules_run", "findings_run"}


def pytest_collection_modifyitems(config, items):
    """Mark ``slow`` every test that asks, directly or through other fixtures, for a fixture that trains:
    conftest's (``TRAINING_FIXTURES``) and those a module names in its own ``TRAINING_FIXTURES``.
    ``-m "not slow"`` then leaves out exactly the tests that train, whatever file they are in."""
    for item in items:
        trains = TRAINING_FIXTURES | set(getattr(item.module, "TRAINING_FIXTURES", ()))
        if trains & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    # quick tests first, then the slow ones, each in file order: xdist's worksteal deals the first half of
    # the list to one worker and the second to the other, and an idle worker steals from the end of the
    # other's queue, so the worker that runs out of quick tests takes over slow ones, not the reverse
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)


needs_weights = pytest.mark.skipif(
    not MNV2_035.is_file(), reason=f"shared ImageNet weights not found at {WEIGHTS} (set CXR_SHARED)"
)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """The caches (index, audit, activations) and the default models folder live in this session's
    temporary folder, set before any other fixture runs: no fixture or test writes into the user's
    ~/.cache/cxrcore or the project's models/. Shared by the session, so data written twice with the
    same content (the same synthetic set, a copy of a run's data) is audited once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CXRCORE_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.setenv("CXRCORE_MODELS", str(tmp_path_factory.mktemp("models")))
        yield


@pytest.fixture(autouse=True)
def _isolated_models(tmp_path_factory, monkeypatch):
    """Every test gets its own default models folder (a test that needs an empty cache sets its own)."""
    monkeypatch.setenv("CXRCORE_MODELS", str(tmp_path_factory.mktemp("models")))


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty cache folder of this test's own (for tests that count what the cache holds)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("CXRCORE_CACHE", str(folder))
    return folder


# ---------------------------------------------------------------- the command line


@dataclass(frozen=True)
class Ran:
    """What a finished ``python -m cxrcore ...`` left: its exit status and its output."""

    returncode: int
    stdout: str
    stderr: str


def cli(*args, check=True) -> Ran:
    """``python -m cxrcore ARGS`` in this process: :func:`cxrcore.cli.main`, stdout and stderr captured.

    Logging is set up as ``main``'s ``logging.basicConfig`` sets it up in a fresh process (INFO and up, the
    message alone, to stderr) for the call alone: a handler on the root logger while ``main`` runs, which also
    makes that ``basicConfig`` (once per process) a no-op, so no call leaves a handler on another's stream.
    The environment is the caller's (``monkeypatch.setenv``)."""
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                from cxrcore.cli import main

                code = main([str(a) for a in args])
            except SystemExit as exc:  # argparse's usage errors, as a process exits on them
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    ran = Ran(code, out.getvalue(), err.getvalue())
    if check:
        assert ran.returncode == 0, ran.stderr[-3000:]
    return ran


def python_m_cxrcore(*args, env=None, check=True, timeout=600, cwd=REPO) -> subprocess.CompletedProcess:
    """``python -m cxrcore ARGS`` in a new process (for the tests whose point is the process)."""
    proc = subprocess.run(
        [sys.executable, "-m", "cxrcore", *map(str, args)],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def write_image(path: Path, size: int = 24, value: int | None = None, mode: str = "L", seed: int = 0) -> Path:
    """A small random image (or a flat one of ``value``) in ``mode``, saved by extension."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if value is None:
        pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
    else:
        pixels = np.full((size, size), value, dtype=np.uint8)
    img = Image.fromarray(pixels)
    if mode != "L":
        img = img.convert(mode)
    img.save(path)
    return path


def make_class_folders(
    root: Path, classes=("A", "B"), per_class: int = 10, size: int = 24, split_dirs: tuple[str, ...] = ()
) -> Path:
    """ROOT/<class>/img_i.png (or ROOT/<split>/<class>/...), class ``i`` brighter than ``i-1``.

    Classes differ in mean brightness, so even a tiny model can learn them.
    """
    for s_i, split in enumerate(split_dirs or ("",)):
        for c_i, label in enumerate(classes):
            for i in range(per_class):
                rng = np.random.default_rng(1000 * s_i + 100 * c_i + i)
                base = 40 + 150 * c_i / max(1, len(classes) - 1)
                pixels = np.clip(rng.normal(base, 25, (size, size)), 0, 255).astype(np.uint8)
                folder = root / split / label if split else root / label
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(folder / f"img_{i:03d}.png")
    return root


@pytest.fixture
def two_class_data(tmp_path) -> Path:
    return make_class_folders(tmp_path / "data", per_class=12)


def copy_weights_to_keras_home(keras_home: Path) -> Path:
    models = keras_home / "models"
    models.mkdir(parents=True, exist_ok=True)
    shutil.copy(MNV2_035, models / MNV2_035.name)
    return keras_home


def tiny_config(data, **changes):
    """A simple_cnn run on ``data`` that trains in seconds (32 px, 2 + 0 epochs, a dense layer of 8)."""
    from cxrcore.config import HeadConfig, TrainConfig

    base = dict(
        data=str(data),
        backbone="simple_cnn",
        weights="none",
        image_size=32,
        batch_size=8,
        epochs=2,
        fine_tune_epochs=0,
        patience=0,
        reduce_lr_patience=0,
        head=HeadConfig(dense_units=[8], dropout=0.0),
        seed=3,
    )
    return TrainConfig(**{**base, **changes})


# ---------------------------------------------------------------------------------------------------
# Runs trained once per test session and shared by the tests that read them.
#
# Each kind of run the suite needs is trained by one session fixture below, the first time a test asks
# for it: under pytest-xdist by the first worker that asks, the others waiting for it and reading the
# same folder (`once_per_session`). Shared runs are read-only: each worker checks at its end that none
# of their files changed (file modes alone cannot say so: CI runs as root). A test that changes a run (an
# external evaluation, an annotation, a rewritten card) works on `copy_run(run, tmp_path)`.
# ---------------------------------------------------------------------------------------------------


def once_per_session(tmp_path_factory, name: str, make):
    """``make()`` called once for the whole test session, its (picklable) result returned to every caller.

    Without xdist this is ``make()``. Under xdist the first worker to ask makes it, holding a lock in the
    session's common temporary folder, and writes its result there; a worker that asks later (or at the same
    time) waits for the lock and reads that result instead of making its own. ``make`` writes under
    ``tmp_path_factory`` (folders every worker can read) and takes no lock of this kind itself (no cycle)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return make()
    common = tmp_path_factory.getbasetemp().parent  # the controller's basetemp: one per session
    record = common / f"once-{name}.pickle"
    with open(common / f"once-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when a worker dies holding it
        if record.is_file():
            return pickle.loads(record.read_bytes())
        made = make()
        partial = record.with_suffix(".partial")
        partial.write_bytes(pickle.dumps(made))
        partial.replace(record)
        return made


def _fingerprint(folder: Path) -> dict[str, str]:
    """Every file under a shared models folder and its digest, but the job queue's database, which the
    dashboard opens in whatever models folder it shows."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not (p.parent == folder and p.name.startswith("jobs.sqlite"))
    }


class SharedRuns:
    """The session's shared run folders and what they held when they were made."""

    def __init__(self) -> None:
        self.prints: dict[Path, dict[str, str]] = {}

    def freeze(self, folder: Path) -> Path:
        self.prints[folder] = _fingerprint(folder)
        for path in [folder, *folder.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)  # read-only for anyone but root
        return folder

    def changed(self) -> dict[str, list[str]]:
        found = {}
        for folder, before in self.prints.items():
            after = _fingerprint(folder)
            diff = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
            if diff:
                found[str(folder)] = diff
        return found


@pytest.fixture(scope="session")
def shared_runs():
    shared = SharedRuns()
    yield shared
    changed = shared.changed()
    assert not changed, f"tests changed shared runs (work on copy_run(...) instead): {changed}"


def copy_run(run, destination: Path):
    """A writable copy of a shared run (a RunDir or its path) under ``destination``: a RunDir."""
    from cxrcore.runs import RunDir

    source = Path(getattr(run, "path", run))
    target = Path(destination) / source.name
    shutil.copytree(source, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    return RunDir(target)


def copy_models(folder: Path, destination: Path) -> Path:
    """A writable copy of a shared models folder (every run in it)."""
    target = Path(destination)
    target.mkdir(parents=True, exist_ok=True)
    for run in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        copy_run(run, target)
    return target


@dataclass(frozen=True)
class Trained:
    """A shared run, the data it was trained on and the progress events training reported."""

    run: object  # cxrcore.runs.RunDir
    data: Path
    events: tuple = ()

    @property
    def models(self) -> Path:
        """The folder that holds this run alone (for CXRCORE_MODELS)."""
        return self.run.path.parent


def train_shared(config, out_dir: Path) -> Trained:
    """Train ``config`` into ``out_dir`` the way a user does (the workflow), keeping its progress events."""
    from cxrcore.workflows import train

    events: list[dict] = []
    run = train(config, out_dir=out_dir, progress=events.append)
    assert run.status() == "succeeded", run.info()
    return Trained(run, Path(config.data), tuple(events))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """The dashboard's synthetic demo set, small: 3 classes x 12 images at 64 px."""
    from cxrcore.data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "demo", n_per_class=12, image_size=64)


@pytest.fixture(scope="session")
def separable_data(tmp_path_factory) -> Path:
    """Two classes told apart by brightness (150 grey levels), 30 images each."""
    return make_class_folders(tmp_path_factory.mktemp("separable") / "d", classes=("dark", "bright"), per_class=30)


@pytest.fixture(scope="session")
def separable_run(separable_data, tmp_path_factory, shared_runs) -> Trained:
    """A simple_cnn trained 2 + 1 epochs on ``separable_data`` with 18 validation and 18 test images
    (enough for each class to get its operating points), its progress events kept."""

    def make():
        out = tmp_path_factory.mktemp("separable-run")
        config = tiny_config(separable_data, val_fraction=0.3, test_fraction=0.3, fine_tune_epochs=1)
        return train_shared(config, out)

    trained = once_per_session(tmp_path_factory, "separable_run", make)
    shared_runs.freeze(trained.models)
    return trained


def demo_config(data, **changes):
    """conftest's tiny run for the demo set: 1 + 1 epochs, the head's default dropout, the default seed."""
    from cxrcore.config import HeadConfig, TrainConfig

    base = {"epochs": 1, "fine_tune_epochs": 1, "head": HeadConfig(dense_units=[8]), "seed": TrainConfig.seed}
    return tiny_config(data, **{**base, **changes})


@pytest.fixture(scope="session")
def demo_runs(demo_data, tmp_path_factory, shared_runs) -> Path:
    """A models folder with two finished runs on the demo set, seeds 1 and 2 (two different splits)."""

    def make():
        out = tmp_path_factory.mktemp("demo-runs")
        for seed in (1, 2):
            train_shared(demo_config(demo_data, seed=seed), out)
        return out

    return shared_runs.freeze(once_per_session(tmp_path_factory, "demo_runs", make))


@pytest.fixture(scope="session")
def same_split_runs(demo_data, tmp_path_factory, shared_runs) -> Path:
    """Two finished runs on one split of the demo set (seed 5), different heads, one from a recipe."""
    from cxrcore.config import HeadConfig

    def make():
        out = tmp_path_factory.mktemp("same-split")
        train_shared(demo_config(demo_data, seed=5, recipe="vgg16-binary"), out)
        train_shared(demo_config(demo_data, seed=5, head=HeadConfig(dense_units=[16])), out)
        return out

    return shared_runs.freeze(once_per_session(tmp_path_factory, "same_split_runs", make))


#: the pixel rules of ``rules_run``: every rule at once
ALL_PIXEL_RULES = dict(crop_border=0.2, equalize=True, lung_crop=True, lung_mask=True)


@pytest.fixture(scope="session")
def rules_run(tmp_path_factory, shared_runs) -> Trained:
    """A simple_cnn trained 1 + 0 epochs with every pixel rule (``ALL_PIXEL_RULES``) and focal loss, on
    dark vs bright with one bright image fewer (12 and 11: unbalanced, so class weights differ), its
    feature statistics taken from a sample of 10 training images (``ood.MAX_TRAIN_IMAGES`` lowered
    while it trains)."""
    from cxrcore.data.pixels import PixelRules
    from cxrcore.stats import ood

    def make():
        data = make_class_folders(tmp_path_factory.mktemp("rules") / "d", classes=("dark", "bright"), per_class=12)
        (data / "bright" / "img_000.png").unlink()
        out = tmp_path_factory.mktemp("rules-run")
        config = tiny_config(data, pixels=PixelRules(**ALL_PIXEL_RULES), focal_loss=True, epochs=1, fine_tune_epochs=0)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ood, "MAX_TRAIN_IMAGES", 10)
            return train_shared(config, out)

    trained = once_per_session(tmp_path_factory, "rules_run", make)
    shared_runs.freeze(trained.models)
    return trained


@pytest.fixture(scope="session")
def findings_data(tmp_path_factory) -> Path:
    """The synthetic findings demo, small: 360 images at 40 px, five findings, several per image."""
    from cxrcore.data.demo import make_findings_demo

    return make_findings_demo(tmp_path_factory.mktemp("findings") / "demo", n_images=360, image_size=40)


@pytest.fixture(scope="session")
def findings_run(findings_data, tmp_path_factory, shared_runs) -> Trained:
    """A findings (multi-label) simple_cnn trained 4 + 0 epochs on ``findings_data`` at 40 px: sigmoid
    outputs, calibrated per finding, evaluated per finding (a test split of 20%, so each finding has its 10
    positive test images), its card written."""

    def make():
        out = tmp_path_factory.mktemp("findings-run")
        config = tiny_config(
            findings_data, image_size=40, epochs=4, batch_size=16, val_fraction=0.15, test_fraction=0.2
        )
        return train_shared(config, out)

    trained = once_per_session(tmp_path_factory, "findings_run", make)
    shared_runs.freeze(trained.models)
    return trained


def litert_runner(path):
    """A TFLite (LiteRT) file as a function: a batch of prepared images in, its outputs out."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))

    def run(batch: np.ndarray) -> np.ndarray:
        out = []
        for image in batch:  # one image per call: the file's batch size is whatever the caller resizes to
            detail = interpreter.get_input_details()[0]
            interpreter.resize_tensor_input(detail["index"], [1, *image.shape])
            interpreter.allocate_tensors()
            interpreter.set_tensor(detail["index"], image[None].astype(np.float32))
            interpreter.invoke()
            out.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0])
        return np.stack(out)

    return run
