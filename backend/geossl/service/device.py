"""What the service computes on, for ``/health``, without a CUDA context in the service process.

Jobs own the GPU; a context created here would hold several hundred MB of GPU memory for the life
of the service. So the name and free memory come from ``nvidia-smi`` when it is there (it asks the
driver, no context); otherwise torch's device query, which does not allocate either.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any


def _nvidia_smi() -> dict[str, Any] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    cmd = [exe, "--query-gpu=name,memory.free,memory.total", "--format=csv,noheader,nounits"]
    if visible:
        cmd += ["-i", visible]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True).stdout
        name, free, total = (x.strip() for x in out.strip().splitlines()[0].split(","))
        return {"device": "cuda", "name": name, "free_memory_mb": int(float(free)),
                "total_memory_mb": int(float(total))}
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def device_status() -> dict[str, Any]:
    """``{"device": "cuda"|"cpu", "name", "free_memory_mb", "total_memory_mb"}`` (memory: None if unknown)."""
    import torch

    if not torch.cuda.is_available():
        return {"device": "cpu", "name": "CPU", "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                "free_memory_mb": None, "total_memory_mb": None}
    found = _nvidia_smi()
    if found is not None:
        return found | {"gpus": torch.cuda.device_count()}
    props = torch.cuda.get_device_properties(0)
    return {"device": "cuda", "name": props.name, "free_memory_mb": None,
            "total_memory_mb": props.total_memory // 2**20, "gpus": torch.cuda.device_count()}
