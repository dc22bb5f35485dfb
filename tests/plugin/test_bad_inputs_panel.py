"""Bad inputs through the real panel and a real backend: the backend's 422 sentence (problem and
fix) is what the user reads in QGIS's message bar, nothing is queued, and the panel can retry.

Catalogue rows at panel level (tests/README.md): a raster without CRS and polygons entirely
outside the raster; both are only known once the backend opens the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from geossl_plugin import connection as conn
from geossl_plugin.client import BlockingClient
from osgeo import gdal
from qgis.core import Qgis, QgsProject, QgsRasterLayer, QgsVectorLayer

from .gdal_data import ORIGIN, PIXEL, _srs, class_polygons
from .test_flow import BACKEND, data_dir, dock, service  # noqa: F401 - the module's real backend and panel
from .test_layers import COLOURS, categorize

pytestmark = pytest.mark.skipif(BACKEND is None, reason="the backend venv (backend/.venv) is not installed")


def _raster(path: Path, crs: bool = True, shift_m: float = 0.0, size: int = 64) -> str:
    ds = gdal.GetDriverByName("GTiff").Create(str(path), size, size, 3, gdal.GDT_UInt16)
    ds.SetGeoTransform((ORIGIN[0] + shift_m, PIXEL, 0.0, ORIGIN[1], 0.0, -PIXEL))
    if crs:
        ds.SetProjection(_srs().ExportToWkt())
    for b in range(3):
        ds.GetRasterBand(b + 1).WriteArray(np.full((size, size), 200 + 600 * (b % 2), np.uint16))
    ds = None
    return str(path)


@pytest.mark.parametrize(("case", "expected"), [
    ("no_crs", "has no coordinate reference system"),
    ("outside", "overlaps the raster"),
])
def test_backend_refusal_is_shown_in_the_message_bar(case: str, expected: str, dock: Any, qtbot: Any, iface: Any,  # noqa: F811
                                                     service: conn.Discovery,  # noqa: F811
                                                     tmp_path: Path) -> None:
    raster_path = _raster(tmp_path / f"{case}.tif", crs=case != "no_crs", shift_m=50_000 if case == "outside" else 0)
    polygons_path = class_polygons(tmp_path / "labels.gpkg")
    project = QgsProject.instance()
    project.clear()
    raster = QgsRasterLayer(raster_path, case, "gdal")
    polygons = QgsVectorLayer(f"{polygons_path}|layername=polygons", "training polygons", "ogr")
    assert raster.isValid() and polygons.isValid()
    categorize(polygons, "class", COLOURS)
    project.addMapLayers([raster, polygons])
    before = len(BlockingClient(service.connection).get("jobs")["jobs"])
    try:
        section = dock.finetune_section
        section.rasters.set_checked([raster])
        section.polygons.setLayer(polygons)
        section.use_steps(4)
        section.tile.setValue(32)
        section.batch.setValue(2)
        section.run_button.click()
        qtbot.waitUntil(lambda: bool(iface.messageBar().get_messages(Qgis.Critical)), timeout=30_000)
        message = iface.messageBar().get_messages(Qgis.Critical)[0]
        assert message.startswith("GeoSSL:Fine-tune not started"), message
        assert expected in message and "Fix:" in message, message
        assert "Traceback" not in message
        assert section.run_button.isEnabled(), "the user can fix it and try again"
        assert len(BlockingClient(service.connection).get("jobs")["jobs"]) == before  # nothing queued
    finally:
        project.clear()
