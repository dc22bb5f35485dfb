""""2 · Fine-tune": rasters + a polygon layer with a class field → a ``finetune`` job.

Class colours come from the polygon layer's categorized style when it classifies by the chosen
field, so the map comes out in the colours the user already picked for the polygons.

The recipe is the backend's (``FinetuneParams``, quoted by ``/info`` as ``finetune_defaults``): the
panel sends a budget only when the user picks one, tile and batch only when changed from the
backend's defaults, and nothing else of the recipe, so a backend with a re-tuned recipe is
followed without a plugin release.
"""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import Callable
from typing import Any

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsMapLayer,
    QgsProject,
    QgsRasterLayer,
    QgsUnitTypes,
    QgsVectorLayer,
)
from qgis.PyQt import sip
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..client import ApiClient
from ..gain import budget_text
from ..layers import LayerError, class_colours, class_counts, create_label_layer
from .common import (
    JobSection,
    RasterChecklist,
    batch_spinbox,
    class_field_combo,
    model_output,
    narrow,
    polygon_combo,
    replace_items,
    show_class_field,
    tile_spinbox,
)
from .models import PRETRAINED, ModelEntry, parse_models
from .start_from import StartFrom

DEFAULT_ENCODERS = ("resnet18", "resnet34", "resnet50")
DEFAULT_BUDGET, STEPS_BUDGET = "default", "steps"  # the Training combo's non-minute choices
BUDGETS = (("2 min (quick look)", 2), ("15 min", 15), ("30 min", 30), ("1 h", 60), ("Steps…", STEPS_BUDGET))
BUDGET_HINT = ("the backend measures a few steps, then trains what fits; the model records the steps "
               "(reproducible)")
PANEL_DEFAULTS = {"tile": 128, "batch": 8}  # shown until a backend states its own (finetune_defaults)


def finetune_defaults(info: Any) -> dict[str, Any]:
    """``/info``'s ``finetune_defaults`` ({} from a backend too old to state them)."""
    raw = getattr(info, "raw", None) or {}
    defaults = raw.get("finetune_defaults") if isinstance(raw, dict) else None
    return defaults if isinstance(defaults, dict) else {}


def default_budget_text(defaults: dict[str, Any]) -> str:
    """The Training combo's first entry: "Default (≈ 8 min)", or "Default (the backend's)" while unknown."""
    minutes, steps = defaults.get("minutes"), defaults.get("steps")
    if isinstance(minutes, int | float) and minutes > 0:
        return f"Default (≈ {budget_text(float(minutes))})"
    if isinstance(steps, int) and steps > 0:
        return f"Default ({budget_text(steps=steps)})"
    return "Default (the backend's)"


def encoders_of(info: Any) -> tuple[str, ...]:
    """The encoders the backend offers (``/info``'s ``encoders`` when present)."""
    raw = getattr(info, "raw", None) or {}
    encoders = raw.get("encoders") if isinstance(raw, dict) else None
    return tuple(str(e) for e in encoders) if isinstance(encoders, list) and encoders else DEFAULT_ENCODERS


