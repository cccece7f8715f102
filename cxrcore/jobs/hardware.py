"""What training can run on, found without importing TensorFlow (``nvidia-smi``)."""

from __future__ import annotations

import os
import subprocess


def gpu_count() -> int:
    """GPUs on this machine (``CUDA_VISIBLE_DEVICES`` when set, else ``nvidia-smi -L``); 0 when none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def hardware_summary() -> dict:
    """``{"gpus": [{"name", "memory_mb"}, ...], "cpu_count": n}``."""
    gpus = []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        for line in out.stdout.strip().splitlines():
            name, _, memory = line.rpartition(",")
            if name.strip():
                gpus.append({"name": name.strip(), "memory_mb": int(float(memory))})
    except (OSError, subprocess.TimeoutExpired, ValueError):
        pass
    return {"gpus": gpus, "cpu_count": os.cpu_count() or 1}
