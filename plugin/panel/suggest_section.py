""""Where to label next": a model + raster + polygons → a ``suggest`` job → ranked squares on the map,
a list to zoom to each, and "Continue training" (a warm-start ``finetune`` from the same model).

The loop a mapper runs: fine-tune, ask where the model is least sure, draw a polygon in each square,
continue training from the last model (a few hundred steps instead of starting over).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFillSymbol,
    QgsMapLayerProxyModel,
    QgsPalLayerSettings,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsSingleSymbolRenderer,
    QgsTextFormat,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.gui import QgsMapCanvas, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QWidget,
)

from ..client import ApiClient
from ..layers import LayerError, result_group
from .common import (
    NOT_CONNECTED,
    JobSection,
    class_field_combo,
    model_output,
    narrow,
    polygon_combo,
    show_class_field,
)
from .finetune_section import safe_name
from .models import SEGMENTATION, ModelEntry, current_model, fill_model_combo, parse_models, select_model_path

LAYER_NAME = "label here next"  # the GeoPackage layer the backend writes
# SuggestParams.score: label, value, tooltip
SCORES = (("where a polygon covers unsure ground", "drawable",
           "Rank squares by the uncertainty inside the class polygon you can draw there (the model's main "
           "class in the square): large unsure areas of one class first"),
          ("most unsure squares", "uncertainty",
           "Rank squares by the model's mean uncertainty: often class edges, where one polygon covers little"))
OUTLINE = "#ff2d95"  # a colour no land-cover style uses: the squares stand out on any map


def add_suggestion_layer(path: str, project: QgsProject, name: str = "Label here next") -> QgsVectorLayer:
    """Add the backend's suggestions as hollow squares labelled with their rank, on top of the GeoSSL group."""
    layer = QgsVectorLayer(f"{path}|layername={LAYER_NAME}", name, "ogr")
    if not layer.isValid():
        raise LayerError(f"QGIS cannot open the suggestions {path}.")
    symbol = QgsFillSymbol.createSimple({"color": "0,0,0,0", "outline_color": OUTLINE, "outline_width": "0.8",
                                         "outline_width_unit": "MM"})
    layer.setRenderer(QgsSingleSymbolRenderer(symbol))
    settings = QgsPalLayerSettings()
    settings.fieldName = "rank"
    settings.placement = QgsPalLayerSettings.OverPoint
    text = QgsTextFormat()
    text.setColor(QColor(OUTLINE))
    text.setSize(11)
    text.buffer().setEnabled(True)
    settings.setFormat(text)
    layer.setLabeling(QgsVectorLayerSimpleLabeling(settings))
    layer.setLabelsEnabled(True)
    project.addMapLayer(layer, False)
    result_group(project).insertLayer(0, layer)
    return layer


def zoom_rectangle(bounds: list[float], source: QgsCoordinateReferenceSystem, canvas: QgsMapCanvas,
                   project: QgsProject, context: float = 1.5) -> QgsRectangle:
    """The canvas extent showing a suggestion (``bounds`` in ``source``) with some ground around it."""
    rect = QgsRectangle(*bounds)
    target = canvas.mapSettings().destinationCrs()
    if source.isValid() and target.isValid() and source != target:
        rect = QgsCoordinateTransform(source, target, project).transformBoundingBox(rect)
    rect.scale(context)
    return rect


