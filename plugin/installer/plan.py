"""The set-up as data: the commands to run, in order, with labels and download sizes.

Pure data so the whole sequence is reviewed and tested without running pip; ``runner`` executes it.
Every command runs a venv Python (never QGIS's own: nothing is installed there), with the
environment of ``environment.installer_environ``. Stdlib only.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .locations import venv_geossl, venv_python
from .torch_choice import TorchChoice, torch_requirements

PIP_ARGS = ("--disable-pip-version-check", "--no-input", "--progress-bar", "off", "--retries", "5",
            "--timeout", "60", "--prefer-binary")
BACKEND_COPY = "geossl-src"  # the backend source is copied into the venv: pip builds write into the source

# Copy the shipped backend source (pip writes build/ and *.egg-info into the folder it builds).
_COPY = ("import shutil, sys; shutil.rmtree(sys.argv[2], ignore_errors=True); "
         "shutil.copytree(sys.argv[1], sys.argv[2], ignore=shutil.ignore_patterns("
         "'.venv', '__pycache__', '*.pyc', '*.egg-info', 'build', 'dist'))")

# A real tensor operation on the chosen device: "ready" only if it computes the right answer there.
# Run by the venv's Python, never imported here (test_no_torch.py checks the plugin's own imports).
TORCH_PROBE = """\
import json, sys, torch
want = sys.argv[1]
if want == "cuda" and not torch.cuda.is_available():
    sys.exit("CUDA not usable by torch %s (built for CUDA %s): %s" % (
        torch.__version__, torch.version.cuda, "no GPU visible" if torch.cuda.device_count() == 0 else "driver?"))
if want == "mps" and not torch.backends.mps.is_available():
    sys.exit("MPS not available (macOS 12.3+ on Apple Silicon needed)")
a = torch.arange(12, dtype=torch.float32, device=want).reshape(3, 4)
value = float((a @ a.T).sum().cpu())
if value != 1134.0:  # exact in float32
    sys.exit("wrong result on %s: %r" % (want, value))
name = torch.cuda.get_device_name(0) if want == "cuda" else want
print(json.dumps({"ok": True, "device": want, "name": name, "torch": torch.__version__,
                  "cuda": torch.version.cuda}))
"""


@dataclass(frozen=True)
class Step:
    key: str
    label: str
    argv: tuple[str, ...]
    download_mb: int = 0
    network: bool = False  # retried on failure (a flaky connection is worth another try)


@dataclass(frozen=True)
class Plan:
    venv: Path
    python: Path  # the venv's Python
    geossl: Path  # what the plugin saves as the backend path once the plan has run
    choice: TorchChoice
    steps: tuple[Step, ...]

    @property
    def download_mb(self) -> int:
        return sum(step.download_mb for step in self.steps)


def build_plan(base_python: Path, venv: Path, os_name: str, choice: TorchChoice, source: Path,
               requirements: Path, fresh: bool = False) -> Plan:
    """``base_python`` makes ``venv`` (``fresh``: emptied first, "Reinstall"), then pip, torch from
    ``choice``'s index, the backend from ``source`` with ``requirements``, and two probes."""
    py = str(venv_python(venv, os_name))
    pip = (py, "-m", "pip", "install", *PIP_ARGS)
    copy = venv / BACKEND_COPY
    geossl = Path(venv_geossl(venv, os_name))
    steps = (
        Step("venv", f"Create the virtual environment in {venv}",
             (str(base_python), "-m", "venv", *(("--clear",) if fresh else ()), str(venv))),
        Step("pip", "Update pip", (*pip, "--upgrade", "pip"), download_mb=3, network=True),
        Step("torch", f"Install torch ({choice.label})", (*pip, *choice.pip_index_args(), *torch_requirements(choice)),
             download_mb=choice.download_mb, network=True),
        Step("copy", "Copy the backend source", (py, "-c", _COPY, str(source), str(copy))),
        # The torch pins are in the requirements too: the build just installed satisfies them
        # (2.14.1+cu130 matches ==2.14.1), so pip keeps it instead of fetching PyPI's.
        Step("backend", "Install the GeoSSL backend and its pinned requirements",
             (*pip, "-r", str(requirements), str(copy)), download_mb=250, network=True),
        Step("probe", f"Test torch on {choice.label}", (py, "-c", TORCH_PROBE, choice.device)),
        Step("check", "Ask the backend what it can do", (str(geossl), "info", "--json")),
    )
    return Plan(venv=venv, python=Path(py), geossl=geossl, choice=choice, steps=steps)


# --- free disk -------------------------------------------------------------------------------------

def existing_ancestor(path: Path) -> Path:
    """The venv folder may not exist yet: measure the disk it will be on."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return path


def free_space_problem(path: Path, need_gb: float,
                       usage: Callable[[Path], tuple[int, int, int]] = shutil.disk_usage) -> str:
    """"" if there is room, else a sentence that says how much is missing where."""
    where = existing_ancestor(path)
    free_gb = usage(where)[2] / 1e9
    if free_gb >= need_gb:
        return ""
    return (f"Not enough free disk space in {where}: {free_gb:.1f} GB free, about {need_gb:g} GB needed. "
            "Free some space or choose another install folder.")
