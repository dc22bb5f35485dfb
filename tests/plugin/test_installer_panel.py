""""Set up backend…" in the dock: offered when no backend exists, runs the set-up, then starts the backend.

The set-up runs against the fake Python of installer_fakes.py (no downloads); the venv's geossl
is conftest's fake backend, so the panel really starts it and connects.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from geossl_plugin.backend import saved_backend_path
from geossl_plugin.installer.locations import VENV_ROOT_KEY
from geossl_plugin.panel import GeoSSLDock
from geossl_plugin.panel.status_light import BackendState
from qgis.core import QgsSettings

from .installer_fakes import make_fake_layout, setup_options

WAIT_MS = 20_000


@pytest.fixture
def no_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("geossl_plugin.panel.backend_section.default_backend_path", lambda: None)


@pytest.fixture
def dock(iface: Any, qtbot: Any, no_backend: None) -> Iterator[GeoSSLDock]:
    widget = GeoSSLDock(iface.messageBar(), iface.mainWindow(), start_timeout_s=10)
    qtbot.addWidget(widget)
    widget.show()
    yield widget
    widget.shutdown()


def test_offered_when_no_backend_is_found(dock: GeoSSLDock) -> None:
    section = dock.backend_section
    assert section.setup_button.isVisible() and section.setup_button.font().bold()
    assert section.status.state() is BackendState.UNKNOWN
    assert "Set up backend" in section.status.toolTip() + section.status.text()
    section.remote_radio.setChecked(True)
    assert not section.setup_button.isVisible(), "a remote backend is set up on its own machine"


def test_setup_saves_the_new_backend_and_the_panel_connects(dock: GeoSSLDock, qtbot: Any, tmp_path: Path,
                                                            fake_backend: Any) -> None:
    layout = make_fake_layout(tmp_path, fake_backend)
    section = dock.backend_section
    section.setup_options = {**setup_options(layout), "plugin_dir": layout["plugin"]}
    dialog = section.open_setup()
    assert dialog.isVisible()
    dialog.folder_widget.setFilePath(str(layout["root"]))
    with qtbot.waitSignal(section.connected, timeout=WAIT_MS) as blocker:
        dialog.install_button.click()
        assert dialog.cancel_button.isEnabled() and not dialog.install_button.isEnabled()
    geossl = layout["root"] / "venv-py3.12" / "bin" / "geossl"
    assert saved_backend_path() == str(geossl) == section.path_widget.filePath()
    assert blocker.args[0].device == "cpu"
    assert QgsSettings().value(VENV_ROOT_KEY) == str(layout["root"])
    assert "Ready" in dialog.step_label.text() and dialog.install_button.text() == "Reinstall"
    assert "cu130" in dialog.summary_label.text() and "GB" in dialog.summary_label.text()
    report = dialog.copy_diagnostics()
    for expected in (str(layout["root"] / "venv-py3.12"), "NVIDIA H200, 580.95.05, 9.0", "CUDA (cu130)",
                     '"ok": true', "| geossl | 0.1.0 |", "## Last lines of the set-up log", " Done"):
        assert expected in report
    from qgis.PyQt.QtWidgets import QApplication

    assert QApplication.clipboard().text() == report


def test_a_failed_setup_shows_the_action_and_offers_retry(dock: GeoSSLDock, qtbot: Any, tmp_path: Path,
                                                          fake_backend: Any) -> None:
    layout = make_fake_layout(tmp_path, fake_backend)
    section = dock.backend_section
    section.setup_options = {**setup_options(layout), "plugin_dir": layout["plugin"],
                             "disk_usage": lambda _p: (10**12, 10**12, 10**9)}
    dialog = section.open_setup()
    dialog.folder_widget.setFilePath(str(layout["root"]))
    dialog.install_button.click()
    qtbot.waitUntil(lambda: dialog.install_button.text() == "Retry", timeout=WAIT_MS)
    assert "Not enough free disk space" in dialog.step_label.text() and "What to do" in dialog.step_label.text()
    assert saved_backend_path() == "" and not section.is_connected()
    assert "- Problem: Not enough free disk space" in dialog.diagnostics()


def test_cancel_stops_pip_releases_the_lock_and_offers_retry(dock: GeoSSLDock, qtbot: Any, tmp_path: Path,
                                                              fake_backend: Any) -> None:
    from geossl_plugin.installer.lock import LOCK_NAME

    from .procs import running

    layout = make_fake_layout(tmp_path, fake_backend)
    Path(str(layout["calls"]) + ".slow").write_text("")
    section = dock.backend_section
    section.setup_options = {**setup_options(layout), "plugin_dir": layout["plugin"]}
    dialog = section.open_setup()
    dialog.folder_widget.setFilePath(str(layout["root"]))
    dialog.install_button.click()
    pid_file = Path(str(layout["calls"]) + ".pid")
    qtbot.waitUntil(lambda: pid_file.exists() and pid_file.read_text() != "", timeout=WAIT_MS)
    assert "Update pip" in dialog.step_label.text() and (layout["root"] / LOCK_NAME).exists()
    dialog.cancel_button.click()
    qtbot.waitUntil(lambda: dialog.install_button.text() == "Retry", timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not running(int(pid_file.read_text())), timeout=WAIT_MS)
    assert "Cancelled" in dialog.step_label.text() and not (layout["root"] / LOCK_NAME).exists()
    assert saved_backend_path() == "" and dialog.install_button.isEnabled()


def test_qgis_proxy_and_the_certificate_reach_pip_but_qgis_variables_do_not(
        dock: GeoSSLDock, qtbot: Any, tmp_path: Path, fake_backend: Any, monkeypatch: pytest.MonkeyPatch,
        qgis_proxy: dict[str, object]) -> None:
    import json

    layout = make_fake_layout(tmp_path, fake_backend)
    section = dock.backend_section
    section.setup_options = {**setup_options(layout), "plugin_dir": layout["plugin"]}
    dialog = section.open_setup()
    dialog.folder_widget.setFilePath(str(layout["root"]))
    cert = tmp_path / "corp.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    dialog.cert_widget.setFilePath(str(cert))
    monkeypatch.setenv("QGIS_PREFIX_PATH", "/usr")
    monkeypatch.setenv("PYTHONPATH", "/usr/share/qgis/python")
    # Then the panel starts the new backend and connects to it on 127.0.0.1: direct, not through the proxy.
    with qtbot.waitSignals([dialog.installed, section.connected], timeout=WAIT_MS):
        dialog.install_button.click()
    seen = json.loads(Path(str(layout["calls"]) + ".env").read_text())
    assert seen == {"PIP_CERT": str(cert), "HTTPS_PROXY": "http://ana:pw@127.0.0.1:9",
                    "http_proxy": "http://ana:pw@127.0.0.1:9", "PYTHONNOUSERSITE": "1", "PYTHONPATH": None,
                    "QGIS_PREFIX_PATH": None}
    assert "pw@" not in (layout["root"] / "setup.log").read_text()
    assert QgsSettings().value("geossl/setup_cert") == str(cert)
