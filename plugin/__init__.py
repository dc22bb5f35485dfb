"""GeoSSL QGIS plugin: entry point that QGIS calls. Keep imports light; everything is built in initGui."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qgis.gui import QgisInterface

    from .geossl_plugin import GeoSSLPlugin


def classFactory(iface: QgisInterface) -> GeoSSLPlugin:  # noqa: N802 (QGIS API name)
    from .geossl_plugin import GeoSSLPlugin

    return GeoSSLPlugin(iface)
