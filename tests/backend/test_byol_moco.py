"""BYOL (+ RS-BYOL band / sensor views) and MoCo v2: known answers for the momentum update, the
losses and the queue; views that cover the same ground; CLI, API and a 2-process gloo run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from geossl.checkpoint import load_checkpoint
from geossl.cli import main
from geossl.datasets import UnlabeledTiles
from geossl.errors import GeoSSLError
from geossl.losses import byol_loss, info_nce
from geossl.methods import get_method, method_names
from geossl.methods.moco import default_queue_size
from geossl.methods.momentum import cosine_momentum, ema_update
from geossl.models import build_model
from geossl.paired import PairedReaders, check_pairs
from geossl.pretrain import run_pretrain
from geossl.raster_io import BandStats, raster_info
from geossl.sampling import WindowRef
from geossl.schemas import PretrainParams
from geossl.views import parse_view_bands, select_views
from pydantic import ValidationError
from rasterio.windows import Window

from tests.data import ORIGIN, PIXEL, UTM33, two_class_polygons, two_class_raster, write_raster

TINY = ["--tile", "64", "--encoder", "resnet18"]


def geossl(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def identity_stats(bands: int) -> BandStats:
    """Normalisation that leaves values as they are, so tests can read coordinates back."""
    return BandStats([-1e9] * bands, [1e9] * bands, [0.0] * bands, [1.0] * bands)


# --- momentum, losses, queue: known answers -------------------------------------------------------


def test_ema_update_equals_the_formula_and_the_schedule_rises_to_one():
    torch.manual_seed(0)
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters(), strict=True):
        assert torch.allclose(t, 0.9 * b + 0.1 * o, atol=1e-7)
    assert cosine_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert cosine_momentum(100, 100, 0.996) == pytest.approx(1.0)
    k, total = 30, 100
    assert cosine_momentum(k, total, 0.99) == pytest.approx(1 - 0.01 * (math.cos(math.pi * k / total) + 1) / 2)


def test_byol_target_gets_no_gradient_and_moves_only_by_ema():
    torch.manual_seed(0)
    byol = get_method("byol")(build_model("resnet18", 3, 1), 48, hidden_dim=32, proj_dim=16)
    target = [byol.target_encoder, byol.target_projector]
    assert all(not p.requires_grad for m in target for p in m.parameters())
    loss, logs = byol(torch.randn(4, 3, 64, 64), torch.Generator().manual_seed(1))
    loss.backward()
    assert all(p.grad is None for m in target for p in m.parameters())
    assert byol.model.encoder.conv1.weight.grad is not None and byol.predictor[0].weight.grad is not None
    assert 0 <= logs["loss"] <= 8  # two terms of 2 − 2·cos
    t0 = byol.target_encoder.conv1.weight.detach().clone()
    with torch.no_grad():
        byol.model.encoder.conv1.weight.add_(1.0)  # as if an optimiser step moved the online weights
    byol.after_step(0, 10)
    expected = 0.996 * t0 + 0.004 * byol.model.encoder.conv1.weight.detach()
    assert torch.allclose(byol.target_encoder.conv1.weight, expected, atol=1e-6)

    p = torch.tensor([[1.0, 0.0]], requires_grad=True)
    z = torch.tensor([[0.0, 3.0]], requires_grad=True)
    byol_loss(p, p, z, z).backward()
    assert z.grad is None and p.grad is not None  # the loss itself stops the gradient at the target


def test_byol_loss_on_a_hand_computed_pair():
    # sample 0: p1 ⟂ z2 → 2; p2 ∥ z1 → 0.  sample 1: p1 = −z2 → 4; p2 at 60° from z1 → 2 − 2·0.5 = 1.
    p1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z2 = torch.tensor([[0.0, 5.0], [0.0, -1.0]])
    p2 = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    z1 = torch.tensor([[3.0, 3.0], [0.5, math.sqrt(3) / 2]])
    assert byol_loss(p1, p2, z1, z2).item() == pytest.approx(((2 + 0) + (4 + 1)) / 2, abs=1e-6)


def test_info_nce_on_a_hand_computed_pair():
    q, k = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0], [-3.0, 0.0]])
    # logits (cos / 0.5): positive 2, negatives 0 and −2.
    expected = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(-2)))
    assert info_nce(q, k, queue, 0.5).item() == pytest.approx(expected, abs=1e-6)
    unit = torch.nn.functional.normalize(queue, dim=1)  # what MoCo queues: its keys are unit vectors
    assert info_nce(q, k, unit, 0.5, unit_queue=True).item() == pytest.approx(expected, abs=1e-6)


def test_random_erasing_blanks_one_rectangle_and_byol_views_have_no_colour_jitter():
    from geossl.augment import AugmentConfig, byol_augment, random_erase

    x = torch.ones(8, 3, 40, 40)
    out = random_erase(x, AugmentConfig(size=40, erase_p=1.0), torch.Generator().manual_seed(0))
    for sample in out:
        assert torch.equal(sample[0], sample[1]) and torch.equal(sample[0], sample[2])  # all bands alike
        rows, cols = torch.nonzero(sample[0] == 0, as_tuple=True)
        assert rows.numel() > 0
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert rows.numel() == h * w  # one filled rectangle
        assert 0.02 * 1600 - 40 <= h * w <= 0.33 * 1600 + 40  # the area rule, give or take rounding
    assert torch.equal(random_erase(x, AugmentConfig(size=40, erase_p=0.0), None), x)
    v1, v2 = byol_augment(48)
    assert v1.jitter_p == v2.jitter_p == 0 and v1.erase_p > 0 and (v1.blur_p, v2.blur_p) == (1.0, 0.1)


def test_moco_queue_enqueues_in_order_and_wraps():
    moco = get_method("moco")(build_model("resnet18", 3, 1), 48, queue_size=6, proj_dim=2)
    assert moco.queue.shape == (6, 2)
    for i in range(4):  # batches of 2 keys: (0, 1), (2, 3), (4, 5), (6, 7)
        moco.enqueue(torch.tensor([[2.0 * i, 0.0], [2.0 * i + 1, 0.0]]))
    assert moco.queue[:, 0].tolist() == [6, 7, 2, 3, 4, 5]  # the oldest batch (0, 1) left first
    assert int(moco.queue_ptr) == 2 and int(moco.queued) == 8
    assert all(not p.requires_grad for p in moco.key_encoder.parameters())
    assert {"queue", "queue_ptr", "queued"} <= set(moco.state_dict())  # in the resume state


def test_moco_queue_size_defaults_to_the_data_and_is_checked():
    assert default_queue_size(32, 1000, 10**6) == 32000  # windows seen
    assert default_queue_size(32, 10**5, 10**7) == 65536  # MoCo's cap
    assert default_queue_size(16, 100, 72) == 64  # distinct windows, a multiple of the batch
    assert default_queue_size(16, 2, 5) == 16  # never below one batch
    resolved = get_method("moco").resolve_options({}, batch=8, total_steps=50, windows=10**4)
    assert resolved["queue_size"] == 400
    with pytest.raises(ValidationError, match="multiple of the batch"):
        PretrainParams(rasters=["a.tif"], out="e.pt", method="moco", batch=8, method_options={"queue_size": 12})
    assert {"byol", "moco"} <= set(method_names())


# --- views cover the same ground ------------------------------------------------------------------


def coded_raster(path: Path, bands: int = 4, size: int = 96) -> Path:
    """Band b at (row, col) holds b·100000 + row·300 + col: any band says where a pixel is."""
    rows, cols = np.mgrid[0:size, 0:size]
    data = np.stack([b * 100000 + rows * 300 + cols for b in range(1, bands + 1)]).astype(np.float32)
    return write_raster(path, data)


def test_band_group_and_random_views_show_the_same_pixels(tmp_path):
    raster = coded_raster(tmp_path / "coded.tif", bands=6)
    info = raster_info(raster)
    ds = UnlabeledTiles([info], identity_stats(6), tile=32, batch=4, length=2, seed=0)
    batch = ds[0][0]
    where = lambda v: torch.remainder(v, 100000)  # noqa: E731
    band = lambda v: torch.div(v, 100000, rounding_mode="floor")  # noqa: E731

    groups = parse_view_bands(["1,2,5", "6,3,4"], 6)
    v1, v2 = select_views(batch, groups)
    assert v1.shape == v2.shape == (4, 3, 32, 32)
    assert torch.equal(where(v1), where(v2))
    assert band(v1)[:, :, 0, 0].tolist() == [[1, 2, 5]] * 4 and band(v2)[:, :, 0, 0].tolist() == [[6, 3, 4]] * 4

    rnd = parse_view_bands(["random:3"], 6)
    v1, v2 = select_views(batch, rnd, torch.Generator().manual_seed(0))
    assert torch.equal(where(v1), where(v2)) and v1.shape == (4, 3, 32, 32)
    for v in (v1, v2):
        picked = band(v)[:, :, 0, 0]
        assert all(len(set(row.tolist())) == 3 for row in picked)  # no band twice within a view
    assert not torch.equal(band(v1), band(v2))  # and the views differ in bands

    with pytest.raises(GeoSSLError, match=r"names band\(s\) 7"):
        parse_view_bands(["1,2", "6,7"], 6)
    with pytest.raises(GeoSSLError, match="as many bands"):
        parse_view_bands(["1,2", "3"], 6)
    with pytest.raises(GeoSSLError, match="more bands than the raster has"):
        parse_view_bands(["random:7"], 6)


def utm_coordinate_raster(path: Path, crs: str, origin: tuple[float, float], pixel: float, size: int) -> Path:
    """Two float bands: the UTM 33N easting/northing (minus ORIGIN) of each pixel centre of a grid in ``crs``."""
    from pyproj import Transformer

    rows, cols = np.mgrid[0:size, 0:size] + 0.5
    x, y = origin[0] + cols * pixel, origin[1] - rows * pixel
    e, n = Transformer.from_crs(crs, UTM33, always_xy=True).transform(x, y)
    return write_raster(path, np.stack([e - ORIGIN[0], n - ORIGIN[1]]).astype(np.float32), crs=crs,
                        origin=origin, pixel=pixel)


def test_paired_raster_on_another_grid_and_crs_covers_the_same_ground(tmp_path):
    from pyproj import Transformer

    a = utm_coordinate_raster(tmp_path / "a.tif", UTM33, ORIGIN, PIXEL, 96)
    # The pair: UTM zone 32 (another CRS), 7 m pixels, a margin around A's footprint.
    x32, y32 = Transformer.from_crs(UTM33, "EPSG:32632", always_xy=True).transform(ORIGIN[0] - 100, ORIGIN[1] + 100)
    b = utm_coordinate_raster(tmp_path / "b.tif", "EPSG:32632", (x32, y32), 7.0, 220)
    infos = [raster_info(a)]
    pairs = check_pairs(infos, [str(b)])
    readers = PairedReaders(infos, pairs)
    data, valid = readers.read(WindowRef(0, Window(20, 30, 40, 40)))
    assert data.shape == (4, 40, 40) and valid.all()
    assert np.abs(data[2:] - data[:2]).max() < 0.5  # same ground to within 5% of a 10 m pixel

    data, valid = readers.read(WindowRef(0, Window(80, -8, 32, 32)))  # past A's edges: invalid there
    assert not valid[:8].any() and not valid[:, 16:].any() and valid[8:, :16].all()
    assert np.abs(data[2:, 8:, :16] - data[:2, 8:, :16]).max() < 0.5

    same = PairedReaders(infos, [raster_info(a)])  # same grid: read directly, identical values
    d2, _ = same.read(WindowRef(0, Window(0, 0, 16, 16)))
    assert np.array_equal(d2[:2], d2[2:])

    far = write_raster(tmp_path / "far.tif", np.ones((2, 8, 8), np.float32), origin=(ORIGIN[0] + 90_000, ORIGIN[1]))
    with pytest.raises(GeoSSLError, match="does not overlap"):
        check_pairs(infos, [str(far)])
    with pytest.raises(GeoSSLError, match="one --pair per --raster"):
        check_pairs(infos, [str(b), str(b)])
    assert parse_view_bands(None, 2, 2).to_dict() == {"mode": "groups", "groups": [[1, 2], [3, 4]]}
    with pytest.raises(GeoSSLError, match="its pair 3"):
        parse_view_bands(None, 2, 3)


# --- end to end -----------------------------------------------------------------------------------


def test_cli_byol_with_band_groups_and_moco_then_info_and_finetune(tmp_path, capsys):
    four = two_class_raster(tmp_path / "four.tif", bands=4)
    enc = tmp_path / "rs_byol.pt"
    code, out, err = geossl(capsys, "pretrain", "--method", "byol", "--raster", four, "--out", enc, "--steps", "2",
                            "--batch", "2", "--view-bands", "1,2", "3,4", "--method-option", "hidden_dim=64", *TINY)
    assert code == 0, err
    ck = load_checkpoint(enc, "pretrained")
    assert ck["method"] == "byol" and ck["in_channels"] == 2 and ck["band_stats"] is None
    assert ck["views"] == {"mode": "groups", "groups": [[1, 2], [3, 4]]} and ck["config"]["view_bands"] == ["1,2", "3,4"]
    assert ck["method_options"] == {"hidden_dim": 64, "proj_dim": 256, "base_momentum": 0.996,
                                    "momentum_schedule": "cosine"}  # the loop's default schedule
    assert not any(k.startswith(("target_", "projector")) for k in ck["state_dict"])  # plain DeepLabV3+ weights
    code, out, _ = geossl(capsys, "info", "--model", enc, "--json")
    info = json.loads(out)
    assert info["views"]["groups"] == [[1, 2], [3, 4]] and info["method_options"]["hidden_dim"] == 64

    labels = two_class_polygons(tmp_path / "labels.gpkg")
    code, _, err = geossl(capsys, "finetune", "--raster", four, "--labels", labels, "--class-field", "class",
                          "--out", tmp_path / "m.pt", "--init", enc, "--steps", "1", "--tile", "32")
    assert code == 2 and "expects 2 bands (pretrained on band groups 1,2 | 3,4 of four.tif), the raster has 4" in err
    with __import__("rasterio").open(four) as src:
        two = write_raster(tmp_path / "two.tif", src.read()[:2])
    code, _, err = geossl(capsys, "finetune", "--raster", two, "--labels", labels, "--class-field", "class",
                          "--out", tmp_path / "m2.pt", "--init", enc, "--steps", "1", "--tile", "32", "--batch", "2")
    assert code == 0, err  # band statistics come from the fine-tuning raster then
    assert load_checkpoint(tmp_path / "m2.pt")["init"]["method"] == "byol"

    code, out, err = geossl(capsys, "pretrain", "--method", "moco", "--raster", four, "--out", tmp_path / "moco.pt",
                            "--steps", "2", "--batch", "2", *TINY, "--json")
    assert code == 0, err
    ck = load_checkpoint(tmp_path / "moco.pt", "pretrained")
    # 96×96 px hold one distinct 64-px window: the default queue is one batch (more would repeat ground).
    assert ck["method"] == "moco" and ck["in_channels"] == 4 and ck["method_options"]["queue_size"] == 2
    assert ck["method_options"]["temperature"] == 0.2 and ck["views"] is None
    log = [json.loads(ln)["logs"] for ln in (tmp_path / "moco.pt.log.jsonl").read_text().splitlines()]
    assert [ln["queue_fill"] for ln in log] == [2, 2]

    code, _, err = geossl(capsys, "pretrain", "--method", "simclr", "--raster", four, "--out", tmp_path / "x.pt",
                          "--view-bands", "1,2", "3,4", "--steps", "1")
    assert code == 2 and "need a method with band views" in err
    code, _, err = geossl(capsys, "pretrain", "--method", "byol", "--raster", four, "--out", tmp_path / "x.pt",
                          "--view-bands", "1,2", "3,9", "--steps", "1")
    assert code == 2 and "names band(s) 9, but the raster has 4 bands" in err and not (tmp_path / "x.pt").exists()


def test_byol_with_a_paired_raster_resumes_exactly(tmp_path):
    raster = two_class_raster(tmp_path / "s2.tif", bands=3)
    pair = two_class_raster(tmp_path / "s1.tif", bands=2, seed=7)

    def params(name: str, **kw) -> PretrainParams:
        return PretrainParams(**{"rasters": [str(raster)], "pair": [str(pair)], "view_bands": ["random:2"],
                                 "method": "byol", "method_options": {"hidden_dim": 64}, "out": str(tmp_path / name),
                                 "tile": 64, "batch": 2, "steps": 3, "checkpoint_every": 1, "seed": 3, **kw})

    class Crash(Exception):
        pass

    def crash_after_step_2(ev):
        if ev.step == 2 and ev.loss is not None:
            raise Crash

    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        run_pretrain(params("full.pt", checkpoint_every=100))
        with pytest.raises(Crash):
            run_pretrain(params("cut.pt"), crash_after_step_2)
        state = load_checkpoint(tmp_path / "cut.pt.state.pt", "pretrain-state")
        assert any(k.startswith("/method/target_encoder.") for k in state["state_dict"])  # EMA target is resumed
        run_pretrain(params("cut.pt", resume=True))
    finally:
        torch.use_deterministic_algorithms(previous)
    full, cut = load_checkpoint(tmp_path / "full.pt"), load_checkpoint(tmp_path / "cut.pt")
    assert full["state_dict"].keys() == cut["state_dict"].keys()
    assert all(torch.equal(full["state_dict"][k], cut["state_dict"][k]) for k in full["state_dict"])
    assert full["in_channels"] == 2 and full["pair"] == [str(pair.resolve())]
    assert full["views"] == {"mode": "random", "k": 2, "sources": [[1, 2, 3], [4, 5]]}


def test_two_gloo_processes_gather_moco_keys_from_both_ranks(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed beside this Python")
    raster = two_class_raster(tmp_path / "scene.tif", h=128, w=128)
    out = tmp_path / "ddp_moco.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "geossl.cli", "pretrain", "--method", "moco",
         "--raster", str(raster), "--out", str(out), "--steps", "2", "--batch", "4",
         "--method-option", "queue_size=8", *TINY, "--json"],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["world_size"] == 2
    logs = [json.loads(ln)["logs"] for ln in Path(f"{out}.log.jsonl").read_text().splitlines()]
    # Each process holds 2 windows of the batch of 4; 4 keys per step reach the queue: both ranks' keys.
    assert [ln["keys_queued"] for ln in logs] == [4, 4] and [ln["queue_fill"] for ln in logs] == [4, 8]
    assert load_checkpoint(out, "pretrained")["world_size"] == 2


def test_service_lists_the_methods_and_runs_an_rs_byol_job(tmp_path):
    from tests.backend.service_helpers import start_server

    four = two_class_raster(tmp_path / "four.tif", bands=4)
    service = start_server(tmp_path)
    try:
        info = service.get("/info").json()
        assert {"byol", "moco"} <= set(info["methods"])
        schema = info["job_types"]["pretrain"]["schema"]
        assert {"view_bands", "pair"} <= set(schema["properties"])
        base = {"rasters": [str(four)], "out": str(tmp_path / "e.pt"), "method": "byol", "steps": 1, "batch": 2,
                "tile": 64, "method_options": {"hidden_dim": 32}}
        for body, message in [
            (base | {"view_bands": ["1,2", "3,5"]}, "names band(s) 5"),
            (base | {"view_bands": ["1,2", "3"]}, "as many bands"),
            (base | {"method": "glcnet", "method_options": {}, "view_bands": ["1,2", "3,4"]}, "band views"),
            (base | {"pair": [str(tmp_path / "missing.tif")]}, "does not exist"),
        ]:
            r = service.post("/jobs/pretrain", body)
            assert r.status_code == 422 and message in json.dumps(r.json()["detail"]), (body, r.text)
        job = service.submit("pretrain", base | {"view_bands": ["1,2", "3,4"]})
        done = service.wait_job(job["id"], timeout=180)
        assert done["state"] == "succeeded", done
        ck = load_checkpoint(tmp_path / "e.pt", "pretrained")
        assert ck["method"] == "byol" and ck["views"]["groups"] == [[1, 2], [3, 4]]
    finally:
        assert service.stop() == 0
