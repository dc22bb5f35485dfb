"""The Backend section against fake ``geossl`` executables: real child processes, real event loop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from geossl_plugin.backend import BACKEND_PATH_KEY, BackendError, BackendInfo, InfoProbe
from geossl_plugin.panel import GeoSSLDock
from geossl_plugin.panel.status_light import BackendState
from qgis.core import Qgis, QgsSettings

from .conftest import CPU_INFO, CUDA_INFO

WAIT_MS = 10_000


@pytest.fixture
def dock(iface: Any, qtbot: Any) -> Iterator[GeoSSLDock]:
    widget = GeoSSLDock(iface.messageBar(), iface.mainWindow(), timeout_s=5)
    qtbot.addWidget(widget)
    widget.show()
    yield widget
    widget.shutdown()


def _critical(iface: Any) -> list[str]:
    return iface.messageBar().get_messages(Qgis.Critical)


def test_check_reaches_connected_and_shows_the_cuda_device(dock: GeoSSLDock, iface: Any, qtbot: Any,
                                                           fake_backend: Any) -> None:
    section = dock.backend_section
    section.path_widget.setFilePath(str(fake_backend(CUDA_INFO)))
    with qtbot.waitSignal(section.checked, timeout=WAIT_MS) as blocker:
        section.check_button.click()
    info = blocker.args[0]
    assert isinstance(info, BackendInfo)
    assert section.status.state() is BackendState.CONNECTED and section.status.text() == "connected"
    assert section.device_label.text() == "CUDA: NVIDIA H100 80GB HBM3"
    assert section.version_label.text() == "geossl 0.1.0 · torch 2.14.1+cu130"
    assert info.methods == ("glcnet", "simclr")
    assert section.check_button.isEnabled()
    assert _critical(iface) == []


def test_cpu_backend_is_labelled_cpu(dock: GeoSSLDock, qtbot: Any, fake_backend: Any) -> None:
    section = dock.backend_section
    section.path_widget.setFilePath(str(fake_backend(CPU_INFO)))
    with qtbot.waitSignal(section.checked, timeout=WAIT_MS):
        section.check()
    assert section.device_label.text() == "CPU"


def test_check_does_not_block_the_gui(dock: GeoSSLDock, qtbot: Any, fake_backend: Any) -> None:
    section = dock.backend_section
    section.path_widget.setFilePath(str(fake_backend(CPU_INFO, sleep=1.0)))
    started = time.monotonic()
    section.check()
    assert time.monotonic() - started < 0.5, "check() must return at once; the answer comes later"
    assert section.status.state() is BackendState.STARTING
    assert not section.check_button.isEnabled()
    with qtbot.waitSignal(section.checked, timeout=WAIT_MS):
        pass
    assert section.status.state() is BackendState.CONNECTED


def test_missing_executable_says_not_found(dock: GeoSSLDock, iface: Any, qtbot: Any, tmp_path: Path) -> None:
    section = dock.backend_section
    section.path_widget.setFilePath(str(tmp_path / "nowhere" / "geossl"))
    with qtbot.waitSignal(section.check_failed, timeout=WAIT_MS) as blocker:
        section.check()
    assert "not found" in blocker.args[0].message
    assert section.status.state() is BackendState.UNREACHABLE
    assert section.device_label.text() == "—"
    messages = _critical(iface)
    assert len(messages) == 1 and "not found" in messages[0] and "nowhere" in messages[0]


def test_nothing_configured_and_nothing_on_path_says_not_found(dock: GeoSSLDock, iface: Any, qtbot: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("geossl_plugin.panel.backend_section.default_backend_path", lambda: None)
    section = dock.backend_section
    with qtbot.waitSignal(section.check_failed, timeout=WAIT_MS) as blocker:
        section.check()
    assert "not found" in blocker.args[0].message and "PATH" in blocker.args[0].message


def test_non_zero_exit_shows_the_backends_stderr(dock: GeoSSLDock, iface: Any, qtbot: Any,
                                                 fake_backend: Any) -> None:
    stderr = "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA driver version is insufficient\n"
    section = dock.backend_section
    section.path_widget.setFilePath(str(fake_backend(stdout="", stderr=stderr, exit_code=3)))
    with qtbot.waitSignal(section.check_failed, timeout=WAIT_MS) as blocker:
        section.check()
    error: BackendError = blocker.args[0]
    assert "exited with status 3" in error.message
    assert "RuntimeError: CUDA driver version is insufficient" in error.message
    assert "Traceback" in error.details  # the whole tail is one click away ("Show more")
    assert section.status.state() is BackendState.UNREACHABLE
    assert "CUDA driver version is insufficient" in _critical(iface)[0]


def test_backend_json_error_is_preferred_over_stderr(dock: GeoSSLDock, qtbot: Any, fake_backend: Any) -> None:
    # `geossl --json` reports user errors as {"error": ...} on stdout, exit status 2, and a line on stderr.
    section = dock.backend_section
    script = fake_backend(stdout='{"error": "cannot read model.pt"}\n', stderr="geossl info: error: x\n",
                          exit_code=2)
    section.path_widget.setFilePath(str(script))
    with qtbot.waitSignal(section.check_failed, timeout=WAIT_MS) as blocker:
        section.check()
    assert blocker.args[0].message == "Backend exited with status 2: cannot read model.pt"


@pytest.mark.parametrize(("stdout", "expected"), [
    ("Hello, I am not GeoSSL\n", "did not answer 'info --json' with JSON"),
    ('{"versions": {"torch": "2.4"}}\n', "without the 'versions.geossl' and 'device' fields"),
])
def test_unexpected_output_is_reported(dock: GeoSSLDock, qtbot: Any, fake_backend: Any, stdout: str,
                                       expected: str) -> None:
    section = dock.backend_section
    section.path_widget.setFilePath(str(fake_backend(stdout=stdout)))
    with qtbot.waitSignal(section.check_failed, timeout=WAIT_MS) as blocker:
        section.check()
    assert expected in blocker.args[0].message


def test_not_executable_file_is_reported(dock: GeoSSLDock, qtbot: Any, fake_backend: Any) -> None:
    script = fake_backend(CPU_INFO)
    script.chmod(0o644)
    section = dock.backend_section
    section.path_widget.setFilePath(str(script))
    with qtbot.waitSignal(section.check_failed, timeout=WAIT_MS) as blocker:
        section.check()
    assert "not an executable" in blocker.args[0].message


def test_a_backend_that_hangs_times_out_and_is_killed(qtbot: Any, fake_backend: Any) -> None:
    probe = InfoProbe(str(fake_backend(CPU_INFO, sleep=60)), timeout_s=0.5)
    with qtbot.waitSignal(probe.failed, timeout=WAIT_MS) as blocker:
        probe.start()
    assert "did not answer within 0.5 s" in blocker.args[0].message
    assert not probe.is_running()


def test_qgis_environment_does_not_reach_the_backend(dock: GeoSSLDock, qtbot: Any, fake_backend: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # PYTHONHOME pointing at QGIS's Python would even stop the backend's interpreter from starting.
    qgis_vars = {"PYTHONPATH": "/usr/share/qgis/python", "PYTHONHOME": "/nonexistent/qgis-python",
                 "PROJ_LIB": "/qgis/share/proj", "PROJ_DATA": "/qgis/share/proj", "GDAL_DATA": "/qgis/gdal",
                 "QT_PLUGIN_PATH": "/qgis/qtplugins", "QGIS_PREFIX_PATH": "/qgis", "PYQGIS_STARTUP": "/x.py"}
    for name, value in qgis_vars.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GEOSSL_TEST_KEEP", "kept")
    section = dock.backend_section
    section.path_widget.setFilePath(str(fake_backend(CPU_INFO)))
    with qtbot.waitSignal(section.checked, timeout=WAIT_MS) as blocker:
        section.check()
    seen = blocker.args[0].raw["seen_env"]
    assert seen == {"GEOSSL_TEST_KEEP": "kept", "PYTHONIOENCODING": "utf-8"}


def test_path_field_is_saved_in_qgis_settings(dock: GeoSSLDock, iface: Any, fake_backend: Any) -> None:
    script = str(fake_backend(CPU_INFO))
    dock.backend_section.path_widget.setFilePath(script)
    assert QgsSettings().value(BACKEND_PATH_KEY) == script

    again = GeoSSLDock(iface.messageBar(), None)
    try:
        assert again.backend_section.path_widget.filePath() == script
        assert again.backend_section.backend_path() == script
    finally:
        again.deleteLater()

    dock.backend_section.path_widget.setFilePath("")
    assert QgsSettings().value(BACKEND_PATH_KEY) is None, "empty means automatic discovery"


def test_changing_the_path_forgets_the_previous_answer(dock: GeoSSLDock, qtbot: Any, fake_backend: Any,
                                                      tmp_path: Path) -> None:
    section = dock.backend_section
    section.path_widget.setFilePath(str(fake_backend(CUDA_INFO)))
    with qtbot.waitSignal(section.checked, timeout=WAIT_MS):
        section.check()
    section.path_widget.setFilePath(str(tmp_path / "other" / "geossl"))
    assert section.status.state() is BackendState.UNKNOWN
    assert section.info() is None and section.device_label.text() == "—"


def test_a_second_check_replaces_the_first(dock: GeoSSLDock, qtbot: Any, fake_backend: Any) -> None:
    section = dock.backend_section
    section.path_widget.setFilePath(str(fake_backend(CUDA_INFO, sleep=30)))
    section.check()
    slow_probe = section._probe
    section.path_widget.setFilePath(str(fake_backend(CPU_INFO)))
    with qtbot.waitSignal(section.checked, timeout=WAIT_MS):
        section.check()
    assert slow_probe is not section._probe
    assert section.device_label.text() == "CPU"


def test_a_venv_whose_python_is_gone_cannot_be_started(dock: GeoSSLDock, iface: Any, qtbot: Any,
                                                        tmp_path: Path) -> None:
    # What a console script looks like after its venv's base Python was removed or the venv was moved.
    script = tmp_path / "moved-venv" / "bin" / "geossl"
    script.parent.mkdir(parents=True)
    script.write_text("#!/nonexistent/venv/bin/python3\nprint('never')\n")
    script.chmod(0o755)
    section = dock.backend_section
    section.path_widget.setFilePath(str(script))
    with qtbot.waitSignal(section.check_failed, timeout=WAIT_MS) as blocker:
        section.check()
    assert blocker.args[0].message.startswith(f"Backend could not be started ({script})")
    assert section.status.state() is BackendState.UNREACHABLE
    assert section.check_button.isEnabled()
