"""Pretraining by wall time, the anytime (constant) schedule, snapshots and time-based resume states.

Timing never decides a test: the step and save times are faked (the probe's steps still run), and
what is checked is what the run did with them — its plan, the steps it made, the weights it wrote.
"""

import json
from pathlib import Path

import pytest
import torch
from geossl import pretrain
from geossl.checkpoint import load_checkpoint
from geossl.cli import main
from geossl.errors import GeoSSLError
from geossl.methods import get_method
from geossl.models import build_model
from geossl.pretrain import (
    constant,
    lr_factor,
    plan_budget,
    plan_steps,
    run_pretrain,
    snapshot_path,
    warmup_steps,
)
from geossl.schemas import PretrainParams
from pydantic import ValidationError

from tests.data import two_class_polygons, two_class_raster

TINY = {"tile": 64, "batch": 2, "seed": 5, "encoder": "resnet18"}
ANYTIME = {"lr_schedule": "constant", "warmup_steps": 2, "checkpoint_minutes": None}


class Crash(Exception):
    pass


def crash_at(n: int):
    def progress(ev):
        if ev.stage == "pretrain" and ev.step == n and ev.loss is not None:
            raise Crash

    return progress


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path, "pretrained")["state_dict"]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


@pytest.fixture
def fake_timing(monkeypatch):
    """Measurement that runs the probe's steps but reports ``seconds[0]`` per step and 0.5 s per save."""
    seconds = [20.0]

    def measure(step, repeats=3, warmup=1):
        for _ in range(warmup + repeats):
            step()
        return seconds[0]

    monkeypatch.setattr(pretrain, "measure_seconds", measure)
    monkeypatch.setattr(pretrain, "_time_save", lambda spath, trainer: 0.5)
    return seconds


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted constant-schedule run from the CLI: 4 steps, snapshots after steps 1, 2 and 3."""
    d = tmp_path_factory.mktemp("anytime")
    raster = two_class_raster(d / "scene.tif")
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        code = main(["pretrain", "--raster", str(raster), "--out", str(d / "ref.pt"), "--steps", "4", "--tile", "64",
                     "--batch", "2", "--seed", "5", "--lr-schedule", "constant", "--warmup-steps", "2",
                     "--snapshot-steps", "3", "1", "2", "--checkpoint-minutes", "0", "--json"])
    finally:
        torch.use_deterministic_algorithms(previous)
    assert code == 0
    return {"dir": d, "raster": raster, "out": d / "ref.pt"}


def params(raster: Path, out: Path, **kw) -> PretrainParams:
    return PretrainParams(rasters=[str(raster)], out=str(out), **{**TINY, **kw})


# --- the schedule and the plan: pure functions --------------------------------------------------------


def test_constant_schedule_warms_up_linearly_then_stays_flat():
    assert [constant(4)(k) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [constant(1)(k) for k in range(2)] == [1.0, 1.0] == [constant(0)(k) for k in range(2)]
    p = PretrainParams(rasters=["r.tif"], out="o.pt", steps=10, lr_schedule="constant")
    assert warmup_steps(p, 1000) == 20 and warmup_steps(p, 10_000) == 100 and warmup_steps(p, 10) == 1
    assert warmup_steps(p.model_copy(update={"warmup_steps": 7}), 10_000) == 7
    assert warmup_steps(p.model_copy(update={"lr_schedule": "cosine"}), 1000) is None
    # The optimiser sees these factors, step by step, and they do not depend on the run's length.
    for total in (3, 1000):
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(p.model_copy(update={"warmup_steps": 4}), total))
        lrs = []
        for _ in range(6):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    cosine = lr_factor(p.model_copy(update={"lr_schedule": "cosine"}), 4)
    assert [cosine(k) for k in range(5)] == pytest.approx([1.0, 0.853553, 0.5, 0.146447, 0.0], abs=1e-6)


def test_the_plan_is_the_measured_arithmetic():
    p = PretrainParams(rasters=["r.tif"], out="o.pt", minutes=10, checkpoint_every=100, checkpoint_minutes=5)
    # 600 s; 2 timed states + the first state + the final checkpoint at 2 s; 1.02 s per step with states.
    assert plan_steps(p, 600, 1.0, 2.0) == 580
    assert plan_steps(p, 600, 1.0, 2.0, snapshots=3) == 574
    assert plan_steps(p, -5, 1.0, 2.0) == 1  # a spent budget still makes a model
    plan = plan_budget(p.model_copy(update={"snapshot_minutes": [2.0, 20.0]}), 1.0, 2.0, setup_seconds=30.0)
    # 570 s left after setup; 2 snapshots, 1 timed state: 10 s of saves. A 2-min run would have planned 84.
    assert plan == {"steps": 549, "step_seconds": 1.0, "budget_seconds": 570.0, "minutes": 10,
                    "save_seconds": 2.0, "setup_seconds": 30.0, "snapshot_minutes": {"2": 84, "20": 549}}
    assert plan_budget(p, 1.0, 2.0, setup_seconds=0.0)["steps"] == 580


def test_budget_options_are_checked():
    base = {"rasters": ["r.tif"], "out": "o.pt"}
    with pytest.raises(ValidationError, match="minutes or steps/epochs, not both"):
        PretrainParams(**base, minutes=10, steps=100)
    with pytest.raises(ValidationError, match="snapshot_minutes needs minutes"):
        PretrainParams(**base, steps=100, snapshot_minutes=[5])
    with pytest.raises(ValidationError, match="snapshot step 200 is beyond the run's 100 steps"):
        PretrainParams(**base, steps=100, snapshot_steps=[200])
    p = PretrainParams(**base, minutes=30, snapshot_steps=[50, 10, 50])
    assert p.total_steps is None and p.epochs is None and p.snapshot_steps == [10, 50]
    assert PretrainParams(**base).total_steps == 20 * 500 and PretrainParams(**base).checkpoint_minutes == 10


def test_byol_momentum_follows_the_constant_schedule():
    byol = get_method("byol")
    assert byol.resolve_options({}, batch=2, total_steps=10, windows=1, lr_schedule="constant")[
        "momentum_schedule"] == "constant"
    assert byol.resolve_options({}, batch=2, total_steps=10, windows=1)["momentum_schedule"] == "cosine"
    method = byol(build_model("resnet18", 3, 1), 48, hidden_dim=16, momentum_schedule="constant")
    t0 = method.target_encoder.conv1.weight.detach().clone()
    with torch.no_grad():
        method.model.encoder.conv1.weight.add_(1.0)
    method.after_step(5, 10)  # halfway through a cosine would be 0.998: constant stays at the base 0.996
    expected = 0.996 * t0 + 0.004 * method.model.encoder.conv1.weight.detach()
    assert torch.allclose(method.target_encoder.conv1.weight, expected, atol=1e-6)


# --- wall-time budgets ------------------------------------------------------------------------------


def test_minutes_budget_plans_records_and_reproduces_with_steps(tmp_path, fake_timing, deterministic):
    raster = two_class_raster(tmp_path / "scene.tif")
    p = params(raster, tmp_path / "timed.pt", minutes=1, checkpoint_every=100)
    result = run_pretrain(p)
    plan = result["plan"]
    n = plan["steps"]
    assert plan["step_seconds"] == 20.0 and plan["save_seconds"] == 0.5 and plan["minutes"] == 1
    assert 0 < plan["budget_seconds"] < 60 and plan["setup_seconds"] == pytest.approx(60 - plan["budget_seconds"])
    assert n == plan_steps(p, plan["budget_seconds"], 20.0, 0.5) and 1 <= n <= 3  # at most 60 s / 20 s
    assert result["steps"] == result["total_steps"] == n
    ck = load_checkpoint(tmp_path / "timed.pt", "pretrained")
    assert ck["steps"] == n and ck["plan"] == plan and ck["config"]["minutes"] == 1 and ck["config"]["steps"] is None
    assert len((tmp_path / "timed.pt.log.jsonl").read_text().splitlines()) == n
    assert not list(tmp_path.glob(".*partial*")) and not (tmp_path / "timed.pt.state.pt").exists()

    # The probe's steps left no trace: --steps N with the same seed ends with the same weights.
    again = run_pretrain(params(raster, tmp_path / "steps.pt", steps=n, checkpoint_every=100))
    assert again["plan"] == {"steps": n, "step_seconds": None, "budget_seconds": None}
    assert same(weights(tmp_path / "timed.pt"), weights(tmp_path / "steps.pt"))


def test_a_resumed_minutes_run_keeps_its_planned_steps(tmp_path, fake_timing, deterministic):
    raster = two_class_raster(tmp_path / "scene.tif")
    fake_timing[0] = 40.0  # 2 minutes: at most 2 steps
    p = params(raster, tmp_path / "enc.pt", minutes=2, checkpoint_every=100)
    with pytest.raises(Crash):
        run_pretrain(p, crash_at(1))
    state = load_checkpoint(tmp_path / "enc.pt.state.pt", "pretrain-state")
    assert state["step"] == 0  # the state written right after planning: the plan survives any kill
    n = state["total_steps"]
    assert state["plan"]["steps"] == n >= 1 and state["plan"]["step_seconds"] == 40.0

    with pytest.raises(GeoSSLError, match=r"other options \(minutes\)"):
        run_pretrain(p.model_copy(update={"minutes": 3.0, "resume": True}))
    fake_timing[0] = 0.001  # a new measurement would now plan thousands of steps
    result = run_pretrain(p.model_copy(update={"resume": True}))
    assert result["steps"] == n and result["plan"] == state["plan"]
    assert load_checkpoint(tmp_path / "enc.pt", "pretrained")["steps"] == n
    again = run_pretrain(p.model_copy(update={"resume": True}))
    assert "already completed" in again["warnings"][0] and again["plan"] == state["plan"]


def test_resume_states_are_also_written_by_time(tmp_path, deterministic):
    raster = two_class_raster(tmp_path / "scene.tif")
    p = params(raster, tmp_path / "t.pt", steps=3, checkpoint_every=100, checkpoint_minutes=1e-6)
    with pytest.raises(Crash):
        run_pretrain(p, crash_at(2))
    assert load_checkpoint(tmp_path / "t.pt.state.pt", "pretrain-state")["step"] == 2  # not a multiple of 100
    off = params(raster, tmp_path / "s.pt", steps=3, checkpoint_every=100, checkpoint_minutes=None)
    with pytest.raises(Crash):
        run_pretrain(off, crash_at(2))
    assert not (tmp_path / "s.pt.state.pt").exists()


# --- snapshots ----------------------------------------------------------------------------------------


def test_snapshots_are_the_end_of_a_run_that_long_and_fine_tune_from(reference, tmp_path, capsys, deterministic):
    out = reference["out"]
    final = load_checkpoint(out, "pretrained")
    assert [s["step"] for s in final["snapshots"]] == [1, 2, 3] and final["schedule"] == {
        "lr_schedule": "constant", "warmup_steps": 2}
    assert final["config"]["checkpoint_minutes"] is None and final["config"]["snapshot_steps"] == [1, 2, 3]
    lrs = [json.loads(ln)["lr"] for ln in Path(f"{out}.log.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])
    seconds = []
    for n in (1, 2, 3):
        ck = load_checkpoint(snapshot_path(out, n), "pretrained")
        assert snapshot_path(out, n).name == f"ref.step{n}.pt"
        assert ck["steps"] == n and ck["snapshot"]["step"] == n and ck["total_steps"] == 4
        assert ck["state_dict"].keys() == final["state_dict"].keys() and ck["method"] == "glcnet"
        seconds.append(ck["snapshot"]["train_seconds"])
    assert 0 < seconds[0] < seconds[1] < seconds[2] < final["train_seconds"]
    # Anytime: snapshot N equals the end of an uninterrupted N-step run with the same seed and warm-up.
    for n in (1, 2):
        short = tmp_path / f"short{n}.pt"
        run_pretrain(params(reference["raster"], short, steps=n, **ANYTIME))
        assert same(weights(snapshot_path(out, n)), weights(short)), n
    assert not same(weights(snapshot_path(out, 1)), weights(snapshot_path(out, 2)))

    labels = two_class_polygons(tmp_path / "labels.gpkg")
    code = main(["finetune", "--raster", str(reference["raster"]), "--labels", str(labels), "--class-field", "class",
                 "--out", str(tmp_path / "m.pt"), "--init", str(snapshot_path(out, 2)), "--steps", "1", "--tile", "32",
                 "--batch", "2"])
    assert code == 0, capsys.readouterr().err
    assert load_checkpoint(tmp_path / "m.pt", "segmentation")["init"]["method"] == "glcnet"


def test_kill_and_resume_across_a_snapshot_neither_loses_nor_duplicates_it(reference, tmp_path, deterministic):
    out = tmp_path / "cut.pt"
    p = params(reference["raster"], out, steps=4, snapshot_steps=[1, 3], checkpoint_every=2, **ANYTIME)
    with pytest.raises(Crash):
        run_pretrain(p, crash_at(3))  # after snapshot 3, with the last state at step 2
    state = load_checkpoint(f"{out}.state.pt", "pretrain-state")
    assert state["step"] == 2 and [s["step"] for s in state["snapshots"]] == [1]
    assert snapshot_path(out, 3).exists() and not out.exists()
    first = snapshot_path(out, 1).stat().st_mtime_ns

    result = run_pretrain(p.model_copy(update={"resume": True}))
    assert [s["step"] for s in result["snapshots"]] == [1, 3]  # each once: 3 was written again, 1 kept
    assert snapshot_path(out, 1).stat().st_mtime_ns == first
    assert sorted(f.name for f in tmp_path.glob("cut*.pt")) == ["cut.pt", "cut.step1.pt", "cut.step3.pt"]
    assert [s["step"] for s in load_checkpoint(out, "pretrained")["snapshots"]] == [1, 3]
    for n in (1, 3):
        assert same(weights(snapshot_path(out, n)), weights(snapshot_path(reference["out"], n))), n
    assert same(weights(out), weights(reference["out"]))
    log = [json.loads(ln)["step"] for ln in Path(f"{out}.log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4]
