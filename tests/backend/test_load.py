"""50 concurrent clients (40 status pollers, 10 event streams) while a prediction runs: every
request answered, every stream ends, and the job's result equals the same job run alone."""

from __future__ import annotations

import numpy as np
import rasterio

from tests.backend.load import watch_job
from tests.backend.service_helpers import segmentation_model, start_server
from tests.data import two_class_raster


def test_fifty_clients_while_a_job_runs(tmp_path):
    raster = two_class_raster(tmp_path / "scene.tif", h=128, w=128)
    model = segmentation_model(tmp_path / "m.pt")
    service = start_server(tmp_path)
    try:
        body = {"model": str(model), "raster": str(raster), "tile": 32, "overlap": 8, "batch": 1}
        alone = service.submit("predict", body | {"out": str(tmp_path / "alone.tif")})
        service.wait_job(alone["id"], ["succeeded"], timeout=180)

        job = service.submit("predict", body | {"out": str(tmp_path / "loaded.tif")})
        report = watch_job(service, job["id"], clients=50, streams=10)
        summary = report.summary()
        print("load:", summary)
        done = service.job(job["id"])
        assert done["state"] == "succeeded", done
        assert report.errors == [], report.errors[:5]
        assert report.stream_ends == 10 and summary["status_requests"] >= 40
        with rasterio.open(tmp_path / "alone.tif") as a, rasterio.open(tmp_path / "loaded.tif") as b:
            assert np.array_equal(a.read(), b.read())  # unaffected by the load
        assert service.get("/health").status_code == 200
    finally:
        assert service.stop() == 0, service.log_text()
