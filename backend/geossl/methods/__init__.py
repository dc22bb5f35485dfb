"""Registry of self-supervised pretraining methods.

The CLI choices, the API schema and the plugin's method list are all read from :data:`METHODS`, so
adding a method (BYOL, MoCo v2, ...) is one module subclassing
:class:`geossl.methods.base.PretrainMethod` plus one entry here.
"""

from __future__ import annotations

from geossl.methods.base import PretrainMethod
from geossl.methods.glcnet import GLCNet
from geossl.methods.simclr import SimCLR

__all__ = ["METHODS", "PretrainMethod", "get_method", "method_names"]

METHODS: dict[str, type[PretrainMethod]] = {cls.name: cls for cls in (GLCNet, SimCLR)}


def method_names() -> list[str]:
    """Registered method names, the default (GLCNet) first."""
    return list(METHODS)


def get_method(name: str) -> type[PretrainMethod]:
    """Method class for ``name`` (case-insensitive); ValueError listing the choices otherwise."""
    try:
        return METHODS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown pretraining method {name!r}; choose from {', '.join(METHODS)}") from None
