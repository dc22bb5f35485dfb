"""kill -9 of a job's WORKER process (the service stays up), then POST /jobs/{id}/resume.

Fine-tuning continues after its last finished epoch and ends with the model of an uninterrupted
run (same steps, same weights); prediction re-runs from the start and leaves no partial file;
pretraining continues from its last resume state. The worker's pid is the job's ``worker_pid``.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import rasterio

from tests.backend.service_helpers import pid_alive, segmentation_model, start_server, wait_until
from tests.data import two_class_polygons, two_class_raster

FINETUNE = {"steps": 6, "steps_per_epoch": 2, "tile": 32, "batch": 4, "encoder": "resnet18", "seed": 3,
            "patience": 10}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("crash")
    data = {"dir": d, "raster": two_class_raster(d / "scene.tif"), "labels": two_class_polygons(d / "labels.gpkg"),
            "model": segmentation_model(d / "untrained.pt"), "big": two_class_raster(d / "big.tif", h=128, w=128)}
    service = start_server(d)
    data["service"] = service
    yield data
    assert service.stop() == 0, service.log_text()
    log = (service.data_dir / "logs" / "service.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def _kill_worker(service, job_id, until):
    """kill -9 the job's worker once ``until(job)`` holds; the job fails, the service stays up."""
    running = service.wait_job(job_id, ["running"], until=until, timeout=120)
    pid = running["worker_pid"]
    assert pid and pid_alive(pid) and pid != service.proc.pid
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 15, "the worker to die")
    failed = service.wait_job(job_id, ["failed"], timeout=30)
    assert "killed by SIGKILL" in failed["error"] and failed["resumable"], failed["error"]
    assert service.proc.poll() is None and service.get("/health").status_code == 200
    return running


def _weights(path):
    from geossl.checkpoint import load_checkpoint

    return load_checkpoint(path, "segmentation")["state_dict"]


def test_finetune_worker_killed_resumes_to_the_uninterrupted_model(world):
    service, d = world["service"], world["dir"]
    body = {"rasters": [str(world["raster"])], "labels": str(world["labels"]), "class_field": "class", **FINETUNE}
    alone = service.submit("finetune", body | {"out": str(d / "alone.pt")})
    alone = service.wait_job(alone["id"], ["succeeded"], timeout=180)

    out = d / "killed.pt"
    job = service.submit("finetune", body | {"out": str(out)})
    running = _kill_worker(service, job["id"], lambda j: (j["progress"] or {}).get("step", 0) >= 3)
    state = out.with_name("killed.pt.state.pt")
    assert state.exists() and not out.exists()  # the last epoch's resume state survived, no model yet
    assert not list(d.glob(".killed*.partial*"))

    r = service.post(f"/jobs/{job['id']}/resume")
    assert r.status_code == 200 and r.json()["resume"]["mode"] == "checkpoint", r.text
    done = service.wait_job(job["id"], ["succeeded"], timeout=180)
    assert done["attempt"] == 2 and done["worker_pid"] is None and running["worker_pid"] != r.json()["worker_pid"]
    assert done["result"]["steps"] == alone["result"]["steps"] == 6
    assert done["result"]["epochs"] == alone["result"]["epochs"]
    lines = [x["line"] for x in service.get(f"/jobs/{job['id']}/log").json()["lines"]]
    assert any(line.startswith("Resuming after epoch") for line in lines), lines
    steps = [s for s, _ in service.get(f"/jobs/{job['id']}/losses").json()["losses"]]
    assert steps == list(range(1, 7))
    assert not state.exists()  # complete: nothing left to resume
    a, b = _weights(d / "alone.pt"), _weights(out)
    assert a.keys() == b.keys()
    assert all(np.allclose(a[k].float().numpy(), b[k].float().numpy(), atol=1e-5) for k in a)


def test_predict_worker_killed_reruns_cleanly(world):
    service, d = world["service"], world["dir"]
    body = {"model": str(world["model"]), "raster": str(world["big"]), "tile": 32, "overlap": 8, "batch": 1}
    out, conf = d / "classes.tif", d / "conf.tif"
    job = service.submit("predict", body | {"out": str(out), "confidence": str(conf)})
    _kill_worker(service, job["id"], lambda j: (j["progress"] or {}).get("step", 0) >= 2)
    assert not out.exists() and not conf.exists() and not list(d.glob(".*.partial*"))  # no partial output

    r = service.post(f"/jobs/{job['id']}/resume")
    assert r.status_code == 200 and r.json()["resume"]["mode"] == "restart", r.text
    service.wait_job(job["id"], ["succeeded"], timeout=180)
    reference = service.submit("predict", body | {"out": str(d / "ref.tif")})
    service.wait_job(reference["id"], ["succeeded"], timeout=180)
    with rasterio.open(out) as a, rasterio.open(d / "ref.tif") as b:
        assert np.array_equal(a.read(), b.read())  # the re-run equals an uninterrupted prediction
    assert conf.exists() and not list(d.glob(".*.partial*"))


def test_pretrain_worker_killed_resumes_from_its_state(world):
    service, d = world["service"], world["dir"]
    enc = d / "enc.pt"
    job = service.submit("pretrain", {"rasters": [str(world["raster"])], "out": str(enc), "steps": 4, "batch": 2,
                                      "tile": 64, "checkpoint_every": 1, "encoder": "resnet18"})
    _kill_worker(service, job["id"], lambda j: (j["progress"] or {}).get("step", 0) >= 2)
    assert enc.with_name("enc.pt.state.pt").exists() and not list(d.glob(".enc*.partial*"))
    r = service.post(f"/jobs/{job['id']}/resume")
    assert r.status_code == 200 and r.json()["resume"]["mode"] == "checkpoint", r.text
    done = service.wait_job(job["id"], ["succeeded"], timeout=180)
    assert done["result"]["steps"] == 4
    lines = [x["line"] for x in service.get(f"/jobs/{job['id']}/log").json()["lines"]]
    assert any(line.startswith("Resuming from step") for line in lines), lines
    from geossl.checkpoint import load_checkpoint

    assert load_checkpoint(enc, "pretrained")["steps"] == 4
