"""Where training runs: GPU(s) or CPU, mixed precision, and the tf.distribute strategy.

* several GPUs visible -> ``MirroredStrategy`` over all of them (one machine);
* ``TF_CONFIG`` set (several machines) -> ``MultiWorkerMirroredStrategy``: synchronous data-parallel
  training over all workers' devices. Keras 3's ``model.fit`` cannot drive it (keras-team/keras#20585),
  so training then runs :func:`cxrcore.training.distributed.fit_distributed`. Every worker runs the
  same command and writes its own run directory (on its own machine); worker 0 (or the ``chief``
  task) is the one to use, and the test suite checks that the workers' models agree;
* ``CXRCORE_CPU_REPLICAS=N`` on a machine without GPUs splits the CPU into N logical
  devices and mirrors over them: the multi-device code path, testable without GPUs;
* otherwise TensorFlow's default strategy (one GPU, or the CPU).

Call :func:`configure_devices` before anything else initialises TensorFlow's runtime.
"""

from __future__ import annotations

import json
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


def _cluster() -> dict | None:
    """``{"workers", "worker", "chief"}`` from ``TF_CONFIG``, or None when it is not set."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        found = json.loads(raw)
        spec, task = found["cluster"], found["task"]
        kind, index = str(task["type"]), int(task["index"])
        machines = list(spec.get("chief", [])) + list(spec.get("worker", []))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            'TF_CONFIG must be JSON like {"cluster": {"worker": ["host1:port", "host2:port"]}, '
            f'"task": {{"type": "worker", "index": 0}}}} ({type(exc).__name__}: {exc})'
        ) from None
    if kind not in ("chief", "worker") or not machines:
        raise ConfigError(f"TF_CONFIG: task type {kind!r} is not a chief or a worker of a cluster with workers")
    has_chief = bool(spec.get("chief"))
    return {
        "workers": len(machines),
        "worker": index + (1 if kind == "worker" and has_chief else 0),
        "chief": kind == "chief" or (kind == "worker" and index == 0 and not has_chief),
    }


def _multi_worker(cluster: dict, mixed_precision: bool) -> tuple[tf.distribute.Strategy, dict]:
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except (RuntimeError, ValueError) as exc:  # e.g. TensorFlow's runtime was started first
        raise ConfigError(f"cannot join the workers named in TF_CONFIG: {exc}") from None
    gpus = tf.config.list_physical_devices("GPU")
    use_mixed = bool(mixed_precision and gpus)
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mixed else "float32")
    return strategy, {
        "device": f"{'GPU' if gpus else 'CPU'} on {cluster['workers']} workers",
        "gpus": [gpu.name for gpu in gpus],
        "replicas": int(strategy.num_replicas_in_sync),
        "strategy": "multi-worker mirrored",
        "mixed_precision": use_mixed,
        **cluster,
    }


def configure_devices(mixed_precision: bool = False) -> tuple[tf.distribute.Strategy, dict]:
    """Pick devices and a strategy; returns ``(strategy, facts)`` for run.json.

    ``facts``: device (readable), gpus (names), replicas, strategy, mixed_precision.
    With ``TF_CONFIG``, also ``workers`` (how many), ``worker`` (this one's index) and ``chief``.
    Raises :class:`ConfigError` when ``TF_CONFIG`` is not a valid cluster description for this.
    """
    cluster = _cluster()
    if cluster is not None:
        return _multi_worker(cluster, mixed_precision)
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
