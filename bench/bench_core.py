"""Core speed figures, printed as one JSON object.

    python bench/bench_core.py [DATA] [--weights FILE]

DATA defaults to ../shared/data/cxr-dev (2,500 real 224 px X-rays) or, when absent, a
synthetic demo set made in a temporary folder. Measures: index build (cold, and warm from
the on-disk cache), pipeline decode throughput (first epoch vs cached), one frozen-backbone
training epoch of MobileNetV2-0.35 at 96 and 224 px, single-image prediction latency
(the Predictor's compiled forward pass vs an eager call vs ``model.predict``), and how
long the CLI takes to answer commands that need no TensorFlow (listing backbones, an
input error).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import MNV2_035_WEIGHTS, ROOT, SHARED, timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", nargs="?", default=str(SHARED / "data" / "cxr-dev"))
    parser.add_argument("--weights", default=str(MNV2_035_WEIGHTS))
    parser.add_argument("--train-images", type=int, default=1024)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cxrbench-"))
    os.environ["CXRCORE_CACHE"] = str(tmp / "cache")
    data = Path(args.data)
    if not data.exists():
        from cxrcore.data.demo import make_demo_dataset

        data = make_demo_dataset(tmp / "demo", n_per_class=300, image_size=224)
    weights = args.weights if Path(args.weights).is_file() else "none"

    def cli(*argv):
        subprocess.run([sys.executable, "-m", "cxrcore", *argv], cwd=ROOT, capture_output=True)

    result_cli = {
        "cli_backbones_s": timed(lambda: cli("backbones"))[1],
        "cli_input_error_s": timed(lambda: cli("train", "--data", str(tmp / "nowhere"), "--backbone", "simple_cnn"))[1],
    }

    import numpy as np

    from cxrcore.data.index import build_index
    from cxrcore.training.model import build_model, inference_function, set_stage
    from cxrcore.training.pipeline import make_dataset
    from cxrcore.training.train import make_optimizer

    result = {
        "data": str(data),
        "weights": "imagenet-file" if weights != "none" else "none",
        **{k: round(v, 2) for k, v in result_cli.items()},
    }
    index, cold = timed(lambda: build_index(data))
    _, warm = timed(lambda: build_index(data))
    result["index_cold_s"], result["index_warm_s"] = round(cold, 3), round(warm, 3)
    result["images"] = len(index)
    classes = sorted(index["label"].unique())
    sample = index.sample(n=min(args.train_images, len(index)), random_state=0)

    for size in (96, 224):
        ds = make_dataset(sample, classes, size, batch_size=32, training=True)
        _, first = timed(lambda: sum(1 for _ in ds))
        _, cached = timed(lambda: sum(1 for _ in ds))
        result[f"decode_{size}px_images_per_s_first_epoch"] = round(len(sample) / first, 1)
        result[f"decode_{size}px_images_per_s_cached"] = round(len(sample) / cached, 1)
        model = build_model("mobilenetv2_0.35", len(classes), image_size=size, weights=weights)
        set_stage(model, "frozen")
        model.compile(optimizer=make_optimizer("adam", 1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
        model.fit(ds.take(2), epochs=1, verbose=0)  # build and trace
        _, epoch = timed(lambda: model.fit(ds, epochs=1, verbose=0))
        result[f"train_frozen_{size}px_images_per_s"] = round(len(sample) / epoch, 1)
        x = np.zeros((1, size, size, 3), np.float32)
        forward = inference_function(model, size)
        forward(x)
        model(x, training=False)
        model.predict(x, verbose=0)
        _, compiled = timed(lambda: [forward(x) for _ in range(10)])
        _, call = timed(lambda: [model(x, training=False) for _ in range(10)])
        _, pred = timed(lambda: [model.predict(x, verbose=0) for _ in range(10)])
        result[f"predict_one_{size}px_compiled_ms"] = round(compiled * 100, 1)
        result[f"predict_one_{size}px_eager_call_ms"] = round(call * 100, 1)
        result[f"predict_one_{size}px_model_predict_ms"] = round(pred * 100, 1)
    result["cpu_count"] = os.cpu_count()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
