"""Prediction shared by several processes: row shares, their identity with one process's map, and
one failing process failing them all (gloo on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from geossl.distributed import Distributed
from geossl.errors import GeoSSLError
from geossl.predict import _part, _predict_share
from geossl.raster_io import BandStats, open_raster, raster_info
from geossl.tiling import predict_stripes, row_shares

from tests.data import two_class_model, two_class_raster, write_raster

IDENTITY = BandStats(low=[-1e9] * 2, high=[1e9] * 2, mean=[0.0] * 2, std=[1.0] * 2)


def test_row_shares_cover_the_rows_in_whole_blocks():
    assert row_shares(600, 2) == [(0, 512), (512, 600)]
    assert row_shares(1024, 4) == [(0, 256), (256, 512), (512, 768), (768, 1024)]
    assert row_shares(300, 3) == [(0, 256), (256, 256), (256, 300)]  # fewer blocks than parts: one is empty
    assert row_shares(100, 1) == [(0, 100)]


def contextual(tiles: np.ndarray) -> np.ndarray:
    """A 'model' whose answer depends on the whole tile (its mean), so blending across tiles matters."""
    z = tiles - tiles.mean(axis=(2, 3), keepdims=True) * 0.7
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def stitched(path: Path, rows: list[tuple[int, int]] | None) -> tuple[np.ndarray, np.ndarray]:
    with open_raster(path) as src:
        h, w = src.height, src.width
        classes, conf = np.full((h, w), -2, np.int16), np.full((h, w), -2.0, np.float32)
        for share in rows or [None]:
            for b in predict_stripes(src, IDENTITY, contextual, 32, 8, 3, stripe=40, rows=share):
                sl = (slice(b.window.row_off, b.window.row_off + b.window.height),
                      slice(b.window.col_off, b.window.col_off + b.window.width))
                assert (classes[sl] == -2).all(), "a pixel was written twice"
                classes[sl], conf[sl] = b.classes, b.confidence
    return classes, conf


def test_shares_of_rows_are_bit_identical_to_the_whole_map(tmp_path):
    data = np.random.default_rng(0).normal(size=(2, 300, 70)).astype(np.float32)
    path = write_raster(tmp_path / "r.tif", data)
    whole = stitched(path, None)
    assert (whole[0] >= 0).all()
    for shares in ([(0, 256), (256, 300)], [(0, 100), (100, 101), (101, 300)]):  # borders inside tiles too
        parts = stitched(path, shares)
        assert np.array_equal(parts[0], whole[0]) and np.array_equal(parts[1], whole[1])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return two_class_model(tmp_path_factory.mktemp("dist"), "--recipe", "forest=false")


def test_two_gloo_processes_write_the_single_process_map(model, tmp_path):
    """torchrun, 2 CPU processes: the classes, confidence (Cloud Optimized GeoTIFFs, overviews too)
    and polygons of one process, pixel for pixel."""
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed beside this Python")
    tall = two_class_raster(tmp_path / "tall.tif", h=600, w=80, seed=3)  # two shares: rows 0–511, 512–599
    args = ["predict", "--model", str(model), "--raster", str(tall), "--batch", "3", "--cog"]
    one = tmp_path / "one"
    two = tmp_path / "two"
    for d in (one, two):
        d.mkdir()
    # the reference with the same threads per process: float sums are only bit-identical at equal thread counts
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    ref = subprocess.run([sys.executable, "-m", "geossl.cli", *args, "--out", str(one / "c.tif"), "--confidence",
                          str(one / "p.tif"), "--vector", str(one / "v.gpkg"), "--json"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "geossl.cli", *args,
                           "--out", str(two / "c.tif"), "--confidence", str(two / "p.tif"),
                           "--vector", str(two / "v.gpkg"), "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["processes"] == 2
    for name in ("c.tif", "p.tif"):
        with rasterio.open(one / name) as a, rasterio.open(two / name) as b:
            assert (a.crs, a.transform, a.shape) == (b.crs, b.transform, b.shape)
            assert np.array_equal(a.read(), b.read(), equal_nan=True), name
            assert b.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and b.overviews(1) == a.overviews(1) != []
            assert np.array_equal(a.read(out_shape=(1, 150, 20)), b.read(out_shape=(1, 150, 20)), equal_nan=True)
    with rasterio.open(two / "c.tif") as b:
        assert b.colormap(1) and json.loads(b.tags()["GEOSSL_CLASSES"])
    assert summary["class_pixels"] == json.loads(ref.stdout)["class_pixels"]  # counted over both shares
    import pyogrio

    assert pyogrio.read_info(one / "v.gpkg")["features"] == pyogrio.read_info(two / "v.gpkg")["features"] > 0
    assert sorted(p.name for p in two.iterdir()) == ["c.qml", "c.tif", "p.tif", "v.gpkg", "v.qml"]  # no part left


def _worker(rank: int, init_file: str, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    ctx = Distributed(rank, 2, rank)
    out = Path(folder) / "classes.tif"
    info = raster_info(Path(folder) / "r.tif")

    def classify(rows, class_path, conf_path):
        if rank == 1:
            raise ValueError("rank 1 ran out of memory (simulated)")
        write_raster(class_path, np.ones((1, rows[1] - rows[0], info.width), np.uint8))

    try:
        _predict_share(ctx, torch.device("cpu"), classify, info, [(out, {})], np.zeros(2, np.int64))
        message = "no error"
    except (GeoSSLError, ValueError) as exc:
        message = f"{type(exc).__name__}: {exc}"
    finally:
        dist.destroy_process_group()
    (Path(folder) / f"rank{rank}.txt").write_text(message)


def test_one_failing_process_fails_every_process_and_leaves_no_output(tmp_path):
    write_raster(tmp_path / "r.tif", np.zeros((1, 300, 16), np.uint8))
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "rank1.txt").read_text() == "ValueError: rank 1 ran out of memory (simulated)"
    assert (tmp_path / "rank0.txt").read_text().startswith(
        "GeoSSLError: Process(es) 1 of the distributed prediction failed: no output was written.")
    ctx = Distributed(0, 2, 0)
    assert not (tmp_path / "classes.tif").exists() and not _part(tmp_path / "classes.tif", 0, ctx).exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".tif") == ["r.tif"]


def test_the_service_runs_a_predict_job_as_several_processes(model, tmp_path):
    """``geossl serve --predict-processes 2``: the job's map is one process's, pixel for pixel (the
    reference at the threads each of the job's processes gets)."""
    from tests.backend.service_helpers import start_server

    tall = two_class_raster(tmp_path / "tall.tif", h=600, w=80, seed=4)
    threads = max(1, (os.cpu_count() or 1) // 2)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join(sys.path)}
    ref = subprocess.run([sys.executable, "-m", "geossl.cli", "predict", "--model", str(model), "--raster", str(tall),
                          "--out", str(tmp_path / "ref.tif"), "--confidence", str(tmp_path / "ref_p.tif"), "--json"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    service = start_server(tmp_path, "--predict-processes", "2")
    try:
        assert service.get("/info").json()["predict_processes"] == 2
        job = service.submit("predict", {"model": str(model), "raster": str(tall), "out": str(tmp_path / "c.tif"),
                                         "confidence": str(tmp_path / "p.tif")})
        done = service.wait_job(job["id"], states=["succeeded"], timeout=300)
        assert done["result"]["processes"] == 2
    finally:
        service.stop()
    for a_path, b_path in (("ref.tif", "c.tif"), ("ref_p.tif", "p.tif")):
        with rasterio.open(tmp_path / a_path) as a, rasterio.open(tmp_path / b_path) as b:
            assert np.array_equal(a.read(), b.read(), equal_nan=True), b_path
    assert not list(tmp_path.glob(".c.tif.part*")) and not list(tmp_path.glob(".p.tif.part*"))
