"""Plugin lifecycle: one action (toolbar + Raster menu) that shows and hides the GeoSSL dock, and the
Processing provider (``geossl:finetune``, ``geossl:segment``, …)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from qgis.core import QgsApplication
from qgis.gui import QgisInterface
from qgis.PyQt.QtCore import QCoreApplication, Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from . import connection
from .panel import GeoSSLDock
from .processing import GeoSSLProvider

MENU = "&GeoSSL"
ICON_PATH = Path(__file__).resolve().parent / "icon.svg"


class GeoSSLPlugin:
    """Created by QGIS through ``classFactory``; owns the action and the (lazily built) dock."""

    def __init__(self, iface: QgisInterface) -> None:
        self.iface = iface
        self.action: QAction | None = None
        self.dock: GeoSSLDock | None = None
        self.provider: GeoSSLProvider | None = None

    def initProcessing(self) -> None:  # noqa: N802 (QGIS API name)
        """Called by QGIS (also by qgis_process, which has no GUI) to register the algorithms."""
        if self.provider is None:
            self.provider = GeoSSLProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 (QGIS API name)
        self.initProcessing()
        self.action = QAction(QIcon(str(ICON_PATH)), "GeoSSL", self.iface.mainWindow())
        self.action.setObjectName("geosslShowDock")
        self.action.setCheckable(True)
        self.action.setToolTip("GeoSSL: few-label segmentation of rasters")
        self.action.toggled.connect(self._set_dock_visible)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToRasterMenu(MENU, self.action)
        QCoreApplication.instance().aboutToQuit.connect(self._on_quit)

    def unload(self) -> None:
        """Undo initGui exactly, so that reloading the plugin leaves no duplicates behind."""
        with contextlib.suppress(TypeError, RuntimeError):  # not connected (initGui never ran)
            QCoreApplication.instance().aboutToQuit.disconnect(self._on_quit)
        if self.dock is not None:
            self.dock.shutdown()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.action is not None:
            self.iface.removePluginRasterMenu(MENU, self.action)
            self.iface.removeToolBarIcon(self.action)
            self.action.deleteLater()
            self.action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

    def _on_quit(self) -> None:
        """QGIS is closing: stop the local backend we started (it must not outlive QGIS)."""
        if self.dock is not None:
            self.dock.shutdown()

    def show_dock(self) -> GeoSSLDock:
        """Open the dock (building it on first use) and return it."""
        if self.action is not None and not self.action.isChecked():
            self.action.setChecked(True)  # goes through _set_dock_visible
        else:
            self._set_dock_visible(True)
        assert self.dock is not None
        return self.dock

    def _set_dock_visible(self, visible: bool) -> None:
        if visible and self.dock is None:
            self.dock = GeoSSLDock(self.iface.messageBar(), self.iface.mainWindow())
            self.iface.addDockWidget(Qt.RightDockWidgetArea, self.dock)
            self.dock.use_map_canvas(self.iface.mapCanvas(), self.iface.setActiveLayer)
            # Closing with the dock's own X (or opening it from View ▸ Panels) must keep the action in step.
            self.dock.closed.connect(lambda: self._sync_action(False))
            self.dock.opened.connect(lambda: self._sync_action(True))
            if connection.autostart():  # first opening: get the backend going straight away
                self.dock.backend_section.connect_backend()
        if self.dock is not None:
            self.dock.setUserVisible(visible)

    def _sync_action(self, checked: bool) -> None:
        if self.action is not None and self.action.isChecked() != checked:
            self.action.setChecked(checked)
