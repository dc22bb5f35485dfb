"""The hard rule: the plugin never imports torch or the backend; it only talks to a child process."""

from __future__ import annotations

import re
import sys
from typing import Any

from .conftest import REPO

FORBIDDEN = ("torch", "torchvision", "segmentation_models_pytorch", "geossl")  # geossl_plugin is not matched
IMPORT = re.compile(r"^\s*(?:import|from)\s+(" + "|".join(FORBIDDEN) + r")\b", re.MULTILINE)
DYNAMIC = re.compile(r"""(?:import_module|__import__)\(\s*['"](""" + "|".join(FORBIDDEN) + r")\b")


def test_no_plugin_module_imports_torch_or_the_backend() -> None:
    files = sorted((REPO / "plugin").rglob("*.py"))
    assert len(files) >= 5
    offenders = [f"{path.relative_to(REPO)}: {m.group(0).strip()}" for path in files
                 for pattern in (IMPORT, DYNAMIC) for m in pattern.finditer(path.read_text(encoding="utf-8"))]
    assert offenders == []


def test_using_the_plugin_loads_neither_torch_nor_the_backend(plugin: Any) -> None:
    plugin.show_dock().shutdown()
    loaded = {name.split(".")[0] for name in sys.modules}
    assert loaded.isdisjoint({"torch", "geossl"})
