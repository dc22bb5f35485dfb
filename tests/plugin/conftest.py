"""Headless-QGIS fixtures (pytest-qgis): the plugin under its installed name and fake backends.

The plugin is imported as ``geossl_plugin`` through a symlink to ``plugin/``, exactly as a QGIS
profile sees it, so relative imports and the symlink-resolving backend discovery are exercised.
"""

from __future__ import annotations

import json
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pytest
from qgis.core import QgsNetworkAccessManager, QgsSettings

REPO = Path(__file__).resolve().parents[2]
sys.dont_write_bytecode = True  # keep __pycache__ out of plugin/ (it would be packaged by a careless zip)

_PLUGINS_DIR = Path(tempfile.mkdtemp(prefix="geossl-test-plugins-"))
(_PLUGINS_DIR / "geossl_plugin").symlink_to(REPO / "plugin", target_is_directory=True)
sys.path.insert(0, str(_PLUGINS_DIR))

# What `geossl info --json` printed on the H100 machine, give or take the free memory.
CUDA_INFO: dict[str, Any] = {
    "versions": {"geossl": "0.1.0", "torch": "2.14.1+cu130", "numpy": "2.4.6", "python": "3.11.7"},
    "device": "cuda", "name": "NVIDIA H100 80GB HBM3", "free_memory_mb": 80000, "total_memory_mb": 81559,
    "methods": ["glcnet", "simclr"],
}
CPU_INFO: dict[str, Any] = {
    "versions": {"geossl": "0.1.0", "torch": "2.14.1"}, "device": "cpu", "name": "CPU", "threads": 2,
    "methods": ["glcnet", "simclr"],
}
# Variables the fake backend reports back, so tests can see what leaked into the child.
WATCHED_ENV = ("PYTHONPATH", "PYTHONHOME", "PROJ_LIB", "PROJ_DATA", "GDAL_DATA", "QT_PLUGIN_PATH",
               "QGIS_PREFIX_PATH", "PYQGIS_STARTUP", "GEOSSL_TEST_KEEP", "PYTHONIOENCODING")

_FAKE = '''#!{python}
\"\"\"Fake `geossl` written by the GeoSSL plugin tests: `info --json`, and `serve` as a tiny HTTP service.\"\"\"
import json, os, signal, sys, time
time.sleep({sleep!r})
sys.stderr.write({stderr!r})
sys.stderr.flush()
stdout = {stdout!r}
info = {info!r}
info["seen_env"] = {{k: v for k, v in os.environ.items() if k in {watched!r}}}
if sys.argv[1:] == ["info", "--json"]:
    sys.stdout.write(stdout if stdout is not None else json.dumps(info) + "\\n")
    sys.exit({exit_code!r})
if sys.argv[1:2] != ["serve"] or {exit_code!r} != 0:
    if sys.argv[1:2] != ["serve"]:
        sys.stderr.write("fake geossl: unexpected arguments %r\\n" % (sys.argv[1:],))
    sys.exit({exit_code!r} or 64)
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
args = dict(zip(sys.argv[2::2], sys.argv[3::2]))
data_dir = args["--data-dir"]
TOKEN = "fake-token"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _send(self, status, body):
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self):
        if self.path == "/health":
            return self._send(200, {{"status": "ok"}})
        if self.headers.get("Authorization") != "Bearer " + TOKEN:
            return self._send(401, {{"detail": "missing or wrong token"}})
        if self.path == "/info":
            return self._send(200, info)
        if self.path == "/models":
            return self._send(200, [])
        if self.path == "/jobs":
            return self._send(200, [])
        return self._send(404, {{"detail": "Not Found"}})


server = ThreadingHTTPServer((args.get("--host", "127.0.0.1"), int(args.get("--port", "0"))), Handler)
discovery = os.path.join(data_dir, "service.json")


def bye(*_):
    try:
        os.remove(discovery)
    except OSError:
        pass
    os._exit(0)


signal.signal(signal.SIGTERM, bye)
os.makedirs(data_dir, exist_ok=True)
with open(discovery + ".tmp", "w") as f:
    json.dump({{"url": "http://127.0.0.1:%d" % server.server_address[1], "token": TOKEN, "pid": os.getpid()}}, f)
os.replace(discovery + ".tmp", discovery)
server.serve_forever()
'''


def dispose(obj: Any) -> None:
    """Delete a layer (or any QObject) the test still owns, now.

    Fixture values linger in reference cycles until the garbage collector runs; a layer that
    outlives QgsApplication.exitQgis() crashes the interpreter at exit. Layers a project owns
    (added with addMapLayer) are deleted by the project instead.
    """
    from qgis.PyQt import sip

    if not sip.isdeleted(obj) and sip.ispyowned(obj):
        sip.delete(obj)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_PLUGINS_DIR, ignore_errors=True)


