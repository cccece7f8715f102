"""The layers of ``cxrcore``, bottom to top: every module of the package is placed in exactly one.

A module may import modules of its own layer or of a layer below it, never one above, and never another
module's underscore name; the imports form no cycle. ``tests/test_architecture.py`` reads every module's
imports from its source (imports inside functions included) and holds these rules. The folders group
modules by stage (``data``, ``training``, ``evaluation``, ``explain``, ``lungs``, ``jobs``); the layers order
them by what they may use, so one folder can span several layers (``data.pixels`` is a leaf, ``data.io``
sits above the lung segmenter because the lung rules need it). Plain data, no imports.
"""

from __future__ import annotations

#: (layer name, what it holds, its modules), bottom to top
LAYERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "foundation",
        "the errors every layer raises, this list, and the sub-packages' own files (docstrings and names)",
        (
            "errors",
            "architecture",
            "data",
            "evaluation",
            "explain",
            "jobs",
            "lungs",
            "stats",
            "training",
        ),
    ),
    (
        "leaves",
        "pure functions and frozen data: pixels, patient ids, intervals, feature statistics, calibration, the backbone "
        "registry, the recipes, devices and hardware",
        (
            "data.pixels",
            "data.patients",
            "stats.intervals",
            "stats.ood",
            "evaluation.calibration",
            "training.backbones",
            "training.devices",
            "recipes",
            "jobs.hardware",
        ),
    ),
    (
        "formats and measures",
        "image formats (PNG, JPEG, DICOM), lung geometry, metrics, operating points and figures",
        (
            "data.formats",
            "data.dicom",
            "data.dicom_pixels",
            "lungs.geometry",
            "lungs.augment",
            "evaluation.metrics",
            "evaluation.operating_points",
            "evaluation.plots",
        ),
    ),
    ("configuration", "a training run's configuration, validated", ("config",)),
    ("lung segmenter", "the shipped lung model, on decoded arrays", ("lungs.segment",)),
    (
        "data",
        "decoding and the model's view of an image (lung rules included), findings datasets, the synthetic demos, "
        "dataset layouts, splits, the audit",
        (
            "data.io",
            "data.findings",
            "data.findings_summary",
            "data.demo",
            "data.index",
            "data.splits",
            "data.sources",
            "data.audit",
        ),
    ),
    (
        "runs and stores",
        "the one reader and writer of a run's files, per-finding measures, the activation cache, external sets, "
        "the job queue's store",
        ("runs", "evaluation.multilabel", "training.activation_store", "evaluation.external", "jobs.store"),
    ),
    (
        "models",
        "Keras models, their losses, input pipeline and training machinery, class activation maps",
        (
            "training.layers",
            "training.losses",
            "training.model",
            "training.pipeline",
            "training.callbacks",
            "training.distributed",
            "training.features",
            "explain.cam",
            "lungs.model",
        ),
    ),
    (
        "stages",
        "each stage on its own: training, evaluating, scoring a map, training the lung model, scheduling jobs",
        (
            "training.train",
            "evaluation.evaluate",
            "evaluation.compare",
            "evaluation.sanity",
            "explain.faithfulness",
            "lungs.train",
            "jobs.processes",
            "jobs.scheduler",
            "jobs.queue",
        ),
    ),
    (
        "use cases",
        "what is built from a finished run: prediction, ensembles, export, explanations over a test sample, "
        "the model card",
        ("predict", "ensemble", "export", "explain.sampled", "evaluation.model_card"),
    ),
    (
        "workflows",
        "each use case from start to end, and the background worker that runs them",
        ("workflows", "jobs.worker"),
    ),
    (
        "interfaces",
        "the command line: one module per command group, options shared through one",
        (
            "cli.options",
            "cli.data",
            "cli.train",
            "cli.evaluate",
            "cli.explain",
            "cli.predict",
            "cli.runs",
            "cli.jobs",
            "cli.lungs",
            "cli",
            "__main__",
        ),
    ),
    ("package", "the public names of cxrcore, re-exported", ("",)),
)


def layer_of() -> dict[str, int]:
    """Each module (dotted, without ``cxrcore.``; ``""`` is the package itself) -> its layer's index."""
    return {module: index for index, (_, _, modules) in enumerate(LAYERS) for module in modules}


def markdown_table() -> str:
    """The layers as the Markdown table ``docs/layout.md`` shows (a test keeps the two the same)."""
    rows = ["| layer | modules (bottom to top) | what it holds |", "| --- | --- | --- |"]
    for index, (name, holds, modules) in enumerate(LAYERS):
        listed = ", ".join(f"`{m or 'cxrcore'}`" for m in modules)
        rows.append(f"| {index}. {name} | {listed} | {holds} |")
    return "\n".join(rows)
