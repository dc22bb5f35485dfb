from __future__ import annotations

import pytest

from tests.data import two_class_polygons, two_class_raster


@pytest.fixture
def scene(tmp_path):
    """A 96×96 3-band two-class raster with four labelled polygons."""
    return {
        "raster": two_class_raster(tmp_path / "scene.tif"),
        "labels": two_class_polygons(tmp_path / "labels.gpkg"),
        "dir": tmp_path,
    }
