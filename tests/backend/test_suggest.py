"""Where to label next: the selection maths on planted probability fields, `geossl suggest` end to end on
probabilities planted through the real CLI and raster I/O, and warm-start fine-tuning (`--init-model`)
resuming from the given weights."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pyogrio
import pytest
import shapely
import torch
from geossl.cli import main
from geossl.suggest import (
    CellSums,
    box_sums,
    normalised_entropy,
    reason,
    score_class,
    select,
    top2_margin,
    window_candidates,
)

from tests.data import pixel_box, two_class_polygons, write_polygons, write_raster

# --- pure maths ---------------------------------------------------------------------------------------


def confident_field(h: int = 128, w: int = 128, k: int = 3) -> np.ndarray:
    """Class 0 (p 0.9) on the left half, class 1 (p 0.9) on the right: a model sure everywhere."""
    prob = np.full((k, h, w), 0.1 / (k - 1), np.float32)
    prob[0, :, : w // 2], prob[1, :, : w // 2] = 0.9, 0.1 / (k - 1)
    prob[1, :, w // 2:], prob[0, :, w // 2:] = 0.9, 0.1 / (k - 1)
    return prob


def plant(prob: np.ndarray, rows: slice, cols: slice, p: tuple[float, ...]) -> None:
    prob[:, rows, cols] = np.asarray(p, np.float32)[:, None, None]


def candidates(prob: np.ndarray, eligible: np.ndarray, window: int, blocks: int = 1, measure: str = "margin",
               score: str = "drawable"):
    """Cell sums fed in ``blocks`` horizontal strips of uneven height (as tiled prediction does)."""
    k, h, w = prob.shape
    sums = CellSums.empty(h, w, window // 4, k)
    cuts = [0, *sorted({int(h * f) for f in np.linspace(0, 1, blocks + 1)[1:-1] + 0.037}), h]
    for r0, r1 in itertools.pairwise(cuts):
        sums.add(r0, 0, prob[:, r0:r1], eligible[r0:r1], measure)
    return window_candidates(sums, 4, score)


def at(c, row: int, col: int) -> int:
    """Index of the candidate window whose top-left pixel is (row, col)."""
    return int(np.flatnonzero((c.row == row) & (c.col == col))[0])


SCORES = pytest.mark.parametrize("score", ["drawable", "uncertainty"])


def test_margin_and_entropy_known_answers():
    p = np.array([[0.5, 0.9, 1 / 3], [0.48, 0.05, 1 / 3], [0.02, 0.05, 1 / 3]], np.float32)
    np.testing.assert_allclose(top2_margin(p), [0.02, 0.85, 0.0], atol=1e-6)
    ent = normalised_entropy(p)
    assert ent[2] == pytest.approx(1.0, abs=1e-5) and ent[1] < ent[0] < 1.0
    assert reason(("water", "road", "roof"), 0, 1, 0.04) == "water vs road, margin 0.04"
    names = ("water", "road", "roof")
    assert reason(names, 0, 1, 0.04, 1834.0, 0) == "water vs road, margin 0.04, ~1,800 m² drawable as water"
    assert reason(names, 2, 1, 0.5, 25_600.0, 1) == "roof vs road, margin 0.50, ~26,000 m² drawable as road"
    assert reason(names, 0, 1, 0.04, 12.4, 2, "px") == "water vs road, margin 0.04, ~12 px drawable as roof"


def test_box_sums_match_brute_force():
    a = np.random.default_rng(0).random((2, 7, 9))
    got = box_sums(a, 3)
    want = np.array([[[a[c, i:i + 3, j:j + 3].sum() for j in range(7)] for i in range(5)] for c in range(2)])
    np.testing.assert_allclose(got, want)


def test_block_by_block_sums_equal_whole_raster():
    rng = np.random.default_rng(1)
    prob = rng.dirichlet(np.ones(4), size=(100, 90)).transpose(2, 0, 1).astype(np.float32)
    eligible = rng.random((100, 90)) > 0.05
    a, b = candidates(prob, eligible, 16, blocks=1), candidates(prob, eligible, 16, blocks=5)
    np.testing.assert_array_equal(a.row, b.row)
    np.testing.assert_allclose(a.score, b.score, rtol=1e-5)
    np.testing.assert_allclose(a.uncertainty, b.uncertainty, rtol=1e-5)
    np.testing.assert_array_equal(a.top1, b.top1)
    np.testing.assert_array_equal(a.drawable_class, b.drawable_class)
    np.testing.assert_array_equal(a.drawable_px, b.drawable_px)


def test_drawable_counts_match_brute_force():
    """Per window: the model map's most frequent class, its pixels, and their summed uncertainty / N."""
    rng = np.random.default_rng(2)
    prob = rng.dirichlet(np.ones(3), size=(48, 40)).transpose(2, 0, 1).astype(np.float32)
    c = candidates(prob, np.ones((48, 40), bool), 16, blocks=3)
    pred, unc = prob.argmax(0), 1.0 - top2_margin(prob)
    for i in range(len(c)):
        win = (slice(c.row[i], c.row[i] + 16), slice(c.col[i], c.col[i] + 16))
        counts = np.bincount(pred[win].ravel(), minlength=3)
        drawn = int(counts.argmax())
        assert (c.drawable_class[i], c.drawable_px[i]) == (drawn, counts[drawn])
        assert c.score[i] == pytest.approx(unc[win][pred[win] == drawn].sum() / 256, rel=1e-5)
        assert c.uncertainty[i] == pytest.approx(unc[win].mean(), rel=1e-5)


