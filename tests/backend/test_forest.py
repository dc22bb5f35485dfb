"""The per-pixel forest blended into a fine-tuned model: packing, torch evaluation, fitting, saving."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from geossl import forest as forest_mod
from geossl.checkpoint import load_checkpoint
from geossl.export import run_export
from geossl.finetune import forest_ratios, run_finetune
from geossl.forest import ForestHead, Ratios, fit_forest, forest_probs, pack, pixel_features
from geossl.models import SMOOTH_SIZES
from geossl.postprocess import FOREST_WEIGHTS, Finish, choose_finish
from geossl.predict import load_model, run_predict
from geossl.raster_io import BandStats, open_raster, read_window
from geossl.schemas import ExportParams, FinetuneParams, PredictParams
from rasterio.windows import Window
from sklearn.ensemble import RandomForestClassifier
from torch import nn

from tests.data import two_class_polygons, two_class_raster


def _as_maps(x: np.ndarray) -> torch.Tensor:
    """(P, F) features → (1, F, P, 1) feature maps."""
    return torch.from_numpy(np.ascontiguousarray(x.T))[None, :, :, None]


@pytest.mark.parametrize("chunk", [7, 65_536])
def test_forest_head_equals_scikit_learn(monkeypatch, chunk):
    monkeypatch.setattr(forest_mod, "CHUNK", chunk)  # pixels split across passes give the same answer
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5)).astype(np.float32)
    y = np.where(x[:, 0] + 0.3 * rng.normal(size=600) > 0, 3, (x[:, 1] > 0).astype(int))  # 0, 1, 3 (2 absent)
    rf = RandomForestClassifier(n_estimators=7, min_samples_leaf=2, max_depth=6, random_state=0).fit(x, y)
    head = ForestHead.from_packed(pack(rf, 4), 5)
    test = rng.normal(size=(50, 5)).astype(np.float32)
    probs = head(_as_maps(test))[0, :, :, 0].T.numpy()  # (P, K)
    assert probs.shape == (50, 4)
    np.testing.assert_allclose(probs[:, [0, 1, 3]], rf.predict_proba(test), atol=2e-3)  # leaf values are float16
    assert np.all(probs[:, 2] == 0)  # a class without training pixels gets no probability


def test_box_features_are_the_local_mean_and_std():
    x = torch.randn(2, 3, 20, 24)
    feats = pixel_features(x, (5,))
    assert feats.shape == (2, 9, 20, 24)
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    patches = padded.unfold(2, 5, 1).unfold(3, 5, 1)  # (B, C, H, W, 5, 5)
    np.testing.assert_allclose(feats[:, 3:6], patches.mean(dim=(-1, -2)), atol=1e-5)
    np.testing.assert_allclose(feats[:, 6:9], patches.std(dim=(-1, -2), unbiased=False), atol=1e-3)
    assert torch.equal(feats[:, :3], x)


class _Constant(nn.Module):
    """A "network" that always says class 0, to see the blend weight pulled towards the forest."""

    def __init__(self, forest: ForestHead) -> None:
        super().__init__()
        self.forest = forest

    def forest_probs(self, x: torch.Tensor) -> torch.Tensor:
        return self.forest(pixel_features(x, ()))

    def context(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 2, *x.shape[2:])
        logits[:, 0] = 20.0
        return logits


def test_blend_weight_is_chosen_on_validation_windows():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(4, 1, 8, 8)).astype(np.float32))
    y = (x[:, 0] > 0).long()  # the band alone gives the class: a forest finds it, the constant network cannot
    feats = x.permute(0, 2, 3, 1).reshape(-1, 1).numpy()
    head = ForestHead.from_packed(fit_forest(feats, y.reshape(-1).numpy(), 2, seed=0, trees=5), 1)
    params = FinetuneParams(rasters=["r.tif"], labels="l.gpkg", class_field="c", out="m.pt", forest=True,
                            forest_texture=[], smooth=1)
    finish = choose_finish(_Constant(head), [(x, y)], 2, torch.device("cpu"), params)
    kappas = finish.weight_kappas()
    assert set(kappas) == {f"{w:g}" for w in FOREST_WEIGHTS}
    assert kappas["0"] == 0.0 and kappas["1"] == pytest.approx(1.0)
    assert finish.weight == 0.75  # ¾ and 1 are both perfect here: the one nearer an even blend wins
    fixed = params.model_copy(update={"forest_weight": 0.25})
    assert choose_finish(_Constant(head), [(x, y)], 2, torch.device("cpu"), fixed) == Finish(0.25, 1)
    unvalidated = params.model_copy(update={"smooth": None})
    assert choose_finish(_Constant(head), None, 2, torch.device("cpu"), unvalidated) == Finish(0.5, 1)


@pytest.fixture(scope="module")
def forest_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("forest")
    raster = two_class_raster(d / "scene.tif", bands=3)
    labels = two_class_polygons(d / "labels.gpkg")
    summary = run_finetune(FinetuneParams(rasters=[str(raster)], labels=str(labels), class_field="class",
                                          out=str(d / "m.pt"), steps=4, steps_per_epoch=4, tile=32, batch=4,
                                          forest=True, forest_texture=[3], forest_ratios=True))
    return {"dir": d, "raster": raster, "labels": labels, "model": d / "m.pt", "summary": summary}


def test_the_forest_lives_in_the_model_file_as_plain_tensors(forest_model):
    ckpt = load_checkpoint(forest_model["model"], "segmentation")  # weights_only: no pickled estimator
    meta = ckpt["forest"]
    assert meta["weight"] in FOREST_WEIGHTS and meta["texture"] == [3]
    assert len(meta["ratios"]["mean"]) == 3 and meta["ratios"]["textured"]
    assert meta["features"] == 3 * (1 + 2) + 3 * (1 + 2)  # bands and their texture, 3 pairs and theirs
    assert set(meta["validation_kappa"]) == {f"{w:g}" for w in FOREST_WEIGHTS}
    assert ckpt["smooth"] in SMOOTH_SIZES and set(ckpt["smooth_validation_kappa"]) == {str(s) for s in SMOOTH_SIZES}
    assert forest_model["summary"]["smooth"] == ckpt["smooth"]
    assert ckpt["state_dict"]["forest.feature"].shape == (meta["trees"], meta["nodes"])
    assert forest_model["summary"]["forest"]["weight"] == meta["weight"]


def test_a_map_at_forest_weight_one_is_the_forests_own_map(forest_model):
    d, raster = forest_model["dir"], forest_model["raster"]
    run_predict(PredictParams(model=str(forest_model["model"]), raster=str(raster), out=str(d / "f.tif"),
                              forest_weight=1.0))
    with rasterio.open(d / "f.tif") as src:
        got = src.read(1)
    model, ckpt = load_model(str(forest_model["model"]), torch.device("cpu"))
    stats = BandStats.from_dict(ckpt["band_stats"])
    with open_raster(str(raster)) as src:
        data, valid = read_window(src, Window(0, 0, src.width, src.height))
    x = torch.from_numpy(stats.normalise(data, valid))[None]
    with torch.no_grad():
        want = model.forest_probs(x)[0].argmax(0).numpy()
    names = ckpt["classes"]["names"]
    assert (got == want + 1).mean() > 0.98  # tiles reflect at their edges, the whole raster at its own
    truth = np.where(np.arange(got.shape[1])[None, :] < got.shape[1] // 2, names.index("dark"),
                     names.index("bright")) + 1
    assert (got == truth).mean() > 0.99  # per pixel, the two halves differ by 600 ± 30: the forest sees it


def test_forest_weight_zero_is_the_network_alone(forest_model):
    model, _ = load_model(str(forest_model["model"]), torch.device("cpu"), forest_weight=0.0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(torch.softmax(model(x), 1), torch.softmax(model.context(x), 1), atol=1e-5)


def test_onnx_export_carries_the_forest(forest_model):
    import onnx

    out = forest_model["dir"] / "m.onnx"
    r = run_export(ExportParams(model=str(forest_model["model"]), out=str(out), overlap=25))
    assert r["max_abs_diff"] < 1e-3  # onnxruntime against torch on one tile, blend included
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "Gather" in ops  # the trees walked in the graph: Deepness needs no scikit-learn either


def test_continuing_a_forest_model_fits_a_new_forest(forest_model):
    d = forest_model["dir"]
    summary = run_finetune(FinetuneParams(rasters=[str(forest_model["raster"])], labels=str(forest_model["labels"]),
                                          class_field="class", out=str(d / "m2.pt"), init_model=str(d / "m.pt"),
                                          steps=2, steps_per_epoch=2, tile=32, batch=4, forest=True,
                                          forest_texture=[3], seed=1))
    assert summary["forest"]["trees"] == forest_mod.TREES
    assert load_checkpoint(d / "m2.pt", "segmentation")["forest"]["texture"] == [3]


def test_band_ratios_are_normalised_differences_of_the_raw_values():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 5000, (2, 4, 6, 7)).astype(np.float32)
    raw[0, :, 0, 0] = 0.0  # every band 0: ratio 0, not NaN
    mean, std = raw.mean((0, 2, 3)), raw.std((0, 2, 3))
    ratios = Ratios.for_bands([0.0] * 4, mean, std)
    x = torch.from_numpy((raw - mean[None, :, None, None]) / std[None, :, None, None])
    got = pixel_features(x, (), ratios)[:, 4:].numpy()
    pairs = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    with np.errstate(invalid="ignore", divide="ignore"):
        want = np.stack([(raw[:, a] - raw[:, b]) / (raw[:, a] + raw[:, b]) for a, b in pairs], 1)
    want[0, :, 0, 0] = 0.0
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert Ratios.from_dict(ratios.to_dict()) == ratios


def test_textured_ratios_add_the_local_mean_and_std_of_every_ratio():
    rng = np.random.default_rng(1)
    raw = rng.uniform(100, 5000, (1, 3, 9, 9)).astype(np.float32)
    mean, std = raw.mean((0, 2, 3)), raw.std((0, 2, 3))
    x = torch.from_numpy((raw - mean[None, :, None, None]) / std[None, :, None, None])
    plain, textured = Ratios.for_bands([0.0] * 3, mean, std), Ratios.for_bands([0.0] * 3, mean, std, textured=True)
    a, b = pixel_features(x, (3,), plain), pixel_features(x, (3,), textured)
    assert a.shape[1] == 3 * 3 + 3 and b.shape[1] == 3 * 3 + 3 * 3
    torch.testing.assert_close(b[:, :a.shape[1]], a)  # the untextured features come first, unchanged
    ratio = (raw[0, 0] - raw[0, 1]) / (raw[0, 0] + raw[0, 1])  # pair (0, 1)
    window = ratio[3:6, 3:6]  # the 3 × 3 window around pixel (4, 4)
    assert b[0, 12, 4, 4].item() == pytest.approx(window.mean(), abs=1e-5)  # mean of pair (0, 1)
    assert b[0, 15, 4, 4].item() == pytest.approx(window.std(), abs=1e-4)  # then the std of pair (0, 1)
    assert Ratios.from_dict({"mean": [1.0, 2.0], "std": [1.0, 1.0]}).textured is False  # files without the key


def test_the_forest_map_in_stripes_is_the_map_in_one_pass():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 37, 23)
    texture, ratios = (5,), Ratios.for_bands([0.0] * 4, [5.0] * 4, [1.0] * 4, textured=True)
    feats = pixel_features(x, texture, ratios)
    table = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).numpy()
    y = (table[:, 0] > 0).astype(int) + (table[:, -1] > 0)  # depends on a band and a ratio's texture
    head = ForestHead.from_packed(fit_forest(table, y, 3, seed=0, trees=4), feats.shape[1])
    whole = head(feats)
    for pixels in (23, 46, 100, 10**6):  # one row, two rows, a stripe ending mid-tile, all at once
        assert torch.equal(forest_probs(head, x, texture, ratios, pixels), whole)


def test_band_ratios_only_where_they_mean_something():
    assert Ratios.for_bands([-25.0, -30.0], [-12.0, -18.0], [3.0, 3.0]) is None  # SAR in dB: a + b ≤ 0
    assert Ratios.for_bands([0.0], [1.0], [1.0]) is None  # one band has no pair
    assert Ratios.for_bands([0.0] * 17, [1.0] * 17, [1.0] * 17) is None  # 136 pairs: too many features
    assert Ratios.for_bands([0.0] * 16, [1.0] * 16, [1.0] * 16) is not None


def test_band_ratios_by_default_on_multispectral_rasters_only():
    def stats(bands: int) -> BandStats:
        return BandStats(low=[0.0] * bands, high=[1e4] * bands, mean=[500.0] * bands, std=[100.0] * bands)

    params = FinetuneParams(rasters=["r.tif"], labels="l.gpkg", class_field="class", out="m.pt")
    assert forest_ratios(stats(3), params) is None  # RGB: the ratios measured no gain
    assert forest_ratios(stats(13), params) == Ratios((500.0,) * 13, (100.0,) * 13, textured=True)
    untextured = params.model_copy(update={"forest_ratio_texture": False})
    assert not forest_ratios(stats(13), untextured).textured
    assert forest_ratios(stats(3), params.model_copy(update={"forest_ratios": True})) is not None
    assert forest_ratios(stats(13), params.model_copy(update={"forest_ratios": False})) is None
