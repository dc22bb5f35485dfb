"""The panel's "Backend" section: start the local service or connect to a remote one, and show its state.

Local: run ``geossl serve`` from the backend's venv (or adopt one already running from the same data
folder, e.g. started by a Processing algorithm), read its discovery file, ask ``GET /info``. Remote:
``GET /info`` at the saved URL with the saved token. Nothing here waits: every step is a signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from .. import connection as conn
from ..backend import (
    BackendError,
    BackendInfo,
    default_backend_path,
    info_from_dict,
    save_backend_path,
    saved_backend_path,
)
from ..client import ApiClient, ApiError, Connection
from ..launcher import START_TIMEOUT_S, LocalService
from .setup_dialog import SetupDialog
from .status_light import BackendState, StatusLight

_NOTHING = "—"


class BackendSection(QGroupBox):
    """Owns the connection: sets the shared ApiClient's target when the backend answers ``/info``.

    It never reports errors itself; it emits ``connection_failed`` so the dock can use QGIS's
    message bar.
    """

    connected = pyqtSignal(object)  # BackendInfo
    connection_failed = pyqtSignal(object)  # BackendError | ApiError
    disconnected = pyqtSignal()

    def __init__(self, client: ApiClient, parent: QWidget | None = None,
                 start_timeout_s: float = START_TIMEOUT_S, data_dir: Path | None = None) -> None:
        super().__init__("Backend", parent)
        self.setObjectName("geosslBackendSection")
        self._client = client
        self._start_timeout_s = start_timeout_s
        self._data_dir = data_dir
        self._service: LocalService | None = None
        self._adopted: conn.Discovery | None = None  # a local service this panel found running
        self._info: BackendInfo | None = None
        self._busy = False
        self._attempt = 0  # answers of an abandoned attempt are ignored

        self.status = StatusLight(self)
        self.device_label = QLabel(_NOTHING, self)
        self.device_label.setObjectName("geosslDevice")
        self.version_label = QLabel(_NOTHING, self)
        self.version_label.setObjectName("geosslVersion")
        for label in (self.device_label, self.version_label):
            label.setWordWrap(True)

        self.local_radio = QRadioButton("This computer", self)
        self.remote_radio = QRadioButton("Remote server", self)
        self.local_radio.setToolTip("Start the backend from its virtual environment on this computer")
        self.remote_radio.setToolTip("Use a backend already running elsewhere (e.g. a GPU server): URL + token. "
                                     "It must see the raster and polygon files under the same paths.")
        modes = QButtonGroup(self)
        modes.addButton(self.local_radio)
        modes.addButton(self.remote_radio)
        (self.remote_radio if conn.mode() == conn.REMOTE else self.local_radio).setChecked(True)
        self.local_radio.toggled.connect(self._on_mode_changed)

        self.path_widget = QgsFileWidget(self)
        self.path_widget.setObjectName("geosslBackendPath")
        self.path_widget.setStorageMode(QgsFileWidget.GetFile)
        self.path_widget.setDialogTitle("Choose the GeoSSL backend executable (geossl)")
        self.path_widget.setToolTip("The 'geossl' program of the backend's virtual environment. "
                                    "Leave empty to use the checkout's backend/.venv or 'geossl' on PATH.")
        self.path_widget.setFilePath(saved_backend_path())
        self.path_widget.fileChanged.connect(self._on_path_changed)

        remote = conn.remote_connection()
        self.url_edit = QLineEdit(remote.url, self)
        self.url_edit.setObjectName("geosslBackendUrl")
        self.url_edit.setPlaceholderText("http://gpu-server:8765")
        self.token_edit = QLineEdit(remote.token, self)
        self.token_edit.setObjectName("geosslBackendToken")
        self.token_edit.setEchoMode(QLineEdit.PasswordEchoOnEdit)
        self.token_edit.setPlaceholderText("token printed by 'geossl serve'")

        self.autostart_box = QCheckBox("Start when the panel opens", self)
        self.autostart_box.setChecked(conn.autostart())
        self.autostart_box.toggled.connect(conn.set_autostart)

        self.connect_button = QPushButton(self)
        self.connect_button.setObjectName("geosslConnectBackend")
        self.connect_button.clicked.connect(self.connect_backend)
        self.stop_button = QPushButton(self)
        self.stop_button.setObjectName("geosslStopBackend")
        self.stop_button.clicked.connect(self.disconnect_backend)
        self.setup_button = QPushButton("Set up backend…", self)
        self.setup_button.setObjectName("geosslSetupBackend")
        self.setup_button.setToolTip("Install the backend (Python, torch, GeoSSL) into its own environment on this "
                                     "computer, from the package index; a few minutes, 0.3–3 GB of downloads")
        self.setup_button.clicked.connect(self.open_setup)
        self.setup_dialog: SetupDialog | None = None
        self.setup_options: dict[str, object] = {}  # passed to the dialog's BackendSetup (tests: fakes)

        mode_row = QVBoxLayout()  # stacked, and the check box on its own row: the dock stays narrow
        mode_row.addWidget(self.local_radio)
        mode_row.addWidget(self.remote_radio)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.connect_button)
        self._form = QFormLayout(self)
        self._form.addRow("Status", self.status)
        self._form.addRow("Device", self.device_label)
        self._form.addRow("Version", self.version_label)
        self._form.addRow("Backend", mode_row)
        self._form.addRow("Executable", self.path_widget)
        self._form.addRow("URL", self.url_edit)
        self._form.addRow("Token", self.token_edit)
        self._form.addRow(self.autostart_box)
        self._form.addRow(self.setup_button)  # its own row: the dock stays narrow
        self._form.addRow(buttons)
        self._update_placeholder()
        self._on_mode_changed()

    # -- public -----------------------------------------------------------------------------------

    def info(self) -> BackendInfo | None:
        """What the connected backend reported, or None while not connected."""
        return self._info

    def is_connected(self) -> bool:
        return self._info is not None and self._client.connection is not None

    def is_remote(self) -> bool:
        return self.remote_radio.isChecked()

    def backend_path(self) -> str | None:
        """The executable Start runs: the field if filled in, automatic discovery otherwise."""
        return self.path_widget.filePath().strip() or default_backend_path()

    def data_dir(self) -> Path:
        return self._data_dir or conn.data_dir()

    def models_dir(self) -> Path | None:
        """Where the connected service keeps models: ``<data-dir>/models`` for a local one (adopted or
        started; it shares our data folder); for a remote one only if its /info says so."""
        if not self.is_connected():
            return None
        if not self.is_remote():
            return self.data_dir() / "models"
        remote = self._info.raw.get("models_dir") if self._info else None
        return Path(remote) if isinstance(remote, str) and remote else None

    def service(self) -> LocalService | None:
        """The local service this section started (None when adopted, remote, or stopped)."""
        return self._service

    def connect_backend(self) -> None:
        """Start (local) or reach (remote) the backend; the answer comes later through signals."""
        self._reset()
        self._attempt += 1
        self._set_busy(True)
        if self.is_remote():
            remote = Connection(self.url_edit.text(), self.token_edit.text())
            conn.save_remote_connection(remote)
            if not remote.url.startswith(("http://", "https://")):
                self._fail(BackendError("Enter the backend's URL, e.g. http://gpu-server:8765, and its token."))
                return
            self.status.set_state(BackendState.STARTING, f"Connecting to {remote.url}")
            self._ask_info(remote, self._attempt)
            return
        found = conn.read_discovery(conn.discovery_path(self.data_dir()))
        if found is not None and conn.pid_alive(found.pid):
            # One service per data folder: adopt it (it may come from a Processing run or a
            # previous QGIS session); start our own only if it does not answer.
            self.status.set_state(BackendState.STARTING, f"Connecting to the running backend ({found.url})")
            self._adopted = found
            self._ask_info(found.connection, self._attempt, on_error=lambda _e, a=self._attempt: self._start(a))
            return
        self._start(self._attempt)

    def disconnect_backend(self) -> None:
        """Stop the local service (started here or found running), or forget a remote one."""
        was_connected = self.is_connected()
        adopted = self._adopted if was_connected and not self.is_remote() else None
        self._attempt += 1
        self._reset()
        if adopted is not None and adopted.pid and os.name == "posix":
            # It answered /info with its token moments ago, so the pid is still that service's.
            with contextlib.suppress(OSError):
                os.kill(adopted.pid, signal.SIGTERM)
        self.status.set_state(BackendState.UNKNOWN, "Stopped")
        self._set_busy(False)
        if was_connected:
            self.disconnected.emit()

    def shutdown(self) -> None:
        """Stop everything (the plugin is unloading or QGIS is closing)."""
        self._attempt += 1
        self._reset()
        if self.setup_dialog is not None:
            self.setup_dialog.cancel()

    def open_setup(self) -> SetupDialog:
        """Show the set-up dialog (one per section); once it succeeds the new backend is started."""
        if self.setup_dialog is None:
            self.setup_dialog = SetupDialog(self, **self.setup_options)
            self.setup_dialog.installed.connect(self._on_installed)
        self.setup_dialog.show()
        self.setup_dialog.raise_()
        return self.setup_dialog

    def _on_installed(self, path: str) -> None:
        self.path_widget.setFilePath(path)  # saves it (fileChanged → save_backend_path)
        if not self.is_remote() and not self._busy and not self.is_connected():
            self.connect_backend()

    # -- steps ------------------------------------------------------------------------------------

    def _start(self, attempt: int) -> None:
        if attempt != self._attempt:
            return
        self._adopted = None
        path = self.backend_path()
        self.status.set_state(BackendState.STARTING, f"Starting {path or 'geossl'} serve")
        self._service = LocalService(path, self.data_dir(), timeout_s=self._start_timeout_s, parent=self)
        self._service.ready.connect(lambda found, a=attempt: self._ask_info(found.connection, a))
        self._service.failed.connect(lambda error, a=attempt: self._fail(error, a))
        self._service.exited.connect(self._on_service_exited)
        self._service.start()

    def _ask_info(self, connection: Connection, attempt: int, on_error=None) -> None:
        if attempt != self._attempt:
            return
        self._client.get("info", connection=connection,
                         on_ok=lambda data: self._on_info(connection, data, attempt),
                         on_error=on_error or (lambda error: self._fail(error, attempt)))

    def _on_info(self, connection: Connection, data: object, attempt: int) -> None:
        if attempt != self._attempt:
            return
        try:
            info = info_from_dict(data if isinstance(data, dict) else {}, connection.url)
        except BackendError as exc:
            self._fail(exc, attempt)
            return
        self._client.set_connection(connection)
        self._info = info
        self._set_busy(False)
        where = "remote" if self.is_remote() else ("local" if self._service else "local, already running")
        self.status.set_state(BackendState.CONNECTED, f"{connection.url} ({where})")
        self.device_label.setText(info.device_label)
        self.version_label.setText(info.version_label)
        self.connected.emit(info)

    def _fail(self, error: BackendError | ApiError, attempt: int | None = None) -> None:
        if attempt is not None and attempt != self._attempt:
            return
        self._reset()
        self._set_busy(False)
        self.status.set_state(BackendState.UNREACHABLE, error.message)
        self.connection_failed.emit(error)

    def _on_service_exited(self, error: BackendError) -> None:
        was_connected = self.is_connected()
        self._fail(error)
        if was_connected:
            self.disconnected.emit()

    def _reset(self) -> None:
        if self._service is not None:
            self._service.stop()
            self._service.deleteLater()
            self._service = None
        self._adopted = None
        self._info = None
        self._client.set_connection(None)
        self.device_label.setText(_NOTHING)
        self.version_label.setText(_NOTHING)

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        self._update_buttons()

    # -- widgets ----------------------------------------------------------------------------------

    def _update_buttons(self) -> None:
        remote = self.is_remote()
        active = self._busy or self.is_connected()
        self.connect_button.setText("Connect" if remote else "Start")
        self.connect_button.setToolTip("Connect to the backend at this URL" if remote
                                       else "Start the backend on this computer")
        self.stop_button.setText("Disconnect" if remote else "Stop")
        self.connect_button.setEnabled(not active)
        self.stop_button.setEnabled(active)
        for widget in (self.local_radio, self.remote_radio, self.path_widget, self.url_edit, self.token_edit):
            widget.setEnabled(not active)

    def _on_mode_changed(self, *_: object) -> None:
        remote = self.is_remote()
        conn.set_mode(conn.REMOTE if remote else conn.LOCAL)
        self.setup_button.setVisible(not remote)
        for widget, visible in ((self.path_widget, not remote), (self.url_edit, remote), (self.token_edit, remote)):
            widget.setVisible(visible)
            label = self._form.labelForField(widget)
            if label is not None:
                label.setVisible(visible)
        self._update_buttons()

    def _on_path_changed(self, path: str) -> None:
        save_backend_path(path)
        self._update_placeholder()
        if not self._busy and not self.is_connected():
            self.status.set_state(BackendState.UNKNOWN, "Executable changed: press Start")

    def _update_placeholder(self) -> None:
        found = default_backend_path()
        self.path_widget.lineEdit().setPlaceholderText(
            f"automatic: {found}" if found else "automatic: not found — press Set up backend…")
        missing = not found and not self.path_widget.filePath().strip()
        font = self.setup_button.font()
        font.setBold(missing)  # offered first when there is nothing to start
        self.setup_button.setFont(font)
        if missing and not self._busy and not self.is_connected():
            self.status.set_state(BackendState.UNKNOWN, "No backend on this computer yet: press 'Set up backend…'")
