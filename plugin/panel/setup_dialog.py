"""The "Set up backend…" dialog: choose folder and torch build, watch the install, copy diagnostics.

It drives ``installer.runner.BackendSetup`` and never waits on it. When the set-up succeeds the
new ``geossl`` is saved as the plugin's backend path (``backend.save_backend_path``) and
``installed`` is emitted, so the Backend section can start it.
"""

from __future__ import annotations

import json
from pathlib import Path

from qgis.core import Qgis, QgsSettings
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..backend import save_backend_path
from ..installer import logfile
from ..installer.backend_setup import BackendSetup
from ..installer.diagnostics import Facts, report, venv_packages
from ..installer.environment import proxy_note, proxy_url
from ..installer.errors import Problem
from ..installer.locations import VENV_ROOT_KEY, venv_root
from ..installer.plan import Plan
from ..installer.torch_choice import AUTO, CPU, CUDA, PYPI_SOURCE, PYTORCH_SOURCE

PLUGIN_DIR = Path(__file__).resolve().parent.parent
TORCH_KEY = "geossl/setup_torch"
SOURCE_KEY = "geossl/setup_source"
CERT_KEY = "geossl/setup_cert"
_LOG_LINES = 400


def saved_root() -> Path:
    return Path(venv_root(str(QgsSettings().value(VENV_ROOT_KEY, "", type=str) or "")))


_PROXY_KEYS = ("proxy/proxyEnabled", "proxy/proxyType", "proxy/proxyHost", "proxy/proxyPort", "proxy/proxyUser",
               "proxy/proxyPassword")


def qgis_proxy_settings() -> dict[str, object]:
    settings = QgsSettings()
    return {key: settings.value(key, "") for key in _PROXY_KEYS}


def qgis_proxy() -> str:
    return proxy_url(qgis_proxy_settings())


