""""4 · Accuracy": a classified map + reference polygons → an ``evaluate`` job; metrics show in Jobs.

Reference polygons should be ones the model never saw (e.g. drawn after training, or a held-out
file): the validation figures of a fine-tune come from the training polygons' own neighbourhood.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import QgsMapLayerProxyModel, QgsProject, QgsRasterLayer, QgsVectorLayer
from qgis.gui import QgsMapLayerComboBox
from qgis.PyQt.QtWidgets import QFormLayout, QLabel, QWidget

from ..client import ApiClient
from ..layers import LayerError
from .common import JobSection, class_field_combo, polygon_combo, show_class_field


class EvaluateSection(JobSection):
    """Builds ``EvaluateParams`` (prediction + labels/class_field) and submits it."""

    def __init__(self, client: ApiClient, jobs: Any, project: QgsProject | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__("4 · Accuracy", client, jobs, project, parent)
        self.setObjectName("geosslEvaluateSection")
        hint = QLabel("<span style='color:gray'>Compare a GeoSSL map with reference polygons the model did not "
                      "train on: OA, Kappa, mIoU and F1 per class.</span>", self)
        hint.setWordWrap(True)
        self.prediction = QgsMapLayerComboBox(self)
        self.prediction.setObjectName("geosslEvaluateMap")
        self.prediction.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.polygons = polygon_combo(self, "geosslReferencePolygons")
        self.class_field = class_field_combo(self)
        self.run_button = self.make_run_button("Evaluate", "geosslRunEvaluate")
        self.polygons.layerChanged.connect(self._on_polygons_changed)

        form = QFormLayout(self)
        form.addRow(hint)
        form.addRow("Map", self.prediction)
        form.addRow("Reference", self.polygons)
        form.addRow("Class field", self.class_field)
        form.addRow(self.run_button)
        self.setCollapsed(True)
        self._on_polygons_changed(self.polygons.currentLayer())

    def show_map(self, layer: QgsRasterLayer) -> None:
        """Offer a freshly added result as the map to check."""
        self.prediction.setLayer(layer)

    def params(self) -> dict[str, Any] | None:
        """``EvaluateParams`` as JSON, or None after reporting what is missing."""
        layer = self.prediction.currentLayer()
        polygons = self.polygons.currentLayer()
        if not isinstance(layer, QgsRasterLayer):
            self.error.emit(LayerError("Accuracy: choose the classified map (a GeoSSL result layer)."))
            return None
        if not isinstance(polygons, QgsVectorLayer) or not self.class_field.currentField():
            self.error.emit(LayerError("Accuracy: choose the reference polygons and their class field."))
            return None
        files = self.raster_files([layer])
        if files is None:
            return None
        prediction = files[0]
        source = self.saved_polygons(polygons)
        if source is None:
            return None
        params: dict[str, Any] = {"prediction": prediction, "labels": source[0],
                                  "class_field": self.class_field.currentField(),
                                  "out": str(Path(prediction).with_name(Path(prediction).stem + "_metrics.json"))}
        if source[1]:
            params["layer"] = source[1]
        return params

    def submit(self) -> None:
        params = self.job_params()
        if params is not None:
            self.post_job("evaluate", params, "Evaluation not started")

    def _on_polygons_changed(self, layer: Any) -> None:
        show_class_field(self.class_field, layer)
