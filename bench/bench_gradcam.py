"""Class-activation-map and faithfulness-scoring speed, printed as one JSON object.

    python bench/bench_gradcam.py [--backbones mobilenetv2_0.35,resnet50] [--size 224] [--repeats 10]
                                  [--run RUN_DIR]

Per backbone (default MobileNetV2-0.35 and ResNet50, at 224 px): the shared ImageNet weights file
where there is one (../shared/weights, MobileNetV2-0.35 only), else random weights (speed is the
same). Measures building the Explainer, each method's first call (the model clone and the compiled
functions are made there), then the median and min seconds per image over ``--repeats`` calls after
one warm-up; and the faithfulness scoring of one map (deletion and insertion, 20 steps:
2 x 20 images through the model), median over the repeats.

``--run DIR`` also times ``Predictor.explain`` end to end on a trained run (decoding, prediction,
Grad-CAM and its scores: what the Predict page waits for per image), on new images each call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

from _common import MNV2_035_WEIGHTS, timed


def synthetic_images(size: int, n: int):
    """Smooth-ish synthetic "X-rays": a vertical gradient plus noise, different per call."""
    import numpy as np

    rng = np.random.default_rng(0)
    base = np.linspace(30, 200, size, dtype=np.float32)[:, None, None]
    return [
        np.clip(base + rng.normal(0, 25, (size, size, 1)), 0, 255).astype(np.uint8).repeat(3, axis=2) for _ in range(n)
    ]


def median_min(times: list[float]) -> dict:
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4)}


def bench_backbone(backbone: str, size: int, repeats: int) -> dict:
    import numpy as np

    from cxrcore.explain.cam import METHODS, Explainer
    from cxrcore.explain.faithfulness import scores
    from cxrcore.training.backbones import get_backbone
    from cxrcore.training.model import build_model, inference_function

    weights = str(MNV2_035_WEIGHTS) if backbone == "mobilenetv2_0.35" and MNV2_035_WEIGHTS.is_file() else "none"
    images = synthetic_images(size, repeats + 1)
    model, build_s = timed(lambda: build_model(backbone, 3, image_size=size, weights=weights))
    layer = get_backbone(backbone).gradcam_layer
    explainer, init_s = timed(lambda: Explainer(model, layer))
    result = {
        "backbone": backbone,
        "image_size": size,
        "layer": layer,
        "weights": "imagenet-file" if weights != "none" else "random",
        "model_build_s": round(build_s, 3),
        "explainer_init_s": round(init_s, 4),
        "first_call_s": {},
        "per_image": {},
        "scorecam_max_n": explainer.scorecam_max_n,
    }
    for method in METHODS:
        _, first = timed(lambda: explainer.heatmap(images[0], method=method))
        result["first_call_s"][method] = round(first, 3)
        times = [timed(lambda: explainer.heatmap(img, method=method))[1] for img in images[1:]]
        result["per_image"][method] = median_min(times)
    forward = inference_function(model, size)

    def probabilities(batch):
        return np.concatenate([np.asarray(forward(batch[i : i + 32])) for i in range(0, len(batch), 32)])

    heat = explainer.heatmap(images[0])
    _, first = timed(lambda: scores(images[0], heat, 0, probabilities))
    times = [timed(lambda: scores(img, heat, 0, probabilities))[1] for img in images[1:]]
    result["faithfulness_scoring"] = {"first_call_s": round(first, 3), **median_min(times), "images_per_map": 40}
    result["gradcam_with_scores_median_s"] = round(
        result["per_image"]["gradcam"]["median_s"] + result["faithfulness_scoring"]["median_s"], 4
    )
    return result


def bench_predictor(run_dir: str, repeats: int) -> dict:
    """``Predictor.explain`` (Grad-CAM, default scores) on new PNG bytes each call."""
    import io

    from PIL import Image

    from cxrcore.predict import Predictor

    predictor, load_s = timed(lambda: Predictor(run_dir))
    blobs = []
    for image in synthetic_images(predictor.image_size, repeats + 1):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    _, first = timed(lambda: predictor.explain(blobs[0], "gradcam", name="first.png"))
    times = [timed(lambda: predictor.explain(b, "gradcam", name="x.png"))[1] for b in blobs[1:]]
    _, again = timed(lambda: predictor.explain(blobs[1], "gradcam", name="x.png"))
    return {
        "run": run_dir,
        "backbone": predictor.run.config().backbone,
        "image_size": predictor.image_size,
        "load_s": round(load_s, 3),
        "first_call_s": round(first, 3),
        "explain_gradcam_with_scores": median_min(times),
        "same_image_again_s": round(again, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbones", default="mobilenetv2_0.35,resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--run", help="a trained run: also time Predictor.explain end to end")
    args = parser.parse_args()

    import tensorflow as tf

    result = {
        "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "repeats": args.repeats,
        "backbones": [bench_backbone(b, args.size, args.repeats) for b in args.backbones.split(",")],
    }
    if args.run:
        if not Path(args.run).is_dir():
            parser.error(f"--run {args.run}: no such run directory")
        result["predictor"] = bench_predictor(args.run, args.repeats)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
