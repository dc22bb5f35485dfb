"""API fuzzing (CI size): schemathesis drives every operation of a real ``geossl serve`` from its
OpenAPI schema with valid and invalid requests carrying the token. No answer may be a 5xx, the
service stays up, and nothing fuzzed runs or writes (``make fuzz`` does the ≥ 1000-case run)."""

from __future__ import annotations

import pytest

from tests.backend.fuzzing import fuzz_service
from tests.backend.service_helpers import start_server


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    cwd = d / "cwd"  # relative paths in fuzzed requests resolve here
    cwd.mkdir()
    service = start_server(d, "--no-prewarm", cwd=cwd)
    yield service, cwd
    assert service.stop() == 0, service.log_text()


def test_fuzzing_from_the_openapi_schema_gives_no_5xx(fuzzed):
    service, cwd = fuzzed
    report = fuzz_service(service.url, service.token, examples=8, seed=8)
    assert report.cases >= 150, report.to_dict()
    assert len(report.per_operation) >= 18  # every route of the schema was fuzzed
    assert report.count_5xx == 0, report.server_errors[:5]
    assert not report.transport_errors, report.transport_errors[:5]
    assert sum(n for s, n in report.statuses.items() if s in (400, 404, 422)) > report.cases // 2
    # Alive, nothing accepted, nothing queued, nothing written where relative paths land.
    assert service.proc.poll() is None and service.get("/health").status_code == 200
    assert report.accepted_jobs == [] and service.get("/jobs").json()["jobs"] == []
    assert list(cwd.iterdir()) == []
    log = (service.data_dir / "logs" / "service.log").read_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


@pytest.mark.parametrize(("body", "message"), [
    ({"model": "", "raster": "", "out": ""}, "'model' is not a usable file path"),  # was a 500 (fuzzing found it)
    ({"model": "m.pt", "raster": "r.tif", "out": "/"}, "'out' is not a usable file path"),
    ({"model": "m\x00.pt", "raster": "r.tif", "out": "c.tif"}, "not a usable file path"),
    ({"model": "m.pt", "raster": "r.tif", "out": "/tmp/" + "a" * 5000}, "cannot be used"),
])
def test_unusable_path_texts_are_422(fuzzed, body, message):
    service, _ = fuzzed
    r = service.post("/jobs/predict", body)
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]
