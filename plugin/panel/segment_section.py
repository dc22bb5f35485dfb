""""3 · Segment": a model + a raster layer → a ``predict`` job → styled layers in the "GeoSSL" group.

*Smoother map* is ``PredictParams.tta``: it starts as the backend's default (``/info``'s predict schema)
and is sent only when the user changed it, so the backend's default holds otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import QgsMapLayerProxyModel, QgsProject, QgsRasterLayer
from qgis.gui import QgsFileWidget, QgsMapCanvas, QgsMapLayerComboBox
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import QComboBox, QFormLayout, QHBoxLayout, QToolButton, QWidget

from ..client import ApiClient
from ..layers import ClassInfo, LayerError, add_polygon_layer, add_result_layers
from .common import (
    NOT_CONNECTED,
    JobSection,
    WrappingCheckBox,
    extent_box,
    extent_params,
    follow_raster,
    narrow,
)
from .finetune_section import safe_name
from .models import SEGMENTATION, ModelEntry, current_model, fill_model_combo, parse_models, select_model_path

TTA_TEXT = "Smoother map (8 flips/rotations, 8× slower)"


def predict_default(info: Any, name: str) -> Any:
    """A ``PredictParams`` default as the backend's ``/info`` schema states it (None when it does not)."""
    raw = getattr(info, "raw", None) or {}
    try:
        return raw["job_types"]["predict"]["schema"]["properties"][name].get("default")
    except (KeyError, TypeError, AttributeError):
        return None


