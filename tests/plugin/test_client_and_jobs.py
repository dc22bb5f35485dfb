"""Reading the backend's answers without a backend: errors, job objects, model lists, the loss plot."""

from __future__ import annotations

import json
from typing import Any

import pytest
from geossl_plugin import jobs as J
from geossl_plugin.client import ApiError, Connection, build_request, error_from_answer, read_answer
from geossl_plugin.panel.loss_plot import LossPlot
from geossl_plugin.panel.models import PRETRAINED, SEGMENTATION, parse_models
from qgis.PyQt.QtGui import QImage, QPainter
from qgis.PyQt.QtNetwork import QNetworkRequest

URL = "http://127.0.0.1:8765"


def _body(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_requests_carry_the_token_and_are_never_cached() -> None:
    request = build_request(Connection(URL + "/", " secret "), "/jobs/abc", json_body=True)
    assert request.url().toString() == URL + "/jobs/abc"
    assert bytes(request.rawHeader(b"Authorization")) == b"Bearer secret"
    assert request.header(QNetworkRequest.ContentTypeHeader) == "application/json"
    assert request.attribute(QNetworkRequest.CacheLoadControlAttribute) == QNetworkRequest.AlwaysNetwork
    assert not build_request(Connection(URL), "info").hasRawHeader(b"Authorization")


def test_a_422_from_pydantic_names_the_field_and_drops_the_noise() -> None:
    detail = [{"type": "value_error", "loc": ["body", "tile"],
               "msg": "Value error, tile must be a multiple of 16 (DeepLabV3+ downsamples by 16), got 40"},
              {"type": "missing", "loc": ["body", "labels"], "msg": "Field required"}]
    error = error_from_answer(URL, 422, _body({"detail": detail}))
    assert error.message == ("The backend rejected the parameters: tile: tile must be a multiple of 16 "
                             "(DeepLabV3+ downsamples by 16), got 40; labels: Field required")
    assert error.status == 422


def test_a_422_from_a_pipeline_check_is_shown_as_written() -> None:
    body = {"detail": "Label file 'p.gpkg' has no field 'nope' (fields: class). Fix: choose the class field.",
            "problem": "…", "fix": "…"}
    error = error_from_answer(URL, 422, _body(body))
    assert error.message == ("The backend rejected the parameters: Label file 'p.gpkg' has no field 'nope' "
                             "(fields: class). Fix: choose the class field.")


@pytest.mark.parametrize(("status", "body", "expected"), [
    (0, b"", "GeoSSL backend at http://127.0.0.1:8765 is unreachable (Connection refused)."),
    (401, _body({"detail": "Missing or wrong token"}), "The GeoSSL backend refused the token"),
    (409, _body({"detail": "Job x is succeeded; only queued or running jobs can be cancelled."}),
     "Job x is succeeded; only queued or running jobs can be cancelled."),
    (500, b"<html>oops</html>", "GeoSSL backend answered HTTP 500"),
])
def test_errors_are_phrased_for_the_user(status: int, body: bytes, expected: str) -> None:
    error = error_from_answer(URL, status, body, "Connection refused" if status == 0 else "")
    assert error.message.startswith(expected)


def test_a_2xx_answer_is_json_or_a_clear_error() -> None:
    assert read_answer(URL, 200, _body({"a": 1})) == {"a": 1}
    assert read_answer(URL, 204, b"") is None
    with pytest.raises(ApiError, match="did not answer with JSON"):
        read_answer(URL, 200, b"<html>a proxy login page</html>")


RUNNING = {"id": "abc123def456", "type": "finetune", "state": "running", "resumable": False,
           "progress": {"stage": "fine-tune", "step": 30, "total": 120, "loss": 0.42, "metrics": {"epoch": 1},
                        "message": None, "elapsed_s": 10.0, "eta_s": 65.0}}


def test_progress_fraction_eta_and_text() -> None:
    p = J.job_progress(RUNNING)
    assert (p.fraction, p.loss, p.eta_s) == (0.25, 0.42, 65.0)
    assert J.progress_text(RUNNING) == "fine-tune · 30/120 · ETA 1 min 05 s"
    assert J.job_progress({"state": "running", "progress": None}).fraction is None
    stats = {"state": "running", "progress": {"stage": "band statistics", "step": 0, "total": 0}}
    assert J.job_progress(stats).fraction is None and J.progress_text(stats) == "band statistics"


@pytest.mark.parametrize(("seconds", "text"), [(None, "?"), (4.4, "4 s"), (65, "1 min 05 s"), (3725, "1 h 02 min")])
def test_durations(seconds: float | None, text: str) -> None:
    assert J.format_duration(seconds) == text


def test_states() -> None:
    assert not J.is_terminal(RUNNING)
    for state in ("succeeded", "failed", "cancelled", "interrupted"):
        assert J.is_terminal({"state": state})
    assert J.resumable({"state": "interrupted", "resumable": True})
    assert not J.resumable({"state": "succeeded", "resumable": False})
    assert J.job_error({"state": "failed", "error": "The GPU ran out of memory. Fix: lower the batch size."}) \
        == "The GPU ran out of memory. Fix: lower the batch size."


def test_losses_in_the_shapes_the_service_may_send() -> None:
    assert J.loss_points({"job_id": "x", "losses": [[1, 0.9], [2, 0.7], [3, None]]}) == [(1, 0.9), (2, 0.7)]
    assert J.loss_points([{"step": 5, "loss": 0.3}]) == [(5, 0.3)]


def test_metrics_of_a_finetune_and_of_an_evaluate_job() -> None:
    validation = {"overall_accuracy": 0.9, "kappa": 0.8, "miou": 0.7, "pixels": 576,
                  "per_class": {"dark": {"f1": 0.95, "iou": 0.9, "support": 288},
                                "bright": {"f1": 0.85, "iou": 0.74, "support": 288}}}
    finetune = {"state": "succeeded", "result": {"model": "m.pt", "validation": validation}}
    assert J.job_metrics(finetune) == validation
    assert J.job_metrics({"state": "succeeded", "result": validation}) == validation
    assert J.job_metrics({"state": "succeeded", "result": {"classes_raster": "c.tif"}}) is None
    html = J.metrics_html(validation)
    assert "<b>OA</b> 0.900" in html and "<b>Kappa</b> 0.800" in html and "<b>mIoU</b> 0.700" in html
    assert "<td>dark</td><td align='right'>0.950</td>" in html


def test_model_list_separates_models_from_pretrained_encoders() -> None:
    listing = {"models": [
        {"id": "1", "name": "fields.pt", "path": "/m/fields.pt", "kind": "segmentation", "encoder": "resnet18",
         "classes": {"names": ["a", "b"], "values": [1, 2], "colors": ["#000000", "#ffffff"]}},
        {"id": "2", "name": "ssl.pt", "path": "/m/ssl.pt", "kind": "pretrained", "encoder": "resnet34"},
        {"id": "3", "name": "broken.pt", "path": "/m/broken.pt", "kind": None, "error": "not a GeoSSL model"},
    ]}
    models = parse_models(listing)
    assert [(m.name, m.kind) for m in models] == [("fields", SEGMENTATION), ("ssl", PRETRAINED)]
    assert models[0].label == "fields (resnet18, 2 classes)" and models[0].classes.names == ("a", "b")


def test_loss_plot_draws_the_curve(qtbot: Any) -> None:
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(240, 120)
    plot.set_points([(1, 1.0), (2, float("nan")), (3, 0.5)])
    plot.add_point(3, 0.4)  # the same step polled twice: replaced, not duplicated
    plot.add_point(4, 0.3)
    assert plot.points() == [(1.0, 1.0), (3.0, 0.4), (4.0, 0.3)]
    image = QImage(240, 120, QImage.Format_ARGB32)
    image.fill(0)
    painter = QPainter(image)
    plot.render(painter)
    painter.end()
    blue = sum(1 for x in range(240) for y in range(120) if image.pixelColor(x, y).name() == "#1f78b4")
    assert blue > 20, "the curve is drawn"