class SetupDialog(QDialog):
    installed = pyqtSignal(str)  # the backend executable, already saved as the backend path

    def __init__(self, parent: QWidget | None = None, plugin_dir: Path = PLUGIN_DIR, **setup_options: object) -> None:
        super().__init__(parent)
        self.setObjectName("geosslSetupDialog")
        self.setWindowTitle("Set up the GeoSSL backend")
        self._plugin_dir = plugin_dir
        self._setup_options = setup_options  # tests inject a fake Python and nvidia-smi here
        self._setup: BackendSetup | None = None
        self._problem: Problem | None = None
        self._output = ""

        self.folder_widget = QgsFileWidget(self)
        self.folder_widget.setObjectName("geosslSetupFolder")
        self.folder_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.folder_widget.setFilePath(str(saved_root()))
        self.folder_widget.setToolTip("Where the backend's Python environment goes (2–6 GB), outside the plugin "
                                      "folder. One environment per Python version is made inside it.")
        self.torch_combo = QComboBox(self)
        self.torch_combo.setObjectName("geosslSetupTorch")
        for label, value in (("Automatic (GPU if it works)", AUTO), ("CPU only", CPU), ("NVIDIA GPU (CUDA)", CUDA)):
            self.torch_combo.addItem(label, value)
        saved = str(QgsSettings().value(TORCH_KEY, AUTO, type=str) or AUTO)
        self.torch_combo.setCurrentIndex(max(0, self.torch_combo.findData(saved)))
        self.source_combo = QComboBox(self)
        self.source_combo.setObjectName("geosslSetupSource")
        for label, value in (("download.pytorch.org (smallest download)", PYTORCH_SOURCE),
                             ("PyPI, or your pip's configured index", PYPI_SOURCE)):
            self.source_combo.addItem(label, value)
        self.source_combo.setToolTip("Where torch is downloaded from. Choose PyPI when your network blocks "
                                     "download.pytorch.org or has a company mirror of PyPI; on Linux PyPI's torch "
                                     "is the CUDA build (about 3.6 GB), on Windows a CPU-only one.")
        saved = str(QgsSettings().value(SOURCE_KEY, PYTORCH_SOURCE, type=str) or PYTORCH_SOURCE)
        self.source_combo.setCurrentIndex(max(0, self.source_combo.findData(saved)))
        self.fresh_box = QCheckBox("Reinstall from scratch (empties the environment first)", self)
        self.cert_widget = QgsFileWidget(self)
        self.cert_widget.setObjectName("geosslSetupCert")
        self.cert_widget.setStorageMode(QgsFileWidget.GetFile)
        self.cert_widget.setFilter("Certificates (*.pem *.crt *.cer);;All files (*)")
        self.cert_widget.setFilePath(str(QgsSettings().value(CERT_KEY, "", type=str) or ""))
        self.cert_widget.setToolTip("Only behind a company proxy that inspects HTTPS (SSL errors): its root "
                                    "certificate as a PEM file, given to pip")
        note = proxy_note(qgis_proxy_settings())
        self.summary_label = QLabel("Press Install: nothing is downloaded before that." + (f"\n{note}" if note else ""),
                                    self)
        self.summary_label.setObjectName("geosslSetupSummary")
        self.summary_label.setWordWrap(True)
        self.step_label = QLabel("", self)
        self.step_label.setWordWrap(True)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.log_view = QPlainTextEdit(self)
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(_LOG_LINES)
        self.log_view.setPlaceholderText("pip's output appears here")

        self.install_button = QPushButton("Install", self)
        self.install_button.setObjectName("geosslSetupInstall")
        self.install_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setObjectName("geosslSetupCancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.diagnostics_button = QPushButton("Copy diagnostics", self)
        self.diagnostics_button.setObjectName("geosslSetupDiagnostics")
        self.diagnostics_button.setToolTip("Copy a report (versions, GPU, log tail; no passwords) to paste into a bug report")
        self.diagnostics_button.clicked.connect(self.copy_diagnostics)
        self.close_button = QPushButton("Close", self)
        self.close_button.clicked.connect(self.reject)

        form = QFormLayout()
        form.addRow("Install folder", self.folder_widget)
        form.addRow("torch", self.torch_combo)
        form.addRow("torch from", self.source_combo)
        form.addRow("Certificate", self.cert_widget)
        form.addRow(self.fresh_box)
        buttons = QHBoxLayout()
        buttons.addWidget(self.diagnostics_button)
        buttons.addStretch(1)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.install_button)
        buttons.addWidget(self.close_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.summary_label)
        layout.addWidget(self.step_label)
        layout.addWidget(self.progress)
        layout.addWidget(self.log_view, 1)
        layout.addLayout(buttons)
        self.resize(640, 480)
        self._set_running(False)

    # -- actions ---------------------------------------------------------------------------------

    def is_running(self) -> bool:
        return self._setup is not None and self._setup.is_running()

    def start(self) -> None:
        if self.is_running():
            return
        root = Path(self.folder_widget.filePath().strip() or str(saved_root())).expanduser()
        settings = QgsSettings()
        settings.setValue(VENV_ROOT_KEY, str(root))
        settings.setValue(TORCH_KEY, self.torch_combo.currentData())
        settings.setValue(SOURCE_KEY, self.source_combo.currentData())
        cert = self.cert_widget.filePath().strip()
        settings.setValue(CERT_KEY, cert)
        self._problem = None
        self._output = ""
        self.log_view.clear()
        self._setup = BackendSetup(self._plugin_dir, root, override=self.torch_combo.currentData(),
                                   proxy=qgis_proxy(), fresh=self.fresh_box.isChecked(), cert=cert,
                                   source=self.source_combo.currentData(), parent=self,
                                   **self._setup_options)  # type: ignore[arg-type]
        self._setup.status.connect(self.step_label.setText)
        self._setup.planned.connect(self._on_planned)
        self._setup.step_started.connect(self._on_step)
        self._setup.output.connect(self._on_output)
        self._setup.succeeded.connect(self._on_succeeded)
        self._setup.failed.connect(self._on_failed)
        self._setup.cancelled.connect(self._on_cancelled)
        self._set_running(True)
        self.summary_label.setText(f"Setting up in {root}…")
        self._setup.start()

    def cancel(self) -> None:
        if self._setup is not None:
            self._setup.cancel()

    def copy_diagnostics(self) -> str:
        text = self.diagnostics()
        QApplication.clipboard().setText(text)
        return text

    def diagnostics(self) -> str:
        setup = self._setup
        plan = setup.plan if setup else None
        root = Path(self.folder_widget.filePath().strip() or str(saved_root()))
        facts = Facts(qgis_version=Qgis.QGIS_VERSION, venv=str(plan.venv) if plan else "",
                      venv_exists=bool(plan and plan.venv.is_dir()),
                      base_python=(f"{setup.python.path} ({'.'.join(map(str, setup.python.version))})"
                                   if setup and setup.python else ""),
                      backend_path=str(plan.geossl) if plan and plan.geossl.exists() else "",
                      packages=self._packages(), nvidia_smi=setup.nvidia_smi if setup else "",
                      torch_build=setup.choice.label if setup and setup.choice else "",
                      torch_reason=setup.choice.reason if setup and setup.choice else "",
                      probe=self._probe_line(), log_tail=logfile.tail(root / logfile.LOG_NAME, 40),
                      problem=f"{self._problem.message} {self._problem.action}" if self._problem else "")
        return report(facts)

    # -- signals ---------------------------------------------------------------------------------

    def _on_planned(self, plan: Plan) -> None:
        size = plan.download_mb / 1000
        self.summary_label.setText(
            f"Installing into {plan.venv}\ntorch: {plan.choice.label} — {plan.choice.reason}\n"
            f"Download: about {size:.1f} GB; needs about {plan.choice.free_disk_gb:g} GB of free disk.")
        self.progress.setRange(0, len(plan.steps))

    def _on_step(self, index: int, total: int, label: str) -> None:
        self.progress.setRange(0, total)
        self.progress.setValue(index)
        self.step_label.setText(f"Step {index + 1} of {total}: {label}")

    def _on_output(self, text: str) -> None:
        self._output = (self._output + text)[-200_000:]
        self.log_view.appendPlainText(text.rstrip("\n"))

    def _on_succeeded(self, path: str) -> None:
        save_backend_path(path)
        self.progress.setValue(self.progress.maximum())
        self.step_label.setText(f"Ready: {path}")
        self.summary_label.setText(self.summary_label.text() + f"\nTested: {self._probe_line() or 'ok'}")
        self._set_running(False)
        self.install_button.setText("Reinstall")
        self.installed.emit(path)

    def _on_failed(self, problem: Problem) -> None:
        self._problem = problem
        self.step_label.setText(f"Failed: {problem.message}\nWhat to do: {problem.action}")
        self._set_running(False)
        self.install_button.setText("Retry")

    def _on_cancelled(self) -> None:
        self.step_label.setText("Cancelled. Press Retry to continue where it stopped (finished steps are quick).")
        self._set_running(False)
        self.install_button.setText("Retry")

    def _set_running(self, running: bool) -> None:
        self.install_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        for widget in (self.folder_widget, self.torch_combo, self.source_combo, self.fresh_box, self.cert_widget):
            widget.setEnabled(not running)

    def reject(self) -> None:
        self.cancel()  # closing the dialog never leaves pip running unseen
        super().reject()

    # -- what the steps printed --------------------------------------------------------------------

    def _json_lines(self) -> list[dict]:
        found = []
        for line in self._output.splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    value = json.loads(line)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    found.append(value)
        return found

    def _probe_line(self) -> str:
        probes = [d for d in self._json_lines() if d.get("ok") is True and "device" in d]
        return json.dumps(probes[-1]) if probes else ""

    def _packages(self) -> dict[str, str]:
        plan = self._setup.plan if self._setup else None
        found = venv_packages(plan.venv) if plan else {}
        infos = [d for d in self._json_lines() if isinstance(d.get("versions"), dict)]
        found.update({str(k): str(v) for k, v in infos[-1]["versions"].items()} if infos else {})
        return found
