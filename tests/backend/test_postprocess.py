"""Finishing the map: probabilities averaged over a window, and the window chosen on validation."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import rasterio
import torch
from geossl.checkpoint import save_checkpoint
from geossl.classes import ClassTable
from geossl.export import run_export
from geossl.models import build_model, smooth_probs
from geossl.postprocess import Finish, choose_finish
from geossl.predict import load_model, run_predict
from geossl.schemas import ExportParams, FinetuneParams, PredictParams
from pydantic import ValidationError
from torch import nn

from tests.data import two_class_raster

PARAMS = FinetuneParams(rasters=["r.tif"], labels="l.gpkg", class_field="c", out="m.pt", forest=False)


def test_smoothing_is_the_mean_over_the_window_pixels_inside_the_tile():
    probs = torch.softmax(torch.randn(2, 3, 9, 11), dim=1)
    got = smooth_probs(probs, 5)
    want = torch.empty_like(probs)
    for i in range(9):
        for j in range(11):
            want[:, :, i, j] = probs[:, :, max(i - 2, 0):i + 3, max(j - 2, 0):j + 3].mean(dim=(-1, -2))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got.sum(1), torch.ones(2, 9, 11))  # still probabilities, edges included
    assert smooth_probs(probs, 1) is probs


class _Noisy(nn.Module):
    """A "network" that knows the two halves of a window but flips isolated pixels (every 4th row and column)."""

    def __init__(self, flips: bool) -> None:
        super().__init__()
        self.flips = flips

    def context(self, x: torch.Tensor) -> torch.Tensor:
        truth = _truth(x.shape[0], x.shape[2], x.shape[3])
        if self.flips:
            truth[:, 2::4, 2::4] = 1 - truth[:, 2::4, 2::4]
        return 10.0 * nn.functional.one_hot(truth, 2).permute(0, 3, 1, 2).float()


def _truth(b: int, h: int, w: int) -> torch.Tensor:
    return (torch.arange(w) >= w // 2).long().expand(b, h, w).clone()


def test_isolated_errors_make_the_validation_choose_a_window():
    x, y = torch.zeros(2, 1, 16, 32), _truth(2, 16, 32)
    finish = choose_finish(_Noisy(flips=True), [(x, y)], 2, torch.device("cpu"), PARAMS)
    kappas = finish.smooth_kappas()
    assert kappas["1"] < 0.9 and kappas["3"] == pytest.approx(1.0)
    assert finish == Finish(0.0, 3, finish.kappas)  # 3 × 3 already corrects them all: the smallest such window


def test_a_map_already_right_is_not_smoothed():
    x, y = torch.zeros(2, 1, 16, 32), _truth(2, 16, 32)
    finish = choose_finish(_Noisy(flips=False), [(x, y)], 2, torch.device("cpu"), PARAMS)
    assert set(finish.smooth_kappas().values()) == {1.0} and finish.smooth == 1


def test_a_window_the_user_fixed_is_kept_without_validating():
    fixed = PARAMS.model_copy(update={"smooth": 9})
    assert choose_finish(_Noisy(flips=True), [(torch.zeros(1, 1, 8, 8), _truth(1, 8, 8))], 2,
                         torch.device("cpu"), fixed) == Finish(0.0, 9)


def test_windows_must_be_odd():
    with pytest.raises(ValidationError, match="odd"):
        PredictParams(model="m.pt", raster="r.tif", out="o.tif", smooth=4)
    with pytest.raises(ValidationError, match="odd"):
        PARAMS.model_validate(PARAMS.model_dump() | {"smooth": 2})


@pytest.fixture
def smooth_model(tmp_path):
    table = ClassTable.from_field_values(["a", "b"])
    stats = {"low": [0.0] * 3, "high": [1.0] * 3, "mean": [0.0] * 3, "std": [1.0] * 3}
    torch.manual_seed(0)
    state = build_model("resnet18", 3, 2).state_dict()
    return save_checkpoint(tmp_path / "m.pt", "segmentation", state, encoder="resnet18", in_channels=3,
                           num_classes=2, classes=table.to_dict(), band_stats=stats, tile=64, seed=0, smooth=9)


def test_the_model_file_carries_its_window_into_prediction_and_export(smooth_model, tmp_path):
    model, _ = load_model(str(smooth_model), torch.device("cpu"))
    plain, _ = load_model(str(smooth_model), torch.device("cpu"), smooth=1)
    assert model.smooth == 9 and plain.smooth == 1
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x).exp(), smooth_probs(torch.softmax(plain(x), 1), 9), atol=1e-5, rtol=0)
    r = run_export(ExportParams(model=str(smooth_model), out=str(tmp_path / "m.onnx")))
    assert r["max_abs_diff"] < 1e-3  # onnxruntime against torch, smoothing included
    assert "AveragePool" in {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}


def test_predict_smooth_overrides_the_models_window(smooth_model, tmp_path):
    raster = two_class_raster(tmp_path / "r.tif", bands=3)
    maps = {}
    for over in (None, 9, 1):
        out = tmp_path / f"p{over}.tif"
        run_predict(PredictParams(model=str(smooth_model), raster=str(raster), out=str(out), smooth=over,
                                  engine="torch"))
        with rasterio.open(out) as src:
            maps[over] = src.read(1)
    assert np.array_equal(maps[None], maps[9])  # the file's own window is 9
    assert not np.array_equal(maps[9], maps[1])
