"""ONNX Runtime as prediction's engine: the torch engine's map, and when ``auto`` picks it."""

import json

import numpy as np
import pytest
import rasterio
import torch
from geossl.cli import main
from geossl.onnx_engine import choose_engine, graph_path
from geossl.schemas import ORT_MIN_PIXELS

from tests.data import two_class_model, two_class_raster

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(("requested", "device", "tta", "pixels", "cached", "expected"), [
    ("auto", CPU, False, ORT_MIN_PIXELS, False, "onnxruntime"),  # big enough to pay for the export
    ("auto", CPU, False, ORT_MIN_PIXELS - 1, False, "torch"),
    ("auto", CPU, False, 10, True, "onnxruntime"),  # already exported: nothing to pay
    ("auto", CUDA, False, ORT_MIN_PIXELS, True, "torch"),
    ("auto", CPU, True, ORT_MIN_PIXELS, True, "torch"),  # TTA's flips run in torch
    ("torch", CPU, False, ORT_MIN_PIXELS, True, "torch"),
    ("onnxruntime", CPU, False, 10, False, "onnxruntime"),
])
def test_engine_choice(requested, device, tta, pixels, cached, expected):
    assert choose_engine(requested, device, tta, pixels, lambda: cached) == expected


def test_the_cache_follows_the_model_file_s_content(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOSSL_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "m.pt"
    model.write_bytes(b"one")
    first = graph_path(str(model), 256, None)
    assert first.parent == tmp_path / "cache" / "onnx"
    assert graph_path(str(model), 512, None) != first and graph_path(str(model), 256, 0.0) != first
    model.write_bytes(b"two")  # retrained under the same name
    assert graph_path(str(model), 256, None) != first


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return two_class_model(tmp_path_factory.mktemp("ort"))  # with its per-pixel forest: inside the graph too


def test_onnxruntime_maps_what_torch_maps_and_exports_once(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GEOSSL_CACHE_DIR", str(tmp_path / "cache"))
    raster = two_class_raster(tmp_path / "r.tif", h=200, w=150, seed=7)
    results = {}
    for engine in ("torch", "onnxruntime"):
        assert main(["predict", "--model", str(model), "--raster", str(raster), "--out", str(tmp_path / f"{engine}.tif"),
                     "--confidence", str(tmp_path / f"{engine}_p.tif"), "--engine", engine, "--json"]) == 0
        results[engine] = json.loads(capsys.readouterr().out)
    assert results["onnxruntime"]["engine"] == "onnxruntime" and results["torch"]["engine"] == "torch"
    with rasterio.open(tmp_path / "torch.tif") as a, rasterio.open(tmp_path / "onnxruntime.tif") as b:
        assert np.array_equal(a.read(), b.read()) and a.colormap(1) == b.colormap(1)
    with rasterio.open(tmp_path / "torch_p.tif") as a, rasterio.open(tmp_path / "onnxruntime_p.tif") as b:
        assert np.allclose(a.read(), b.read(), atol=1e-4)
    graphs = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(graphs) == 1
    stamp = graphs[0].stat().st_mtime_ns
    # auto on a small raster: torch would win, but the graph is there now
    assert main(["predict", "--model", str(model), "--raster", str(raster), "--out", str(tmp_path / "auto.tif"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["engine"] == "onnxruntime"
    assert list((tmp_path / "cache" / "onnx").glob("*")) == graphs and graphs[0].stat().st_mtime_ns == stamp


def test_tta_is_refused_on_onnxruntime_before_any_work(model, tmp_path, capsys):
    code = main(["predict", "--model", str(model), "--raster", str(two_class_raster(tmp_path / "r.tif")), "--out",
                 str(tmp_path / "c.tif"), "--engine", "onnxruntime", "--tta"])
    assert code != 0 and "torch engine only" in capsys.readouterr().err and not (tmp_path / "c.tif").exists()
