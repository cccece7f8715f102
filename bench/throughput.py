"""Images per second of the project's model, forward pass and training step, per precision and XLA setting.

    python bench/throughput.py [--backbone resnet50] [--image-size 224] [--batch-size 64]
                               [--steps 20] [--precision float32,mixed_float16] [--xla off,on]

The model is the one training builds (``build_model``: backbone + head, random weights: speed does
not depend on them), on synthetic batches already on the device, so that only the model is timed:

- ``forward``: one forward pass per image, what the activation cache costs per image (it is also
  the frozen stage's whole cost the notebook way, every epoch);
- ``train``: one training step per image with the whole backbone unfrozen (BatchNorm frozen, as
  fine-tuning runs it): the full pass the activation cache avoids.

``--precision`` takes Keras dtype policies (the project's ``--mixed-precision`` is
``mixed_float16``); ``--xla`` is ``compile(jit_compile=...)`` as the project's ``--xla on|off``
sets it. Runs on whichever Keras backend is installed (``KERAS_BACKEND``) and records it. Each
setting prints one JSON line as it finishes; the last line is everything, shaped
``{"setup": {...}, "results": [...]}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
from _common import ROOT  # noqa: F401  (puts the repo on sys.path)


def device_name() -> str:
    """The accelerator Keras computes on, in words ("cpu" where there is none)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.platform}: {getattr(device, 'device_kind', device)}"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return "gpu: " + tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)
        return "cpu"
    if backend == "torch":
        import torch

        return f"cuda: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu"
    return backend


def _rate(step, batch: int, steps: int, max_seconds: float) -> dict:
    """Compile (first call) and warm-up, then images/s over ``steps`` calls or ``max_seconds``."""
    started = time.perf_counter()
    step()
    compile_seconds = time.perf_counter() - started
    step()
    done, started = 0, time.perf_counter()
    while done < steps and (done < 2 or time.perf_counter() - started < max_seconds):
        step()
        done += 1
    seconds = time.perf_counter() - started
    return {
        "images_per_second": round(done * batch / seconds, 1),
        "steps": done,
        "first_call_seconds": round(compile_seconds, 2),
    }


def measure(
    backbone: str = "resnet50",
    image_size: int = 224,
    batch_size: int = 64,
    precision: str = "float32",
    xla: str = "on",
    steps: int = 20,
    max_seconds: float = 30.0,
) -> dict:
    """One setting's forward and training images/s (the function ``train_speed.py --throughput`` uses)."""
    import keras

    from cxrcore.config import HeadConfig
    from cxrcore.training.model import build_model, set_stage

    keras.mixed_precision.set_global_policy(precision)
    try:
        keras.utils.set_random_seed(0)
        model = build_model(backbone, 3, image_size=image_size, weights="none", head=HeadConfig())
        set_stage(model, "finetune", unfreeze=-1, pretrained=True)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-4),
            loss="categorical_crossentropy",
            metrics=["accuracy"],
            jit_compile={"on": True, "off": False}[xla],
        )
        rng = np.random.default_rng(0)
        x = keras.ops.convert_to_tensor(rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype("float32"))
        y = keras.ops.convert_to_tensor(np.eye(3, dtype="float32")[rng.integers(0, 3, batch_size)])
        forward = _rate(lambda: model.predict_on_batch(x), batch_size, steps, max_seconds)
        train = _rate(lambda: model.train_on_batch(x, y), batch_size, steps, max_seconds)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return {"precision": precision, "xla": xla, "forward": forward, "train": train}


def setup(backbone: str, image_size: int, batch_size: int) -> dict:
    import keras

    return {
        "backbone": backbone,
        "image_size": image_size,
        "batch_size": batch_size,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "device": device_name(),
        "python": platform.python_version(),
    }


def run(backbone: str, image_size: int, batch_size: int, precisions, xlas, steps: int, max_seconds: float, echo=None):
    """Every (precision, xla) setting measured: ``{"setup": {...}, "results": [...]}``."""
    results = []
    for precision in precisions:
        for xla in xlas:
            found = measure(backbone, image_size, batch_size, precision, xla, steps, max_seconds)
            results.append(found)
            if echo:
                echo(found)
    return {"setup": setup(backbone, image_size, batch_size), "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed calls per measurement")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="stop a measurement's timing after this")
    parser.add_argument("--precision", default="float32,mixed_float16", help="Keras dtype policies, comma-separated")
    parser.add_argument("--xla", default="off,on", help="off, on or both")
    args = parser.parse_args()
    found = run(
        args.backbone,
        args.image_size,
        args.batch_size,
        args.precision.split(","),
        args.xla.split(","),
        args.steps,
        args.max_seconds,
        echo=lambda one: print(json.dumps(one), flush=True),
    )
    print(json.dumps(found))


if __name__ == "__main__":
    main()
