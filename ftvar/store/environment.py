"""Where a trial ran, as its record says: host, device, library versions, SLURM ids, the container image."""

from __future__ import annotations

import os
import platform
import socket
from typing import Any

from ftvar import __version__


def environment(device: str, torch_version: str, transformers_version: str) -> dict[str, Any]:
    env = os.environ
    image = (
        env.get("FTVAR_CONTAINER_IMAGE") or env.get("APPTAINER_CONTAINER") or env.get("SINGULARITY_CONTAINER")
    )
    return {
        "host": socket.gethostname(),
        "device": device,
        "torch": torch_version,
        "transformers": transformers_version,
        "ftvar": __version__,
        "python": platform.python_version(),
        "slurm_job_id": env.get("SLURM_JOB_ID"),
        "slurm_array_job_id": env.get("SLURM_ARRAY_JOB_ID"),
        "slurm_array_task_id": env.get("SLURM_ARRAY_TASK_ID"),
        "container_image": image,
        "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
    }
