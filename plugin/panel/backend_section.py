"""The panel's "Backend" section: which ``geossl`` to run, whether it answers, and on what device."""

from __future__ import annotations

from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton, QWidget

from ..backend import (
    DEFAULT_TIMEOUT_S,
    BackendError,
    BackendInfo,
    InfoProbe,
    default_backend_path,
    save_backend_path,
    saved_backend_path,
)
from .status_light import BackendState, StatusLight

_NOTHING = "—"


class BackendSection(QGroupBox):
    """Shows the backend status and lets the user point at another executable.

    It never reports errors itself; it emits ``check_failed`` so the dock can use QGIS's message bar.
    """

    checked = pyqtSignal(object)  # BackendInfo
    check_failed = pyqtSignal(object)  # BackendError

    def __init__(self, parent: QWidget | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__("Backend", parent)
        self.setObjectName("geosslBackendSection")
        self._timeout_s = timeout_s
        self._probe: InfoProbe | None = None
        self._info: BackendInfo | None = None

        self.status = StatusLight(self)
        self.device_label = QLabel(_NOTHING, self)
        self.device_label.setObjectName("geosslDevice")
        self.version_label = QLabel(_NOTHING, self)
        self.version_label.setObjectName("geosslVersion")
        for label in (self.device_label, self.version_label):
            label.setWordWrap(True)

        self.path_widget = QgsFileWidget(self)
        self.path_widget.setObjectName("geosslBackendPath")
        self.path_widget.setStorageMode(QgsFileWidget.GetFile)
        self.path_widget.setDialogTitle("Choose the GeoSSL backend executable (geossl)")
        self.path_widget.setToolTip("The 'geossl' program of the backend's virtual environment. "
                                    "Leave empty to use the checkout's backend/.venv or 'geossl' on PATH.")
        self.path_widget.setFilePath(saved_backend_path())
        self.path_widget.fileChanged.connect(self._on_path_changed)

        self.check_button = QPushButton("Check", self)
        self.check_button.setObjectName("geosslCheckBackend")
        self.check_button.setToolTip("Run 'geossl info' and show what the backend reports")
        self.check_button.clicked.connect(self.check)

        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.check_button)
        form = QFormLayout(self)
        form.addRow("Status", self.status)
        form.addRow("Device", self.device_label)
        form.addRow("Version", self.version_label)
        form.addRow("Executable", self.path_widget)
        form.addRow(buttons)
        self._update_placeholder()

    # -- public -----------------------------------------------------------------------------------

    def info(self) -> BackendInfo | None:
        """The last successful answer, or None while unknown/unreachable."""
        return self._info

    def backend_path(self) -> str | None:
        """What Check will run: the field if filled in, automatic discovery otherwise."""
        return self.path_widget.filePath().strip() or default_backend_path()

    def check(self) -> None:
        """Ask the backend for ``info``; the UI stays responsive and updates when it answers."""
        self.cancel()
        path = self.backend_path()
        self._info = None
        self.device_label.setText(_NOTHING)
        self.version_label.setText(_NOTHING)
        self.status.set_state(BackendState.STARTING, f"Running {path or 'geossl'} info --json")
        self.check_button.setEnabled(False)
        self._probe = InfoProbe(path, timeout_s=self._timeout_s, parent=self)
        self._probe.succeeded.connect(self._on_succeeded)
        self._probe.failed.connect(self._on_failed)
        self._probe.start()

    def cancel(self) -> None:
        """Forget a running check (e.g. on unload); its child process is killed."""
        if self._probe is not None:
            self._probe.cancel()
            self._probe.deleteLater()
            self._probe = None
        self.check_button.setEnabled(True)

    # -- slots ------------------------------------------------------------------------------------

    def _on_path_changed(self, path: str) -> None:
        save_backend_path(path)
        self._update_placeholder()
        if self._probe is None:  # what is shown described the previous executable
            self._info = None
            self.status.set_state(BackendState.UNKNOWN, "Executable changed: press Check")
            self.device_label.setText(_NOTHING)
            self.version_label.setText(_NOTHING)

    def _on_succeeded(self, info: BackendInfo) -> None:
        self._done()
        self._info = info
        self.status.set_state(BackendState.CONNECTED, info.path)
        self.device_label.setText(info.device_label)
        self.version_label.setText(info.version_label)
        self.checked.emit(info)

    def _on_failed(self, error: BackendError) -> None:
        self._done()
        self.status.set_state(BackendState.UNREACHABLE, error.message)
        self.check_failed.emit(error)

    def _done(self) -> None:
        if self._probe is not None:
            self._probe.deleteLater()
            self._probe = None
        self.check_button.setEnabled(True)

    def _update_placeholder(self) -> None:
        found = default_backend_path()
        self.path_widget.lineEdit().setPlaceholderText(
            f"automatic: {found}" if found else "automatic: not found — choose the geossl executable")
