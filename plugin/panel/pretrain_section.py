""""1 · Pretrain": unlabeled raster layers → a self-supervised ``pretrain`` job (optional step).

The method list comes from the backend's ``/info`` (its method registry), never from the plugin,
so a method added to the backend shows up here without a plugin release.
"""

from __future__ import annotations

from typing import Any

from qgis.core import QgsProject
from qgis.PyQt.QtWidgets import QComboBox, QFormLayout, QLabel, QLineEdit, QPushButton, QSpinBox, QWidget

from ..client import ApiClient
from ..layers import LayerError, raster_path
from .common import RasterChecklist, Section, model_output
from .finetune_section import DEFAULT_ENCODERS, BudgetInput, encoders_of, safe_name


class PretrainSection(Section):
    """Builds ``PretrainParams`` from the widgets and submits it."""

    def __init__(self, client: ApiClient, jobs: Any, project: QgsProject | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__("1 · Pretrain (optional)", client, project, parent)
        self.setObjectName("geosslPretrainSection")
        self._jobs = jobs
        hint = QLabel("<span style='color:gray'>Learn from your own unlabeled rasters first; then pick the "
                      "result under Fine-tune ▸ Start from.</span>", self)
        hint.setWordWrap(True)
        self.rasters = RasterChecklist(self.project, self)
        self.method = QComboBox(self)
        self.method.setObjectName("geosslMethod")
        self.method.setToolTip("Self-supervised methods offered by the connected backend")
        self.encoder = QComboBox(self)
        self.encoder.addItems(DEFAULT_ENCODERS)
        self.budget = BudgetInput(1000, "steps", self)
        self.tile = QSpinBox(self)
        self.tile.setRange(64, 2048)
        self.tile.setSingleStep(16)
        self.tile.setValue(256)
        self.tile.setSuffix(" px")
        self.batch = QSpinBox(self)
        self.batch.setRange(2, 4096)
        self.batch.setValue(32)
        self.model_name = QLineEdit(self)
        self.model_name.setPlaceholderText("encoder name (default: pretrained-<method>)")
        self.run_button = QPushButton("Pretrain", self)
        self.run_button.setObjectName("geosslRunPretrain")
        self.run_button.clicked.connect(self.submit)

        form = QFormLayout(self)
        form.addRow(hint)
        form.addRow("Rasters", self.rasters)
        form.addRow("Method", self.method)
        form.addRow("Encoder", self.encoder)
        form.addRow("Training", self.budget)
        form.addRow("Tile", self.tile)
        form.addRow("Batch", self.batch)
        form.addRow("Name", self.model_name)
        form.addRow(self.run_button)
        self.setCollapsed(True)  # optional: keep the dock short for the common path

    def set_backend(self, info: Any) -> None:
        super().set_backend(info)
        if info is None:
            return
        current = self.method.currentText()
        self.method.clear()
        self.method.addItems(list(info.methods))
        if current and self.method.findText(current) >= 0:
            self.method.setCurrentText(current)
        encoder = self.encoder.currentText()
        self.encoder.clear()
        self.encoder.addItems(encoders_of(info))
        if encoder:
            self.encoder.setCurrentText(encoder)
        self.update_state()

    def update_state(self) -> None:
        ready = self.backend is not None and self.method.count() > 0
        self.run_button.setEnabled(ready)
        self.run_button.setToolTip("" if ready else "Start or connect the backend first")

    def params(self) -> dict[str, Any] | None:
        """``PretrainParams`` as JSON, or None after reporting what is missing."""
        rasters = self.rasters.checked_layers()
        if not rasters:
            self.error.emit(LayerError("Pretrain: tick at least one raster layer to learn from."))
            return None
        try:
            paths = [raster_path(r) for r in rasters]
        except LayerError as exc:
            self.error.emit(exc)
            return None
        if not self.method.currentText():
            self.error.emit(LayerError("Pretrain: the backend offers no method; is it up to date?"))
            return None
        return {"rasters": paths, "method": self.method.currentText(), "encoder": self.encoder.currentText(),
                "tile": self.tile.value(), "batch": self.batch.value(), **self.budget.as_params()}

    def model_basename(self) -> str:
        return safe_name(self.model_name.text() or f"pretrained-{self.method.currentText()}")

    def submit(self) -> None:
        if self.backend is None:
            self.error.emit(LayerError("Start or connect the backend first (Backend section)."))
            return
        params = self.params()
        if params is None:
            return
        params["out"] = model_output(self, self.model_basename(), params["rasters"][0])
        self.run_button.setEnabled(False)
        self.client.post("jobs/pretrain", params, on_ok=self._on_submitted,
                         on_error=self.request_error("Pretraining not started"))

    def _on_submitted(self, job: Any) -> None:
        self.update_state()
        if isinstance(job, dict):
            self._jobs.track(job)