def safe_name(text: str, default: str = "model") -> str:
    """A file-name-safe model name from a layer name."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text.strip()).strip("._")
    return name or default


WARN = "#d07000"  # orange: worth fixing before training, not an error
_LAYER_EDIT_SIGNALS = ("featureAdded", "featuresDeleted", "geometryChanged", "attributeValueChanged",
                       "afterCommitChanges", "afterRollBack", "dataChanged")


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def counts_html(counts: dict[Any, tuple[int, float]], pixel_area: float | None = None,
                unit: str = "map units²") -> str:
    """Per class: polygons and area (in pixels when ``pixel_area`` is known), then warnings in orange.

    Fewer than 2 polygons in a class leaves none for validation; fewer than 2 classes has nothing
    to separate: both are worth seeing before a job is spent on them.
    """
    if not counts:
        return f"<span style='color:{WARN}'>No polygons yet: draw at least 2 per class, 2 classes or more.</span>"
    rows, warnings = [], []
    for value in sorted(counts, key=lambda v: (v is None, str(v))):
        n, area = counts[value]
        name = "(no class)" if value is None else html.escape(str(int(value)) if isinstance(value, float)
                                                             and value.is_integer() else str(value))
        size = f"{_number(area / pixel_area)} px" if pixel_area else f"{_number(area)} {unit}"
        style = f" style='color:{WARN}'" if n < 2 or value is None else ""
        rows.append(f"<tr{style}><td>{name}</td><td align='right'>&nbsp;{n}</td>"
                    f"<td align='right'>&nbsp;{size}</td></tr>")
        if value is None:
            warnings.append(f"{n} polygon(s) have no class: they are ignored.")
        elif n < 2:
            warnings.append(f"'{name}' has {n} polygon: it cannot be validated (draw at least 2).")
    if len([v for v in counts if v is not None]) < 2:
        warnings.append("Fewer than 2 classes: draw polygons of at least 2 classes.")
    table = ("<table><tr><th align='left'>class</th><th>&nbsp;polygons</th><th>&nbsp;area</th></tr>"
             + "".join(rows) + "</table>")
    return table + "".join(f"<div style='color:{WARN}'>⚠ {w}</div>" for w in warnings)


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
        self._watched: QgsVectorLayer | None = None  # the layer whose edit signals refresh the counts
        # Makes the new label layer the active one (iface.setActiveLayer), so digitising starts at once.
        self.activate_layer: Callable[[QgsMapLayer], Any] = lambda _layer: None

        self.rasters = RasterChecklist(self.project, self)
        self.rasters.setToolTip("Rasters the polygons were drawn on (several only if they have the same bands)")
        self.polygons = polygon_combo(self, "geosslPolygonLayer")
        self.new_layer_button = QPushButton("New label layer…", self)
        self.new_layer_button.setObjectName("geosslNewLabelLayer")
        self.new_layer_button.setToolTip("Create a polygon GeoPackage with a 'class' field, styled by class, "
                                         "and start drawing in it")
        self.new_layer_button.clicked.connect(self._ask_new_label_layer)
        self.class_field = class_field_combo(self)
        self.class_field.setObjectName("geosslClassField")
        self.counts_label = QLabel(self)
        self.counts_label.setObjectName("geosslClassCounts")
        self.counts_label.setWordWrap(True)
        self.counts_label.setTextFormat(Qt.RichText)
        self._counts_timer = QTimer(self)  # one recount after a burst of edits, not one per feature
        self._counts_timer.setSingleShot(True)
        self._counts_timer.setInterval(150)
        self._counts_timer.timeout.connect(self.show_counts)
        self.colours_label = QLabel(self)
        self.colours_label.setWordWrap(True)
        self.encoder = QComboBox(self)
        self.encoder.addItems(DEFAULT_ENCODERS)
        self.start_from = StartFrom(self)
        self.start_from.setObjectName("geosslStartFrom")
        self.duration = QComboBox(self)
        self.duration.setObjectName("geosslFinetuneDuration")
        self.duration.setToolTip("How long to train. Default: the backend's budget; a time budget is planned "
                                 "by measuring a few steps; Steps… gives a number of steps or epochs instead.")
        self.duration.addItem(default_budget_text({}), DEFAULT_BUDGET)
        for text, minutes in BUDGETS:
            self.duration.addItem(text, minutes)
        self.budget = BudgetInput(300, "steps", self)
        self.budget_hint = QLabel(f"<span style='color:gray'>{BUDGET_HINT}</span>", self)
        self.budget_hint.setObjectName("geosslFinetuneBudgetHint")
        self.budget_hint.setWordWrap(True)
        self.tile = tile_spinbox(self, 32, PANEL_DEFAULTS["tile"])
        self.batch = batch_spinbox(self, 1, 512, PANEL_DEFAULTS["batch"])
        self._shown_defaults = dict(PANEL_DEFAULTS)  # what the spin boxes show while untouched
        self._backend_defaults: dict[str, int] = {}  # the connected backend's tile/batch defaults
        for combo in (self.encoder, self.start_from, self.duration):
            narrow(combo)
        self.model_name = QLineEdit(self)
        self.model_name.setPlaceholderText("model name (default: the polygon layer's name)")
        self.run_button = self.make_run_button("Fine-tune", "geosslRunFinetune")

        form = QFormLayout(self)
        form.addRow("Rasters", self.rasters)
        form.addRow("Polygons", self.polygons)
        form.addRow("", self.new_layer_button)  # its own row: beside it the layer name had no room left
        form.addRow("Class field", self.class_field)
        form.addRow("", self.counts_label)
        form.addRow("", self.colours_label)
        form.addRow("Encoder", self.encoder)
        form.addRow("Start from", self.start_from)
        form.addRow("Training", self.duration)
        under_budget = QVBoxLayout()  # one row: the hidden one of the two leaves no gap
        under_budget.setContentsMargins(0, 0, 0, 0)
        under_budget.addWidget(self.budget)
        under_budget.addWidget(self.budget_hint)
        form.addRow("", under_budget)
        form.addRow("Tile", self.tile)
        form.addRow("Batch", self.batch)
        form.addRow("Name", self.model_name)
        form.addRow(self.run_button)

        self.polygons.layerChanged.connect(self._on_polygons_changed)
        self.class_field.fieldChanged.connect(self._show_colours)
        self.class_field.fieldChanged.connect(self.show_counts)
        self.rasters.itemChanged.connect(self.show_counts)  # the pixel size comes from a ticked raster
        self.start_from.currentIndexChanged.connect(self._on_start_changed)
        self.duration.currentIndexChanged.connect(self._on_budget_changed)
        self._on_budget_changed()
        self._on_polygons_changed(self.polygons.currentLayer())

    # -- state ------------------------------------------------------------------------------------

    def set_backend(self, info: Any) -> None:
        super().set_backend(info)
        if info is not None:
            replace_items(self.encoder, encoders_of(info))
            self._follow_defaults(finetune_defaults(info))
            self.refresh_models()
        else:  # unknown again: nothing promised, and what the spin boxes show is sent as is
            self.duration.setItemText(0, default_budget_text({}))
            self._backend_defaults = {}

    def _follow_defaults(self, defaults: dict[str, Any]) -> None:
        """Show the backend's default budget, tile and batch; a value the user changed stays."""
        self.duration.setItemText(0, default_budget_text(defaults))
        self._backend_defaults = {}
        for name, spin in (("tile", self.tile), ("batch", self.batch)):
            value = defaults.get(name)
            if not isinstance(value, int) or not spin.minimum() <= value <= spin.maximum():
                continue
            if spin.value() == self._shown_defaults[name]:
                spin.setValue(value)
            self._shown_defaults[name] = value
            self._backend_defaults[name] = value

    # -- budget -----------------------------------------------------------------------------------

    def budget_params(self) -> dict[str, Any]:
        """``{}`` (the backend's default budget), ``{"minutes": m}``, or ``{"steps"|"epochs": n}``."""
        choice = self.duration.currentData()
        if choice == DEFAULT_BUDGET:
            return {}
        if choice == STEPS_BUDGET:
            return self.budget.as_params()
        return {"minutes": float(choice)}

    def use_steps(self, steps: int, unit: str = "steps") -> None:
        """Choose *Steps…* with ``steps`` steps (or epochs), as a user would."""
        self.duration.setCurrentIndex(self.duration.findData(STEPS_BUDGET))
        self.budget.unit.setCurrentText(unit)
        self.budget.spin.setValue(steps)

    def recipe_params(self) -> dict[str, int]:
        """Tile and batch, each only when it differs from the backend's default (or that is unknown)."""
        values = {"tile": self.tile.value(), "batch": self.batch.value()}
        return {k: v for k, v in values.items() if self._backend_defaults.get(k) != v}

    def _on_budget_changed(self, *_: Any) -> None:
        steps = self.duration.currentData() == STEPS_BUDGET
        self.budget.setVisible(steps)
        self.budget_hint.setVisible(not steps)

    def refresh_models(self) -> None:
        if self.backend is not None:
            self.client.get("models", on_ok=self._on_models, on_error=lambda _e: None)

    def colours(self) -> dict[str, str]:
        layer = self.polygons.currentLayer()
        return class_colours(layer, self.class_field.currentField()) if isinstance(layer, QgsVectorLayer) else {}

    def pixel_area(self, layer: QgsVectorLayer) -> float | None:
        """Area of one pixel of the first ticked raster, when it shares the polygons' CRS (else None)."""
        rasters = [r for r in self.rasters.checked_layers() if isinstance(r, QgsRasterLayer)]
        if not rasters or rasters[0].crs() != layer.crs():
            return None
        area = rasters[0].rasterUnitsPerPixelX() * rasters[0].rasterUnitsPerPixelY()
        return area if area > 0 else None

    def show_counts(self, *_: Any) -> None:
        """Polygons and area per class of the chosen layer and field, with warnings (see ``counts_html``)."""
        layer = self.polygons.currentLayer()
        field = self.class_field.currentField()
        if not isinstance(layer, QgsVectorLayer) or not field:
            self.counts_label.clear()
            return
        unit = QgsUnitTypes.toAbbreviatedString(layer.crs().mapUnits()) + "²" if layer.crs().isValid() else "units²"
        self.counts_label.setText(counts_html(class_counts(layer, field), self.pixel_area(layer), unit))

    # -- new label layer --------------------------------------------------------------------------

    def label_crs(self) -> QgsCoordinateReferenceSystem:
        """The first ticked raster's CRS (polygons drawn on it need no reprojection), else the project's."""
        rasters = self.rasters.checked_layers()
        return rasters[0].crs() if rasters else self.project.crs()

    def new_label_layer(self, path: str, field: str = "class") -> QgsVectorLayer | None:
        """Create a label GeoPackage at ``path``, add it, pick it here and start editing it."""
        try:
            layer = create_label_layer(path, field, self.label_crs())
        except LayerError as exc:
            self.error.emit(exc)
            return None
        self.project.addMapLayer(layer)
        self.polygons.setLayer(layer)
        self.class_field.setField(field)
        layer.startEditing()
        self.activate_layer(layer)
        self.info_message(f"Draw polygons in '{layer.name()}' and type each one's class; save the edits "
                          "before fine-tuning.")
        return layer

    def _ask_new_label_layer(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "New label layer", "", "GeoPackage (*.gpkg)")
        if path:
            self.new_label_layer(path)

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
            "rasters": paths, "labels": labels, "class_field": field, "encoder": self.encoder.currentText(),
            **self.recipe_params(), **self.budget_params(),
        }
        if sublayer:
            params["layer"] = sublayer
        if out:
            params["out"] = out
        params.update(self.start_from.params())  # random, ImageNet, a pretrained encoder or a weight file
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
        show_class_field(self.class_field, layer)  # the styled field, a class-like name, never fid
        self._watch(layer if isinstance(layer, QgsVectorLayer) else None)
        self._show_colours()
        self.show_counts()

    def _recount_soon(self, *_: Any) -> None:
        self._counts_timer.start()  # not connected directly: start(int) would take a feature id as msec

    def _watch(self, layer: QgsVectorLayer | None) -> None:
        """Recount when the chosen layer's features change (drawn, deleted, reclassified, saved)."""
        if self._watched is not None and not sip.isdeleted(self._watched):
            for name in _LAYER_EDIT_SIGNALS:
                with contextlib.suppress(TypeError):  # never connected (layer picked before this code ran)
                    getattr(self._watched, name).disconnect(self._recount_soon)
        self._watched = layer
        if layer is not None:
            for name in _LAYER_EDIT_SIGNALS:
                getattr(layer, name).connect(self._recount_soon)

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
        self.start_from.set_pretrained((m.label, m.path, m.encoder) for m in self._models if m.kind == PRETRAINED)

    def _on_start_changed(self, _index: int) -> None:
        encoder = self.start_from.encoder()
        if encoder and self.encoder.findText(encoder) >= 0:
            self.encoder.setCurrentText(encoder)  # a pretrained encoder fixes the architecture
