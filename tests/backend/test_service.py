"""The job service over real HTTP: auth, the finetune → predict → evaluate chain with live events,
FIFO queueing, cancel, the models registry and 422s for bad input (one server for the module)."""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
from pathlib import Path

import pytest
import rasterio

from tests.backend.service_helpers import Service, pid_alive, segmentation_model, start_server, wait_until
from tests.data import ORIGIN, two_class_polygons, two_class_raster

TINY_FINETUNE = {"steps": 3, "steps_per_epoch": 3, "tile": 32, "batch": 4, "encoder": "resnet18"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("service")
    data = {
        "dir": d,
        "raster": two_class_raster(d / "scene.tif"),
        "labels": two_class_polygons(d / "labels.gpkg"),
        "model": segmentation_model(d / "untrained.pt"),
        "big": two_class_raster(d / "big.tif", h=1024, w=1024),
    }
    service = start_server(d)
    data["service"] = service
    yield data
    code = service.stop()
    assert code == 0, service.log_text()
    assert not (service.data_dir / "service.json").exists()  # removed on a clean stop
    assert "Traceback" not in (service.data_dir / "logs" / "service.log").read_text()


@pytest.fixture
def service(world) -> Service:
    return world["service"]


def test_health_auth_and_private_files(service):
    r = service.client(token="").get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["device"]["device"] in ("cpu", "cuda")
    for name in ("service.json", "token"):
        assert stat.S_IMODE((service.data_dir / name).stat().st_mode) == 0o600
    assert (service.data_dir / "token").read_text().strip() == service.token

    spec = service.get("/openapi.json").json()
    routes = [(m.upper(), p) for p, ops in spec["paths"].items() for m in ops]
    assert ("POST", "/jobs/finetune") in routes and ("GET", "/jobs/{job_id}/events") in routes
    checked = 0
    for token in ("", "wrong-" + service.token[6:]):
        with service.client(token=token) as c:
            for method, path in routes + [("GET", "/openapi.json")]:
                if path == "/health":
                    continue
                r = c.request(method, path.replace("{job_id}", "x").replace("{model_id}", "x"), json={})
                assert r.status_code == 401, (method, path, token, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
                checked += 1
    assert checked >= 2 * 15

    info = service.get("/info").json()
    assert info["methods"][0] == "glcnet" and "resnet18" in info["encoders"]
    assert {"finetune", "predict", "evaluate"} <= set(info["job_types"])
    assert info["job_types"]["finetune"]["schema"]["properties"]["class_field"]["type"] == "string"


def test_finetune_predict_evaluate_chain_with_events(world, service):
    d = world["dir"]
    events: list[tuple[str, dict]] = []
    finetune = service.submit("finetune", {
        "rasters": [str(world["raster"])], "labels": str(world["labels"]), "class_field": "class",
        "out": str(d / "model.pt"), **TINY_FINETUNE})
    assert finetune["state"] in ("queued", "running") and finetune["type"] == "finetune"

    def listen() -> None:
        with service.client(timeout=120) as c, c.stream("GET", f"/jobs/{finetune['id']}/events") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            name = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[6:])))
                    if name == "end":
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    # Submitted while fine-tuning runs: their inputs do not exist yet, so they wait for the jobs writing them.
    predict = service.submit("predict", {"model": str(d / "model.pt"), "raster": str(world["raster"]),
                                         "out": str(d / "classes.tif"), "confidence": str(d / "conf.tif")})
    evaluate = service.submit("evaluate", {"prediction": str(d / "classes.tif"), "labels": str(world["labels"]),
                                           "class_field": "class", "out": str(d / "metrics.json")})
    assert predict["depends_on"] == [finetune["id"]] and evaluate["depends_on"] == [predict["id"]]

    done = service.wait_job(evaluate["id"], ["succeeded"], timeout=150)
    listener.join(30)
    ft, pr = service.job(finetune["id"]), service.job(predict["id"])
    assert ft["state"] == pr["state"] == "succeeded"
    assert ft["started"] < ft["finished"] <= pr["started"] < pr["finished"] <= done["started"]
    assert ft["result"]["model"] == str(d / "model.pt") and ft["result"]["steps"] == 3
    assert ft["progress"]["stage"] == "fine-tune" and ft["progress"]["step"] == 3
    assert done["result"]["metrics_file"] == str(d / "metrics.json")
    assert 0.0 <= done["result"]["overall_accuracy"] <= 1.0
    with rasterio.open(d / "classes.tif") as src:
        assert src.count == 1 and src.dtypes[0] == "uint8"
    assert (d / "classes.qml").exists() and (d / "conf.tif").exists()
    assert not list(d.glob(".*.partial*"))

    # Live events: the snapshot, per-step progress with loss and ETA, log lines, the final state.
    names = [n for n, _ in events]
    assert names[0] == "job" and names[-1] == "end" and events[-1][1]["state"] == "succeeded"
    steps = [e for n, e in events if n == "progress" and e.get("loss") is not None]
    assert steps and steps[-1]["total"] == 3 and "eta_s" in steps[-1]
    assert any(n == "log" and "epoch" in e["line"] for n, e in events)
    losses = service.get(f"/jobs/{finetune['id']}/losses").json()["losses"]
    assert [s for s, _ in losses] == [1, 2, 3] and all(v > 0 for _, v in losses)
    log = service.get(f"/jobs/{finetune['id']}/log").json()["lines"]
    assert log[0]["line"].startswith("Queued") and log[-1]["line"] == "Succeeded."

    # The model is in the registry with what the panel needs, and can be downloaded.
    models = {m["path"]: m for m in service.get("/models").json()["models"]}
    model = models[str(d / "model.pt")]
    assert model["kind"] == "segmentation" and model["encoder"] == "resnet18" and model["bands"] == 3
    assert model["classes"]["names"] == ["bright", "dark"] and len(model["classes"]["colors"]) == 2
    assert model["job_id"] == finetune["id"] and "validation" in model and model["created"]
    r = service.get(f"/models/{model['id']}/file")
    assert r.status_code == 200 and r.content == (d / "model.pt").read_bytes()
    listed = {j["id"] for j in service.get("/jobs").json()["jobs"]}
    assert {finetune["id"], predict["id"], evaluate["id"]} <= listed


