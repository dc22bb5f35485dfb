"""Disk full while writing: a clear message, the previous output intact, no partial file.

A real full disk is simulated without root with ``RLIMIT_FSIZE`` in a child process: every write
past the limit fails with EFBIG, exactly where ENOSPC would (GDAL/libtiff and torch.save alike).
ENOSPC itself is raised in-process by a patched ``fsync`` (where a full NFS or quota reports it).
"""

from __future__ import annotations

import errno
import resource
import signal
import subprocess
import sys

import pytest
import torch
from geossl import checkpoint
from geossl.errors import GeoSSLError

from tests.backend.service_helpers import segmentation_model, start_server
from tests.data import two_class_raster

LIMIT = 1000  # bytes: smaller than any GeoTIFF with a colour table, or any model file


def _small_disk(limit: int = LIMIT) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], preexec_fn=_small_disk, capture_output=True, text=True,
                          timeout=300)


def test_predict_on_a_full_disk_keeps_the_previous_map(tmp_path):
    model = segmentation_model(tmp_path / "m.pt")
    raster = two_class_raster(tmp_path / "scene.tif", h=64, w=64)
    out = tmp_path / "classes.tif"
    out.write_bytes(b"previous map")
    p = _run(["-m", "geossl.cli", "predict", "--model", str(model), "--raster", str(raster), "--out", str(out),
              "--tile", "64"])
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Not enough disk space to write" in p.stderr and "Fix: free disk space" in p.stderr
    assert "Traceback" not in p.stderr
    assert out.read_bytes() == b"previous map"
    assert not list(tmp_path.glob(".*.partial*")) and not (tmp_path / "classes.qml").exists()


def test_checkpoint_on_a_full_disk_keeps_the_previous_model(tmp_path):
    path = tmp_path / "model.pt"
    checkpoint.save_checkpoint(path, "segmentation", {"w": torch.zeros(4)}, note="previous")
    before = path.read_bytes()
    code = ("import sys, torch; from geossl.checkpoint import save_checkpoint; from geossl.errors import GeoSSLError\n"
            "try: save_checkpoint(sys.argv[1], 'segmentation', {'w': torch.randn(100_000)}, note='new')\n"
            "except GeoSSLError as e: print(e); sys.exit(2)\n")
    p = _run(["-c", code, str(path)])
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Not enough disk space to write" in p.stdout and "is unchanged" in p.stdout
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*.partial*"))


def test_enospc_from_the_os_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    checkpoint.save_checkpoint(path, "segmentation", {"w": torch.zeros(4)}, note="previous")
    before = path.read_bytes()

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    with pytest.raises(GeoSSLError, match="Not enough disk space.*No space left on device") as err:
        checkpoint.save_checkpoint(path, "segmentation", {"w": torch.ones(4)}, note="new")
    assert "free disk space" in err.value.fix
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.partial*"))


def test_api_predict_on_a_full_disk_fails_the_job_and_keeps_the_previous_map(tmp_path):
    """The service (and its spawned workers) under a 300 kB file-size limit: its own database and logs
    fit, the 512² confidence raster does not. The job fails with the message, the service lives on."""
    model = segmentation_model(tmp_path / "m.pt")
    raster = two_class_raster(tmp_path / "scene.tif", h=512, w=512)
    out, conf = tmp_path / "classes.tif", tmp_path / "confidence.tif"
    out.write_bytes(b"previous map")
    service = start_server(tmp_path, "--no-prewarm", preexec_fn=lambda: _small_disk(300_000))
    try:
        job = service.submit("predict", {"model": str(model), "raster": str(raster), "out": str(out),
                                         "confidence": str(conf), "tile": 128})
        done = service.wait_job(job["id"], timeout=300)
        assert done["state"] == "failed", done
        assert "Not enough disk space to write" in done["error"] and "Traceback" not in done["error"], done["error"]
        assert out.read_bytes() == b"previous map" and not conf.exists()
        assert not list(tmp_path.glob(".*.partial*"))
        assert service.get("/health").status_code == 200
    finally:
        service.stop()
