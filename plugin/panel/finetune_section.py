""""2 · Fine-tune": rasters + a polygon layer with a class field → a ``finetune`` job.

Class colours come from the polygon layer's categorized style when it classifies by the chosen
field, so the map comes out in the colours the user already picked for the polygons.
"""

from __future__ import annotations

import re
from typing import Any

from qgis.core import QgsFieldProxyModel, QgsMapLayerProxyModel, QgsProject, QgsVectorLayer
from qgis.gui import QgsFieldComboBox, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ..client import ApiClient
from ..layers import LayerError, categorized_field, class_colours, raster_path
from .common import RasterChecklist, Section, model_output
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


class FinetuneSection(Section):
    """Builds ``FinetuneParams`` from the widgets and submits it."""

    def __init__(self, client: ApiClient, jobs: Any, project: QgsProject | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__("2 · Fine-tune", client, project, parent)
        self.setObjectName("geosslFinetuneSection")
        self._jobs = jobs
        self._models: list[ModelEntry] = []

        self.rasters = RasterChecklist(self.project, self)
        self.rasters.setToolTip("Rasters the polygons were drawn on (several only if they have the same bands)")
        self.polygons = QgsMapLayerComboBox(self)
        self.polygons.setObjectName("geosslPolygonLayer")
        self.polygons.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        self.polygons.setAllowEmptyLayer(True)
        self.class_field = QgsFieldComboBox(self)
        self.class_field.setObjectName("geosslClassField")
        self.class_field.setFilters(QgsFieldProxyModel.String | QgsFieldProxyModel.Int | QgsFieldProxyModel.LongLong)
        self.colours_label = QLabel(self)
        self.colours_label.setWordWrap(True)
        self.encoder = QComboBox(self)
        self.encoder.addItems(DEFAULT_ENCODERS)
        self.init_model = QComboBox(self)
        self.init_model.setObjectName("geosslInitModel")
        self.init_model.setToolTip("Start from an encoder pretrained on your rasters (section 1), or from scratch")
        self.budget = BudgetInput(300, "steps", self)
        self.tile = QSpinBox(self)
        self.tile.setRange(32, 2048)
        self.tile.setSingleStep(16)
        self.tile.setValue(128)
        self.tile.setSuffix(" px")
        self.batch = QSpinBox(self)
        self.batch.setRange(1, 512)
        self.batch.setValue(8)
        self.model_name = QLineEdit(self)
        self.model_name.setPlaceholderText("model name (default: the polygon layer's name)")
        self.run_button = QPushButton("Fine-tune", self)
        self.run_button.setObjectName("geosslRunFinetune")
        self.run_button.clicked.connect(self.submit)

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
            current = self.encoder.currentText()
            self.encoder.clear()
            self.encoder.addItems(encoders_of(info))
            if current:
                self.encoder.setCurrentText(current)
            self.refresh_models()

    def update_state(self) -> None:
        self.run_button.setEnabled(self.backend is not None)
        self.run_button.setToolTip("" if self.backend else "Start or connect the backend first")

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
        try:
            paths = [raster_path(r) for r in rasters]
        except LayerError as exc:
            self.error.emit(exc)
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
        if self.backend is None:
            self.error.emit(LayerError("Start or connect the backend first (Backend section)."))
            return
        params = self.params()
        if params is None:
            return
        params["out"] = model_output(self, self.model_basename(), params["labels"])
        self.run_button.setEnabled(False)
        self.client.post("jobs/finetune", params, on_ok=self._on_submitted,
                         on_error=self.request_error("Fine-tune not started"))

    def _on_submitted(self, job: Any) -> None:
        self.update_state()
        if isinstance(job, dict):
            self._jobs.track(job)

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
