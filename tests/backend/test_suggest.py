"""Where to label next: the selection maths on planted probability fields, `geossl suggest` end to end,
and warm-start fine-tuning (`--init-model`) resuming from the given weights."""

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


def candidates(prob: np.ndarray, eligible: np.ndarray, window: int, blocks: int = 1, measure: str = "margin"):
    """Cell sums fed in ``blocks`` horizontal strips of uneven height (as tiled prediction does)."""
    k, h, w = prob.shape
    sums = CellSums.empty(h, w, window // 4, k)
    cuts = [0, *sorted({int(h * f) for f in np.linspace(0, 1, blocks + 1)[1:-1] + 0.037}), h]
    for r0, r1 in itertools.pairwise(cuts):
        sums.add(r0, 0, prob[:, r0:r1], eligible[r0:r1], measure)
    return window_candidates(sums, 4)


def test_margin_and_entropy_known_answers():
    p = np.array([[0.5, 0.9, 1 / 3], [0.48, 0.05, 1 / 3], [0.02, 0.05, 1 / 3]], np.float32)
    np.testing.assert_allclose(top2_margin(p), [0.02, 0.85, 0.0], atol=1e-6)
    ent = normalised_entropy(p)
    assert ent[2] == pytest.approx(1.0, abs=1e-5) and ent[1] < ent[0] < 1.0
    assert reason(("water", "road", "roof"), 0, 1, 0.04) == "water vs road, margin 0.04"


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
    np.testing.assert_array_equal(a.top1, b.top1)


def test_planted_uncertain_region_ranks_first():
    prob = confident_field()
    plant(prob, slice(80, 112), slice(16, 48), (0.5, 0.48, 0.02))  # a coin toss between classes 0 and 1
    plant(prob, slice(16, 48), slice(80, 112), (0.3, 0.6, 0.1))  # unsure, less so
    c = candidates(prob, np.ones(prob.shape[1:], bool), 32, blocks=3)
    picks = select(c.centres, c.score, c.top1, 5, c.size)
    first, second = picks[0], picks[1]
    assert (c.row[first], c.col[first]) == (80, 16)
    assert c.margin[first] == pytest.approx(0.02, abs=1e-4) and (c.top1[first], c.top2[first]) == (0, 1)
    assert reason(("a", "b", "c"), c.top1[first], c.top2[first], c.margin[first]) == "a vs b, margin 0.02"
    assert (c.row[second], c.col[second]) == (16, 80)
    assert c.score[picks].tolist() == sorted(c.score[picks].tolist(), reverse=True)  # ranked


def test_never_on_labelled_or_nodata_ground():
    prob = confident_field()
    plant(prob, slice(0, 48), slice(0, 48), (0.4, 0.4, 0.2))  # most uncertain, but labelled
    plant(prob, slice(80, 128), slice(80, 128), (0.34, 0.33, 0.33))  # as uncertain, but nodata
    plant(prob, slice(80, 112), slice(0, 32), (0.5, 0.45, 0.05))  # the best place left
    eligible = np.ones(prob.shape[1:], bool)
    eligible[4:44, 4:44] = False  # a polygon
    eligible[90:128, 90:128] = False  # nodata
    c = candidates(prob, eligible, 32, blocks=2)
    picks = select(c.centres, c.score, c.top1, 8, c.size, spacing=0)
    assert (c.row[picks[0]], c.col[picks[0]]) == (80, 0)
    for i in picks:
        assert eligible[c.row[i]:c.row[i] + 32, c.col[i]:c.col[i] + 32].all()


def test_suggestions_are_distinct_non_overlapping_and_spread():
    rng = np.random.default_rng(3)
    prob = rng.dirichlet(np.ones(3), size=(160, 160)).transpose(2, 0, 1).astype(np.float32)
    c = candidates(prob, np.ones((160, 160), bool), 16)
    picks = select(c.centres, c.score, c.top1, 12, c.size, spacing=40)
    assert len(picks) == len(set(picks)) == 12
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


def test_cli_suggest_writes_a_ranked_layer_off_labels_and_nodata(trained, capsys):
    d = trained["dir"]
    out = d / "next.gpkg"
    code, stdout, _ = geossl(capsys, "suggest", "--model", trained["model"], "--raster", trained["raster"],
                             "--labels", trained["labels"], "--class-field", "class", "-k", "5", "--window", "16",
                             "--out", out, "--json")
    assert code == 0, stdout
    result = json.loads(stdout)
    assert result["count"] == 5 and result["layer"] == "label here next"
    assert pyogrio.list_layers(out)[:, 0].tolist() == ["label here next"]
    meta, _, wkb, fields = pyogrio.raw.read(out, layer="label here next")
    assert pyogrio.read_info(out)["crs"] == "EPSG:32633"
    cols = dict(zip(meta["fields"], fields, strict=True))
    assert cols["rank"].tolist() == [1, 2, 3, 4, 5]
    assert all(" vs " in r and "margin" in r for r in cols["reason"])
    assert cols["score"][0] == max(cols["score"])  # later ranks also weigh class diversity
    boxes = shapely.from_wkb(wkb)
    assert all(b.area == pytest.approx(160.0 ** 2) for b in boxes)  # 16 px of 10 m
    polygons = shapely.from_wkb(pyogrio.raw.read(trained["labels"])[2])
    nodata = pixel_box(112, 112, 128, 128)
    for b in boxes:
        assert not any(b.intersection(p).area > 0 for p in polygons)
        assert b.intersection(nodata).area == 0
    for a, b in itertools.combinations(boxes, 2):
        assert a.intersection(b).area == 0
    # the mixed patch the polygons never showed is where the model hesitates most
    assert boxes[0].intersection(pixel_box(72, 8, 40 + 8, 104)).area > 0, result["items"][0]


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
    model = build_model(ck["encoder"], 3, 2)  # same RNG draws as the run before it loads the weights
    model.load_state_dict(ck["state_dict"])
    model.train()
    polys, _, _ = load_label_polygons(trained["labels"], "class", [raster_info(trained["raster"])],
                                      table=ClassTable.from_dict(ck["classes"]))
    train, _ = split_polygons(polys, 0.0, 5)
    ds = LabelledTiles(train, BandStats.from_dict(ck["band_stats"]), 32, 50 * 4, 5)
    x, y = next(iter(DataLoader(ds, batch_size=4, shuffle=False, drop_last=True)))
    expected = torch.nn.CrossEntropyLoss(ignore_index=255)(model(x), y).item()
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
