"""Shared test helpers: tiny synthetic image folders, isolated caches, the shared dev data."""

from __future__ import annotations

import os
import shutil
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
needs_weights = pytest.mark.skipif(
    not MNV2_035.is_file(), reason=f"shared ImageNet weights not found at {WEIGHTS} (set CXR_SHARED)"
)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own index cache and models folder."""
    monkeypatch.setenv("CXRCORE_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("CXRCORE_MODELS", str(tmp_path_factory.mktemp("models")))


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
