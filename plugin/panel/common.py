"""What the job sections share: a collapsible section that submits jobs, and a raster checklist."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from qgis.core import Qgis, QgsMapLayer, QgsProject, QgsRasterLayer, QgsVectorLayer
from qgis.gui import QgsCollapsibleGroupBox
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import QListWidget, QListWidgetItem, QMessageBox, QWidget

from ..backend import BackendInfo
from ..client import ApiClient, ApiError
from ..layers import LayerError, UnsavedEditsError, polygon_source

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

    def info_message(self, text: str, level: int = Qgis.Info) -> None:
        self.message.emit(text, level)

    def request_error(self, what: str) -> Callable[[ApiError], None]:
        """An error callback that says which action failed, then the backend's explanation."""
        def report(error: ApiError) -> None:
            error.message = f"{what}: {error.message}"
            self.error.emit(error)
            self.update_state()
        return report


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
