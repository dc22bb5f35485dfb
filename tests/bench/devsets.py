"""Development data for ablations: pixels that no reported (evaluation) figure is computed on.

Choosing a recipe on the pixels a table reports would tune on the test set, so every ablation runs
here instead:

* **Dubai**: 12 images of tiles 3–6 (three per tile). The few-label table (`fewlabel.py`) uses the
  first 12 images (tiles 1–2) and never these.
* **Sentinel-2**: the demo's *training* polygons only (`labels_train.gpkg`), split per seed into
  70 % to train on and 30 % to score; the demo's held-out polygons (`labels_test.gpkg`) are never
  read. (The `fewlabel_s2` polygon splits draw from all OSM polygons, so they share pixels with
  this dev split: only the demo split is a clean hold-out for Sentinel-2.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.bench import dubai
from tests.data import SHARED_DATA

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "resources" / "demo" / "data"
DUBAI_DEV = (18, 21, 24, 27, 30, 33, 36, 39, 42, 45, 48, 51)  # indices into sorted tile*/images/*.jpg


def dubai_dev_scenes(work: Path) -> list[dubai.Scene]:
    scenes = dubai.prepare(SHARED_DATA / "dubai", work / "dubai_dev", None)
    return [scenes[i] for i in DUBAI_DEV]


def split_polygons(src: Path, train: Path, test: Path, seed: int, test_share: float, field: str = "fclass") -> None:
    """Whole polygons per class: ``test_share`` (at least one) scored, the rest (at least one) trained on."""
    import pyogrio.raw

    meta, _, wkb, fields = pyogrio.raw.read(src, columns=[field])
    values = fields[0]
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(values), bool)
    for c in np.unique(values):
        idx = np.flatnonzero(values == c)
        n = min(len(idx) - 1, max(1, round(len(idx) * test_share)))
        is_test[rng.choice(idx, n, replace=False)] = True
    for path, keep in ((train, ~is_test), (test, is_test)):
        path.unlink(missing_ok=True)
        pyogrio.raw.write(str(path), geometry=wkb[keep], field_data=[values[keep]], fields=[field],
                          crs=meta["crs"], geometry_type="MultiPolygon", promote_to_multi=True)


def s2_dev_split(work: Path, seed: int) -> tuple[Path, Path, Path]:
    """(raster, dev-train polygons, dev-score polygons) from the demo's training polygons only."""
    train, test = work / f"s2dev_train_{seed}.gpkg", work / f"s2dev_score_{seed}.gpkg"
    split_polygons(DEMO / "labels_train.gpkg", train, test, seed, 0.3)
    return DEMO / "s2_demo.tif", train, test
