"""What the job sections share: a section that submits jobs, its common widgets, and a raster checklist."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsFieldProxyModel,
    QgsMapLayer,
    QgsMapLayerProxyModel,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.gui import (
    QgsCollapsibleGroupBox,
    QgsExtentGroupBox,
    QgsFieldComboBox,
    QgsMapCanvas,
    QgsMapLayerComboBox,
)
from qgis.PyQt.QtCore import QEvent, QObject, Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ..backend import BackendInfo
from ..client import ApiClient, ApiError
from ..layers import LayerError, UnsavedEditsError, class_field_of, polygon_source, raster_path

SaveQuestion = Callable[[QgsVectorLayer], bool]


def ask_to_save(layer: QgsVectorLayer) -> bool:
    """Ask before committing someone's edits: saving is their decision, not the plugin's."""
    answer = QMessageBox.question(
        None, "GeoSSL", f"Layer '{layer.name()}' has unsaved edits.\n\nSave them now so the backend trains "
        "on the polygons you see?", QMessageBox.Save | QMessageBox.Cancel, QMessageBox.Save)
    return answer == QMessageBox.Save


class Section(QgsCollapsibleGroupBox):
    """A titled part of the dock that turns widgets into one job request.

    Problems go out through ``error`` (ApiError/LayerError → message bar), news through ``message``.
    """

    error = pyqtSignal(object)
    message = pyqtSignal(str, int)

    def __init__(self, title: str, client: ApiClient, project: QgsProject | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(title, parent)
        self.client = client
        self.project = project or QgsProject.instance()
        self.backend: BackendInfo | None = None
        self.save_question: SaveQuestion = ask_to_save  # replaced in tests
        # Where new model files go: the local service's <data-dir>/models (set by the dock); None when
        # unknown (a remote backend), and the model is written beside its input instead.
        self.models_dir: Callable[[], Path | None] = lambda: None
        self.canvas: QgsMapCanvas | None = None

    def set_map_canvas(self, canvas: QgsMapCanvas | None) -> None:
        """QGIS's map canvas (from iface), for extents taken from or drawn on the map (override)."""
        self.canvas = canvas

    def set_backend(self, info: BackendInfo | None) -> None:
        """Connected (info) or not (None): sections enable their Run button accordingly."""
        self.backend = info
        self.update_state()

    def update_state(self) -> None:
        """Re-evaluate which controls are usable (override)."""

    def saved_polygons(self, layer: QgsVectorLayer) -> tuple[str, str | None] | None:
        """The polygon file to send, after offering to save pending edits; None (reported) if unusable."""
        try:
            return polygon_source(layer)
        except UnsavedEditsError as exc:
            if not self.save_question(layer):
                self.error.emit(exc)
                return None
            if not layer.commitChanges():
                errors = "; ".join(layer.commitErrors())
                self.error.emit(LayerError(f"Could not save the edits of '{layer.name()}': {errors}"))
                return None
            layer.startEditing()  # the user was editing: leave them in edit mode
            return self.saved_polygons(layer)
        except LayerError as exc:
            self.error.emit(exc)
            return None

    def raster_files(self, layers: Iterable[QgsRasterLayer]) -> list[str] | None:
        """The files behind raster layers; None (reported) if one is not a file the backend can read."""
        try:
            return [raster_path(layer) for layer in layers]
        except LayerError as exc:
            self.error.emit(exc)
            return None

    def info_message(self, text: str, level: int = Qgis.Info) -> None:
        self.message.emit(text, level)

    def request_error(self, what: str) -> Callable[[ApiError], None]:
        """An error callback that says which action failed, then the backend's explanation."""
        def report(error: ApiError) -> None:
            error.message = f"{what}: {error.message}"
            self.error.emit(error)
            self.update_state()
        return report


NOT_CONNECTED = "Start or connect the backend first"


