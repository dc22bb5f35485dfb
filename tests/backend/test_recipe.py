"""The few-label recipe's parts, each on inputs whose answer is known: class-balanced window draws,
the weight average, pseudo-labels, the mixed loss, test-time augmentation and the minutes budget."""

import numpy as np
import pytest
import torch
from geossl import finetune
from geossl.budget import StepPlan, revise_steps, steps_for
from geossl.checkpoint import load_checkpoint
from geossl.classes import IGNORE_INDEX
from geossl.datasets import photometric_augment
from geossl.finetune import CosineWithWarmup, mixed_loss, run_finetune, weight_average
from geossl.labels import load_label_polygons
from geossl.predict import torch_predictor
from geossl.raster_io import compute_band_stats, raster_info
from geossl.sampling import LabelledWindowSampler
from geossl.schemas import DEFAULT_FINETUNE_MINUTES, FinetuneParams
from geossl.selftrain import PseudoLabelledTiles, pseudo_labels
from pydantic import ValidationError
from torch import nn

from tests.data import pixel_box, two_class_raster, write_polygons


@pytest.fixture
def uneven(tmp_path):
    """Class 'a' labels 9× the pixels of class 'b'."""
    raster = two_class_raster(tmp_path / "r.tif")
    labels = write_polygons(tmp_path / "l.gpkg", [pixel_box(0, 0, 30, 30), pixel_box(60, 60, 70, 70)], ["a", "b"])
    info = raster_info(raster)
    polys, table, _ = load_label_polygons(labels, "class", [info])
    return {"raster": raster, "labels": labels, "polys": polys, "table": table, "dir": tmp_path}


@pytest.mark.parametrize(("balance", "expected"), [(1.0, [0.5, 0.5]), (0.0, [0.9, 0.1]), (0.5, [0.75, 0.25])])
def test_class_draws_follow_the_balance(uneven, balance, expected):
    sampler = LabelledWindowSampler(uneven["polys"], 32, balance)
    np.testing.assert_allclose(sampler.class_p, expected, atol=1e-9)
    rng = np.random.default_rng(0)
    drawn = [uneven["polys"][0].rasterize(sampler.sample(rng).window) for _ in range(400)]
    share_a = np.mean([(d == 0).any() and not (d == 1).any() for d in drawn])
    assert abs(share_a - expected[0]) < 0.08  # windows hold one class here: the draws follow class_p


def test_weight_average_ramps_up_then_follows_the_decay():
    model = nn.Linear(1, 1, bias=False)
    avg = weight_average(model, decay=0.5)
    values = [1.0, 3.0, 7.0]
    expected, d_n = [], []
    for n, v in enumerate(values):
        with torch.no_grad():
            model.weight.fill_(v)
        avg.update_parameters(model)
        if n == 0:
            e = v  # the first update copies
        else:
            d = min(0.5, (1 + n) / (10 + n))
            e = expected[-1] + (v - expected[-1]) * (1 - d)
            d_n.append(d)
        expected.append(e)
        assert avg.module.weight.item() == pytest.approx(e)
    assert d_n == [pytest.approx(2 / 11), pytest.approx(3 / 12)]  # still ramping: below the 0.5 decay


def test_pseudo_labels_keep_only_confident_pixels():
    probs = np.zeros((1, 3, 2, 2), np.float32)
    probs[0, :, 0, 0] = [0.95, 0.03, 0.02]
    probs[0, :, 0, 1] = [0.10, 0.89, 0.01]
    probs[0, :, 1, 0] = [0.05, 0.05, 0.90]
    probs[0, :, 1, 1] = [0.4, 0.3, 0.3]
    np.testing.assert_array_equal(pseudo_labels(probs, 0.9), [[[0, IGNORE_INDEX], [2, IGNORE_INDEX]]])