def test_drawable_prefers_one_large_uncertain_class_over_many_small_regions():
    """Two 32-px squares with the same mean uncertainty (every pixel 0.55 vs 0.45): one the model sees as
    a single class, one split into 8-px patches of three classes. Ranked by uncertainty they tie; by what
    a mapper can draw (the majority class only), the single-class one is worth 1 / (6/16) times more."""
    prob = confident_field()
    plant(prob, slice(80, 112), slice(16, 48), (0.55, 0.45, 0.0))  # one class, left half (class 0 ground)
    for i, j in itertools.product(range(4), range(4)):  # 16 patches cycling classes 0, 1, 2: 6/5/5 patches
        top = (4 * i + j) % 3
        p = np.zeros(3)
        p[top], p[(top + 1) % 3] = 0.55, 0.45
        plant(prob, slice(16 + 8 * i, 24 + 8 * i), slice(80 + 8 * j, 88 + 8 * j), tuple(p))
    eligible = np.ones(prob.shape[1:], bool)
    old = candidates(prob, eligible, 32, score="uncertainty")
    one, split = at(old, 80, 16), at(old, 16, 80)
    assert old.score[one] == pytest.approx(0.9, abs=1e-5) and old.score[split] == pytest.approx(0.9, abs=1e-5)
    c = candidates(prob, eligible, 32, blocks=3)
    assert c.score[one] == pytest.approx(0.9, abs=1e-5)  # all drawable: same as the mean uncertainty
    assert (c.drawable_class[one], c.drawable_px[one]) == (0, 32 * 32)
    assert c.score[split] == pytest.approx(0.9 * 6 / 16, abs=1e-5)  # only class 0's six patches get drawn
    assert (c.drawable_class[split], c.drawable_px[split]) == (0, 6 * 64)
    picks = select(c.centres, c.score, score_class(c, "drawable"), 2, c.size)
    assert picks[0] == one and c.score[picks[1]] < c.score[one]


