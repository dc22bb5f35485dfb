""""2 · Fine-tune": rasters + a polygon layer with a class field → a ``finetune`` job.

Class colours come from the polygon layer's categorized style when it classifies by the chosen
field, so the map comes out in the colours the user already picked for the polygons.
"""

from __future__ import annotations

import re
from typing import Any

from qgis.core import QgsProject, QgsVectorLayer
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QComboBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QSpinBox, QWidget

from ..client import ApiClient
from ..layers import LayerError, categorized_field, class_colours
from .common import (
    JobSection,
    RasterChecklist,
    batch_spinbox,
    class_field_combo,
    model_output,
    polygon_combo,
    replace_items,
    tile_spinbox,
)
from .models import PRETRAINED, ModelEntry, parse_models

DEFAULT_ENCODERS = ("resnet18", "resnet34", "resnet50")
RANDOM_INIT = "random weights (no pretraining)"
_ENCODER_ROLE = Qt.UserRole + 1


def encoders_of(info: Any) -> tuple[str, ...]:
    """The encoders the backend offers (``/info``'s ``encoders`` when present)."""
    raw = getattr(info, "raw", None) or {}
    encoders = raw.get("encoders") if isinstance(raw, dict) else None
    return tuple(str(e) for e in encoders) if isinstance(encoders, list) and encoders else DEFAULT_ENCODERS


