"""The `suggest` job and warm-start fine-tuning (`init_model`) through the real service over HTTP."""

from __future__ import annotations

import pyogrio
import pytest
from geossl.checkpoint import load_checkpoint

from tests.backend.service_helpers import segmentation_model, start_server
from tests.data import pixel_box, two_class_polygons, two_class_raster, write_polygons


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("service_suggest")
    data = {"dir": d, "raster": two_class_raster(d / "scene.tif"), "labels": two_class_polygons(d / "labels.gpkg"),
            "model": segmentation_model(d / "untrained.pt")}
    service = start_server(d)
    data["service"] = service
    yield data
    assert service.stop() == 0, service.log_text()


def test_suggest_job_writes_the_layer_and_returns_the_list(world):
    s, d = world["service"], world["dir"]
    assert "suggest" in s.get("/info").json()["job_types"]
    out = d / "next.gpkg"
    job = s.submit("suggest", {"model": str(world["model"]), "raster": str(world["raster"]),
                               "labels": str(world["labels"]), "class_field": "class", "k": 3, "window": 16,
                               "out": str(out)})
    done = s.wait_job(job["id"], ("succeeded",), timeout=300)
    result = done["result"]
    assert result["count"] == 3 and [it["rank"] for it in result["items"]] == [1, 2, 3]
    assert all(" vs " in it["reason"] and len(it["bounds"]) == 4 for it in result["items"])
    assert result["score"] == "drawable"  # the default
    for it in result["items"]:  # the model is untrained: the area, not where it lies, is checked
        assert f"drawable as {it['drawable_class']}" in it["reason"]
        assert it["drawable_m2"] == it["drawable_px"] * 100.0 and 0 < it["drawable_px"] <= 16 * 16
    info = pyogrio.read_info(out, layer="label here next")
    assert info["features"] == 3 and {"drawable_m2", "drawable_class"} <= set(info["fields"])
    job = s.submit("suggest", {"model": str(world["model"]), "raster": str(world["raster"]), "k": 2, "window": 16,
                               "score": "uncertainty", "out": str(d / "next_uncertainty.gpkg")})
    assert s.wait_job(job["id"], ("succeeded",), timeout=300)["result"]["score"] == "uncertainty"


def test_warm_start_job_continues_the_model(world):
    s, d = world["service"], world["dir"]
    out = d / "continued.pt"
    job = s.submit("finetune", {"rasters": [str(world["raster"])], "labels": str(world["labels"]),
                                "class_field": "class", "out": str(out), "init_model": str(world["model"]),
                                "steps": 2, "tile": 32, "batch": 2, "val_fraction": 0})
    s.wait_job(job["id"], ("succeeded",), timeout=300)
    ck = load_checkpoint(out, "segmentation")
    assert ck["warm_start"]["path"] == str(world["model"].resolve())
    assert ck["classes"] == load_checkpoint(world["model"])["classes"]


def test_bad_suggest_and_warm_start_requests_are_422(world, tmp_path):
    s = world["service"]
    r = s.post("/jobs/suggest", {"model": str(world["model"]), "raster": str(world["raster"]), "window": 512,
                                 "out": str(tmp_path / "s.gpkg")})
    assert r.status_code == 422 and "larger than the raster" in r.text
    r = s.post("/jobs/suggest", {"model": str(world["model"]), "raster": str(world["raster"]), "score": "area",
                                 "out": str(tmp_path / "s.gpkg")})
    assert r.status_code == 422 and "score" in r.text
    r = s.post("/jobs/suggest", {"model": str(world["raster"]), "raster": str(world["raster"]),
                                 "out": str(tmp_path / "s.gpkg")})
    assert r.status_code == 422 and "cannot be loaded" in r.text
    water = write_polygons(tmp_path / "water.gpkg", [pixel_box(4, 4, 20, 20), pixel_box(70, 4, 90, 20),
                                                     pixel_box(40, 40, 50, 50)], ["dark", "bright", "water"])
    r = s.post("/jobs/finetune", {"rasters": [str(world["raster"])], "labels": str(water), "class_field": "class",
                                  "out": str(tmp_path / "w.pt"), "init_model": str(world["model"]), "steps": 1})
    assert r.status_code == 422 and "water" in r.text and "does not know" in r.text
    r = s.post("/jobs/finetune", {"rasters": [str(world["raster"])], "labels": str(world["labels"]),
                                  "class_field": "class", "out": str(tmp_path / "w.pt"),
                                  "init_model": str(world["model"]), "init": str(world["model"]), "steps": 1})
    assert r.status_code == 422 and "not both" in r.text
    assert not list(tmp_path.glob("s.gpkg*")) and not (tmp_path / "w.pt").exists()
