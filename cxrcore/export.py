"""Export a run's model for use outside CXR Lab: a TensorFlow SavedModel or a TFLite (LiteRT) file.

The exported model is the run's best model followed by its calibration temperature
(:class:`cxrcore.training.layers.Calibrate`; for a findings run, its temperature per finding,
:class:`cxrcore.training.layers.CalibrateSigmoid`), so it outputs the same calibrated probabilities the
dashboard shows. Its input is what :func:`cxrcore.data.io.prepare_image` returns for the run: one or more
RGB images, ``float32`` values 0..255, ``size x size``, after the run's pixel rules. Beside each export, a
JSON file (``<export>.json``, :func:`input_spec`) says exactly that: input shape, type and range, how an
image becomes that input, the class names in output order, the temperature already applied, and the
run's operating points, so a program without CXR Lab can use it correctly. For a findings run the output is one
calibrated sigmoid probability per finding (multi-label: several may be high; they do not sum to 1) and the
spec names the findings, their temperatures and their thresholds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from . import runs
from .errors import ConfigError, RunError
from .evaluation.multilabel import TASK as FINDINGS
from .lungs import segment

FORMATS = ("savedmodel", "tflite")
#: beside an export of a run with lung pixel rules: the lung model those rules need
LUNG_MODEL_COPY = "lungs.keras"

PREPARE = (
    "Decode the image (PNG, JPEG, or DICOM with its modality LUT and VOI window; MONOCHROME1 inverted; more "
    "than 8 bits stretched linearly from the image's own min..max to 0..255); {rules}; resize to {size} x {size} "
    "with bilinear filtering (aspect ratio not kept); copy gray into three channels (RGB, alpha dropped); "
    "float32 values 0..255. Backbone preprocessing is inside the model. cxrcore.data.io.prepare_image does "
    "all of this."
)


def input_spec(run: runs.RunDir) -> dict:
    """What an exported model of ``run`` takes and gives (written beside every export)."""
    size = run.image_size()
    rules = run.pixel_rules()
    points = run.operating_points()
    findings = run.task() == FINDINGS
    return {
        "run": run.run_id,
        "backbone": run.info().get("backbone"),
        "task": run.task(),
        **({"findings": run.labels()} if findings else {}),
        "input": {
            "name": "image",
            "shape": [None, size, size, 3],
            "dtype": "float32",
            "range": [0, 255],
            "channels": "RGB",
            "prepare": PREPARE.format(
                size=size,
                rules=(
                    f"apply the run's pixel rules ({rules.describe()})"
                    if not rules.is_default
                    else "no pixel rules (no crop, no equalisation)"
                ),
            ),
            "pixel_rules": {
                "crop_border": rules.crop_border,
                "equalize": rules.equalize,
                "lung_crop": rules.lung_crop,
                "lung_mask": rules.lung_mask,
            },
            **(
                {
                    "lung_model": {
                        "file": LUNG_MODEL_COPY,
                        "digest": run.info().get("lung_model"),
                        "use": "the lung crop and mask need CXR Lab's lung model (copied beside this file): "
                        "cxrcore.lungs.segment.LungSegmenter(file).crop_to_lungs / mask_outside, as "
                        "cxrcore.data.io.prepare_image applies them",
                    }
                }
                if rules.lung_crop or rules.lung_mask
                else {}
            ),
        },
        "output": _output(run),
        "operating_points": (
            {c: points["thresholds"].get(c) for c in run.labels()} if points and "thresholds" in points else None
        ),
        "unlike_training_check": (
            "not part of this export: the dashboard and `predict` flag images unlike the training data (feature "
            "distance to the training split, ood.npz in the run) and make no decision for them; a model served "
            "from this file gives probabilities for any input, a photo or a text page included"
        ),
        "intended_use": "research and education; not a medical device (see the run's MODEL_CARD.md)",
    }


def _output(run: runs.RunDir) -> dict:
    """The spec's ``output``: what the exported model gives, and the calibration already applied."""
    if run.task() != FINDINGS:
        return {
            "shape": [None, len(run.labels())],
            "probabilities": "calibrated: softmax(log p / temperature) is already applied",
            "classes": run.labels(),
            "temperature": run.temperature(),
        }
    return {
        "shape": [None, len(run.labels())],
        "probabilities": (
            "calibrated sigmoid probabilities, one per finding in the order of findings (multi-label: each is "
            "that finding's own probability, several may be high and they do not sum to 1); sigmoid(logit(p) / "
            "T) with the finding's temperature T is already applied"
        ),
        "findings": run.labels(),
        "temperatures": dict(zip(run.labels(), run.temperatures())),
    }


def serving_model(run: runs.RunDir):
    """The run's model with its temperature applied (a findings run's, per finding): prepared image in,
    calibrated probabilities out."""
    import keras

    from .training.layers import calibration_of  # lazy: TensorFlow
    from .training.model import load_model  # lazy: TensorFlow

    model = load_model(run.require_model())
    probs = calibration_of(run, "calibrated")(model.outputs[0])
    return keras.Model(model.inputs, probs, name=f"{model.name}_calibrated")


def export(run_dir: str | Path, fmt: str, out_dir: str | Path | None = None) -> Path:
    """Write ``run_dir``'s model as ``fmt`` (:data:`FORMATS`) under ``out_dir`` (default: the run's
    ``export/``) with its :func:`input_spec` beside it; returns the written path (a folder for a
    SavedModel, a ``.tflite`` file). An existing export of the same run and format is replaced whole."""
    import tensorflow as tf

    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    run = runs.RunDir(run_dir)
    if not run.exists():
        raise RunError(f"{run.path} is not a run directory")
    model = serving_model(run)
    size = run.image_size()
    out = Path(out_dir) if out_dir else run.path / "export"
    out.mkdir(parents=True, exist_ok=True)
    target = out / (f"{run.run_id}-savedmodel" if fmt == "savedmodel" else f"{run.run_id}.tflite")
    staging = out / f".tmp-{target.name}"
    shutil.rmtree(staging, ignore_errors=True) if staging.is_dir() else staging.unlink(missing_ok=True)
    signature = [tf.TensorSpec((None, size, size, 3), tf.float32, name="image")]
    try:
        model.export(
            str(staging),
            format="tf_saved_model" if fmt == "savedmodel" else "litert",
            input_signature=signature,
            verbose=False,
        )
    except BaseException:  # a half-written export is never left behind
        shutil.rmtree(staging, ignore_errors=True) if staging.is_dir() else staging.unlink(missing_ok=True)
        raise
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    staging.rename(target)
    spec = input_spec(run)
    runs.write_json(target.with_name(target.name + ".json"), spec)
    if "lung_model" in spec["input"]:
        shutil.copy2(segment.SHIPPED_MODEL, out / LUNG_MODEL_COPY)
    return target


def download_bytes(path: str | Path) -> tuple[bytes, str]:
    """An export as one download: ``(bytes, file name)``; a SavedModel folder (with its spec) as a zip."""
    import io
    import zipfile

    path = Path(path)
    spec = path.with_name(path.name + ".json")
    if path.is_file():
        return path.read_bytes(), path.name
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in sorted(path.rglob("*")):
            if item.is_file():
                archive.write(item, Path(path.name) / item.relative_to(path))
        if spec.is_file():
            archive.write(spec, spec.name)
        lungs = path.with_name(LUNG_MODEL_COPY)
        if lungs.is_file() and '"lung_model"' in spec.read_text(encoding="utf-8"):
            archive.write(lungs, lungs.name)
    return buffer.getvalue(), f"{path.name}.zip"
