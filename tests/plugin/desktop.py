"""A real QGIS desktop under Xvfb, for the tests that must see what a user sees.

``run_scene`` starts ``qgis --code SCENE`` on a throw-away profile, waits until the scene writes its
report file, captures the whole screen with ImageMagick's ``import``, then creates the quit file:
the scene quits QGIS the way a user closes it (the plugin must stop its backend then).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

TOOLS = ("xvfb-run", "import", "qgis")
MISSING = [tool for tool in TOOLS if shutil.which(tool) is None]
needs_desktop = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)} (apt: xvfb imagemagick qgis)")

_CAPTURE = r"""
qgis --profiles-path "$PROFILES" --nologo --noversioncheck --code "$SCENE" > "$QGIS_LOG" 2>&1 &
pid=$!
for _ in $(seq 1 $((LIMIT * 2))); do [ -f "$REPORT" ] && break; sleep 0.5; done
sleep 1
import -window root "$SHOT"
touch "$QUIT"
for _ in $(seq 1 120); do kill -0 $pid 2>/dev/null || break; sleep 0.25; done
kill $pid 2>/dev/null; wait $pid 2>/dev/null
exit 0
"""


def clean_environ() -> dict[str, str]:
    """This process's environment without what pytest-qgis and the venvs set for themselves."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "QGIS_", "PYTEST", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    return env


def run_scene(profiles: Path, scene: Path, env: Mapping[str, str], report: Path, quit_file: Path, shot: Path,
              log: Path, limit_s: int) -> None:
    """Run ``scene`` in QGIS on a 1600×1000 virtual screen; ``env`` carries the scene's settings."""
    full = {**env, "PROFILES": str(profiles), "SCENE": str(scene), "QGIS_LOG": str(log), "LIMIT": str(limit_s),
            "SHOT": str(shot), "REPORT": str(report), "QUIT": str(quit_file)}
    subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", "bash", "-c", _CAPTURE], env=full,
                   check=True, timeout=limit_s + 120)
