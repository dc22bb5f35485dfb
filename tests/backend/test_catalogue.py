"""The bad-input catalogue (tests/README.md) at CLI and API level, from the same inputs.

Each row is given once as job parameters; the CLI gets them as flags (exit 2, the message on
stderr, no output file), the API as a request body (422 with the same sentence, nothing queued).
Rows tested elsewhere (missing file, class field missing, outside polygons, not writable, band
mismatch, corrupt checkpoint…) are in test_cli.py and test_service.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from geossl.checkpoint import save_checkpoint
from geossl.cli import main

from tests.backend.service_helpers import segmentation_model, start_server
from tests.data import pixel_box, two_class_polygons, two_class_raster, write_polygons, write_raster

TINY = {"steps": 2, "tile": 32, "batch": 2}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("catalogue")
    raster = two_class_raster(d / "scene.tif")
    model = segmentation_model(d / "model.pt")
    (d / "junk.tif").write_bytes(b"II*\x00 not really a tiff")
    whole = (d / "model.pt").read_bytes()
    (d / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    import pyogrio.raw

    pyogrio.raw.write(str(d / "nofeatures.gpkg"), geometry=np.array([], dtype=object),  # a layer, no feature
                      field_data=[np.array([], object)], fields=["class"], crs="EPSG:32633",
                      geometry_type="MultiPolygon")
    save_checkpoint(d / "enc34.pt", "pretrained", {"w": torch.zeros(1)}, encoder="resnet34", in_channels=3,
                    method="simclr")
    return {
        "dir": d, "raster": raster, "labels": two_class_polygons(d / "labels.gpkg"), "model": model,
        "nocrs": write_raster(d / "nocrs.tif", np.full((3, 96, 96), 300, "uint16"), crs=None),
        "four": two_class_raster(d / "four.tif", bands=4),
        "complex": write_raster(d / "complex.tif", np.ones((3, 8, 8), "complex64")),
        "nodata": write_raster(d / "nodata.tif", np.zeros((3, 96, 96), "uint16"), nodata=0),
        "one_class_out": write_polygons(d / "halfout.gpkg", [pixel_box(4, 4, 20, 20), pixel_box(500, 500, 520, 520)],
                                        ["dark", "bright"]),
    }


def _cases(i):
    d = i["dir"]
    ft = {"rasters": [str(i["raster"])], "labels": str(i["labels"]), "class_field": "class", "out": str(d / "o.pt"),
          **TINY}
    pr = {"model": str(i["model"]), "raster": str(i["raster"]), "out": str(d / "o.tif")}
    return {
        "corrupt GeoTIFF": ("finetune", ft | {"rasters": [str(d / "junk.tif")]}, "cannot be read"),
        "vector file with no features": ("finetune", ft | {"labels": str(d / "nofeatures.gpkg")}, "has no features"),
        "class with no pixels after clipping": ("finetune", ft | {"labels": str(i["one_class_out"])},
                                                "have no labelled pixel"),
        "raster without CRS": ("finetune", ft | {"rasters": [str(i["nocrs"])]}, "has no coordinate reference system"),
        "mixed band counts": ("finetune", ft | {"rasters": [str(i["raster"]), str(i["four"])]},
                              "different band counts"),
        "complex dtype": ("predict", pr | {"raster": str(i["complex"])}, "complex64"),
        "truncated checkpoint": ("predict", pr | {"model": str(d / "truncated.pt")}, "cannot be loaded"),
        "checkpoint of another encoder": ("finetune", ft | {"init": str(d / "enc34.pt")},
                                          "has encoder resnet34, but fine-tuning asks for resnet18"),
        "pretrained checkpoint where a model is needed": ("predict", pr | {"model": str(d / "enc34.pt")},
                                                          "segmentation one is needed"),
    }


CASES = list(_cases({"dir": Path("."), **{k: "" for k in ("raster", "labels", "model", "one_class_out", "nocrs",
                                                          "four", "complex")}}))


def _flags(job_type: str, body: dict) -> list[str]:
    args = [job_type]
    for key, value in body.items():
        flag = {"rasters": "--raster", "class_field": "--class-field"}.get(key, f"--{key.replace('_', '-')}")
        for v in value if isinstance(value, list) else [value]:
            args += [flag, str(v)]
    return args


@pytest.mark.parametrize("name", CASES)
def test_cli(name, inputs, capsys):
    job_type, body, message = _cases(inputs)[name]
    code = main(_flags(job_type, body))
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Fix:" in err and "Traceback" not in err, err
    assert not Path(body["out"]).exists() and not list(inputs["dir"].glob(".*.partial*"))


@pytest.fixture(scope="module")
def service(inputs):
    service = start_server(inputs["dir"], "--no-prewarm")
    yield service
    assert service.stop() == 0, service.log_text()


def test_api(inputs, service):
    before = service.get("/jobs").json()["jobs"]
    for name, (job_type, body, message) in _cases(inputs).items():
        r = service.post(f"/jobs/{job_type}", body)
        assert r.status_code == 422, (name, r.text)
        assert message in r.json()["detail"] and r.json()["fix"], (name, r.text)
    assert service.get("/jobs").json()["jobs"] == before  # nothing was queued
    assert service.get("/health").status_code == 200


def test_raster_smaller_than_a_tile_is_predicted(inputs, capsys):
    """A 1×1 and a 5×7 raster: mirrored up to one tile, the output keeps the raster's own grid."""
    for h, w in ((1, 1), (5, 7)):
        tiny = two_class_raster(inputs["dir"] / f"tiny{h}x{w}.tif", h=h, w=w)
        out = inputs["dir"] / f"tiny{h}x{w}_classes.tif"
        code = main(["predict", "--model", str(inputs["model"]), "--raster", str(tiny), "--out", str(out), "--json"])
        assert code == 0, capsys.readouterr().err
        result = json.loads(capsys.readouterr().out)
        assert sum(result["class_pixels"].values()) == h * w
        with rasterio.open(out) as dst, rasterio.open(tiny) as src:
            assert (dst.width, dst.height) == (w, h) and dst.transform == src.transform


