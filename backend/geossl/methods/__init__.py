"""Registry of self-supervised pretraining methods.

The CLI choices, the API schema and the plugin's method list are all read from this registry, so
adding a method (BYOL, MoCo v2, ...) is one module subclassing
:class:`geossl.methods.base.PretrainMethod` plus one entry here. Entries are imported lazily:
listing the names (``geossl --help``, job schemas) must not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geossl.methods.base import PretrainMethod

__all__ = ["METHODS", "PretrainMethod", "get_method", "method_names"]

_REGISTRY: dict[str, str] = {  # name -> "module:Class"; the first is the default
    "glcnet": "geossl.methods.glcnet:GLCNet",
    "simclr": "geossl.methods.simclr:SimCLR",
    "byol": "geossl.methods.byol:BYOL",
    "moco": "geossl.methods.moco:MoCo",
}


def method_names() -> list[str]:
    """Registered method names, the default (GLCNet) first."""
    return list(_REGISTRY)


def get_method(name: str) -> type[PretrainMethod]:
    """Method class for ``name`` (case-insensitive); ValueError listing the choices otherwise."""
    try:
        module, cls = _REGISTRY[name.lower()].split(":")
    except KeyError:
        raise ValueError(f"unknown pretraining method {name!r}; choose from {', '.join(_REGISTRY)}") from None
    return getattr(importlib.import_module(module), cls)


def __getattr__(name: str) -> Any:
    """``METHODS`` and ``PretrainMethod`` on first use (PEP 562), importing torch only then."""
    if name == "METHODS":
        return {n: get_method(n) for n in _REGISTRY}
    if name == "PretrainMethod":
        from geossl.methods.base import PretrainMethod

        return PretrainMethod
    raise AttributeError(name)