@SCORES
def test_planted_uncertain_region_ranks_first(score):
    prob = confident_field()
    plant(prob, slice(80, 112), slice(16, 48), (0.5, 0.48, 0.02))  # a coin toss between classes 0 and 1
    plant(prob, slice(16, 48), slice(80, 112), (0.3, 0.6, 0.1))  # unsure, less so
    c = candidates(prob, np.ones(prob.shape[1:], bool), 32, blocks=3, score=score)
    picks = select(c.centres, c.score, score_class(c, score), 5, c.size)
    first, second = picks[0], picks[1]
    assert (c.row[first], c.col[first]) == (80, 16)
    assert c.margin[first] == pytest.approx(0.02, abs=1e-4) and (c.top1[first], c.top2[first]) == (0, 1)
    assert reason(("a", "b", "c"), c.top1[first], c.top2[first], c.margin[first]) == "a vs b, margin 0.02"
    assert (c.row[second], c.col[second]) == (16, 80)
    assert c.score[picks].tolist() == sorted(c.score[picks].tolist(), reverse=True)  # ranked


@SCORES
def test_never_on_labelled_or_nodata_ground(score):
    """The decoys are single-class (all drawable) and the most uncertain: the best windows under either
    score, were they eligible."""
    prob = confident_field()
    plant(prob, slice(0, 48), slice(0, 48), (0.4, 0.4, 0.2))  # most uncertain, but labelled
    plant(prob, slice(80, 128), slice(80, 128), (0.34, 0.33, 0.33))  # as uncertain, but nodata
    plant(prob, slice(80, 112), slice(0, 32), (0.5, 0.45, 0.05))  # the best place left
    eligible = np.ones(prob.shape[1:], bool)
    eligible[4:44, 4:44] = False  # a polygon
    eligible[90:128, 90:128] = False  # nodata
    c = candidates(prob, eligible, 32, blocks=2, score=score)
    picks = select(c.centres, c.score, score_class(c, score), 8, c.size, spacing=0)
    assert (c.row[picks[0]], c.col[picks[0]]) == (80, 0)
    for i in picks:
        assert eligible[c.row[i]:c.row[i] + 32, c.col[i]:c.col[i] + 32].all()


@SCORES
def test_suggestions_are_distinct_non_overlapping_and_spread(score):
    rng = np.random.default_rng(3)
    prob = rng.dirichlet(np.ones(3), size=(160, 160)).transpose(2, 0, 1).astype(np.float32)
    c = candidates(prob, np.ones((160, 160), bool), 16, score=score)
    picks = select(c.centres, c.score, score_class(c, score), 12, c.size, spacing=40)
    # how many fit depends on where the greedy picks fall (11 or 12 here); at least 5 always do: each pick
    # blocks the centres in a disc of radius 40, and 4 such discs cannot cover the 144² square of centres
    assert len(picks) == len(set(picks)) >= 5
    boxes = [shapely.box(c.col[i], c.row[i], c.col[i] + 16, c.row[i] + 16) for i in picks]
    for a, b in itertools.combinations(range(len(picks)), 2):
        assert boxes[a].intersection(boxes[b]).area == 0
        assert np.hypot(*(c.centres[picks[a]] - c.centres[picks[b]])) >= 40
    # with spacing below the window, squares still never overlap
    tight = select(c.centres, c.score, c.top1, 50, c.size, spacing=0)
    for a, b in itertools.combinations(tight, 2):
        assert np.abs(c.centres[a] - c.centres[b]).max() >= 16


def test_class_diversity_gives_other_classes_a_turn():
    prob = confident_field()
    plant(prob, slice(0, 128), slice(0, 64), (0.55, 0.4, 0.05))  # many unsure windows, all "class 0"
    plant(prob, slice(0, 32), slice(96, 128), (0.2, 0.6, 0.2))  # one less unsure window of "class 1"
    c = candidates(prob, np.ones(prob.shape[1:], bool), 32)
    diverse = select(c.centres, c.score, c.top1, 2, c.size, class_decay=0.5)
    greedy = select(c.centres, c.score, c.top1, 2, c.size, class_decay=1.0)
    assert c.top1[diverse].tolist() == [0, 1]
    assert c.top1[greedy].tolist() == [0, 0]