def test_gpu_jobs_run_one_at_a_time_in_order(world, service):
    d = world["dir"]
    jobs = [service.submit("predict", {"model": str(world["model"]), "raster": str(world["raster"]),
                                       "out": str(d / f"fifo{i}.tif")}) for i in range(2)]
    first = service.wait_job(jobs[0]["id"], ["running", "succeeded"])
    if first["state"] == "running":
        assert service.job(jobs[1]["id"])["state"] == "queued"
    a, b = (service.wait_job(j["id"], ["succeeded"]) for j in jobs)
    assert a["started"] < a["finished"] <= b["started"]  # never two at once, in submission order


def test_cancel_stops_the_worker_and_leaves_no_output(world, service):
    d = world["dir"]
    out = d / "cancelled.tif"
    job = service.submit("predict", {"model": str(world["model"]), "raster": str(world["big"]), "out": str(out),
                                     "confidence": str(d / "cancelled_conf.tif"), "tile": 32, "overlap": 8})
    running = service.wait_job(job["id"], ["running"], until=lambda j: (j["progress"] or {}).get("step", 0) >= 1)
    pid = running["worker_pid"]
    assert pid and pid_alive(pid)
    assert list(d.glob(".cancelled*.partial*"))  # it is writing: there is something to clean up
    r = service.post(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "cancelled"
    wait_until(lambda: not pid_alive(pid), 15, "the worker process to exit")
    assert not list(d.glob(".cancelled*")) and not list(d.glob("cancelled*"))
    assert service.post(f"/jobs/{job['id']}/cancel").status_code == 409
    assert service.post(f"/jobs/{job['id']}/resume").status_code == 409


def test_models_in_the_data_dir_are_listed_and_deletable(world, service):
    dropped = segmentation_model(service.data_dir / "models" / "dropped.pt", bands=4)
    (service.data_dir / "models" / "broken.pt").write_bytes(b"not a model")
    models = {m["name"]: m for m in service.get("/models").json()["models"]}
    assert models["dropped.pt"]["bands"] == 4 and models["dropped.pt"]["job_id"] is None
    assert "cannot be loaded" in models["broken.pt"]["error"]
    with service.client() as c:
        assert c.delete(f"/models/{models['dropped.pt']['id']}").status_code == 204
        assert c.delete(f"/models/{models['dropped.pt']['id']}").status_code == 404
    assert not dropped.exists()


def test_bad_inputs_are_422_with_a_message_for_the_user(world, service, tmp_path):
    base = {"rasters": [str(world["raster"])], "labels": str(world["labels"]), "class_field": "class",
            "out": str(tmp_path / "m.pt"), **TINY_FINETUNE}
    four = two_class_raster(tmp_path / "four.tif", bands=4)
    shifted = tmp_path / "shifted.tif"
    with rasterio.open(world["raster"]) as src:
        profile, data = src.profile, src.read()
    profile["transform"] = rasterio.Affine(10, 0, ORIGIN[0] + 50_000, 0, -10, ORIGIN[1])
    with rasterio.open(shifted, "w", **profile) as dst:
        dst.write(data)
    cases = [
        ("finetune", base | {"rasters": [str(tmp_path / "missing.tif")]}, "does not exist"),
        ("finetune", base | {"class_field": "landuse"}, "has no field 'landuse'"),
        ("finetune", base | {"rasters": [str(shifted)]}, "overlaps the raster"),
        ("finetune", base | {"out": str(tmp_path / "no" / "such" / "m.pt")}, "does not exist"),
        ("finetune", base | {"out": str(Path(sys.prefix) / "m.pt")}, "never writes"),
        ("finetune", base | {"tile": 33}, "multiple of 16"),
        ("predict", {"model": str(world["model"]), "raster": str(four), "out": str(tmp_path / "c.tif")},
         "The model expects 3 bands but 'four.tif' has 4"),
        ("predict", {"model": str(world["raster"]), "raster": str(world["raster"]), "out": str(tmp_path / "c.tif")},
         "cannot be loaded"),
        ("predict", {"model": str(world["model"]), "raster": str(world["raster"]), "out": str(world["raster"])},
         "both an input and an output"),
        ("evaluate", {"prediction": str(world["raster"]), "labels": str(world["labels"]), "class_field": "class"},
         "carries no GeoSSL class table"),
    ]
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        cases.append(("finetune", base | {"out": str(locked / "m.pt")}, "is not writable"))
    before = {j["id"] for j in service.get("/jobs").json()["jobs"]}
    for job_type, body, message in cases:
        r = service.post(f"/jobs/{job_type}", body)
        assert r.status_code == 422, (job_type, body, r.text)
        assert message in json.dumps(r.json()["detail"]), (message, r.text)
        assert "Traceback" not in r.text
    assert service.post("/jobs/finetune", "not an object").status_code == 422
    assert service.get("/jobs/nope").status_code == 404
    assert {j["id"] for j in service.get("/jobs").json()["jobs"]} == before  # nothing was queued
    assert not list(tmp_path.glob("*.pt"))


def test_pretraining_gain_and_snapshots_as_models(world, service):
    from geossl.pretraining_gain import estimate_gain, load_gain_table

    r = service.get("/pretraining/gain", params={"method": "glcnet", "minutes": 30, "bands": 3})
    assert r.status_code == 200, r.text
    gain = r.json()
    assert gain == estimate_gain(load_gain_table(), "glcnet", minutes=30, bands=3)
    assert gain["dataset"] == "dubai-rgb" and gain["basis"] == "beyond" and gain["point"]["delta_kappa"] == -1.96
    s2 = service.get("/pretraining/gain", params={"method": "moco", "steps": 200, "bands": 13}).json()
    assert s2["dataset"] == "sentinel2-13band" and s2["basis"] == "measured" and s2["verdict"] == "no-gain"
    r = service.get("/pretraining/gain", params={"method": "glcnet"})
    assert r.status_code == 422 and "minutes or as steps" in r.json()["detail"]

    d = world["dir"]
    body = {"rasters": [str(world["raster"])], "batch": 2, "tile": 64, "encoder": "resnet18", "lr_schedule": "constant",
            "snapshot_steps": [1]}
    job = service.submit("pretrain", body | {"out": str(d / "anytime.pt"), "steps": 2})
    done = service.wait_job(job["id"], ["succeeded"], timeout=180)
    assert [Path(s["path"]).name for s in done["result"]["snapshots"]] == ["anytime.step1.pt"]
    models = {m["name"]: m for m in service.get("/models").json()["models"]}
    snapshot = models["anytime.step1.pt"]  # a pretraining's snapshots are listed as encoders to start from
    assert snapshot["kind"] == "pretrained" and snapshot["snapshot"]["step"] == 1 and snapshot["job_id"] == job["id"]

    job = service.submit("pretrain", body | {"out": str(d / "dropped.pt"), "steps": 200})
    service.wait_job(job["id"], ["running"], until=lambda j: (j["progress"] or {}).get("step", 0) >= 2)
    assert (d / "dropped.step1.pt").exists()
    assert service.post(f"/jobs/{job['id']}/cancel").json()["state"] == "cancelled"
    assert not list(d.glob("dropped*")) and not list(d.glob(".dropped*"))  # the snapshot went with the run