class JobSection(Section):
    """A section whose Run button turns its widgets into one backend job, then tracks it in ``jobs``.

    Subclasses build ``run_button`` with ``make_run_button``, implement ``params()``, and submit
    through ``job_params()`` and ``post_job()``.
    """

    run_button: QPushButton

    def __init__(self, title: str, client: ApiClient, jobs: Any, project: QgsProject | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(title, client, project, parent)
        self._jobs = jobs

    def make_run_button(self, text: str, object_name: str) -> QPushButton:
        """The button that calls ``submit``."""
        button = QPushButton(text, self)
        button.setObjectName(object_name)
        button.clicked.connect(self.submit)
        return button

    def enable_run(self, ready: bool, why_not: str = NOT_CONNECTED) -> None:
        """Enable the Run button, or disable it with a tooltip that says what is missing."""
        self.run_button.setEnabled(ready)
        self.run_button.setToolTip("" if ready else why_not)

    def update_state(self) -> None:
        self.enable_run(self.backend is not None)

    def submit(self) -> None:
        """Build the request and post it (override)."""

    def params(self) -> dict[str, Any] | None:
        """The job's parameters as JSON, or None after reporting what is missing (override)."""
        raise NotImplementedError

    def job_params(self) -> dict[str, Any] | None:
        """``params()`` when a backend is connected; None (reported) otherwise."""
        if self.backend is None:
            self.error.emit(LayerError(f"{NOT_CONNECTED} (Backend section)."))
            return None
        return self.params()

    def post_job(self, kind: str, params: dict[str, Any], failure: str,
                 on_success: Callable[[dict], Any] | None = None) -> None:
        """Submit a ``kind`` job; once accepted it is tracked (``on_success`` when it finishes well).

        ``failure`` heads the message when the backend refuses it, e.g. "Fine-tune not started".
        """
        self.run_button.setEnabled(False)
        self.client.post(f"jobs/{kind}", params, on_ok=lambda job: self._on_submitted(job, on_success),
                         on_error=self.request_error(failure))

    def _on_submitted(self, job: Any, on_success: Callable[[dict], Any] | None) -> None:
        self.update_state()
        if isinstance(job, dict):
            self._jobs.track(job, on_success=on_success)


def tile_spinbox(parent: QWidget, minimum: int, default: int) -> QSpinBox:
    """Tile size in pixels, up to 2048 in steps of 16."""
    spin = QSpinBox(parent)
    spin.setRange(minimum, 2048)
    spin.setSingleStep(16)
    spin.setValue(default)
    spin.setSuffix(" px")
    return spin


def batch_spinbox(parent: QWidget, minimum: int, maximum: int, default: int) -> QSpinBox:
    """Tiles per training batch."""
    spin = QSpinBox(parent)
    spin.setRange(minimum, maximum)
    spin.setValue(default)
    return spin


def narrow(combo: QComboBox, characters: int = 8) -> QComboBox:
    """Let a combo box be narrower than its longest entry (elided), so the dock fits its default width."""
    combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(characters)
    return combo


class WrappingCheckBox(QWidget):
    """A check box whose text wraps (a QCheckBox's never does), so a long option fits a narrow dock.

    Clicking the text toggles it, as with a QCheckBox; ``isChecked``/``setChecked``/``toggled`` are the box's.
    """

    toggled = pyqtSignal(bool)

    def __init__(self, text: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.box = QCheckBox(self)
        self.label = QLabel(text, self)
        self.label.setWordWrap(True)
        self.label.installEventFilter(self)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.box, 0, Qt.AlignTop)
        layout.addWidget(self.label, 1)
        self.box.toggled.connect(self.toggled)

    def text(self) -> str:
        return self.label.text()

    def isChecked(self) -> bool:  # noqa: N802 (the QCheckBox name)
        return self.box.isChecked()

    def setChecked(self, checked: bool) -> None:  # noqa: N802 (the QCheckBox name)
        self.box.setChecked(checked)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt API name)
        if watched is self.label and event.type() == QEvent.MouseButtonRelease and self.isEnabled():
            self.box.toggle()
            return True
        return super().eventFilter(watched, event)


def polygon_combo(parent: QWidget, object_name: str) -> QgsMapLayerComboBox:
    """A choice of polygon layer, possibly none."""
    combo = QgsMapLayerComboBox(parent)
    combo.setObjectName(object_name)
    combo.setFilters(QgsMapLayerProxyModel.PolygonLayer)
    combo.setAllowEmptyLayer(True)
    return combo


def class_field_combo(parent: QWidget) -> QgsFieldComboBox:
    """A choice of the text or integer field that holds each polygon's class (empty until one is found)."""
    combo = QgsFieldComboBox(parent)
    combo.setFilters(QgsFieldProxyModel.String | QgsFieldProxyModel.Int | QgsFieldProxyModel.LongLong)
    combo.setAllowEmptyFieldName(True)
    return combo


def show_class_field(combo: QgsFieldComboBox, layer: QgsMapLayer | None) -> None:
    """Offer ``layer``'s fields and preselect its class field (``class_field_of``), else none.

    None rather than the first field: that is often ``fid``, and trained on, every polygon would
    be a class of its own. An empty choice makes the section ask for the field instead.
    """
    combo.setLayer(layer)
    combo.setField((class_field_of(layer) if isinstance(layer, QgsVectorLayer) else None) or "")