def test_tiled_probabilities_are_the_blended_field(tmp_path):
    """``predict_stripes(probabilities=True)``: blocks carry the per-pixel probabilities (a per-pixel
    softmax 'model' must come back exactly, whatever the tiling), consistent with classes/confidence."""
    from geossl.raster_io import BandStats, open_raster
    from geossl.tiling import predict_stripes

    def pointwise(tiles):
        e = np.exp(tiles - tiles.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    data = np.random.default_rng(0).normal(0, 1, (3, 70, 90)).astype("float32")
    identity = BandStats(low=[-1e9] * 3, high=[1e9] * 3, mean=[0.0] * 3, std=[1.0] * 3)
    prob = np.full((3, 70, 90), np.nan, np.float32)
    with open_raster(write_raster(tmp_path / "r.tif", data)) as src:
        for b in predict_stripes(src, identity, pointwise, 32, 8, 3, stripe=40, probabilities=True):
            w = b.window
            prob[:, w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] = b.probabilities
            np.testing.assert_array_equal(b.probabilities.argmax(0), b.classes)
            np.testing.assert_allclose(b.probabilities.max(0), b.confidence, rtol=1e-6)
    np.testing.assert_allclose(prob, pointwise(data[None])[0], rtol=1e-5, atol=1e-6)


# --- end to end: `geossl suggest` ------------------------------------------------------------------------


def geossl(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Dark left / bright right, a noisy mid-grey patch the polygons never show, nodata bottom-right."""
    d = tmp_path_factory.mktemp("suggest")
    rng = np.random.default_rng(0)
    h = w = 128
    base = np.where(np.arange(w)[None, :] < w // 2, 200.0, 800.0) * np.ones((h, 1))
    base[72:104, 8:40] = np.where(rng.random((32, 32)) < 0.5, 200.0, 800.0)  # half dark, half bright pixels
    data = (base[None] + rng.normal(0, 30, (3, h, w))).clip(1, None).astype("uint16")
    data[:, 112:, 112:] = 0
    raster = write_raster(d / "scene.tif", data, nodata=0)
    labels = two_class_polygons(d / "labels.gpkg", w=w, h=h)
    code = main(["finetune", "--raster", str(raster), "--labels", str(labels), "--class-field", "class",
                 "--out", str(d / "m.pt"), "--steps", "24", "--steps-per-epoch", "12", "--tile", "32",
                 "--batch", "4", "--val-fraction", "0", "--json"])
    assert code == 0
    return {"dir": d, "raster": raster, "labels": labels, "model": d / "m.pt"}


# The planted scene (128² px of 10 m, rows × cols): "dark" sure on the left half, "bright" on the right;
# a coin toss under a polygon (never to be suggested); nodata bottom-right; two unsure patches on free
# ground with known answers:
PLANT_ONE = (64, 96, 36, 60)  # p(dark) 0.55 everywhere: uncertainty 0.9, all of it drawable as dark
PLANT_SPLIT = (24, 56, 68, 92)  # 4-px checkerboard of p(dark) 0.52 / 0.48: uncertainty 0.96, half drawable


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A raster whose band 1 *is* p(dark) × 1000 (band 2 and 3 constant), an untrained model file with
    identity band statistics, and the polygons of ``two_class_polygons``."""
    from geossl.checkpoint import save_checkpoint
    from geossl.classes import ClassTable
    from geossl.models import build_model

    d = tmp_path_factory.mktemp("planted")
    dark = np.where(np.arange(128)[None, :] < 64, 0.95, 0.05) * np.ones((128, 1))
    dark[8:56, 8:28] = 0.5  # the most uncertain ground, all under a polygon (cols 4–32, rows 4–60)
    r0, r1, c0, c1 = PLANT_ONE
    dark[r0:r1, c0:c1] = 0.55
    r0, r1, c0, c1 = PLANT_SPLIT
    rr, cc = np.mgrid[r0:r1, c0:c1]
    dark[r0:r1, c0:c1] = np.where(((rr - r0) // 4 + (cc - c0) // 4) % 2, 0.48, 0.52)
    data = np.stack([np.rint(dark * 1000), np.full_like(dark, 500), np.full_like(dark, 500)]).astype("uint16")
    data[:, 112:, 112:] = 0  # nodata
    raster = write_raster(d / "planted.tif", data, nodata=0)
    labels = two_class_polygons(d / "labels.gpkg", w=128, h=128)
    table = ClassTable.from_field_values(["dark", "bright"])
    identity = {"low": [-1e9] * 3, "high": [1e9] * 3, "mean": [0.0] * 3, "std": [1.0] * 3}
    model = save_checkpoint(d / "m.pt", "segmentation", build_model("resnet18", 3, 2).state_dict(),
                            arch="DeepLabV3Plus", encoder="resnet18", in_channels=3, num_classes=2,
                            classes=table.to_dict(), band_stats=identity, tile=32, seed=0)
    return {"raster": raster, "labels": labels, "model": model, "names": table.names, "dir": d}


@pytest.fixture
def planted_predictor(monkeypatch, planted):
    """The network replaced by a pixel-wise read-out of band 1 (everything else — CLI, model file, tiled
    reading, nodata, blending, the layer — is the real path): suggestions with known answers."""
    import geossl.suggest_run

    k = planted["names"].index("dark")

    def predictor(_model, _device, _amp):
        def predict(tiles: np.ndarray) -> np.ndarray:
            dark = np.clip(tiles[:, 0] / 1000.0, 0.0, 1.0).astype(np.float32)
            return np.stack([dark, 1 - dark] if k == 0 else [1 - dark, dark], axis=1)
        return predict

    monkeypatch.setattr(geossl.suggest_run, "torch_predictor", predictor)


def plant_box(rows_cols: tuple[int, int, int, int]):
    r0, r1, c0, c1 = rows_cols
    return pixel_box(c0, r0, c1, r1)


def suggest_layer(out):
    meta, _, wkb, fields = pyogrio.raw.read(out, layer="label here next")
    return dict(zip(meta["fields"], fields, strict=True)), shapely.from_wkb(wkb)


def assert_off_labels_and_nodata(boxes, labels) -> None:
    polygons = shapely.from_wkb(pyogrio.raw.read(labels)[2])
    nodata = pixel_box(112, 112, 128, 128)
    for b in boxes:
        assert not any(b.intersection(p).area > 0 for p in polygons)
        assert b.intersection(nodata).area == 0
    for a, b in itertools.combinations(boxes, 2):
        assert a.intersection(b).area == 0


def test_cli_suggest_writes_a_ranked_layer_off_labels_and_nodata(planted, planted_predictor, capsys):
    """Default score (drawable): the top square lies inside the single-class unsure patch, with its
    drawable area (256 px of 100 m²) in the fields and the reason, never on polygons or nodata."""
    out = planted["dir"] / "next.gpkg"
    code, stdout, _ = geossl(capsys, "suggest", "--model", planted["model"], "--raster", planted["raster"],
                             "--labels", planted["labels"], "--class-field", "class", "-k", "5", "--window", "16",
                             "--out", out, "--json")
    assert code == 0, stdout
    result = json.loads(stdout)
    assert result["count"] == 5 and result["layer"] == "label here next" and result["score"] == "drawable"
    assert pyogrio.list_layers(out)[:, 0].tolist() == ["label here next"]
    assert pyogrio.read_info(out)["crs"] == "EPSG:32633"
    cols, boxes = suggest_layer(out)
    assert cols["rank"].tolist() == [1, 2, 3, 4, 5]
    assert cols["score"][0] == max(cols["score"])  # later ranks also weigh class diversity
    assert all(b.area == pytest.approx(160.0 ** 2) for b in boxes)  # 16 px of 10 m
    assert_off_labels_and_nodata(boxes, planted["labels"])
    assert plant_box(PLANT_ONE).contains(boxes[0]), result["items"][0]
    top = result["items"][0]
    assert top["score"] == pytest.approx(0.9, abs=1e-3) and top["uncertainty"] == pytest.approx(0.9, abs=1e-3)
    assert (top["drawable_class"], top["drawable_px"], top["drawable_m2"]) == ("dark", 256, 25_600.0)
    assert top["reason"] == "dark vs bright, margin 0.10, ~26,000 m² drawable as dark"
    assert cols["reason"][0] == top["reason"] and cols["drawable_class"][0] == "dark"
    assert cols["drawable_px"].tolist() == [it["drawable_px"] for it in result["items"]]
    assert cols["drawable_m2"].tolist() == [it["drawable_px"] * 100.0 for it in result["items"]]


def test_cli_suggest_by_uncertainty_prefers_the_split_patch(planted, planted_predictor, capsys):
    """``--score uncertainty`` (the old ranking): the checkerboard is more uncertain (0.96 > 0.9) though a
    mapper could draw only half of it, so it comes first; the drawable area still says so."""
    out = planted["dir"] / "next_uncertainty.gpkg"
    code, stdout, _ = geossl(capsys, "suggest", "--model", planted["model"], "--raster", planted["raster"],
                             "--labels", planted["labels"], "--class-field", "class", "-k", "3", "--window", "16",
                             "--score", "uncertainty", "--out", out, "--json")
    assert code == 0, stdout
    result = json.loads(stdout)
    assert result["score"] == "uncertainty" and result["count"] == 3
    cols, boxes = suggest_layer(out)
    assert_off_labels_and_nodata(boxes, planted["labels"])
    assert plant_box(PLANT_SPLIT).contains(boxes[0]), result["items"][0]
    top = result["items"][0]
    assert top["score"] == pytest.approx(0.96, abs=1e-3) and top["drawable_px"] == 128
    assert top["reason"].endswith("~13,000 m² drawable as " + top["drawable_class"])


def test_cli_suggest_without_a_crs_gives_the_area_in_pixels(planted, planted_predictor, capsys, tmp_path):
    import rasterio

    with rasterio.open(planted["raster"]) as src:
        data = src.read()
    data[0, 8:56, 8:28] = 950  # no polygons here: the coin-toss decoy goes, the single-class patch leads
    raster = write_raster(tmp_path / "nocrs.tif", data, crs=None, nodata=0)
    out = tmp_path / "next.gpkg"
    code, stdout, _ = geossl(capsys, "suggest", "--model", planted["model"], "--raster", raster, "-k", "1",
                             "--window", "16", "--out", out, "--json")
    assert code == 0, stdout
    top = json.loads(stdout)["items"][0]
    assert top["drawable_m2"] is None and top["drawable_px"] == 256
    assert top["reason"] == "dark vs bright, margin 0.10, ~260 px drawable as dark"
    cols, _ = suggest_layer(out)
    assert cols["drawable_px"].tolist() == [256] and np.isnan(cols["drawable_m2"][0])


def test_cli_suggest_refuses_bad_input_without_output(trained, capsys, tmp_path):
    out = tmp_path / "s.gpkg"
    code, _, err = geossl(capsys, "suggest", "--model", trained["model"], "--raster", trained["raster"],
                          "--window", "256", "--out", out)
    assert code == 2 and "larger than the raster" in err and not out.exists()
    code, _, err = geossl(capsys, "suggest", "--model", trained["model"], "--raster", trained["raster"],
                          "--window", "18", "--out", out)
    assert code == 2 and "multiple of 4" in err and not out.exists()
    four = write_raster(tmp_path / "four.tif", np.ones((4, 64, 64), "uint16"))
    code, _, err = geossl(capsys, "suggest", "--model", trained["model"], "--raster", four, "--out", out)
    assert code == 2 and "expects 3 bands" in err and not out.exists()
    assert list(tmp_path.glob(".s.gpkg*")) == []


# --- warm start: `geossl finetune --init-model` --------------------------------------------------------


def test_warm_start_first_step_loss_is_the_loaded_models_loss(trained):
    """The first step's loss of a warm start is the loaded model's loss on that very batch (replayed here
    with the run's seed), far below a cold start's."""
    from geossl.checkpoint import load_checkpoint
    from geossl.classes import ClassTable
    from geossl.datasets import LabelledTiles
    from geossl.finetune import run_finetune, seed_everything
    from geossl.labels import load_label_polygons, split_polygons
    from geossl.models import build_model
    from geossl.raster_io import BandStats, raster_info
    from geossl.schemas import FinetuneParams
    from torch.utils.data import DataLoader

    d = trained["dir"]
    common = {"rasters": [str(trained["raster"])], "labels": str(trained["labels"]), "class_field": "class",
              "steps": 1, "tile": 32, "batch": 4, "seed": 5, "val_fraction": 0.0}
    events: list = []
    result = run_finetune(FinetuneParams(out=str(d / "warm.pt"), init_model=str(trained["model"]), **common),
                          events.append)
    first = next(e.loss for e in events if e.loss is not None)
    cold: list = []
    run_finetune(FinetuneParams(out=str(d / "cold.pt"), **common), cold.append)
    cold_first = next(e.loss for e in cold if e.loss is not None)

    ck = load_checkpoint(trained["model"], "segmentation")
    seed_everything(5)
    model = build_model(ck["encoder"], 3, 2, ck.get("forest"))  # same RNG draws as the run before it loads
    model.load_state_dict(ck["state_dict"])
    model.train()
    polys, _, _ = load_label_polygons(trained["labels"], "class", [raster_info(trained["raster"])],
                                      table=ClassTable.from_dict(ck["classes"]))
    train, _ = split_polygons(polys, 0.0, 5)
    ds = LabelledTiles(train, BandStats.from_dict(ck["band_stats"]), 32, 50 * 4, 5,
                       balance=FinetuneParams.model_fields["class_balance"].default)
    x, y = next(iter(DataLoader(ds, batch_size=4, shuffle=False, drop_last=True)))
    expected = torch.nn.CrossEntropyLoss(ignore_index=255)(model.context(x), y).item()  # SGD trains the network
    assert first == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert first < 0.5 * cold_first, (first, cold_first)
    saved = load_checkpoint(d / "warm.pt", "segmentation")
    assert saved["warm_start"]["path"] == str(trained["model"].resolve())
    assert saved["classes"] == ck["classes"] and result["steps"] == 1


def test_warm_start_refuses_a_new_class_and_another_encoder(trained, capsys, tmp_path):
    labels = write_polygons(tmp_path / "new.gpkg", [pixel_box(4, 4, 20, 20), pixel_box(70, 4, 90, 20),
                                                     pixel_box(40, 40, 50, 50)], ["dark", "bright", "water"])
    base = ["finetune", "--raster", trained["raster"], "--class-field", "class", "--out", tmp_path / "w.pt",
            "--steps", "1", "--tile", "32", "--batch", "2", "--init-model", trained["model"]]
    code, _, err = geossl(capsys, *base, "--labels", labels)
    assert code == 2 and "water" in err and "does not know" in err and "without --init-model" in err
    code, _, err = geossl(capsys, *base, "--labels", trained["labels"], "--encoder", "resnet34")
    assert code == 2 and "encoder resnet18" in err
    with pytest.raises(SystemExit) as exited:  # argparse: --init and --init-model exclude each other
        geossl(capsys, *base, "--labels", trained["labels"], "--init", trained["model"])
    assert exited.value.code == 2 and "not allowed with argument --init-model" in capsys.readouterr().err
    assert not (tmp_path / "w.pt").exists()


def test_benchmark_mapper_draws_one_single_class_square_per_window():
    """The simulated mapper of bench_suggest.py: the largest square of the window's majority class, on
    pixels not labelled yet, or nothing."""
    from tests.bench.bench_suggest import largest_square

    ref = np.zeros((40, 40), np.uint8)
    ref[:, :25] = 2  # majority of the window below
    ref[:, 25:] = 3
    used = np.zeros_like(ref, bool)
    used[0:10, 0:10] = True
    r, c, side, value = largest_square(ref, used, 0, 0, 32, 6)
    assert value == 2 and side >= 15
    square = (slice(r, r + side), slice(c, c + side))
    assert (ref[square] == 2).all() and not used[square].any() and c + side <= 25
    assert largest_square(np.zeros((40, 40), np.uint8), used, 0, 0, 32, 6) is None  # unlabelled ground


def test_benchmark_polygon_mapper_traces_exactly_the_majority_class_pixels():
    """``--mapper polygon``: every unlabelled pixel of the window's majority class, in its 4-connected
    regions of at least ``min_pixels`` (a 2-px speck is left out), as polygons that rasterise back to
    exactly those pixels; nothing of other classes, unlabelled (0) ground or used pixels."""
    from rasterio import features
    from rasterio.transform import from_origin

    from tests.bench.bench_suggest import majority_region, region_polygons

    ref = np.zeros((40, 40), np.uint8)  # the window is rows/cols 4..35; class 1 is its background
    ref[4:36, 4:36] = 1
    ref[0:4, 4:36] = 3  # class 3 outside the window, touching region a: the mapper stays in the square
    ref[4:18, 4:36] = 3  # region a, 14 × 32 px, with a 2 × 2 hole of class 1
    ref[9:11, 12:14] = 1
    ref[20:36, 4:12] = 3  # region b, 16 × 8
    ref[20:36, 12:14] = 0  # unlabelled strip beside it
    ref[30, 15:17] = 3  # a 2-px speck, surrounded by class 1
    ref[20:36, 20:36] = 3  # region c, 16 × 16, its top 7 rows already labelled
    used = np.zeros_like(ref, bool)
    used[20:27, 20:36] = True
    win = (slice(4, 36), slice(4, 36))
    free_majority = (ref == 3) & ~used
    assert np.bincount(ref[win][(ref[win] > 0) & ~used[win]]).tolist() == [0, 162, 0, 718]  # class 3 leads

    mask, value = majority_region(ref, used, 4, 4, 32, min_pixels=36)
    assert value == 3 and mask.shape == (32, 32)
    expected = free_majority[win].copy()
    expected[30 - 4, 15 - 4:17 - 4] = False  # the speck
    np.testing.assert_array_equal(mask, expected)
    everything, _ = majority_region(ref, used, 4, 4, 32, min_pixels=1)
    np.testing.assert_array_equal(everything, free_majority[win])  # no size limit: all of the class

    origin = (500_000.0, 5_000_000.0)
    polygons = region_polygons(mask, 4, 4, origin, pixel=0.5)
    assert len(polygons) == 3 and all(p.is_valid for p in polygons)  # regions a, b and the free part of c
    assert sum(len(p.interiors) for p in polygons) == 1  # the hole in region a
    back = features.rasterize(((p, 1) for p in polygons), out_shape=ref.shape, dtype=np.uint8,
                              transform=from_origin(*origin, 0.5, 0.5))
    np.testing.assert_array_equal(back.astype(bool)[win], mask)
    assert not back[:4].any() and not back[:, :4].any() and not back[36:].any() and not back[:, 36:].any()
    assert sum(p.area for p in polygons) == pytest.approx(mask.sum() * 0.25)
    assert majority_region(np.zeros((40, 40), np.uint8), used, 0, 0, 32, 36) is None  # unlabelled ground
    speck = np.zeros((40, 40), np.uint8)
    speck[5, 5] = 2
    assert majority_region(speck, used, 0, 0, 32, 36) is None  # only a speck: a wasted window