class SegmentSection(JobSection):
    """Submits ``PredictParams`` and adds the finished map (and confidence) to the project."""

    result_added = pyqtSignal(object)  # the classified QgsRasterLayer

    def __init__(self, client: ApiClient, jobs: Any, project: QgsProject | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__("3 · Segment", client, jobs, project, parent)
        self.setObjectName("geosslSegmentSection")
        self._models: list[ModelEntry] = []

        self.model = QComboBox(self)
        self.model.setObjectName("geosslModel")
        self.model.setToolTip("Models fine-tuned by this backend")
        self.refresh_button = QToolButton(self)
        self.refresh_button.setText("↻")
        self.refresh_button.setToolTip("Reload the backend's model list")
        self.refresh_button.clicked.connect(self.refresh_models)
        self.export_button = QToolButton(self)
        self.export_button.setObjectName("geosslExportOnnx")
        self.export_button.setText("ONNX")
        self.export_button.setToolTip("Export to ONNX (Deepness): writes <model>.onnx beside the model file")
        self.export_button.clicked.connect(self.export_onnx)
        self.raster = QgsMapLayerComboBox(self)
        self.raster.setObjectName("geosslSegmentRaster")
        self.raster.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.output = QgsFileWidget(self)
        self.output.setObjectName("geosslOutput")
        self.output.setStorageMode(QgsFileWidget.SaveFile)
        self.output.setFilter("GeoTIFF (*.tif *.tiff)")
        self.output.setDialogTitle("Save the classified map as")
        self.output.lineEdit().setPlaceholderText("automatic: next to the raster, <raster>_<model>.tif")
        self.confidence = WrappingCheckBox("Also write a confidence raster", self)
        self.confidence.setChecked(True)
        self.polygons = WrappingCheckBox("Also write polygons", self)
        self.polygons.setObjectName("geosslPolygons")
        self.polygons.setToolTip("A GeoPackage of the classes as polygons (class, name, mean confidence), "
                                 "<map>_polygons.gpkg")
        self.tta = WrappingCheckBox(TTA_TEXT, self)
        self.tta.setObjectName("geosslTta")
        self.tta.setToolTip("Classify each tile 8 times (flipped and rotated) and average: fewer speckles and "
                            "tile seams, 8 times the computing time")
        self._tta_shown = False  # what the box shows while untouched
        self._tta_default: bool | None = None  # the backend's (None: unknown, or a backend without TTA)
        self.extent = extent_box(self, "geosslSegmentExtent")
        self.run_button = self.make_run_button("Segment", "geosslRunSegment")
        narrow(self.model, 6)  # beside two buttons

        model_row = QHBoxLayout()
        model_row.addWidget(self.model, 1)
        model_row.addWidget(self.refresh_button)
        model_row.addWidget(self.export_button)
        form = QFormLayout(self)
        form.addRow("Model", model_row)
        form.addRow("Raster", self.raster)
        form.addRow("Output", self.output)
        form.addRow("", self.confidence)
        form.addRow("", self.polygons)
        form.addRow("", self.tta)
        form.addRow(self.extent)
        form.addRow(self.run_button)
        self.raster.layerChanged.connect(self._on_raster_changed)
        self._on_raster_changed(self.raster.currentLayer())

    # -- state ------------------------------------------------------------------------------------

    def set_backend(self, info: Any) -> None:
        super().set_backend(info)
        if info is None:
            self._tta_default = None
            return
        default = predict_default(info, "tta")
        self._tta_default = default if isinstance(default, bool) else None
        if self._tta_default is not None:
            if self.tta.isChecked() == self._tta_shown:  # untouched: follow the backend's default
                self.tta.setChecked(self._tta_default)
            self._tta_shown = self._tta_default
        self.refresh_models()

    def set_map_canvas(self, canvas: QgsMapCanvas | None) -> None:
        super().set_map_canvas(canvas)
        if canvas is not None:
            self.extent.setMapCanvas(canvas)
        self._on_raster_changed(self.raster.currentLayer())

    def update_state(self) -> None:
        self.enable_run(self.backend is not None and self.model.count() > 0,
                        NOT_CONNECTED if self.backend is None else "Fine-tune a model first (section 2)")
        self.refresh_button.setEnabled(self.backend is not None)
        self.export_button.setEnabled(self.backend is not None and self.model.count() > 0)

    def refresh_models(self) -> None:
        if self.backend is not None:
            self.client.get("models", on_ok=self._on_models, on_error=self.request_error("Model list"))

    def models(self) -> list[ModelEntry]:
        return [m for m in self._models if m.kind == SEGMENTATION]

    def selected_model(self) -> ModelEntry | None:
        return current_model(self.model, self._models)

    def select_model(self, path: str) -> bool:
        return select_model_path(self.model, path)

    # -- request ----------------------------------------------------------------------------------

    def default_output(self, raster: str, model: ModelEntry) -> str:
        source = Path(raster)
        return str(source.with_name(f"{source.stem}_{safe_name(model.name)}.tif"))

    def params(self) -> dict[str, Any] | None:
        """``PredictParams`` as JSON, or None after reporting what is missing."""
        model = self.selected_model()
        if model is None:
            self.error.emit(LayerError("Segment: choose a model (fine-tune one in section 2 first)."))
            return None
        layer = self.raster.currentLayer()
        if not isinstance(layer, QgsRasterLayer):
            self.error.emit(LayerError("Segment: choose the raster layer to classify."))
            return None
        files = self.raster_files([layer])
        if files is None:
            return None
        path = files[0]
        out = self.output.filePath().strip() or self.default_output(path, model)
        if not out.lower().endswith((".tif", ".tiff")):
            out += ".tif"
        extent = extent_params(self.extent)
        if extent is None:
            self.error.emit(LayerError("Segment: the extent is ticked but empty: choose one, or untick it."))
            return None
        params: dict[str, Any] = {"model": model.path, "raster": path, "out": out, **extent}
        if self.confidence.isChecked():
            params["confidence"] = str(Path(out).with_name(Path(out).stem + "_confidence.tif"))
        if self.polygons.isChecked():
            params["vector"] = str(Path(out).with_name(Path(out).stem + "_polygons.gpkg"))
        if self.tta.isChecked() != bool(self._tta_default):  # only a choice that differs from the backend's
            params["tta"] = self.tta.isChecked()
        return params

    def export_onnx(self) -> None:
        """An ``export`` job: the selected model as ONNX for Deepness, beside the model file."""
        model = self.selected_model()
        if self.backend is None or model is None:
            self.error.emit(LayerError("Export to ONNX: connect the backend and choose a model first."))
            return
        out = str(Path(model.path).with_suffix(".onnx"))
        self.post_job("export", {"model": model.path, "out": out}, "Export to ONNX not started",
                      on_success=self._on_exported)

    def _on_exported(self, job: dict) -> None:
        path = (job.get("result") or {}).get("onnx") or (job.get("params") or {}).get("out")
        self.info_message(f"ONNX model for Deepness written to {path} (load it in Deepness as a Segmentor).")

    def submit(self) -> None:
        params = self.job_params()
        if params is None:
            return
        model = self.selected_model()
        layer_name = f"{self.raster.currentLayer().name()} – {model.name if model else 'GeoSSL'}"
        classes = model.classes if model else None
        self.post_job("predict", params, "Segmentation not started",
                      on_success=lambda done: self.add_result(done, layer_name, classes))

    def add_result(self, job: dict, name: str, classes: ClassInfo | None) -> QgsRasterLayer:
        """Put a finished prediction on the map: classes on top, confidence (hidden) under it."""
        result = job.get("result") or {}
        params = job.get("params") or {}
        classes_path = result.get("classes_raster") or params.get("out")
        if not classes_path:
            raise LayerError("The segmentation finished but the backend did not say where the map is.")
        if isinstance(result.get("classes"), dict):
            classes = ClassInfo.from_dict(result["classes"])
        layer, _ = add_result_layers(classes_path, classes, result.get("confidence_raster"), name=name,
                                     project=self.project)
        if result.get("vector"):
            add_polygon_layer(result["vector"], classes, name=f"{name} – polygons", project=self.project)
        self.result_added.emit(layer)
        return layer

    # -- slots ------------------------------------------------------------------------------------

    def _on_raster_changed(self, layer: Any) -> None:
        follow_raster(self.extent, layer if isinstance(layer, QgsRasterLayer) else None, self.canvas)

    def _on_models(self, data: Any) -> None:
        current = self.model.currentData()
        self._models = parse_models(data)
        fill_model_combo(self.model, self.models(), keep=current)
        self.update_state()