def extent_box(parent: QWidget, object_name: str) -> QgsExtentGroupBox:
    """An optional area of interest, off by default (the whole raster); a checkable group box.

    Its content shows only while ticked: QGIS's extent buttons sit in one row, wider than the dock's
    default width, and unticked they would widen the dock for nothing.
    """
    box = QgsExtentGroupBox(parent)
    box.setObjectName(object_name)
    box.setTitleBase("Limit to extent")  # QGIS adds what is chosen: "Limit to extent (current: layer)"
    box.setCheckable(True)
    box.setChecked(False)
    box.setToolTip("Process only this part of the raster (canvas extent, a layer's extent, or drawn)")
    box.setSaveCollapsedState(False)  # folded or not follows the tick, not the last session

    def show_content(checked: bool) -> None:
        for child in box.children():
            if isinstance(child, QWidget) and child.objectName() != "collapseButton":
                child.setVisible(checked)
        box.setCollapsed(not checked)  # no empty frame under the title either

    box.toggled.connect(show_content)
    show_content(False)
    return box


def follow_raster(box: QgsExtentGroupBox, layer: QgsMapLayer | None, canvas: QgsMapCanvas | None = None) -> None:
    """Express the extent in ``layer``'s CRS and offer its extent as the "original" one.

    The backend crops in raster pixels, so the extent is sent in the raster's own CRS: QGIS
    reprojects a canvas extent or a drawn rectangle into it, not the backend.
    """
    if layer is None or not layer.isValid():
        return
    box.setOriginalExtent(layer.extent(), layer.crs())
    if canvas is not None:
        box.setCurrentExtent(canvas.extent(), canvas.mapSettings().destinationCrs())
    else:
        box.setCurrentExtent(layer.extent(), layer.crs())
    box.setOutputCrs(layer.crs())


def crs_text(crs: QgsCoordinateReferenceSystem) -> str:
    """``EPSG:32633`` when the CRS has an authority id, else its WKT (a custom CRS)."""
    return crs.authid() or crs.toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED)


def extent_params(box: QgsExtentGroupBox) -> dict[str, Any] | None:
    """``{"extent": [xmin, ymin, xmax, ymax], "extent_crs": ...}`` when the box is ticked, ``{}`` when not,
    None when it is ticked but holds no usable extent (the caller reports it)."""
    if not box.isChecked():
        return {}
    rect = box.outputExtent()
    if rect.isNull() or rect.isEmpty() or not box.outputCrs().isValid():
        return None
    return {"extent": [rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()],
            "extent_crs": crs_text(box.outputCrs())}


def replace_items(combo: QComboBox, items: Iterable[str]) -> None:
    """Offer ``items`` instead, keeping the current choice when it is still among them."""
    current = combo.currentText()
    combo.clear()
    combo.addItems(list(items))
    if current and combo.findText(current) >= 0:
        combo.setCurrentText(current)


def unique_path(path: Path) -> Path:
    """``path``, or ``name-2.ext``, ``name-3.ext``… if taken: a new run never overwrites an older model."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def model_output(section: Section, name: str, beside: str) -> str:
    """The model file for a new job: in the service's models folder when known, else beside an input."""
    folder = section.models_dir() or Path(beside).parent
    return str(unique_path(folder / f"{name}.pt"))


class RasterChecklist(QListWidget):
    """The project's raster layers with a check box each; follows layers being added and removed."""

    def __init__(self, project: QgsProject, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._project = project
        self.setObjectName("geosslRasterChecklist")
        self.setMaximumHeight(90)
        project.layersAdded.connect(self.refresh)
        project.layersRemoved.connect(self.refresh)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        checked = {layer.id() for layer in self.checked_layers()}
        self.clear()
        for layer in self._project.mapLayers().values():
            if isinstance(layer, QgsRasterLayer) and layer.type() == QgsMapLayer.RasterLayer:
                item = QListWidgetItem(layer.name(), self)
                item.setData(Qt.UserRole, layer.id())
                item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
                item.setCheckState(Qt.Checked if layer.id() in checked else Qt.Unchecked)
                item.setToolTip(layer.source())

    def layer_ids(self) -> list[str]:
        return [self.item(i).data(Qt.UserRole) for i in range(self.count())]

    def checked_layers(self) -> list[QgsRasterLayer]:
        layers = []
        for i in range(self.count()):
            item = self.item(i)
            layer = self._project.mapLayer(item.data(Qt.UserRole)) if item.checkState() == Qt.Checked else None
            if layer is not None:
                layers.append(layer)
        return layers

    def set_checked(self, layers: list[QgsMapLayer]) -> None:
        wanted = {layer.id() for layer in layers}
        for i in range(self.count()):
            item = self.item(i)
            item.setCheckState(Qt.Checked if item.data(Qt.UserRole) in wanted else Qt.Unchecked)