class SuggestSection(JobSection):
    """Submits ``SuggestParams``, shows the suggestions, and continues training from the same model."""

    def __init__(self, client: ApiClient, jobs: Any, project: QgsProject | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__("Where to label next", client, jobs, project, parent)
        self.setObjectName("geosslSuggestSection")
        self._models: list[ModelEntry] = []
        self.items: list[dict[str, Any]] = []
        self.result_layer: QgsVectorLayer | None = None
        self.last_model: ModelEntry | None = None  # the model the shown suggestions came from
        self._select_next: str | None = None  # a continued model, selected once the model list has it

        self.model = QComboBox(self)
        self.model.setObjectName("geosslSuggestModel")
        self.model.setToolTip("The fine-tuned model to question (usually the latest)")
        self.raster = QgsMapLayerComboBox(self)
        self.raster.setObjectName("geosslSuggestRaster")
        self.raster.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.polygons = polygon_combo(self, "geosslSuggestPolygons")
        self.polygons.setToolTip("Your training polygons: their ground is never suggested again")
        self.class_field = class_field_combo(self)
        self.class_field.setObjectName("geosslSuggestClassField")
        self.polygons.layerChanged.connect(lambda layer: show_class_field(self.class_field, layer))
        self.count = QSpinBox(self)
        self.count.setObjectName("geosslSuggestCount")
        self.count.setRange(1, 100)
        self.count.setValue(10)
        self.window = QSpinBox(self)
        self.window.setRange(8, 1024)
        self.window.setSingleStep(16)
        self.window.setValue(64)
        self.window.setSuffix(" px")
        self.window.setToolTip("Side of each suggested square")
        self.score = QComboBox(self)
        self.score.setObjectName("geosslSuggestScore")
        for i, (label, value, tip) in enumerate(SCORES):
            self.score.addItem(label, value)
            self.score.setItemData(i, tip, Qt.ToolTipRole)
        self.score.setToolTip("How squares are ranked")
        narrow(self.score)
        self.run_button = self.make_run_button("Suggest where to label next", "geosslRunSuggest")
        self.table = QTableWidget(0, 3, self)
        self.table.setObjectName("geosslSuggestions")
        self.table.setHorizontalHeaderLabels(["#", "Why", ""])
        self.table.horizontalHeader().setStretchLastSection(False)
        self.table.horizontalHeader().setSectionResizeMode(1, self.table.horizontalHeader().Stretch)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setMaximumHeight(180)
        self.table.cellDoubleClicked.connect(lambda row, _col: self.zoom_to(row))
        self.steps = QSpinBox(self)
        self.steps.setRange(1, 100_000)
        self.steps.setValue(200)
        self.steps.setSuffix(" steps")
        self.continue_button = QPushButton("Continue training", self)
        self.continue_button.setObjectName("geosslContinueTraining")
        self.continue_button.setToolTip("Fine-tune the same model further on the polygons (with the ones you "
                                        "just drew), instead of starting over")
        self.continue_button.clicked.connect(self.continue_training)

        form = QFormLayout(self)
        form.addRow("Model", self.model)
        form.addRow("Raster", self.raster)
        form.addRow("Polygons", self.polygons)
        form.addRow("Class field", self.class_field)
        row = QHBoxLayout()
        row.addWidget(self.count)
        row.addWidget(self.window)
        form.addRow("Suggestions", row)
        form.addRow("Rank by", self.score)
        form.addRow(self.run_button)
        form.addRow(self.table)
        cont = QHBoxLayout()
        cont.addWidget(self.steps)
        cont.addWidget(self.continue_button, 1)
        form.addRow(cont)
        self.update_state()

    # -- state ------------------------------------------------------------------------------------

    def set_backend(self, info: Any) -> None:
        super().set_backend(info)
        if info is not None:
            self.refresh_models()

    def update_state(self) -> None:
        self.enable_run(self.backend is not None and self.model.count() > 0,
                        NOT_CONNECTED if self.backend is None else "Fine-tune a model first (section 2)")
        ready = self.backend is not None and self.model.count() > 0
        self.continue_button.setEnabled(ready)
        self.continue_button.setToolTip(self.continue_button.toolTip() if ready else
                                        (NOT_CONNECTED if self.backend is None else "Fine-tune a model first"))

    def refresh_models(self) -> None:
        if self.backend is not None:
            self.client.get("models", on_ok=self._on_models, on_error=lambda _e: None)

    def selected_model(self) -> ModelEntry | None:
        return current_model(self.model, self._models)

    def select_model(self, path: str) -> bool:
        return select_model_path(self.model, path)

    # -- suggest ----------------------------------------------------------------------------------

    def params(self) -> dict[str, Any] | None:
        """``SuggestParams`` as JSON, or None after reporting what is missing."""
        model = self.selected_model()
        if model is None:
            self.error.emit(LayerError("Suggest: choose a model (fine-tune one in section 2 first)."))
            return None
        layer = self.raster.currentLayer()
        if not isinstance(layer, QgsRasterLayer):
            self.error.emit(LayerError("Suggest: choose the raster layer to look at."))
            return None
        files = self.raster_files([layer])
        if files is None:
            return None
        window = self.window.value() // 4 * 4
        out = Path(files[0]).with_name(f"{Path(files[0]).stem}_{safe_name(model.name)}_label_next.gpkg")
        params: dict[str, Any] = {"model": model.path, "raster": files[0], "out": str(out),
                                  "k": self.count.value(), "window": window, "score": self.score.currentData()}
        polygons = self.polygons.currentLayer()
        if isinstance(polygons, QgsVectorLayer):
            field = self.class_field.currentField()
            if not field:
                self.error.emit(LayerError(f"Suggest: choose the class field of '{polygons.name()}'."))
                return None
            source = self.saved_polygons(polygons)
            if source is None:
                return None
            params.update(labels=source[0], class_field=field)
            if source[1]:
                params["layer"] = source[1]
        return params

    def submit(self) -> None:
        params = self.job_params()
        if params is None:
            return
        model = self.selected_model()
        self.post_job("suggest", params, "Suggestions not started",
                      on_success=lambda done: self.show_result(done, model))

    def show_result(self, job: dict, model: ModelEntry | None = None) -> QgsVectorLayer:
        """Put finished suggestions on the map and in the list."""
        result = job.get("result") or {}
        path = result.get("suggestions") or (job.get("params") or {}).get("out")
        if not path:
            raise LayerError("The suggestions finished but the backend did not say where they are.")
        if self.result_layer is not None and self.result_layer.id() in self.project.mapLayers():
            self.project.removeMapLayer(self.result_layer.id())  # the new list replaces the old one
        self.result_layer = add_suggestion_layer(path, self.project)
        self.last_model = model or self.selected_model()
        self.items = list(result.get("items") or [])
        self.table.setRowCount(0)
        for row, item in enumerate(self.items):
            self.table.insertRow(row)
            self.table.setItem(row, 0, QTableWidgetItem(str(item.get("rank", row + 1))))
            why = QTableWidgetItem(str(item.get("reason", "")))
            why.setToolTip(f"{item.get('class_1')} {item.get('p_1')} · {item.get('class_2')} {item.get('p_2')}")
            self.table.setItem(row, 1, why)
            button = QToolButton(self.table)
            button.setText("Zoom")
            button.setObjectName(f"geosslZoomSuggestion{row + 1}")
            button.clicked.connect(lambda _checked=False, r=row: self.zoom_to(r))
            self.table.setCellWidget(row, 2, button)
        for warning in result.get("warnings") or []:
            self.info_message(f"Suggestions: {warning}", Qgis.Warning)
        self.info_message(f"{len(self.items)} places to label next: draw a polygon in each square, save, then "
                          "Continue training.")
        return self.result_layer

    def zoom_to(self, row: int) -> QgsRectangle | None:
        """Show suggestion ``row`` on the map canvas (its square with some ground around it)."""
        if self.canvas is None or not 0 <= row < len(self.items) or self.result_layer is None:
            return None
        rect = zoom_rectangle(self.items[row]["bounds"], self.result_layer.crs(), self.canvas, self.project)
        self.canvas.setExtent(rect)
        self.canvas.refresh()
        self.table.selectRow(row)
        return rect

    # -- continue training ------------------------------------------------------------------------

    def continue_params(self) -> dict[str, Any] | None:
        """A warm-start ``FinetuneParams``: the model's weights, classes and encoder, the current polygons."""
        model = self.last_model or self.selected_model()
        if model is None:
            self.error.emit(LayerError("Continue training: fine-tune a model first."))
            return None
        layer = self.raster.currentLayer()
        polygons = self.polygons.currentLayer()
        if not isinstance(layer, QgsRasterLayer) or not isinstance(polygons, QgsVectorLayer):
            self.error.emit(LayerError("Continue training: choose the raster and the polygon layer."))
            return None
        field = self.class_field.currentField()
        if not field:
            self.error.emit(LayerError(f"Continue training: choose the class field of '{polygons.name()}'."))
            return None
        files = self.raster_files([layer])
        source = self.saved_polygons(polygons) if files is not None else None
        if source is None:
            return None
        params: dict[str, Any] = {"rasters": files, "labels": source[0], "class_field": field,
                                  "init_model": model.path, "steps": self.steps.value()}
        if source[1]:
            params["layer"] = source[1]
        if model.encoder:
            params["encoder"] = model.encoder
        tile = (model.raw.get("tile") or (model.raw.get("config") or {}).get("tile")) if model.raw else None
        if isinstance(tile, int):
            params["tile"] = tile
        params["out"] = model_output(self, f"{safe_name(model.name)}-continued", source[0])
        return params

    def continue_training(self) -> None:
        if self.backend is None:
            self.error.emit(LayerError(f"{NOT_CONNECTED} (Backend section)."))
            return
        params = self.continue_params()
        if params is None:
            return
        self.continue_button.setEnabled(False)
        self.client.post("jobs/finetune", params, on_ok=self._on_continued,
                         on_error=self.request_error("Continue training not started"))

    def _on_continued(self, job: Any) -> None:
        self.update_state()
        if isinstance(job, dict):
            self._jobs.track(job, on_success=lambda done: self._on_continued_done(done))

    def _on_continued_done(self, job: dict) -> None:
        path = (job.get("result") or {}).get("model") or (job.get("params") or {}).get("out")
        self.info_message(f"Training continued: {Path(path).name if path else 'model'} is ready; ask for new "
                          "suggestions with it.")
        self._select_next = path
        self.last_model = None
        self.refresh_models()

    # -- slots ------------------------------------------------------------------------------------

    def _on_models(self, data: Any) -> None:
        current = self.model.currentData()
        self._models = [m for m in parse_models(data) if m.kind == SEGMENTATION]
        fill_model_combo(self.model, self._models)
        if self._select_next and self.select_model(self._select_next):
            self._select_next = None
        elif current:
            self.select_model(current)
        self.update_state()
