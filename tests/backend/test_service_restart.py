"""Stopping or crashing the service mid-job: SIGTERM marks the running job interrupted, kill -9
leaves it for the next start to mark; both resume and finish (pretrain from its resume state)."""

from __future__ import annotations

import signal

from tests.backend.service_helpers import pid_alive, segmentation_model, start_server, wait_until
from tests.data import two_class_raster


def test_stop_crash_restart_and_resume(tmp_path):
    raster = two_class_raster(tmp_path / "scene.tif")
    big = two_class_raster(tmp_path / "big.tif", h=160, w=160)
    model = segmentation_model(tmp_path / "untrained.pt")
    out = tmp_path / "classes.tif"

    # 1. SIGTERM while a prediction runs: the worker stops, the job is interrupted, nothing half-written.
    first = start_server(tmp_path)
    job = first.submit("predict", {"model": str(model), "raster": str(big), "out": str(out), "tile": 32,
                                   "overlap": 8})
    running = first.wait_job(job["id"], ["running"])
    has_pretrain = "pretrain" in first.get("/info").json()["job_types"]
    assert has_pretrain, "the service must offer pretrain jobs"
    assert first.stop(signal.SIGTERM, timeout=40) == 0, first.log_text()
    assert not pid_alive(running["worker_pid"])
    assert not (first.data_dir / "service.json").exists()
    assert not list(tmp_path.glob(".classes.tif*")) and not out.exists()

    # 2. A restart on the same data dir knows the job; kill -9 it during a second job.
    second = start_server(tmp_path, data_dir=first.data_dir)
    stopped = second.job(job["id"])
    assert stopped["state"] == "interrupted" and stopped["resumable"] and "stopped" in stopped["error"]
    if has_pretrain:
        enc = tmp_path / "enc.pt"
        crash = second.submit("pretrain", {"rasters": [str(raster)], "out": str(enc), "steps": 4, "batch": 2,
                                           "tile": 64, "checkpoint_every": 1})
        at_step = second.wait_job(crash["id"], ["running"], until=lambda j: (j["progress"] or {}).get("step", 0) >= 1)
        assert enc.with_name("enc.pt.state.pt").exists()
    else:
        crash = second.submit("predict", {"model": str(model), "raster": str(big), "out": str(tmp_path / "c2.tif"),
                                          "tile": 32, "overlap": 8})
        at_step = second.wait_job(crash["id"], ["running"], until=lambda j: (j["progress"] or {}).get("step", 0) >= 1)
    second.proc.kill()
    second.proc.wait(10)
    # The orphaned worker notices and stops by itself (it must not keep the GPU or write files).
    wait_until(lambda: not pid_alive(at_step["worker_pid"]), 20, "the orphaned worker to exit")
    assert not list(tmp_path.glob(".*.partial*"))

    # 3. The next start marks it interrupted; resuming finishes both jobs, even with nobody reading
    #    the service's console any more (QGIS that started it has gone).
    third = start_server(tmp_path, data_dir=first.data_dir, console_gone=True)
    crashed = third.job(crash["id"])
    assert crashed["state"] == "interrupted" and "crash" in crashed["error"]
    assert {job["id"], crash["id"]} <= {j["id"] for j in third.get("/jobs").json()["jobs"]}
    r = third.post(f"/jobs/{crash['id']}/resume")
    assert r.status_code == 200, r.text
    assert r.json()["resume"]["mode"] == ("checkpoint" if has_pretrain else "restart")
    done = third.wait_job(crash["id"], ["succeeded"], timeout=150)
    assert done["attempt"] == 2
    if has_pretrain:
        assert done["result"]["steps"] == 4
        lines = [x["line"] for x in third.get(f"/jobs/{crash['id']}/log").json()["lines"]]
        assert any(line.startswith("Resuming from step") for line in lines), lines
        steps = [s for s, _ in third.get(f"/jobs/{crash['id']}/losses").json()["losses"]]
        assert steps[0] == 1 and steps[-1] == 4 and steps == sorted(set(steps))  # a kill may cost one point
        assert any(m["kind"] == "pretrained" for m in third.get("/models").json()["models"])

    r = third.post(f"/jobs/{job['id']}/resume")
    assert r.status_code == 200 and r.json()["resume"]["mode"] == "restart"
    third.wait_job(job["id"], ["succeeded"], timeout=150)
    assert out.exists() and out.with_suffix(".qml").exists()
    assert third.post(f"/jobs/{job['id']}/resume").status_code == 409  # succeeded: nothing to resume
    assert third.stop() == 0
    log = (first.data_dir / "logs" / "service.log").read_text()
    assert "Traceback" not in log and " ERROR " not in log, log
