"""ONNX export for Deepness: onnxruntime ≡ torch, Deepness's way of feeding gives `geossl predict`'s
classes, and the metadata Deepness reads is complete (one small trained 4-band uint16 model)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import rasterio
import torch
from geossl.checkpoint import load_checkpoint
from geossl.cli import main
from geossl.export import DEEPNESS_KEYS, deepness_feed, resolution_cm
from geossl.predict import load_model
from geossl.raster_io import BandStats, read_window
from rasterio.windows import Window

from tests.data import ORIGIN, PIXEL, two_class_polygons, two_class_raster

TILE = 32


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    raster = two_class_raster(d / "scene.tif", bands=4, dtype="uint16")
    labels = two_class_polygons(d / "labels.gpkg")
    assert main(["finetune", "--raster", str(raster), "--labels", str(labels), "--class-field", "class",
                 "--out", str(d / "m.pt"), "--steps", "6", "--steps-per-epoch", "6", "--tile", str(TILE),
                 "--batch", "4", "--colour", "dark=#222222", "--json"]) == 0
    assert main(["export", "--model", str(d / "m.pt"), "--onnx", str(d / "m.onnx"), "--json"]) == 0
    return {"dir": d, "raster": raster, "model": d / "m.pt", "onnx": d / "m.onnx"}


def metadata(path) -> dict:
    return {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_metadata_holds_every_key_deepness_reads(exported):
    model = onnx.load(str(exported["onnx"]))
    onnx.checker.check_model(model)
    meta = metadata(exported["onnx"])
    assert set(DEEPNESS_KEYS) <= set(meta)
    assert meta["model_type"] == "Segmentor"
    assert meta["class_names"] == {"0": "bright", "1": "dark"}  # consecutive keys from 0, model index order
    assert meta["tile_size"] == meta["tiles_size"] == TILE
    assert meta["tiles_overlap"] == 25
    assert meta["resolution"] == pytest.approx(PIXEL * 100)  # 10 m pixels → 1000 cm
    assert len(meta["standardization_mean"]) == len(meta["standardization_std"]) == 4
    ck = load_checkpoint(exported["model"], "segmentation")
    assert np.allclose(np.array(meta["standardization_mean"]) * 255, ck["band_stats"]["mean"])
    assert np.allclose(np.array(meta["standardization_std"]) * 255, ck["band_stats"]["std"])
    assert meta["geossl_bands"] == 4
    assert meta["geossl_colours"]["dark"] == "#222222"
    assert meta["geossl_classes"]["names"] == ["bright", "dark"]
    assert meta["geossl_metrics"] == ck["validation"]
    assert meta["geossl_method"]
    # One float32 NCHW input: symbolic batch, fixed bands and tile (Deepness reads input_shape[-1]).
    (inp,), (out,) = session(exported["onnx"]).get_inputs(), session(exported["onnx"]).get_outputs()
    assert inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [4, TILE, TILE]
    assert out.shape[1:] == [2, TILE, TILE]
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18


def test_onnxruntime_equals_torch_on_the_same_normalised_tiles(exported):
    ck = load_checkpoint(exported["model"], "segmentation")
    stats = BandStats.from_dict(ck["band_stats"])
    model, _ = load_model(str(exported["model"]), torch.device("cpu"))
    with rasterio.open(exported["raster"]) as src:
        raws = [read_window(src, Window(c, r, TILE, TILE))[0] for c, r in ((0, 0), (40, 8), (64, 64))]
    raw = np.stack(raws)
    raw[1, 0, :4, :4] = 60000  # far above the 98th percentile: the graph must clip like GeoSSL does
    tiles = np.stack([stats.normalise(x) for x in raw])  # GeoSSL: clip, then standardise
    with torch.inference_mode():
        want = torch.softmax(model(torch.from_numpy(tiles)), 1).numpy()
    # The ONNX graph gets (x − m)/s unclipped (what Deepness computes) and clips inside; batch of 3.
    mean, std = np.array(stats.mean, np.float32), np.array(stats.std, np.float32)
    x = ((raw - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)
    got = session(exported["onnx"]).run(None, {"input": x})[0]
    assert got.dtype == np.float32 and got.shape == want.shape == (3, 2, TILE, TILE)
    assert np.allclose(got.sum(1), 1.0, atol=1e-5)  # probabilities
    assert np.abs(got - want).max() < 1e-4


def test_a_tile_fed_as_deepness_does_gives_the_classes_of_geossl_predict(exported, capsys):
    d = exported["dir"]
    col, row = 40, 24  # a tile straddling both classes
    x0, y1 = ORIGIN[0] + col * PIXEL, ORIGIN[1] - row * PIXEL
    extent = [x0, y1 - TILE * PIXEL, x0 + TILE * PIXEL, y1]
    assert main(["predict", "--model", str(exported["model"]), "--raster", str(exported["raster"]),
                 "--out", str(d / "tile.tif"), "--confidence", str(d / "tile_conf.tif"), "--extent", *map(str, extent),
                 "--json"]) == 0
    capsys.readouterr()
    with rasterio.open(d / "tile.tif") as src:
        assert (src.width, src.height) == (TILE, TILE)
        predicted = src.read(1)
    with rasterio.open(d / "tile_conf.tif") as src:
        confidence = src.read(1)
    meta = metadata(exported["onnx"])
    with rasterio.open(exported["raster"]) as src:  # native uint16 values, first C bands
        raw = src.read(window=Window(col, row, TILE, TILE))
    assert raw.dtype == np.uint16
    x = deepness_feed(raw[None], meta["standardization_mean"], meta["standardization_std"])
    probs = session(exported["onnx"]).run(None, {"input": x})[0][0]
    values = np.array(meta["geossl_classes"]["values"])
    deepness_map = values[probs.argmax(0)]
    assert (deepness_map == predicted).mean() >= 0.999
    assert np.abs(probs.max(0) - confidence).max() < 1e-4  # the same probabilities, not only the same argmax


def test_tile_option_and_bad_inputs(exported, capsys, tmp_path):
    code = main(["export", "--model", str(exported["model"]), "--onnx", str(tmp_path / "m48.onnx"), "--tile", "48",
                 "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["input_shape"] == ["batch", 4, 48, 48] and result["max_abs_diff"] < 1e-4
    assert metadata(tmp_path / "m48.onnx")["tile_size"] == 48
    assert session(tmp_path / "m48.onnx").get_inputs()[0].shape[2:] == [48, 48]
    code = main(["export", "--model", str(exported["model"]), "--onnx", str(tmp_path / "x.onnx"), "--tile", "40"])
    assert code == 2 and "multiple of 16" in capsys.readouterr().err
    code = main(["export", "--model", str(exported["model"]), "--onnx", str(tmp_path / "x.txt")])
    assert code == 2 and ".onnx" in capsys.readouterr().err
    code = main(["export", "--model", str(exported["raster"]), "--onnx", str(tmp_path / "x.onnx")])
    assert code == 2 and "cannot be loaded" in capsys.readouterr().err
    code = main(["export", "--model", str(exported["model"]), "--onnx", str(tmp_path / "missing" / "x.onnx")])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    assert not list(tmp_path.glob("x*")) and not list(tmp_path.glob(".x*"))


def test_resolution_is_recorded_and_old_models_fall_back_to_their_raster(exported, tmp_path):
    ck = load_checkpoint(exported["model"], "segmentation")
    assert ck["resolution_m"] == pytest.approx(PIXEL)
    assert resolution_cm(ck) == pytest.approx(1000)
    old = {k: v for k, v in ck.items() if k != "resolution_m"}  # a model written before it was recorded
    assert resolution_cm(old) == pytest.approx(1000)  # read from its training raster
    geographic = two_class_raster(tmp_path / "wgs84.tif")
    with rasterio.open(geographic, "r+") as dst:  # 0.0001° pixels at 52° N: about 11.1 m × 6.9 m
        dst.crs = "EPSG:4326"
        dst.transform = rasterio.Affine(0.0001, 0, 13.0, 0, -0.0001, 52.0)
    assert resolution_cm(old | {"rasters": [str(geographic)]}) == pytest.approx(900, rel=0.02)
    assert resolution_cm(old | {"rasters": [str(tmp_path / "gone.tif")]}) is None  # left out of the metadata


def test_export_and_polygons_through_the_service(exported, tmp_path):
    """Real HTTP: an export job beside a model in <data-dir>/models (listed with it), a predict job with
    polygons, and 422s for bad export/vector parameters before anything runs."""
    import shutil

    from tests.backend.service_helpers import start_server

    service = start_server(tmp_path)
    try:
        model = service.data_dir / "models" / "m.pt"
        model.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(exported["model"], model)
        job = service.submit("export", {"model": str(model), "out": str(model.with_suffix(".onnx"))})
        done = service.wait_job(job["id"], states=["succeeded"], timeout=300)
        assert done["result"]["onnx"] == str(model.with_suffix(".onnx")) and done["result"]["max_abs_diff"] < 1e-4
        assert metadata(model.with_suffix(".onnx"))["model_type"] == "Segmentor"
        listed = {m["name"]: m for m in service.get("/models").json()["models"]}
        assert listed["m.pt"]["onnx"] == str(model.with_suffix(".onnx"))
        vec = tmp_path / "map_polygons.gpkg"
        job = service.submit("predict", {"model": str(model), "raster": str(exported["raster"]),
                                         "out": str(tmp_path / "map.tif"), "vector": str(vec), "min_area": 400})
        done = service.wait_job(job["id"], states=["succeeded"], timeout=300)
        assert done["result"]["vector"] == str(vec) and done["result"]["min_area_pixels"] == 4 and vec.is_file()
        cases = [
            ("export", {"model": str(model), "out": str(tmp_path / "m.txt")}, ".onnx"),
            ("export", {"model": str(exported["raster"]), "out": str(tmp_path / "x.onnx")}, "cannot be loaded"),
            ("export", {"model": str(model), "out": str(tmp_path / "x.onnx"), "tile": 40}, "multiple of 16"),
            ("predict", {"model": str(model), "raster": str(exported["raster"]), "out": str(tmp_path / "c.tif"),
                         "vector": str(tmp_path / "c.gpkg")}, "share the style file"),
            ("predict", {"model": str(model), "raster": str(exported["raster"]), "out": str(tmp_path / "c.tif"),
                         "simplify": 5}, "give vector too"),
        ]
        for kind, body, text in cases:
            r = service.post(f"/jobs/{kind}", body)
            assert r.status_code == 422 and text in r.text, (kind, body, r.text)
        assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "c.tif").exists()
    finally:
        assert service.stop() == 0
