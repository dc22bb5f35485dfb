"""``geossl info``: what this installation can do, what a model file holds, what a raster is."""

from __future__ import annotations

from typing import Any

from .checkpoint import load_checkpoint, versions
from .raster_io import raster_info


def device_report() -> dict[str, Any]:
    """CUDA device name and free memory, or CPU: the first thing to check in a bug report."""
    import torch

    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        return {"device": "cuda", "name": torch.cuda.get_device_name(0),
                "free_memory_mb": free // 2**20, "total_memory_mb": total // 2**20}
    return {"device": "cpu", "name": "CPU", "threads": torch.get_num_threads()}


def describe(model: str | None = None, raster: str | None = None) -> dict[str, Any]:
    if model:
        ck = load_checkpoint(model)
        tensors = ck.pop("state_dict")
        if ck.get("kind") == "pretrain-state":  # a resume state: optimiser/RNG internals are not for reading
            ck.pop("resume", None)
            return ck
        return ck | {"parameters": sum(v.numel() for v in tensors.values())}
    if raster:
        info = raster_info(raster).to_dict()
        info["bounds"] = raster_info(raster).bounds
        return info
    from .methods import method_names

    return {"versions": versions(), **device_report(), "methods": method_names()}
