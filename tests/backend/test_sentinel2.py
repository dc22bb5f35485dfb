"""Integration on the real Sentinel-2 sample (13 bands, uint16) with OSM land-use polygons.

Trains on part of the polygons, predicts the whole raster and checks the accuracy on the
held-out polygons against the majority-class baseline. Skipped when ../shared/data is absent.
"""

import json

import numpy as np
import pyogrio.raw
import pytest
import rasterio
from geossl.cli import main

from tests.data import SHARED_DATA, write_polygons

S2 = SHARED_DATA / "sentinel2_brandenburg"
pytestmark = pytest.mark.skipif(not (S2 / "s2l1c_13band_10m.tif").exists(),
                                reason=f"real data folder {S2} not present")


def split_gpkg(src, train, test, field="fclass", test_share=0.3, seed=0):
    """Whole polygons per class to a train and a held-out file, as a user's check set."""
    meta, _, wkb, fields = pyogrio.raw.read(src, columns=[field])
    import shapely

    geoms, values = shapely.from_wkb(wkb), fields[0]
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(values), bool)
    for c in np.unique(values):
        idx = np.flatnonzero(values == c)
        is_test[rng.choice(idx, max(1, int(len(idx) * test_share)), replace=False)] = True
    for path, keep in ((train, ~is_test), (test, is_test)):
        write_polygons(path, geoms[keep], values[keep].tolist(), field=field, crs=meta["crs"])


def test_finetune_predict_evaluate_on_sentinel2(tmp_path, capsys):
    raster = S2 / "s2l1c_13band_10m.tif"
    split_gpkg(S2 / "osm_landuse.gpkg", tmp_path / "train.gpkg", tmp_path / "test.gpkg")
    assert main(["finetune", "--raster", str(raster), "--labels", str(tmp_path / "train.gpkg"),
                 "--class-field", "fclass", "--out", str(tmp_path / "m.pt"), "--steps", "80",
                 "--steps-per-epoch", "40", "--tile", "128", "--batch", "8", "--json"]) == 0
    assert main(["predict", "--model", str(tmp_path / "m.pt"), "--raster", str(raster),
                 "--out", str(tmp_path / "classes.tif"), "--confidence", str(tmp_path / "conf.tif"), "--json"]) == 0
    with rasterio.open(raster) as src, rasterio.open(tmp_path / "classes.tif") as out:
        assert out.crs == src.crs and out.transform == src.transform and out.shape == src.shape
    capsys.readouterr()
    assert main(["evaluate", "--prediction", str(tmp_path / "classes.tif"), "--labels", str(tmp_path / "test.gpkg"),
                 "--class-field", "fclass", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    support = np.array([c["support"] for c in m["per_class"].values()])
    majority = support.max() / support.sum()
    print(f"held-out OA {m['overall_accuracy']:.3f} kappa {m['kappa']:.3f} vs majority {majority:.3f}")
    assert m["overall_accuracy"] > majority + 0.05
    assert m["kappa"] > 0.1


def test_edge_case_polygons_partly_outside(tmp_path, capsys):
    """Polygons partly or wholly outside the raster are clipped or skipped, integer classes kept."""
    code = main(["finetune", "--raster", str(S2 / "s2l1c_13band_10m.tif"), "--labels",
                 str(S2 / "edge_case_polygons.gpkg"), "--class-field", "cid", "--out", str(tmp_path / "m.pt"),
                 "--steps", "2", "--tile", "64", "--batch", "2", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert json.loads(out)["classes"]["values"] == [1, 2]