FakeBackend = Callable[..., Path]


@pytest.fixture
def fake_backend(tmp_path: Path) -> FakeBackend:
    """Factory for executable fake ``geossl`` scripts: JSON on stdout, chosen stderr/exit/delay."""
    counter = iter(range(1000))

    def make(info: dict[str, Any] | None = None, *, stdout: str | None = None, stderr: str = "",
             exit_code: int = 0, sleep: float = 0.0) -> Path:
        folder = tmp_path / f"fake{next(counter)}" / "bin"
        folder.mkdir(parents=True)
        script = folder / "geossl"
        script.write_text(_FAKE.format(python=sys.executable, sleep=sleep, stderr=stderr, stdout=stdout,
                                       info=json.loads(json.dumps(info or CPU_INFO)), watched=WATCHED_ENV,
                                       exit_code=exit_code), encoding="utf-8")
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return script

    return make


@pytest.fixture(autouse=True)
def clean_geossl_settings() -> Iterator[None]:
    """Each test starts without saved GeoSSL settings (pytest-qgis keeps one settings file per run)."""
    QgsSettings().remove("geossl")
    yield
    QgsSettings().remove("geossl")


@pytest.fixture(autouse=True)
def geossl_data_dir(clean_geossl_settings: None, tmp_path: Path) -> Path:
    """The local service's data folder (discovery file, job outputs): per test, never the real profile."""
    from geossl_plugin.connection import DATA_DIR_KEY

    folder = tmp_path / "geossl-data"
    QgsSettings().setValue(DATA_DIR_KEY, str(folder))
    return folder


@pytest.fixture(autouse=True)
def geossl_venv_root(clean_geossl_settings: None, tmp_path: Path) -> Path:
    """Where "Set up backend…" installs, and where discovery looks for its venv: per test, never the
    real ~/.local/share/geossl (a developer's own set-up must not change what the tests find)."""
    from geossl_plugin.installer.locations import VENV_ROOT_KEY

    folder = tmp_path / "geossl-venvs"
    QgsSettings().setValue(VENV_ROOT_KEY, str(folder))
    return folder


@pytest.fixture
def project() -> Iterator[Any]:
    """QGIS's project, emptied before and after the test."""
    from qgis.core import QgsProject

    project = QgsProject.instance()
    project.clear()
    yield project
    project.clear()


@pytest.fixture
def iface(qgis_iface: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """pytest-qgis's iface, but with docks really docked into its (shown, offscreen) main window.

    The stub's addDockWidget is a no-op, and a dock that is never shown cannot be toggled the way
    QgsDockWidget toggles in QGIS; every iface call is also recorded (``iface.<name>.mock_calls``).
    """
    window = qgis_iface.mainWindow()
    real = {
        "addDockWidget": window.addDockWidget, "removeDockWidget": window.removeDockWidget,
        "addToolBarIcon": None, "removeToolBarIcon": None,
        "addPluginToRasterMenu": None, "removePluginRasterMenu": None,
    }
    for name, side_effect in real.items():
        monkeypatch.setattr(qgis_iface, name, MagicMock(name=name, side_effect=side_effect))
    qgis_iface.messageBar().clear_messages()
    window.show()
    yield qgis_iface
    window.hide()
    qgis_iface.messageBar().clear_messages()


@pytest.fixture
def plugin(iface: Any) -> Iterator[Any]:
    """The plugin as QGIS creates it: classFactory(iface) then initGui(); unloaded afterwards."""
    from geossl_plugin import classFactory

    instance = classFactory(iface)
    instance.initGui()
    yield instance
    instance.unload()


@pytest.fixture
def qgis_proxy() -> Iterator[dict[str, object]]:
    """QGIS's proxy settings for one test, applied to QGIS's network manager as the Options dialog
    does (nothing listens on port 9: any request it carries fails), then restored."""
    settings = QgsSettings()
    values: dict[str, object] = {"proxy/proxyEnabled": True, "proxy/proxyType": "HttpProxy",
                                 "proxy/proxyHost": "127.0.0.1", "proxy/proxyPort": 9,
                                 "proxy/proxyUser": "ana", "proxy/proxyPassword": "pw"}
    before = {key: settings.value(key) for key in values if settings.contains(key)}
    for key, value in values.items():
        settings.setValue(key, value)
    QgsNetworkAccessManager.instance().setupDefaultProxyAndCache()
    yield values
    for key in values:
        settings.remove(key)
    for key, value in before.items():
        settings.setValue(key, value)
    QgsNetworkAccessManager.instance().setupDefaultProxyAndCache()
