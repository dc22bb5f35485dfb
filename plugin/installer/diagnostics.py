"""The diagnostics report: one Markdown text with everything a bug report about the set-up needs.

GeoAI's issue template asks for such a report (field-lessons.md §5); ours has the QGIS and Python
versions, the OS, the venv, package versions, the torch build and why, the device probe, what
``nvidia-smi`` printed and the last lines of the log. The Qt side collects the facts; this module
only formats them, scrubbed of credentials. Stdlib only.
"""

from __future__ import annotations

import platform
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .logfile import scrub


@dataclass
class Facts:
    qgis_version: str = "?"
    qgis_python: str = field(default_factory=lambda: f"{platform.python_version()} ({sys.executable})")
    os: str = field(default_factory=platform.platform)
    machine: str = field(default_factory=platform.machine)
    venv: str = ""
    venv_exists: bool = False
    base_python: str = ""
    backend_path: str = ""
    packages: Mapping[str, str] = field(default_factory=dict)
    torch_build: str = ""  # e.g. "CUDA (cu130)"
    torch_reason: str = ""
    probe: str = ""  # the probe's JSON line, or its error
    nvidia_smi: str = ""
    log_tail: str = ""
    problem: str = ""


_DIST_INFO = re.compile(r"^(?P<name>.+?)-(?P<version>[^-]+)\.dist-info$")


def venv_packages(venv: Path) -> dict[str, str]:
    """Installed distributions read from the venv's ``*.dist-info`` folders: no subprocess, so the
    report is there even when the venv's Python no longer starts (``lib/python3.X`` or ``Lib``)."""
    found: dict[str, str] = {}
    for site in (*Path(venv).glob("lib/python3*/site-packages"), Path(venv) / "Lib" / "site-packages"):
        for info in site.glob("*.dist-info") if site.is_dir() else ():
            match = _DIST_INFO.match(info.name)
            if match:
                found[match.group("name").lower().replace("_", "-")] = match.group("version")
    return found


def _block(text: str) -> str:
    text = text.strip("\n")
    return f"```\n{text}\n```" if text.strip() else "_(none)_"


def report(facts: Facts) -> str:
    """Markdown, safe to paste into a public issue."""
    packages = "\n".join(f"| {name} | {version} |" for name, version in sorted(facts.packages.items()))
    lines = [
        "# GeoSSL backend set-up: diagnostics",
        "",
        f"- QGIS: {facts.qgis_version}",
        f"- QGIS's Python: {facts.qgis_python}",
        f"- OS: {facts.os} ({facts.machine})",
        f"- Virtual environment: {facts.venv or '(not chosen)'}"
        + ("" if not facts.venv else (" (exists)" if facts.venv_exists else " (missing)")),
        f"- Python used to create it: {facts.base_python or '(not found)'}",
        f"- Backend executable: {facts.backend_path or '(none)'}",
        f"- torch build: {facts.torch_build or '(not chosen)'}" + (f" — {facts.torch_reason}" if facts.torch_reason else ""),
    ]
    if facts.problem:
        lines.append(f"- Problem: {facts.problem}")
    lines += ["", "## Packages in the venv", ""]
    lines += ["| package | version |", "| --- | --- |", packages] if packages else ["_(none recorded)_"]
    lines += ["", "## Device probe", "", _block(facts.probe),
              "", "## nvidia-smi", "", _block(facts.nvidia_smi),
              "", "## Last lines of the set-up log", "", _block(facts.log_tail), ""]
    return scrub("\n".join(lines))
