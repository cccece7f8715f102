"""Where training runs: GPU(s) or CPU, mixed precision, and the tf.distribute strategy.

* several GPUs visible -> ``MirroredStrategy`` over all of them (one machine);
* ``TF_CONFIG`` set (several machines) -> refused with the reason: Keras 3's ``model.fit`` cannot
  train under ``MultiWorkerMirroredStrategy`` (batches reach the model as ``PerReplica`` values;
  keras-team/keras#20585, tensorflow/tensorflow#72388), which the test suite checks with two
  worker processes on one machine;
* ``CXRCORE_CPU_REPLICAS=N`` on a machine without GPUs splits the CPU into N logical
  devices and mirrors over them: the multi-device code path, testable without GPUs;
* otherwise TensorFlow's default strategy (one GPU, or the CPU).

Call :func:`configure_devices` before anything else initialises TensorFlow's runtime.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from ..errors import ConfigError


def _split_cpu(replicas: int) -> list[str]:
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError:  # runtime already initialised: use what exists
        pass
    return [d.name for d in tf.config.list_logical_devices("CPU")][:replicas]


def configure_devices(mixed_precision: bool = False) -> tuple[tf.distribute.Strategy, dict]:
    """Pick devices and a strategy; returns ``(strategy, facts)`` for run.json.

    ``facts``: device (readable), gpus (names), replicas, strategy, mixed_precision.
    Raises :class:`ConfigError` when ``TF_CONFIG`` asks for several machines (see the module docstring).
    """
    if os.environ.get("TF_CONFIG"):
        raise ConfigError(
            "TF_CONFIG is set, but training over several machines does not work with Keras 3 "
            "(model.fit under MultiWorkerMirroredStrategy fails: keras-team/keras#20585). Train on one machine "
            "(all its GPUs are used together) and unset TF_CONFIG"
        )
    gpus = tf.config.list_physical_devices("GPU")
    names = []
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process
            pass
        names.append(tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name))
    if len(gpus) > 1:
        strategy, kind = tf.distribute.MirroredStrategy(), "mirrored"
    else:
        replicas = int(os.environ.get("CXRCORE_CPU_REPLICAS") or 0)
        devices = _split_cpu(replicas) if replicas > 1 and not gpus else []
        if len(devices) > 1:
            strategy, kind = tf.distribute.MirroredStrategy(devices=devices), "mirrored (logical CPUs)"
        else:
            strategy, kind = tf.distribute.get_strategy(), "default"
    use_mixed = bool(mixed_precision and gpus)
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mixed else "float32")
    return strategy, {
        "device": f"GPU ({', '.join(names)})" if gpus else "CPU",
        "gpus": names,
        "replicas": int(strategy.num_replicas_in_sync),
        "strategy": kind,
        "mixed_precision": use_mixed,
    }