def test_api_all_nodata_raster_fails_the_job_with_the_message(inputs, service):
    """Only known once the run reads the pixels: the job fails (resumable) with the CLI's sentence."""
    d = inputs["dir"]
    job = service.submit("finetune", {"rasters": [str(inputs["nodata"])], "labels": str(inputs["labels"]),
                                      "class_field": "class", "out": str(d / "nodata.pt"), **TINY})
    done = service.wait_job(job["id"], ["failed"], timeout=180)
    assert "entirely nodata" in done["error"] and "Fix:" in done["error"] and "Traceback" not in done["error"]
    assert not (d / "nodata.pt").exists() and not list(d.glob(".nodata.pt*"))


def test_api_reprojects_foreign_crs_skips_null_classes_and_predicts_tiny_rasters(inputs, service):
    """Catalogue rows that are not refusals, over the API: polygons in EPSG:4326 over a UTM raster are
    reprojected (the job trains), a null class is skipped with a warning, a 5×7 raster is predicted."""
    import shapely
    from pyproj import Transformer

    d = inputs["dir"]
    to_wgs84 = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)

    def wgs84(geom):
        return shapely.transform(geom, lambda xy: np.column_stack(to_wgs84.transform(xy[:, 0], xy[:, 1])))

    boxes = [pixel_box(4, 4, 24, 44), pixel_box(4, 52, 24, 92), pixel_box(72, 4, 92, 44), pixel_box(72, 52, 92, 92),
             pixel_box(40, 40, 56, 56)]
    labels = write_polygons(d / "wgs84_nulls.gpkg", [wgs84(b) for b in boxes],
                            ["dark", "dark", "bright", "bright", None], crs="EPSG:4326")
    job = service.submit("finetune", {"rasters": [str(inputs["raster"])], "labels": str(labels),
                                      "class_field": "class", "out": str(d / "wgs84.pt"), **TINY})
    done = service.wait_job(job["id"], timeout=300)
    assert done["state"] == "succeeded", done
    assert any("empty 'class'" in w for w in done["result"]["warnings"]), done["result"]
    tiny = two_class_raster(d / "tiny_api.tif", h=5, w=7)
    job = service.submit("predict", {"model": str(d / "wgs84.pt"), "raster": str(tiny), "out": str(d / "tiny_api_c.tif")})
    done = service.wait_job(job["id"], timeout=300)
    assert done["state"] == "succeeded", done
    with rasterio.open(d / "tiny_api_c.tif") as dst:
        assert (dst.width, dst.height) == (7, 5)
