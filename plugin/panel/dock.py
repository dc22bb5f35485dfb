"""The GeoSSL dock: Backend, 1 · Pretrain, 2 · Fine-tune, 3 · Segment, 4 · Accuracy, Where to label next and Jobs.

The dock owns the one ApiClient the sections share and routes every problem to QGIS's message bar
and log: a user mistake is a sentence in the message bar, never a traceback dialog.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from qgis.core import Qgis, QgsMapLayer, QgsMessageLog, QgsProject
from qgis.gui import QgsDockWidget, QgsMapCanvas, QgsMessageBar
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QScrollArea, QVBoxLayout, QWidget

from ..backend import BackendError, BackendInfo
from ..client import ApiClient, ApiError
from ..launcher import START_TIMEOUT_S
from .backend_section import BackendSection
from .evaluate_section import EvaluateSection
from .finetune_section import FinetuneSection
from .jobs_section import JobsSection
from .pretrain_section import PretrainSection
from .segment_section import SegmentSection
from .suggest_section import SuggestSection

LOG_TAG = "GeoSSL"


class GeoSSLDock(QgsDockWidget):
    """Owns the sections; they talk to the backend through ``client`` and report through ``report``."""

    def __init__(self, message_bar: QgsMessageBar, parent: QWidget | None = None,
                 start_timeout_s: float = START_TIMEOUT_S, project: QgsProject | None = None,
                 data_dir: Path | None = None) -> None:
        super().__init__("GeoSSL", parent)
        self.setObjectName("GeoSSLDock")
        self.setAllowedAreas(Qt.LeftDockWidgetArea | Qt.RightDockWidgetArea)
        self._message_bar = message_bar
        self.project = project or QgsProject.instance()
        self.client = ApiClient(parent=self)

        content = QWidget()
        layout = QVBoxLayout(content)
        self.backend_section = BackendSection(self.client, content, start_timeout_s=start_timeout_s,
                                              data_dir=data_dir)
        self.jobs_section = JobsSection(self.client, content)
        self.pretrain_section = PretrainSection(self.client, self.jobs_section, self.project, content)
        self.finetune_section = FinetuneSection(self.client, self.jobs_section, self.project, content)
        self.segment_section = SegmentSection(self.client, self.jobs_section, self.project, content)
        self.evaluate_section = EvaluateSection(self.client, self.jobs_section, self.project, content)
        self.suggest_section = SuggestSection(self.client, self.jobs_section, self.project, content)
        for section in (self.backend_section, *self.job_sections()):
            layout.addWidget(section)
        layout.addStretch(1)
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setWidget(content)
        self.setWidget(scroll)

        self.client.failed.connect(self.report_error)
        self.backend_section.connection_failed.connect(self.report_error)
        self.backend_section.connected.connect(self._on_connected)
        self.backend_section.disconnected.connect(self._on_disconnected)
        for section in self.job_sections():
            section.error.connect(self.report_error)
            section.message.connect(self.report_message)
            section.models_dir = self.backend_section.models_dir
        self.segment_section.result_added.connect(self.evaluate_section.show_map)
        self.jobs_section.job_finished.connect(self._on_job_finished)
        self._on_disconnected()

    def job_sections(self) -> tuple:
        """The sections below Backend, top to bottom (Jobs last)."""
        return (self.pretrain_section, self.finetune_section, self.segment_section, self.evaluate_section,
                self.suggest_section, self.jobs_section)

    def use_map_canvas(self, canvas: QgsMapCanvas | None,
                       set_active_layer: Callable[[QgsMapLayer], Any] | None = None) -> None:
        """Hook the sections to QGIS's map (iface): extents from/drawn on the canvas, layer activation."""
        for section in (self.pretrain_section, self.segment_section, self.suggest_section):
            section.set_map_canvas(canvas)
        if set_active_layer is not None:
            self.finetune_section.activate_layer = set_active_layer

    def shutdown(self) -> None:
        """Stop polling and the local backend before the plugin unloads."""
        self.jobs_section.shutdown()
        self.backend_section.shutdown()
        self.client.abort_all()

    # -- reporting --------------------------------------------------------------------------------

    def report_error(self, error: BackendError | ApiError | Exception) -> None:
        message = getattr(error, "message", None) or str(error)
        details = getattr(error, "details", "")
        QgsMessageLog.logMessage(f"{message}\n{details}".strip(), LOG_TAG, Qgis.Warning)
        if details:
            self._message_bar.pushMessage("GeoSSL", message, details, level=Qgis.Critical, duration=0)
        else:
            self._message_bar.pushMessage("GeoSSL", message, level=Qgis.Critical, duration=0)

    def report_message(self, text: str, level: int = Qgis.Info) -> None:
        QgsMessageLog.logMessage(text, LOG_TAG, level)
        self._message_bar.pushMessage("GeoSSL", text, level=level, duration=10 if level == Qgis.Success else 0)

    # -- connection -------------------------------------------------------------------------------

    def _on_connected(self, info: BackendInfo) -> None:
        for section in self.job_sections():
            section.set_backend(info)

    def _on_disconnected(self) -> None:
        for section in self.job_sections():
            section.set_backend(None)

    def _on_job_finished(self, job: dict) -> None:
        # A new model is worth offering in the other sections straight away.
        self.finetune_section.refresh_models()
        self.segment_section.refresh_models()
        self.suggest_section.refresh_models()