class ConstantTeacher(nn.Module):
    """Class 1 with probability ≈ 0.97 on the left half of every window, a tie elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        logits = torch.zeros(b, 2, h, w)
        logits[:, 1, :, : w // 2] = 3.5
        return logits


def test_pool_labels_with_the_teacher_and_real_labels_win(uneven):
    stats = compute_band_stats([uneven["raster"]])
    pool = PseudoLabelledTiles(uneven["polys"], stats, tile=32, length=6, seed=0, threshold=0.9, photometric=0.0)
    pool.refresh(ConstantTeacher(), torch.device("cpu"), amp=False, batch=4, epoch=0)
    assert len(pool) == 6 and pool.labels.shape == (6, 32, 32)
    for ref, labels in zip(pool.refs, pool.labels, strict=True):
        truth = uneven["polys"][0].rasterize(ref.window)
        real = truth != IGNORE_INDEX
        np.testing.assert_array_equal(labels[real], truth[real])  # a polygon's class, whatever the teacher says
        left = np.zeros_like(real)
        left[:, :16] = True
        assert (labels[left & ~real] == 1).all()  # confident teacher → pseudo-label
        assert (labels[~left & ~real] == IGNORE_INDEX).all()  # a tie → ignored
    assert 0 < pool.coverage < 1


def test_mixed_loss_weighs_the_two_parts_separately():
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 5, 5)
    y = torch.randint(0, 3, (4, 5, 5))
    y[1] = IGNORE_INDEX  # a labelled window without a labelled pixel adds nothing
    pseudo = torch.tensor([False, False, True, True])
    ce = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    expected = ce(logits[:2], y[:2]) + 0.5 * ce(logits[2:], y[2:])
    assert torch.allclose(mixed_loss(ce, logits, y, pseudo, 0.5), expected)
    only_labelled = mixed_loss(ce, logits, y, torch.zeros(4, dtype=torch.bool), 0.5)
    assert torch.allclose(only_labelled, ce(logits, y))


def test_photometric_augment_shifts_bands_without_clipping():
    x = np.full((3, 8, 8), 5.0, np.float32)  # far outside any [0, 1] range: must survive
    out = photometric_augment(x, np.random.default_rng(0), 0.1)
    assert out.shape == x.shape and np.abs(out).max() > 4.0
    assert not np.allclose(out[0].mean(), out[1].mean())  # per band, not one global change
    np.testing.assert_array_equal(photometric_augment(x, np.random.default_rng(0), 0.0), x)


def test_tta_is_the_mean_over_the_eight_flips_and_rotations():
    torch.manual_seed(0)
    model = nn.Conv2d(2, 3, 3, padding=1).eval()  # not rotation invariant: TTA changes the answer
    tiles = np.random.default_rng(0).standard_normal((2, 2, 8, 8)).astype(np.float32)
    x = torch.from_numpy(tiles)
    expected = torch.zeros(2, 3, 8, 8)
    with torch.no_grad():
        for k in range(4):
            for flip in (False, True):
                v = torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1))
                p = torch.rot90(torch.softmax(model(v), 1), -k, dims=(-2, -1))
                expected += (p.flip(-1) if flip else p) / 8
    got = torch_predictor(model, torch.device("cpu"), amp=False, tta=True)(tiles)
    plain = torch_predictor(model, torch.device("cpu"), amp=False, tta=False)(tiles)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-6)
    assert not np.allclose(got, plain, atol=1e-3)
    pointwise = nn.Conv2d(2, 3, 1).eval()  # a pixel-wise model is equivariant: TTA gives its own answer
    np.testing.assert_allclose(torch_predictor(pointwise, torch.device("cpu"), False, True)(tiles),
                               torch_predictor(pointwise, torch.device("cpu"), False, False)(tiles), atol=1e-6)


def test_steps_for_counts_fixed_and_per_epoch_costs():
    assert steps_for(100, 0.5) == 200
    assert steps_for(100, 0.5, fixed_seconds=20) == 160
    assert steps_for(100, 0.5, every=10, every_seconds=5) == 100  # 0.5 + 5/10 s per step
    assert steps_for(1, 0.5, minimum=10) == 10 and steps_for(100, 0.5, maximum=50) == 50



def test_revise_steps_follows_the_runs_own_pace():
    assert revise_steps(100, 20, 10.0, 40.0) == 100  # 0.5 s a step, 80 more fit: as planned
    assert revise_steps(100, 20, 20.0, 40.0) == 60  # the machine got busier: 1 s a step, 40 more
    assert revise_steps(100, 20, 5.0, 40.0) == 180  # quieter: 0.25 s a step
    assert revise_steps(100, 20, 10.0, 41.0) == 100  # 102 is within 5 %: the schedule is left alone
    assert revise_steps(100, 20, 10.0, -5.0) == 20  # over budget: end now, keep what was made
    assert revise_steps(100, 20, 5.0, 40.0, maximum=120) == 120 and revise_steps(100, 2, 10.0, 0.0, minimum=10) == 10
    assert revise_steps(100, 0, 0.0, 40.0) == 100  # nothing measured yet


def test_a_revised_plan_round_trips_and_bends_the_schedule():
    plan = StepPlan(50, 0.5, 600.0).revised(10, 80).revised(40, 70)
    assert plan.steps == 70 and plan.revisions == ((10, 80), (40, 70))
    assert StepPlan.from_dict(plan.to_dict()) == plan and StepPlan.from_dict({"steps": 5}) == StepPlan(5)
    schedule = CosineWithWarmup(100, 10)
    before = schedule(55)
    schedule.total = 200  # a longer run decays later: a higher LR at the same step
    assert schedule(55) > before and schedule(5) == pytest.approx(0.6) and schedule(200) == pytest.approx(0.0)


def test_a_minutes_budget_re_plans_from_the_runs_pace(uneven, monkeypatch):
    """The timed probe says a step (and a validation batch) takes 20 s, so 10 minutes plan about 14
    steps; the real steps are far faster, so after the first epoch the run re-plans up to
    ``max_steps`` and records the revision."""
    monkeypatch.setattr(finetune, "measure_seconds", lambda fn, **kw: (fn(), 20.0)[1])
    common = {"rasters": [str(uneven["raster"])], "labels": str(uneven["labels"]), "class_field": "class",
              "tile": 32, "batch": 2, "steps_per_epoch": 4, "seed": 3, "val_fraction": 0, "ema": 0.9}
    a = run_finetune(FinetuneParams(**common, out=str(uneven["dir"] / "a.pt"), minutes=10, max_steps=24))
    assert a["plan"]["steps"] == a["steps"] == 24 and a["plan"]["revisions"] == [[4, 24]]
    assert a["plan"]["step_seconds"] > 20  # the probe's figure is kept: it is what the first plan used
    assert load_checkpoint(uneven["dir"] / "a.pt", "segmentation")["config"]["plan"] == a["plan"]

def test_minutes_and_steps_exclude_each_other(uneven):
    base = {"rasters": [str(uneven["raster"])], "labels": str(uneven["labels"]), "class_field": "class",
            "out": "m.pt"}
    with pytest.raises(ValidationError, match="minutes or in steps"):
        FinetuneParams(**base, minutes=5, steps=10)
    assert FinetuneParams(**base, minutes=5).total_steps is None
    default = FinetuneParams(**base)  # nothing given: the default wall-clock budget, not a step count
    assert default.total_steps is None and default.minutes == DEFAULT_FINETUNE_MINUTES
    assert FinetuneParams(**base, steps=30).minutes is None


def test_a_minutes_budget_plans_records_and_reproduces_with_steps(uneven, monkeypatch):
    """Timing is faked: what is checked is the arithmetic of the plan and that planning leaves no trace."""
    monkeypatch.setattr(finetune, "measure_seconds", lambda fn, **kw: (fn(), 0.25)[1])
    common = {"rasters": [str(uneven["raster"])], "labels": str(uneven["labels"]), "class_field": "class",
              "tile": 32, "batch": 2, "steps_per_epoch": 4, "seed": 3, "val_fraction": 0, "ema": 0.9}
    a = run_finetune(FinetuneParams(**common, out=str(uneven["dir"] / "a.pt"), minutes=10, max_steps=7))
    assert a["plan"]["steps"] == a["steps"] == 7 and a["plan"]["budget_seconds"] == 600
    assert a["plan"]["step_seconds"] > 0.25  # the faked step plus the (real) time to read a batch
    b = run_finetune(FinetuneParams(**common, out=str(uneven["dir"] / "b.pt"), steps=7))
    wa = load_checkpoint(uneven["dir"] / "a.pt", "segmentation")
    wb = load_checkpoint(uneven["dir"] / "b.pt", "segmentation")
    assert wa["config"]["plan"] == a["plan"] and wb["config"]["plan"]["steps"] == b["steps"] == 7
    assert all(torch.equal(v, wb["state_dict"][k]) for k, v in wa["state_dict"].items())
