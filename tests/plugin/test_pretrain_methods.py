"""The panel's pretraining methods come from the real backend's registry: BYOL and MoCo v2 included,
and RS-BYOL's band views go from the panel to the backend (and its refusal back to the message bar);
the measured-gain line quotes the real backend's table.

Reuses test_flow.py's real service (``geossl serve`` from backend/.venv) and panel fixtures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geossl_plugin.panel import GeoSSLDock
from qgis.core import Qgis

from . import test_flow

# test_flow's fixtures, shared with this module (a fixture is found by its name in the test's module).
pytestmark = test_flow.pytestmark
service, data_dir, scene = test_flow.service, test_flow.data_dir, test_flow.scene
layers, dock = test_flow.layers, test_flow.dock


def test_panel_lists_byol_and_moco_from_the_backend_and_pretrains_rs_byol(dock: GeoSSLDock, layers: Any,
                                                                          qtbot: Any, iface: Any,
                                                                          data_dir: Path) -> None:
    section = dock.pretrain_section
    methods = [section.method.itemText(i) for i in range(section.method.count())]
    assert {"glcnet", "simclr", "byol", "moco"} <= set(methods), methods
    raster, _ = layers
    section.rasters.set_checked([raster])
    section.method.setCurrentText("byol")
    section.duration.setCurrentText("Steps…")
    section.budget.spin.setValue(2)
    section.tile.setValue(64)
    section.batch.setValue(2)

    section.view_bands.setText("1,2 3,4")  # the scene has 3 bands
    section.run_button.click()
    qtbot.waitUntil(lambda: bool(iface.messageBar().get_messages(Qgis.Critical)), timeout=10_000)
    message = iface.messageBar().get_messages(Qgis.Critical)[0]
    assert "names band(s) 4, but the raster has 3 bands" in message, message

    section.view_bands.setText("1 3")  # one band per view: band 1 against band 3 of the same ground
    with qtbot.waitSignal(dock.jobs_section.job_finished, timeout=test_flow.JOB_MS) as finished:
        section.run_button.click()
    job = finished.args[0]
    assert job["state"] == "succeeded", job.get("error")
    assert job["params"]["method"] == "byol" and job["params"]["view_bands"] == ["1", "3"]
    assert job["result"]["method"] == "byol" and Path(job["result"]["model"]).parent == data_dir / "models"


def test_the_gain_line_quotes_what_the_real_backend_measured(dock: GeoSSLDock, layers: Any, qtbot: Any) -> None:
    section = dock.pretrain_section
    raster, _ = layers
    section.rasters.set_checked([raster])  # 3 bands: the Dubai RGB figures
    section.method.setCurrentText("glcnet")
    section.duration.setCurrentText("30 min")
    qtbot.waitUntil(lambda: "Not measured beyond" in section.gain_label.text(), timeout=10_000)
    text = section.gain_label.toolTip()
    # The shipped table: GLCNet − random init after 400 steps (5.25 min): −2.0 ± 5.3 Kappa points over 3 seeds.
    assert text.startswith("Not measured beyond 5.25 min (GLCNet, Dubai RGB, 2-core CPU, 3 seeds): at 5.25 min it "
                           "changed Kappa by −2.0 ± 5.3 points against no pretraining."), text
    assert "did not pay off" in text and "color:#d07000" in section.gain_label.text()
    assert section.params()["minutes"] == 30.0