def safe_name(text: str, default: str = "model") -> str:
    """A file-name-safe model name from a layer name."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text.strip()).strip("._")
    return name or default


def colour_swatches(colours: dict[str, str]) -> str:
    return " ".join(f"<span style='color:{c}'>■</span>&nbsp;{name}" for name, c in colours.items())


class BudgetInput(QWidget):
    """A number with its unit: optimisation steps, or epochs."""

    def __init__(self, value: int, unit: str = "steps", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.spin = QSpinBox(self)
        self.spin.setRange(1, 1_000_000)
        self.spin.setValue(value)
        self.unit = QComboBox(self)
        self.unit.addItems(["steps", "epochs"])
        self.unit.setCurrentText(unit)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.spin, 1)
        layout.addWidget(self.unit)

    def as_params(self) -> dict[str, int]:
        return {self.unit.currentText(): self.spin.value()}


class FinetuneSection(JobSection):
    """Builds ``FinetuneParams`` from the widgets and submits it."""

    def __init__(self, client: ApiClient, jobs: Any, project: QgsProject | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__("2 · Fine-tune", client, jobs, project, parent)
        self.setObjectName("geosslFinetuneSection")
        self._models: list[ModelEntry] = []

        self.rasters = RasterChecklist(self.project, self)
        self.rasters.setToolTip("Rasters the polygons were drawn on (several only if they have the same bands)")
        self.polygons = polygon_combo(self, "geosslPolygonLayer")
        self.class_field = class_field_combo(self)
        self.class_field.setObjectName("geosslClassField")
        self.colours_label = QLabel(self)
        self.colours_label.setWordWrap(True)
        self.encoder = QComboBox(self)
        self.encoder.addItems(DEFAULT_ENCODERS)
        self.init_model = QComboBox(self)
        self.init_model.setObjectName("geosslInitModel")
        self.init_model.setToolTip("Start from an encoder pretrained on your rasters (section 1), or from scratch")
        self.budget = BudgetInput(300, "steps", self)
        self.tile = tile_spinbox(self, 32, 128)
        self.batch = batch_spinbox(self, 1, 512, 8)
        self.model_name = QLineEdit(self)
        self.model_name.setPlaceholderText("model name (default: the polygon layer's name)")
        self.run_button = self.make_run_button("Fine-tune", "geosslRunFinetune")

        form = QFormLayout(self)
        form.addRow("Rasters", self.rasters)
        form.addRow("Polygons", self.polygons)
        form.addRow("Class field", self.class_field)
        form.addRow("", self.colours_label)
        form.addRow("Encoder", self.encoder)
        form.addRow("Start from", self.init_model)
        form.addRow("Training", self.budget)
        form.addRow("Tile", self.tile)
        form.addRow("Batch", self.batch)
        form.addRow("Model name", self.model_name)
        form.addRow(self.run_button)

        self.polygons.layerChanged.connect(self._on_polygons_changed)
        self.class_field.fieldChanged.connect(self._show_colours)
        self.init_model.currentIndexChanged.connect(self._on_init_changed)
        self._fill_init_models()
        self._on_polygons_changed(self.polygons.currentLayer())

    # -- state ------------------------------------------------------------------------------------

    def set_backend(self, info: Any) -> None:
        super().set_backend(info)
        if info is not None:
            replace_items(self.encoder, encoders_of(info))
            self.refresh_models()

    def refresh_models(self) -> None:
        if self.backend is not None:
            self.client.get("models", on_ok=self._on_models, on_error=lambda _e: None)

    def colours(self) -> dict[str, str]:
        layer = self.polygons.currentLayer()
        return class_colours(layer, self.class_field.currentField()) if isinstance(layer, QgsVectorLayer) else {}

    # -- request ----------------------------------------------------------------------------------

    def params(self, out: str | None = None) -> dict[str, Any] | None:
        """``FinetuneParams`` as JSON, or None after reporting what is missing."""
        rasters = self.rasters.checked_layers()
        if not rasters:
            self.error.emit(LayerError("Fine-tune: tick at least one raster layer (the imagery under your polygons)."))
            return None
        layer = self.polygons.currentLayer()
        if not isinstance(layer, QgsVectorLayer):
            self.error.emit(LayerError("Fine-tune: choose the polygon layer with your training polygons."))
            return None
        field = self.class_field.currentField()
        if not field:
            self.error.emit(LayerError(f"Fine-tune: choose the field of '{layer.name()}' that holds each "
                                       "polygon's class."))
            return None
        paths = self.raster_files(rasters)
        if paths is None:
            return None
        source = self.saved_polygons(layer)
        if source is None:
            return None
        labels, sublayer = source
        params: dict[str, Any] = {
            "rasters": paths, "labels": labels, "class_field": field,
            "encoder": self.encoder.currentText(), "tile": self.tile.value(), "batch": self.batch.value(),
            **self.budget.as_params(),
        }
        if sublayer:
            params["layer"] = sublayer
        if out:
            params["out"] = out
        init = self.init_model.currentData()
        if init:
            params["init"] = init
        colours = self.colours()
        if colours:
            params["colours"] = colours
        return params

    def model_basename(self) -> str:
        layer = self.polygons.currentLayer()
        return safe_name(self.model_name.text() or (layer.name() if layer else "model"))

    def submit(self) -> None:
        params = self.job_params()
        if params is None:
            return
        params["out"] = model_output(self, self.model_basename(), params["labels"])
        self.post_job("finetune", params, "Fine-tune not started")

    # -- slots ------------------------------------------------------------------------------------

    def _on_polygons_changed(self, layer: Any) -> None:
        self.class_field.setLayer(layer)
        if isinstance(layer, QgsVectorLayer):
            styled = categorized_field(layer)
            if styled and self.class_field.findText(styled) >= 0:
                self.class_field.setField(styled)  # the field the user styled by is the class field
        self._show_colours()

    def _show_colours(self, *_: Any) -> None:
        colours = self.colours()
        if colours:
            self.colours_label.setText("Colours from the layer's style: " + colour_swatches(colours))
        elif self.polygons.currentLayer() is not None:
            self.colours_label.setText("<span style='color:gray'>Tip: style the polygons Categorized by this "
                                       "field to choose the class colours.</span>")
        else:
            self.colours_label.clear()

    def _on_models(self, data: Any) -> None:
        self._models = parse_models(data)
        self._fill_init_models()

    def _fill_init_models(self) -> None:
        current = self.init_model.currentData()
        self.init_model.blockSignals(True)
        self.init_model.clear()
        self.init_model.addItem(RANDOM_INIT, None)
        for entry in self._models:
            if entry.kind == PRETRAINED:
                self.init_model.addItem(entry.label, entry.path)
                self.init_model.setItemData(self.init_model.count() - 1, entry.encoder, _ENCODER_ROLE)
        index = self.init_model.findData(current) if current else 0
        self.init_model.setCurrentIndex(max(0, index))
        self.init_model.blockSignals(False)

    def _on_init_changed(self, index: int) -> None:
        encoder = self.init_model.itemData(index, _ENCODER_ROLE)
        if encoder and self.encoder.findText(encoder) >= 0:
            self.encoder.setCurrentText(encoder)  # a pretrained encoder fixes the architecture
