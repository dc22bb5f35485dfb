"""The "GeoSSL" Processing provider: makes the algorithms available in the toolbox, models and scripts."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import ALGORITHMS

ICON_PATH = Path(__file__).resolve().parents[1] / "icon.svg"


class GeoSSLProvider(QgsProcessingProvider):
    """Registered by the plugin's ``initProcessing``; ids are ``geossl:<algorithm>``."""

    def id(self) -> str:
        return "geossl"

    def name(self) -> str:
        return "GeoSSL"

    def longName(self) -> str:  # noqa: N802 (QGIS API name)
        return "GeoSSL: few-label segmentation of rasters"

    def icon(self) -> QIcon:
        return QIcon(str(ICON_PATH))

    def loadAlgorithms(self) -> None:  # noqa: N802 (QGIS API name)
        for algorithm in ALGORITHMS:
            self.addAlgorithm(algorithm())
