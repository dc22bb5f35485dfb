"""A fake base Python for the set-up tests: its ``-m venv`` makes a venv whose pip only records.

Every step of the real plan runs (programs, arguments, order) except the downloads; the venv's
``geossl`` is conftest's fake backend, so the panel can start it after the set-up.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path
from typing import Any

from .conftest import CPU_INFO

PY = sys.executable
_FAKE_PYTHON = r'''#!{python}
import json, os, shutil, stat, sys
args = sys.argv[1:]
here = os.path.dirname(os.path.abspath(__file__))
def record(what):
    with open(os.path.join({calls!r}), "a") as f:
        f.write(json.dumps([os.path.abspath(__file__), what]) + "\n")
if args[:1] == ["-c"] and "ensurepip" in args[1]:
    print(json.dumps({{"version": {version!r}, "bits": 64, "venv": True, "executable": __file__}}))
elif args[:2] == ["-m", "venv"]:
    venv = args[-1]
    os.makedirs(os.path.join(venv, "bin"), exist_ok=True)
    me = os.path.join(venv, "bin", "python")
    shutil.copy(__file__, me)
    shutil.copy({geossl!r}, os.path.join(venv, "bin", "geossl"))
    for p in (me, os.path.join(venv, "bin", "geossl")):
        os.chmod(p, os.stat(p).st_mode | stat.S_IXUSR)
    record(args)
elif args[:2] == ["-m", "pip"]:
    record(args)
    with open({calls!r} + ".env", "w") as f:  # what pip would see
        json.dump({{k: os.environ.get(k) for k in ("PIP_CERT", "HTTPS_PROXY", "http_proxy", "PYTHONNOUSERSITE",
                                                  "PYTHONPATH", "QGIS_PREFIX_PATH")}}, f)
    if os.path.exists({calls!r} + ".no-pytorch-index") and "--index-url" in args:  # a firewall in the way
        sys.exit("Could not fetch URL https://download.pytorch.org/whl/cpu/torch/: Failed to establish a new "
                 "connection: [Errno -2] Name or service not known")
    if os.path.exists({calls!r} + ".slow"):  # a test wants to cancel a download in progress
        open({calls!r} + ".pid", "w").write(str(os.getpid()))
        import time; time.sleep(60)
    print("Successfully installed", args[-1])
elif args[:1] == ["-c"] and "torch.arange" in args[1]:
    record(["probe", args[2]])
    print(json.dumps({{"ok": True, "device": args[2], "torch": "2.14.1+cpu"}}))
elif args[:1] == ["-c"]:
    record(["code"])
    sys.argv = ["-c", *args[2:]]
    exec(compile(args[1], "<string>", "exec"), {{"__name__": "__main__"}})
else:
    sys.exit("fake python: unexpected %r" % (args,))
'''


def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def make_fake_layout(tmp_path: Path, fake_backend: Any) -> dict[str, Path]:
    """A fake 3.9 and a fake 3.12 Python, a plugin folder with backend_src/, an nvidia-smi seeing an H200."""
    calls = tmp_path / "calls.jsonl"
    geossl = fake_backend(CPU_INFO)
    old = _executable(tmp_path / "old" / "python3", _FAKE_PYTHON.format(
        python=PY, calls=str(calls), version=[3, 9, 18], geossl=str(geossl)))
    good = _executable(tmp_path / "qgis" / "python3", _FAKE_PYTHON.format(
        python=PY, calls=str(calls), version=[3, 12, 4], geossl=str(geossl)))
    plugin = tmp_path / "profile" / "geossl_plugin"
    (plugin / "backend_src" / "geossl").mkdir(parents=True)
    (plugin / "backend_src" / "pyproject.toml").write_text("[project]\nname = 'geossl'\n")
    (plugin / "backend_src" / "requirements.txt").write_text("torch==2.14.1\n")
    smi = _executable(tmp_path / "bin" / "nvidia-smi", f"#!{PY}\nprint('NVIDIA H200, 580.95.05, 9.0')\n")
    return {"calls": calls, "old": old, "good": good, "plugin": plugin, "smi": smi, "root": tmp_path / "data",
            "geossl": geossl}


def setup_options(layout: dict[str, Path]) -> dict[str, Any]:
    """BackendSetup keywords that point it at the fakes: Linux x86-64, an H200, plenty of disk."""
    return {"os_name": "linux", "machine": "x86_64",
            "which": lambda name: str(layout["smi"]) if name == "nvidia-smi" else None,
            "candidates": [layout["old"], layout["good"]], "retry_delay_ms": 10,
            "disk_usage": lambda _p: (10**12, 0, 10**12)}
