""""1 · Pretrain": unlabeled raster layers → a self-supervised ``pretrain`` job (optional step).

The method list comes from the backend's ``/info`` (its method registry), never from the plugin,
so a method added to the backend shows up here without a plugin release.
"""

from __future__ import annotations

from typing import Any

from qgis.core import QgsProject
from qgis.gui import QgsMapCanvas
from qgis.PyQt.QtWidgets import QComboBox, QFormLayout, QLabel, QLineEdit, QWidget

from ..client import ApiClient
from ..layers import LayerError
from .common import (
    JobSection,
    RasterChecklist,
    batch_spinbox,
    extent_box,
    extent_params,
    follow_raster,
    model_output,
    replace_items,
    tile_spinbox,
)
from .finetune_section import DEFAULT_ENCODERS, BudgetInput, encoders_of, safe_name
from .start_from import StartFrom


class PretrainSection(JobSection):
    """Builds ``PretrainParams`` from the widgets and submits it."""

    def __init__(self, client: ApiClient, jobs: Any, project: QgsProject | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__("1 · Pretrain (optional)", client, jobs, project, parent)
        self.setObjectName("geosslPretrainSection")
        hint = QLabel("<span style='color:gray'>Learn from your own unlabeled rasters first; then pick the "
                      "result under Fine-tune ▸ Start from.</span>", self)
        hint.setWordWrap(True)
        self.rasters = RasterChecklist(self.project, self)
        self.method = QComboBox(self)
        self.method.setObjectName("geosslMethod")
        self.method.setToolTip("Self-supervised methods offered by the connected backend")
        self.encoder = QComboBox(self)
        self.encoder.addItems(DEFAULT_ENCODERS)
        self.start_from = StartFrom(self, "random weights")
        self.start_from.setObjectName("geosslPretrainStartFrom")
        self.budget = BudgetInput(1000, "steps", self)
        self.tile = tile_spinbox(self, 64, 256)
        self.batch = batch_spinbox(self, 2, 4096, 32)
        self.view_bands = QLineEdit(self)
        self.view_bands.setObjectName("geosslViewBands")
        self.view_bands.setPlaceholderText("e.g. 2,3,4,8 5,6,7,9 or random:4 (BYOL, MoCo)")
        self.view_bands.setToolTip("RS-BYOL views: the two views from two band groups of the same windows "
                                   "(1-based, equal sizes), or K random bands per view. Empty: the same bands.")
        self.model_name = QLineEdit(self)
        self.model_name.setPlaceholderText("encoder name (default: pretrained-<method>)")
        self.extent = extent_box(self, "geosslPretrainExtent")
        self.extent.setToolTip("Learn only from this part of the rasters (in the first ticked raster's CRS)")
        self.run_button = self.make_run_button("Pretrain", "geosslRunPretrain")

        form = QFormLayout(self)
        form.addRow(hint)
        form.addRow("Rasters", self.rasters)
        form.addRow("Method", self.method)
        form.addRow("Encoder", self.encoder)
        form.addRow("Start from", self.start_from)  # continued pretraining from weights the user has
        form.addRow("View bands", self.view_bands)
        form.addRow("Training", self.budget)
        form.addRow("Tile", self.tile)
        form.addRow("Batch", self.batch)
        form.addRow("Name", self.model_name)
        form.addRow(self.extent)
        form.addRow(self.run_button)
        self.rasters.itemChanged.connect(self._on_rasters_changed)
        self.setCollapsed(True)  # optional: keep the dock short for the common path

    def set_backend(self, info: Any) -> None:
        super().set_backend(info)
        if info is None:
            return
        replace_items(self.method, info.methods)
        replace_items(self.encoder, encoders_of(info))
        self.update_state()

    def set_map_canvas(self, canvas: QgsMapCanvas | None) -> None:
        super().set_map_canvas(canvas)
        if canvas is not None:
            self.extent.setMapCanvas(canvas)
        self._on_rasters_changed()

    def _on_rasters_changed(self, *_: Any) -> None:
        checked = self.rasters.checked_layers()
        follow_raster(self.extent, checked[0] if checked else None, self.canvas)

    def update_state(self) -> None:
        self.enable_run(self.backend is not None and self.method.count() > 0)

    def params(self) -> dict[str, Any] | None:
        """``PretrainParams`` as JSON, or None after reporting what is missing."""
        rasters = self.rasters.checked_layers()
        if not rasters:
            self.error.emit(LayerError("Pretrain: tick at least one raster layer to learn from."))
            return None
        paths = self.raster_files(rasters)
        if paths is None:
            return None
        if not self.method.currentText():
            self.error.emit(LayerError("Pretrain: the backend offers no method; is it up to date?"))
            return None
        extent = extent_params(self.extent)
        if extent is None:
            self.error.emit(LayerError("Pretrain: the extent is ticked but empty: choose one, or untick it."))
            return None
        views = self.view_bands.text().split()  # the backend checks them against the rasters' bands
        return {"rasters": paths, "method": self.method.currentText(), "encoder": self.encoder.currentText(),
                "tile": self.tile.value(), "batch": self.batch.value(), **self.budget.as_params(), **extent,
                **({"view_bands": views} if views else {}), **self.start_from.params()}

    def model_basename(self) -> str:
        return safe_name(self.model_name.text() or f"pretrained-{self.method.currentText()}")

    def submit(self) -> None:
        params = self.job_params()
        if params is None:
            return
        params["out"] = model_output(self, self.model_basename(), params["rasters"][0])
        self.post_job("pretrain", params, "Pretraining not started")
