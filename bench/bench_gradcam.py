"""Class-activation-map speed, printed as one JSON object.

    python bench/bench_gradcam.py [--weights FILE] [--size 224] [--repeats 10]

Model: MobileNetV2-0.35 at 224 px, with the shared ImageNet weights file when it is
there (../shared/weights/...0.35_224_no_top.h5), else random weights (speed is the
same). Measures: building the Explainer, each method's first call (the model clone
and, for Score-CAM, tracing the compiled forward pass happen there), then the median
and min seconds per image over ``--repeats`` calls after one warm-up call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

from _common import MNV2_035_WEIGHTS, timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", default=str(MNV2_035_WEIGHTS))
    parser.add_argument("--backbone", default="mobilenetv2_0.35")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    weights = args.weights if Path(args.weights).is_file() else "none"

    import numpy as np
    import tensorflow as tf

    from cxrcore.explain.cam import METHODS, Explainer
    from cxrcore.training.backbones import get_backbone
    from cxrcore.training.model import build_model

    rng = np.random.default_rng(0)
    # smooth-ish synthetic "X-rays": a vertical gradient plus noise, different per call
    base = np.linspace(30, 200, args.size, dtype=np.float32)[:, None, None]
    images = [
        np.clip(base + rng.normal(0, 25, (args.size, args.size, 1)), 0, 255).astype(np.uint8).repeat(3, axis=2)
        for _ in range(args.repeats + 1)
    ]

    model, build_s = timed(lambda: build_model(args.backbone, 3, image_size=args.size, weights=weights))
    layer = get_backbone(args.backbone).gradcam_layer
    explainer, init_s = timed(lambda: Explainer(model, layer))
    result = {
        "backbone": args.backbone,
        "image_size": args.size,
        "layer": layer,
        "weights": "imagenet-file" if weights != "none" else "none",
        "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "model_build_s": round(build_s, 3),
        "explainer_init_s": round(init_s, 4),
        "first_call_s": {},
        "median_s_per_image": {},
        "min_s_per_image": {},
        "scorecam_max_n": explainer.scorecam_max_n,
        "repeats": args.repeats,
    }
    for method in METHODS:
        _, first = timed(lambda: explainer.heatmap(images[0], method=method))
        result["first_call_s"][method] = round(first, 3)
        times = [timed(lambda: explainer.heatmap(img, method=method))[1] for img in images[1:]]
        result["median_s_per_image"][method] = round(statistics.median(times), 4)
        result["min_s_per_image"][method] = round(min(times), 4)
    # what building the visualizers cost in all: first calls minus a warm call
    result["one_off_setup_s"] = round(
        result["explainer_init_s"] + sum(result["first_call_s"][m] - result["median_s_per_image"][m] for m in METHODS),
        3,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
