"""The Pretrain section's budget and its measured-gain line, with a stub backend that answers
``GET /pretraining/gain`` the way the real one does (the real one: test_pretrain_methods.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from geossl_plugin.backend import BackendInfo
from geossl_plugin.client import ApiError
from geossl_plugin.gain import budget_text, gain_sentence
from geossl_plugin.panel.finetune_section import WARN
from geossl_plugin.panel.pretrain_section import PretrainSection
from geossl_plugin.processing.algorithms import PretrainAlgorithm
from qgis.core import QgsProcessingContext, QgsProcessingFeedback, QgsProject, QgsRasterLayer

from .gdal_data import two_class_raster

# Points as the backend quotes them (Kappa points, paired by seed), each with its own verdict.
NOISE = {"minutes": 10, "steps": 760, "delta_kappa": 1.2, "std": 3.0, "seeds": 3, "verdict": "no-gain"}
PAYS = {"minutes": 30, "steps": 2280, "delta_kappa": 4.0, "std": 1.0, "seeds": 3, "verdict": "pays"}
LOSS = {"minutes": 60, "steps": 4500, "delta_kappa": -2.0, "std": 5.3, "seeds": 3, "verdict": "no-gain"}
CURVE = [NOISE, PAYS, LOSS]
INFO = BackendInfo(path="http://127.0.0.1:1", version="0.1.0", device="cpu", device_name="CPU",
                   methods=("glcnet", "simclr", "byol"),
                   raw={"job_types": {"pretrain": {"schema": {"properties": {
                       "checkpoint_minutes": {"default": 15.0}, "steps_per_epoch": {"default": 500}}}}}})


def lookup(query: dict[str, str]) -> dict[str, Any]:
    """A one-curve table (GLCNet on Dubai RGB) looked up like geossl.pretraining_gain.estimate_gain."""
    bands = int(query.get("bands", 3))
    label = "Dubai RGB" if bands < 9 else "Sentinel-2 (13 bands)"
    axis = "minutes" if "minutes" in query else "steps"
    budget = float(query[axis])
    answer: dict[str, Any] = {"method": query["method"], "dataset_label": label, "hardware_label": "2-core CPU",
                              "axis": axis, "budget": {axis: budget}, "basis": "none", "point": None,
                              "exact": False, "verdict": "unmeasured", "pays_from": PAYS}
    if query["method"] != "glcnet":
        return answer | {"pays_from": None}
    below = [p for p in CURVE if p[axis] <= budget]
    if not below:
        return answer | {"basis": "below", "point": CURVE[0]}
    if budget > CURVE[-1][axis]:
        return answer | {"basis": "beyond", "point": CURVE[-1]}
    point = below[-1]
    return answer | {"basis": "measured", "point": point, "exact": point[axis] == budget, "verdict": point["verdict"]}


class StubClient:
    """Answers at once, like a local backend would a moment later; remembers every request."""

    def __init__(self, answer: Any = lookup) -> None:
        self.answer = answer
        self.paths: list[str] = []

    def get(self, path: str, on_ok: Any = None, on_error: Any = None, connection: Any = None) -> None:
        self.paths.append(path)
        result = self.answer(dict(parse_qsl(urlsplit(path).query)))
        (on_error if isinstance(result, ApiError) else on_ok)(result)


@pytest.fixture
def section(qtbot: Any, project: QgsProject, tmp_path: Path) -> PretrainSection:
    client = StubClient()
    widget = PretrainSection(client, jobs=None, project=project)  # type: ignore[arg-type]
    qtbot.addWidget(widget)
    widget.setCollapsed(False)
    rgb = QgsRasterLayer(str(two_class_raster(tmp_path / "rgb.tif")), "rgb", "gdal")
    s2 = QgsRasterLayer(str(two_class_raster(tmp_path / "s2.tif", bands=13)), "s2", "gdal")
    project.addMapLayers([rgb, s2])
    widget.rasters.set_checked([rgb])
    widget.set_backend(INFO)
    widget.method.setCurrentText("glcnet")
    return widget


def shown(section: PretrainSection, qtbot: Any) -> str:
    qtbot.waitUntil(lambda: "Looking up" not in section.gain_label.text(), timeout=2000)
    return section.gain_label.toolTip()


def test_a_budget_that_paid_is_quoted_plainly(section: PretrainSection, qtbot: Any) -> None:
    section.duration.setCurrentText("30 min")
    assert shown(section, qtbot) == ("Measured (Dubai RGB, 2-core CPU, 3 seeds): GLCNet for 30 min changed Kappa by "
                                     "+4.0 ± 1.0 points against no pretraining.")
    assert WARN not in section.gain_label.text()
    assert "method=glcnet" in section.client.paths[-1] and "minutes=30" in section.client.paths[-1]
    assert "bands=3" in section.client.paths[-1]
    assert section.params()["minutes"] == 30.0 and "steps" not in section.params()
    assert not section.long_label.isVisibleTo(section)


def test_a_budget_that_did_not_pay_is_a_warning_before_the_run(section: PretrainSection, qtbot: Any) -> None:
    section.duration.setCurrentText("10 min")
    assert shown(section, qtbot) == (
        "Measured (Dubai RGB, 2-core CPU, 3 seeds): GLCNet for 10 min changed Kappa by +1.2 ± 3.0 points against no "
        "pretraining — within noise. In our tests 30 min did pay off (+4.0 ± 1.0 points). ⚠ Pretraining did not pay "
        "off at this budget in our tests; fine-tuning from scratch is as good.")
    assert f"color:{WARN}" in section.gain_label.text()
    section.duration.setCurrentText("1 h")
    assert "GLCNet for 1 h changed Kappa by −2.0 ± 5.3 points against no pretraining — no gain." in shown(section, qtbot)
    assert f"color:{WARN}" in section.gain_label.text()


def test_beyond_the_measured_budgets_nothing_is_promised(section: PretrainSection, qtbot: Any) -> None:
    section.duration.setCurrentText("Overnight (8 h)")
    assert shown(section, qtbot) == (
        "Not measured beyond 1 h (GLCNet, Dubai RGB, 2-core CPU, 3 seeds): at 1 h it changed Kappa by −2.0 ± 5.3 "
        "points against no pretraining. Whether 8 h pays was not seen. ⚠ At 1 h, the longest measured, it did not "
        "pay off.")
    assert f"color:{WARN}" in section.gain_label.text()
    long_run = section.long_label.text()
    assert section.long_label.isVisibleTo(section) and "every 15 min" in long_run and "Resume" in long_run
    section.method.setCurrentText("simclr")
    assert shown(section, qtbot) == ("SimCLR was not measured on imagery like yours (Dubai RGB): there is no estimate "
                                     "of what 8 h of pretraining buys.")
    assert "color:gray" in section.gain_label.text()


def test_the_line_follows_method_budget_and_rasters(section: PretrainSection, qtbot: Any, project: QgsProject) -> None:
    s2 = project.mapLayersByName("s2")[0]
    section.rasters.set_checked([s2])
    assert "Sentinel-2 (13 bands)" in shown(section, qtbot) and "bands=13" in section.client.paths[-1]
    section.duration.setCurrentText("Steps…")
    assert section.budget.isVisibleTo(section)
    section.budget.spin.setValue(3000)
    assert "for 2280 steps, the nearest measured budget below 3000 steps," in shown(section, qtbot)
    assert "steps=3000" in section.client.paths[-1] and section.params()["steps"] == 3000
    section.budget.unit.setCurrentText("epochs")
    section.budget.spin.setValue(1)
    assert "Not measured for budgets as short as 500 steps" in shown(section, qtbot)
    assert "steps=500" in section.client.paths[-1]  # 1 epoch of the backend's 500 steps
    section.method.setCurrentText("byol")
    section.view_bands.setText("1 2")
    assert shown(section, qtbot).startswith("RS-BYOL was not measured")  # BYOL with band views has its own curve
    assert "method=rs-byol" in section.client.paths[-1]
    section.view_bands.setText("")
    assert shown(section, qtbot).startswith("BYOL was not measured")
    asked = len(section.client.paths)
    section.view_bands.setText("1 2")
    assert shown(section, qtbot).startswith("RS-BYOL") and len(section.client.paths) == asked  # answers are kept


def test_the_line_is_never_blank(section: PretrainSection, qtbot: Any) -> None:
    section.client.answer = lambda _q: ApiError("Not Found", 404)
    section.set_backend(INFO)  # a fresh backend: an older one, without the measured gain
    assert "reports no measured gain" in shown(section, qtbot) and f"color:{WARN}" in section.gain_label.text()
    section.client.answer = lambda _q: ApiError("GeoSSL backend is unreachable", 0)
    section.duration.setCurrentText("2 h")
    qtbot.waitUntil(lambda: "unknown: GeoSSL backend is unreachable" in section.gain_label.text(), timeout=2000)
    section.set_backend(None)
    assert "Connect the backend to see what pretraining bought" in section.gain_label.text()


def test_sentences_and_budgets_in_words() -> None:
    assert [budget_text(m) for m in (10, 5.25, 60, 90, 480)] == ["10 min", "5.25 min", "1 h", "1 h 30 min", "8 h"]
    assert budget_text(steps=400) == "400 steps"
    measured = lookup({"method": "glcnet", "minutes": "45"})
    text, level = gain_sentence(measured, device="cuda")
    assert level == "ok" and text.startswith("Measured (Dubai RGB, 2-core CPU, 3 seeds): GLCNet for 30 min, the "
                                             "nearest measured budget below 45 min, changed Kappa by +4.0")
    assert text.endswith("(Minutes measured on a 2-core CPU: a GPU makes more steps in the same time.)")
    below, level = gain_sentence(lookup({"method": "glcnet", "minutes": "5"}))
    assert level == "warn" and below.startswith("Not measured for budgets as short as 5 min") and "⚠ 10 min" in below


def test_processing_takes_minutes_instead_of_steps(project: QgsProject, tmp_path: Path) -> None:
    layer = QgsRasterLayer(str(two_class_raster(tmp_path / "r.tif")), "r", "gdal")
    project.addMapLayer(layer)
    context = QgsProcessingContext()
    context.setProject(project)
    algorithm = PretrainAlgorithm()
    algorithm.initAlgorithm({})
    base = {"RASTERS": [layer.id()], "METHOD": "glcnet", "ENCODER": 0, "STEPS": 200, "TILE": 64, "BATCH": 2,
            "OUTPUT": str(tmp_path / "enc.pt")}
    timed = algorithm.job_params(base | {"MINUTES": 45.0}, context)
    assert timed["minutes"] == 45.0 and "steps" not in timed and algorithm._bands == 3
    assert algorithm.job_params(base | {"MINUTES": 0.0}, context)["steps"] == 200
    assert "minutes" not in algorithm.job_params(base, context)

    class Feedback(QgsProcessingFeedback):
        def __init__(self) -> None:
            super().__init__()
            self.warnings: list[str] = []

        def pushWarning(self, text: str) -> None:  # noqa: N802 (QGIS API name)
            self.warnings.append(text)

    class Blocking:  # BlockingClient's get: the answer in place
        paths: list[str] = []

        def get(self, path: str) -> Any:
            self.paths.append(path)
            return lookup(dict(parse_qsl(urlsplit(path).query)))

    algorithm._params = algorithm.job_params(base | {"MINUTES": 10.0}, context)
    feedback, client = Feedback(), Blocking()
    algorithm.before_run(client, feedback)  # type: ignore[arg-type]
    assert "minutes=10" in client.paths[0] and "bands=3" in client.paths[0]
    assert len(feedback.warnings) == 1 and feedback.warnings[0].startswith(
        "Measured (Dubai RGB, 2-core CPU, 3 seeds): GLCNet for 10 min changed Kappa by +1.2 ± 3.0 points")
