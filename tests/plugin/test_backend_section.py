"""The Backend section against fake ``geossl`` services: real child processes, real HTTP, real event loop.

The fake (conftest.py) answers ``serve`` with a tiny stdlib HTTP service that writes the same
discovery file as the real one, so these tests are fast; test_flow.py runs the real backend.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from geossl_plugin import connection as conn
from geossl_plugin.backend import BACKEND_PATH_KEY, BackendError, BackendInfo, InfoProbe
from geossl_plugin.client import ApiError
from geossl_plugin.panel import GeoSSLDock
from geossl_plugin.panel.status_light import BackendState
from qgis.core import Qgis, QgsSettings

from .conftest import CPU_INFO, CUDA_INFO
from .procs import running

WAIT_MS = 15_000


@pytest.fixture
def dock(iface: Any, qtbot: Any) -> Iterator[GeoSSLDock]:
    widget = GeoSSLDock(iface.messageBar(), iface.mainWindow(), start_timeout_s=10)
    qtbot.addWidget(widget)
    widget.show()
    yield widget
    widget.shutdown()


@pytest.fixture
def running_fake(fake_backend: Any, tmp_path: Path) -> Iterator[tuple[conn.Discovery, subprocess.Popen]]:
    """A fake service started outside the panel (by Processing, an earlier session, or a remote host)."""
    folder = tmp_path / "elsewhere"
    process = subprocess.Popen([str(fake_backend(CUDA_INFO)), "serve", "--host", "127.0.0.1", "--port", "0",
                                "--data-dir", str(folder)])
    deadline = time.monotonic() + 10
    found = None
    while found is None and time.monotonic() < deadline:
        found = conn.read_discovery(folder / conn.DISCOVERY_FILE)
        time.sleep(0.05)
    assert found is not None, "the fake service did not start"
    yield found, process
    process.terminate()
    process.wait(10)


def _critical(iface: Any) -> list[str]:
    return iface.messageBar().get_messages(Qgis.Critical)


def _start(dock: GeoSSLDock, qtbot: Any, signal_name: str = "connected") -> Any:
    section = dock.backend_section
    with qtbot.waitSignal(getattr(section, signal_name), timeout=WAIT_MS) as blocker:
        section.connect_button.click()
    return blocker.args[0]


def test_start_runs_the_local_service_and_shows_the_cuda_device(dock: GeoSSLDock, iface: Any, qtbot: Any,
                                                                  fake_backend: Any, geossl_data_dir: Path) -> None:
    section = dock.backend_section
    section.path_widget.setFilePath(str(fake_backend(CUDA_INFO, sleep=0.5)))
    started = time.monotonic()
    section.connect_backend()
    assert time.monotonic() - started < 0.5, "starting must not wait for the service"
    assert section.status.state() is BackendState.STARTING
    assert not section.connect_button.isEnabled() and section.stop_button.isEnabled()
    with qtbot.waitSignal(section.connected, timeout=WAIT_MS) as blocker:
        pass
    info = blocker.args[0]
    assert isinstance(info, BackendInfo) and info.methods == ("glcnet", "simclr")
    assert section.status.state() is BackendState.CONNECTED and section.status.text() == "connected"
    assert section.device_label.text() == "CUDA: NVIDIA H100 80GB HBM3"
    assert section.version_label.text() == "geossl 0.1.0 · torch 2.14.1+cu130"
    discovery = conn.read_discovery(geossl_data_dir / conn.DISCOVERY_FILE)
    assert discovery is not None and discovery.pid == section.service().pid()
    assert dock.client.connection == discovery.connection, "the sections now talk to this service"
    assert dock.pretrain_section.method.count() == 2, "methods come from the backend's /info"
    assert _critical(iface) == []


def test_stop_ends_the_service_and_disconnects(dock: GeoSSLDock, qtbot: Any, fake_backend: Any,
                                               geossl_data_dir: Path) -> None:
    section = dock.backend_section
    section.path_widget.setFilePath(str(fake_backend(CPU_INFO)))
    _start(dock, qtbot)
    pid = section.service().pid()
    with qtbot.waitSignal(section.disconnected, timeout=WAIT_MS):
        section.stop_button.click()
    assert section.status.state() is BackendState.UNKNOWN and section.info() is None
    assert dock.client.connection is None and not dock.segment_section.run_button.isEnabled()
    qtbot.waitUntil(lambda: not (geossl_data_dir / conn.DISCOVERY_FILE).exists(), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not running(pid), timeout=WAIT_MS)


def test_a_running_service_of_the_same_data_folder_is_adopted(dock: GeoSSLDock, qtbot: Any,
                                                              running_fake: Any, fake_backend: Any) -> None:
    found, _process = running_fake
    QgsSettings().setValue(conn.DATA_DIR_KEY, str(found.path.parent))
    section = dock.backend_section
    section.path_widget.setFilePath(str(fake_backend(CPU_INFO)))  # would say CPU if it were started
    _start(dock, qtbot)
    assert section.service() is None, "no second service for the same data folder"
    assert section.device_label.text().startswith("CUDA")
    assert dock.client.connection == found.connection


def test_stop_also_ends_an_adopted_local_service(dock: GeoSSLDock, qtbot: Any, running_fake: Any) -> None:
    found, process = running_fake
    QgsSettings().setValue(conn.DATA_DIR_KEY, str(found.path.parent))
    section = dock.backend_section
    _start(dock, qtbot)
    assert section.stop_button.text() == "Stop"
    with qtbot.waitSignal(section.disconnected, timeout=WAIT_MS):
        section.stop_button.click()
    process.wait(10)  # SIGTERM reached it
    assert not found.path.exists()


def test_a_stale_discovery_file_is_ignored(dock: GeoSSLDock, qtbot: Any, fake_backend: Any,
                                           geossl_data_dir: Path) -> None:
    geossl_data_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (geossl_data_dir / conn.DISCOVERY_FILE).write_text(json.dumps(
        {"url": "http://127.0.0.1:9", "token": "old", "pid": dead.pid}))
    section = dock.backend_section
    section.path_widget.setFilePath(str(fake_backend(CPU_INFO)))
    _start(dock, qtbot)
    assert section.service() is not None and dock.client.connection.token == "fake-token"


def test_remote_connects_with_url_and_token_and_saves_them(dock: GeoSSLDock, qtbot: Any,
                                                           running_fake: Any) -> None:
    found, _process = running_fake
    section = dock.backend_section
    section.remote_radio.setChecked(True)
    assert section.connect_button.text() == "Connect" and section.url_edit.isVisible()
    assert not section.path_widget.isVisible()
    section.url_edit.setText(found.url + "/")
    section.token_edit.setText(found.token)
    info = _start(dock, qtbot)
    assert info.device == "cuda" and section.service() is None
    assert conn.mode() == conn.REMOTE
    assert conn.remote_connection() == found.connection, "URL (without the trailing /) and token are saved"


def test_remote_with_a_wrong_token_says_so(dock: GeoSSLDock, iface: Any, qtbot: Any, running_fake: Any) -> None:
    found, _process = running_fake
    section = dock.backend_section
    section.remote_radio.setChecked(True)
    section.url_edit.setText(found.url)
    section.token_edit.setText("not-the-token")
    error = _start(dock, qtbot, "connection_failed")
    assert isinstance(error, ApiError) and error.status == 401
    assert "refused the token" in error.message
    assert section.status.state() is BackendState.UNREACHABLE
    assert "refused the token" in _critical(iface)[0]


def test_an_unreachable_backend_shows_a_clear_message(dock: GeoSSLDock, iface: Any, qtbot: Any) -> None:
    section = dock.backend_section
    section.remote_radio.setChecked(True)
    section.url_edit.setText("http://127.0.0.1:9")  # discard port: nothing listens there
    section.token_edit.setText("x" * 20)
    error = _start(dock, qtbot, "connection_failed")
    assert error.status == 0
    assert error.message.startswith("GeoSSL backend at http://127.0.0.1:9 is unreachable")
    assert "Backend section" in error.message
    assert section.status.state() is BackendState.UNREACHABLE
    assert section.connect_button.isEnabled() and not section.stop_button.isEnabled()
    messages = _critical(iface)
    assert len(messages) == 1 and "unreachable" in messages[0]


def test_remote_without_url_asks_for_one(dock: GeoSSLDock, qtbot: Any) -> None:
    section = dock.backend_section
    section.remote_radio.setChecked(True)
    section.url_edit.setText("")
    assert "Enter the backend's URL" in _start(dock, qtbot, "connection_failed").message


def test_missing_executable_says_not_found(dock: GeoSSLDock, iface: Any, qtbot: Any, tmp_path: Path) -> None:
    section = dock.backend_section
    section.path_widget.setFilePath(str(tmp_path / "nowhere" / "geossl"))
    error = _start(dock, qtbot, "connection_failed")
    assert "not found" in error.message
    assert section.status.state() is BackendState.UNREACHABLE
    assert section.device_label.text() == "—"
    messages = _critical(iface)
    assert len(messages) == 1 and "not found" in messages[0] and "nowhere" in messages[0]


def test_nothing_configured_and_nothing_on_path_says_not_found(dock: GeoSSLDock, qtbot: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("geossl_plugin.panel.backend_section.default_backend_path", lambda: None)
    error = _start(dock, qtbot, "connection_failed")
    assert "not found" in error.message and "PATH" in error.message


def test_a_crash_at_start_shows_the_backends_last_words(dock: GeoSSLDock, iface: Any, qtbot: Any,
                                                        fake_backend: Any) -> None:
    stderr = "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA driver version is insufficient\n"
    section = dock.backend_section
    section.path_widget.setFilePath(str(fake_backend(stderr=stderr, exit_code=3)))
    error: BackendError = _start(dock, qtbot, "connection_failed")
    assert "exited with status 3" in error.message
    assert "RuntimeError: CUDA driver version is insufficient" in error.message
    assert "Traceback" in error.details  # the whole tail is one click away ("Show more")
    assert "CUDA driver version is insufficient" in _critical(iface)[0]


def test_a_service_that_never_gets_ready_times_out(iface: Any, qtbot: Any, fake_backend: Any) -> None:
    dock = GeoSSLDock(iface.messageBar(), iface.mainWindow(), start_timeout_s=1)
    qtbot.addWidget(dock)
    try:
        dock.backend_section.path_widget.setFilePath(str(fake_backend(CPU_INFO, sleep=60)))
        error = _start(dock, qtbot, "connection_failed")
        assert "did not start within 1 s" in error.message
    finally:
        dock.shutdown()


def test_a_service_that_dies_later_is_reported(dock: GeoSSLDock, iface: Any, qtbot: Any, fake_backend: Any) -> None:
    section = dock.backend_section
    section.path_widget.setFilePath(str(fake_backend(CPU_INFO)))
    _start(dock, qtbot)
    with qtbot.waitSignal(section.disconnected, timeout=WAIT_MS):
        os.kill(section.service().pid(), signal.SIGKILL)
    assert section.status.state() is BackendState.UNREACHABLE
    assert "crashed" in _critical(iface)[-1]


def test_a_venv_whose_python_is_gone_cannot_be_started(dock: GeoSSLDock, qtbot: Any, tmp_path: Path) -> None:
    # What a console script looks like after its venv's base Python was removed or the venv was moved.
    script = tmp_path / "moved-venv" / "bin" / "geossl"
    script.parent.mkdir(parents=True)
    script.write_text("#!/nonexistent/venv/bin/python3\nprint('never')\n")
    script.chmod(0o755)
    section = dock.backend_section
    section.path_widget.setFilePath(str(script))
    error = _start(dock, qtbot, "connection_failed")
    assert error.message.startswith("The GeoSSL backend could not be started")
    assert section.connect_button.isEnabled()


def test_qgis_environment_does_not_reach_the_backend(dock: GeoSSLDock, qtbot: Any, fake_backend: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # PYTHONHOME pointing at QGIS's Python would even stop the backend's interpreter from starting.
    qgis_vars = {"PYTHONPATH": "/usr/share/qgis/python", "PYTHONHOME": "/nonexistent/qgis-python",
                 "PROJ_LIB": "/qgis/share/proj", "PROJ_DATA": "/qgis/share/proj", "GDAL_DATA": "/qgis/gdal",
                 "QT_PLUGIN_PATH": "/qgis/qtplugins", "QGIS_PREFIX_PATH": "/qgis", "PYQGIS_STARTUP": "/x.py"}
    for name, value in qgis_vars.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GEOSSL_TEST_KEEP", "kept")
    dock.backend_section.path_widget.setFilePath(str(fake_backend(CPU_INFO)))
    info = _start(dock, qtbot)
    assert info.raw["seen_env"] == {"GEOSSL_TEST_KEEP": "kept", "PYTHONIOENCODING": "utf-8"}


def test_settings_are_remembered(dock: GeoSSLDock, iface: Any, fake_backend: Any) -> None:
    script = str(fake_backend(CPU_INFO))
    section = dock.backend_section
    section.path_widget.setFilePath(script)
    section.autostart_box.setChecked(False)
    assert QgsSettings().value(BACKEND_PATH_KEY) == script and conn.autostart() is False
    again = GeoSSLDock(iface.messageBar(), None)
    try:
        assert again.backend_section.path_widget.filePath() == script
        assert again.backend_section.backend_path() == script
        assert not again.backend_section.autostart_box.isChecked()
    finally:
        again.shutdown()
        again.deleteLater()
    section.path_widget.setFilePath("")
    assert QgsSettings().value(BACKEND_PATH_KEY) is None, "empty means automatic discovery"


def test_a_second_start_replaces_a_starting_one(dock: GeoSSLDock, qtbot: Any, fake_backend: Any) -> None:
    section = dock.backend_section
    section.path_widget.setFilePath(str(fake_backend(CUDA_INFO, sleep=30)))
    section.connect_backend()
    slow = section.service()
    section.stop_button.click()
    section.path_widget.setFilePath(str(fake_backend(CPU_INFO)))
    _start(dock, qtbot)
    assert section.service() is not slow
    assert section.device_label.text() == "CPU"


# --- the one-shot `geossl info --json` probe (kept for diagnostics) ------------------------------

def test_info_probe_reports_the_device(qtbot: Any, fake_backend: Any) -> None:
    probe = InfoProbe(str(fake_backend(CUDA_INFO)), timeout_s=10)
    with qtbot.waitSignal(probe.succeeded, timeout=WAIT_MS) as blocker:
        probe.start()
    assert blocker.args[0].device_label == "CUDA: NVIDIA H100 80GB HBM3"


def test_info_probe_that_hangs_times_out_and_is_killed(qtbot: Any, fake_backend: Any) -> None:
    probe = InfoProbe(str(fake_backend(CPU_INFO, sleep=60)), timeout_s=0.5)
    with qtbot.waitSignal(probe.failed, timeout=WAIT_MS) as blocker:
        probe.start()
    assert "did not answer within 0.5 s" in blocker.args[0].message
    assert not probe.is_running()
