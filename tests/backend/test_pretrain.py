"""Self-supervised pretraining end to end on generated GeoTIFFs: the checkpoint format that
`finetune --init` consumes, nodata-aware and spaced windows, exact resume, a 2-process gloo run."""

import json
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
from geossl.finetune import load_pretrained
from geossl.models import build_model
from geossl.pretrain import run_pretrain
from geossl.raster_io import compute_band_stats, raster_info
from geossl.schemas import PretrainParams

from tests.data import two_class_polygons, two_class_raster, write_raster

TINY = ["--tile", "64", "--encoder", "resnet18"]  # 48-px views: the smallest useful DeepLabV3+ input
META = {"encoder", "in_channels", "band_stats", "method", "method_options", "tile", "seed", "config", "steps"}


def geossl(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def nodata_raster(path: Path, size: int = 128, valid_cols: int = 48) -> Path:
    """Only the right ``valid_cols`` columns hold data; the rest is nodata (0)."""
    data = np.random.default_rng(0).integers(100, 1000, (3, size, size)).astype(np.uint16)
    data[:, :, : size - valid_cols] = 0
    return write_raster(path, data, nodata=0)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """One GLCNet checkpoint from the CLI, shared by the format, --init and DDP tests."""
    d = tmp_path_factory.mktemp("pretrain")
    raster = two_class_raster(d / "scene.tif")
    code = main(["pretrain", "--method", "glcnet", "--raster", str(raster), "--out", str(d / "enc.pt"),
                 "--steps", "2", "--batch", "2", *TINY, "--json"])
    assert code == 0
    return {"dir": d, "raster": raster, "enc": d / "enc.pt"}


def test_glcnet_cli_writes_a_pretrained_checkpoint(pretrained, capsys):
    ck = load_checkpoint(pretrained["enc"], "pretrained")
    assert set(ck) >= META and ck["method"] == "glcnet" and ck["steps"] == 2 and ck["in_channels"] == 3
    assert ck["method_options"]["n_regions"] == 4 and ck["config"]["batch"] == 2 and ck["tile"] == 64
    assert len(ck["band_stats"]["mean"]) == 3
    keys = set(ck["state_dict"])
    assert any(k.startswith("encoder.") for k in keys) and any(k.startswith("decoder.aspp.") for k in keys)
    assert keys <= set(build_model("resnet18", 3, 1).state_dict())  # plain DeepLabV3+ names, no heads
    lines = [json.loads(ln) for ln in Path(f"{pretrained['enc']}.log.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [1, 2]
    assert {"loss_global", "loss_local", "data_nodata", "data_overlap"} <= set(lines[0]["logs"])
    assert lines[0]["lr"] > lines[1]["lr"] > 0 and lines[0]["samples_per_s"] > 0
    assert not Path(f"{pretrained['enc']}.state.pt").exists()  # resume states live only while unfinished

    code, out, _ = geossl(capsys, "info", "--model", pretrained["enc"], "--json")
    info = json.loads(out)
    assert code == 0 and info["kind"] == "pretrained" and info["parameters"] > 1_000_000


def test_simclr_cli_on_a_folder_of_rasters(tmp_path, capsys):
    folder = tmp_path / "tiles"
    folder.mkdir()
    two_class_raster(folder / "a.tif", seed=1)
    two_class_raster(folder / "b.TIFF", h=80, w=120, seed=2)
    (folder / "notes.txt").write_text("not a raster")
    code, out, _ = geossl(capsys, "pretrain", "--method", "simclr", "--raster", folder, "--out", tmp_path / "s.pt",
                          "--steps", "1", "--batch", "2", *TINY)
    assert code == 0 and "Pretrained encoder written" in out
    ck = load_checkpoint(tmp_path / "s.pt", "pretrained")
    assert ck["method"] == "simclr" and [Path(r).name for r in ck["rasters"]] == ["a.tif", "b.TIFF"]

    (tmp_path / "empty").mkdir()
    code, _, err = geossl(capsys, "pretrain", "--raster", tmp_path / "empty", "--out", tmp_path / "e.pt", "--steps", "1")
    assert code == 2 and "holds no .tif" in err
    code, _, err = geossl(capsys, "pretrain", "--raster", folder, "--out", tmp_path / "e.pt",
                          "--method-option", "n_region=3")
    assert code == 2 and "unknown glcnet option(s) n_region" in err


def test_nodata_heavy_windows_are_rejected(tmp_path):
    raster = nodata_raster(tmp_path / "nd.tif")  # 62% nodata; 48-px valid strip
    info = raster_info(raster)
    ds = UnlabeledTiles([info], compute_band_stats([raster]), tile=32, batch=2, length=20, seed=0)
    for i in range(len(ds)):
        refs, _ = ds.plan(i)
        for ref in refs:
            assert ref.window.col_off >= 128 - 48 - 32 * 0.3  # at most 30% of a window in the nodata part
        x, stats = ds[i]
        assert x.shape == (2, 3, 32, 32) and stats[0] <= 0.3
    x2, _ = ds[3]
    assert torch.equal(ds[3][0], x2)  # same (seed, epoch, index) → same batch


def test_batch_windows_do_not_overlap_and_processes_share_one_plan(tmp_path):
    raster = two_class_raster(tmp_path / "big.tif", h=256, w=256)
    info, stats = raster_info(raster), compute_band_stats([raster])
    ds = UnlabeledTiles([info], stats, tile=32, batch=8, length=10, seed=3)
    for i in range(len(ds)):
        refs, worst = ds.plan(i)
        assert worst == 0.0
        boxes = [(r.window.col_off, r.window.row_off) for r in refs]
        for a in range(len(boxes)):
            for b in range(a):
                assert max(abs(boxes[a][0] - boxes[b][0]), abs(boxes[a][1] - boxes[b][1])) >= 32
    shards = [UnlabeledTiles([info], stats, 32, 8, 10, 3, rank=r, world_size=2)[5][0] for r in range(2)]
    assert torch.equal(torch.cat(shards), ds[5][0])  # each process reads its slice of the global batch


def test_resume_continues_exactly(tmp_path, capsys):
    raster = two_class_raster(tmp_path / "scene.tif")

    def params(name: str, **kw) -> PretrainParams:
        return PretrainParams(**{"rasters": [str(raster)], "out": str(tmp_path / name), "tile": 64, "batch": 2,
                                 "steps": 2, "checkpoint_every": 1, "seed": 5, **kw})

    class Crash(Exception):
        pass

    def crash_after_step_1(ev):
        if ev.step == 1 and ev.loss is not None:
            raise Crash

    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        run_pretrain(params("full.pt", checkpoint_every=100))
        with pytest.raises(Crash):
            run_pretrain(params("cut.pt"), crash_after_step_1)
        assert not (tmp_path / "cut.pt").exists()
        code, out, _ = geossl(capsys, "info", "--model", tmp_path / "cut.pt.state.pt", "--json")
        assert code == 0 and json.loads(out)["step"] == 1 and "resume" not in json.loads(out)
        with pytest.raises(GeoSSLError, match=r"other options \(tile\)"):
            run_pretrain(params("cut.pt", resume=True, tile=96))
        result = run_pretrain(params("cut.pt", resume=True))
    finally:
        torch.use_deterministic_algorithms(previous)
    assert result["steps"] == 2
    full = load_checkpoint(tmp_path / "full.pt")["state_dict"]
    cut = load_checkpoint(tmp_path / "cut.pt")["state_dict"]
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)
    log = [json.loads(ln)["step"] for ln in (tmp_path / "cut.pt.log.jsonl").read_text().splitlines()]
    assert log == [1, 2]
    again = run_pretrain(params("cut.pt", resume=True))  # a finished run is not redone
    assert again["steps"] == 2 and "already completed" in again["warnings"][0]


def test_two_gloo_processes_write_the_same_format(pretrained, tmp_path):
    venv_bin = Path(sys.executable).parent
    torchrun = venv_bin / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed beside this Python")
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "geossl.cli", "pretrain",
         "--raster", str(pretrained["raster"]), "--out", str(out), "--steps", "2", "--batch", "4", *TINY, "--json"],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # rank 0 alone prints the result
    assert result["world_size"] == 2 and result["steps"] == 2
    ddp, single = load_checkpoint(out, "pretrained"), load_checkpoint(pretrained["enc"], "pretrained")
    assert ddp["kind"] == single["kind"] and set(ddp) == set(single)
    assert {k: v.shape for k, v in ddp["state_dict"].items()} == {k: v.shape for k, v in single["state_dict"].items()}
    assert ddp["world_size"] == 2 and len(Path(f"{out}.log.jsonl").read_text().splitlines()) == 2


def test_finetune_init_round_trip(pretrained, capsys):
    d, ck = pretrained["dir"], load_checkpoint(pretrained["enc"], "pretrained")
    model = build_model("resnet18", 3, 2)
    loaded = load_pretrained(model, ck, "resnet18", 3, aspp=True)
    state = model.state_dict()
    assert any(k.startswith("decoder.aspp.") for k in loaded)
    assert all(torch.equal(state[k], ck["state_dict"][k]) for k in loaded)
    assert {k for k in state if k.startswith("encoder.")} <= set(loaded)

    labels = two_class_polygons(d / "labels.gpkg")
    code, _, err = geossl(capsys, "finetune", "--raster", pretrained["raster"], "--labels", labels, "--class-field",
                          "class", "--out", d / "m.pt", "--init", pretrained["enc"], "--steps", "2", "--tile", "32",
                          "--batch", "2")
    assert code == 0, err
    model_ck = load_checkpoint(d / "m.pt", "segmentation")
    assert model_ck["init"]["method"] == "glcnet" and model_ck["init"]["loaded"] == sum(
        k.startswith("encoder.") for k in ck["state_dict"])
    assert model_ck["band_stats"] == ck["band_stats"]  # fine-tuning normalises as pretraining did

    code, _, err = geossl(capsys, "finetune", "--raster", pretrained["raster"], "--labels", labels, "--class-field",
                          "class", "--out", d / "m34.pt", "--init", pretrained["enc"], "--encoder", "resnet34",
                          "--steps", "1", "--tile", "32")
    assert code == 2 and "has encoder resnet18, but fine-tuning asks for resnet34" in err
    four = two_class_raster(d / "four.tif", bands=4)
    code, _, err = geossl(capsys, "finetune", "--raster", four, "--labels", labels, "--class-field", "class",
                          "--out", d / "m4.pt", "--init", pretrained["enc"], "--steps", "1", "--tile", "32")
    assert code == 2 and "expects 3 bands, the raster has 4" in err


def test_extent_restricts_where_windows_are_drawn(tmp_path):
    """Windows of an extent-limited run lie (almost) inside the extent; an extent elsewhere is refused."""
    from geossl.pretrain import extent_regions

    from tests.data import ORIGIN, PIXEL

    raster = two_class_raster(tmp_path / "r.tif", h=160, w=160)
    info = raster_info(raster)
    x0, y0 = ORIGIN
    params = PretrainParams(rasters=[str(raster)], out=str(tmp_path / "e.pt"), steps=1, tile=64, batch=2,
                            extent=[x0 + 96 * PIXEL, y0 - 160 * PIXEL, x0 + 160 * PIXEL, y0 - 96 * PIXEL])
    regions = extent_regions([info], params)
    assert (regions[0].col_off, regions[0].row_off, regions[0].width, regions[0].height) == (96, 96, 64, 64)
    ds = UnlabeledTiles([info], compute_band_stats([raster]), tile=32, batch=2, length=20, seed=0, regions=regions)
    for i in range(len(ds)):
        for ref in ds.plan(i)[0]:
            w = ref.window
            inside = max(0, min(w.col_off + 32, 160) - max(w.col_off, 96)) * max(0, min(w.row_off + 32, 160)
                                                                                - max(w.row_off, 96))
            assert inside >= 0.7 * 32 * 32, (w, inside)
    far = params.model_copy(update={"extent": [13.0, 52.0, 13.1, 52.1], "extent_crs": "EPSG:4326"})
    with pytest.raises(GeoSSLError, match="does not overlap any of the rasters"):
        extent_regions([info], far)
