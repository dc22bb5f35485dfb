"""The GeoSSL dock: a column of sections; for now only "Backend"."""

from __future__ import annotations

from qgis.core import Qgis, QgsMessageLog
from qgis.gui import QgsDockWidget, QgsMessageBar
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QScrollArea, QVBoxLayout, QWidget

from ..backend import DEFAULT_TIMEOUT_S, BackendError
from .backend_section import BackendSection

LOG_TAG = "GeoSSL"


class GeoSSLDock(QgsDockWidget):
    """Owns the sections and routes their errors to QGIS's message bar and log (never a dialog)."""

    def __init__(self, message_bar: QgsMessageBar, parent: QWidget | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__("GeoSSL", parent)
        self.setObjectName("GeoSSLDock")
        self.setAllowedAreas(Qt.LeftDockWidgetArea | Qt.RightDockWidgetArea)
        self._message_bar = message_bar

        content = QWidget()
        layout = QVBoxLayout(content)
        self.backend_section = BackendSection(content, timeout_s=timeout_s)
        layout.addWidget(self.backend_section)
        layout.addStretch(1)
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setWidget(content)
        self.setWidget(scroll)

        self.backend_section.check_failed.connect(self._report_backend_error)

    def shutdown(self) -> None:
        """Stop anything still running before the plugin unloads."""
        self.backend_section.cancel()

    def _report_backend_error(self, error: BackendError) -> None:
        QgsMessageLog.logMessage(f"{error.message}\n{error.details}".strip(), LOG_TAG, Qgis.Warning)
        if error.details:
            self._message_bar.pushMessage("GeoSSL", error.message, error.details,
                                          level=Qgis.Critical, duration=0)
        else:
            self._message_bar.pushMessage("GeoSSL", error.message, level=Qgis.Critical, duration=0)
