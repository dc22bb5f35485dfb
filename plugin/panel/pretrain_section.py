""""1 · Pretrain": unlabeled raster layers → a self-supervised ``pretrain`` job (optional step).

The method list comes from the backend's ``/info`` (its method registry), never from the plugin,
so a method added to the backend shows up here without a plugin release.

The budget is wall time (or steps), and under it the section says what that budget bought in the
backend's measurements (``GET /pretraining/gain``, :mod:`..gain`), in orange where it did not pay:
pretraining costs an hour before the first map, and the user should know before spending it.
"""

from __future__ import annotations

import html
from typing import Any

from qgis.core import QgsProject, QgsRasterLayer
from qgis.gui import QgsMapCanvas
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtWidgets import QComboBox, QFormLayout, QLabel, QLineEdit, QWidget

from ..client import ApiClient, ApiError
from ..gain import OK, WARN, budget_text, gain_path, gain_sentence
from ..layers import LayerError
from .common import (
    JobSection,
    RasterChecklist,
    batch_spinbox,
    extent_box,
    extent_params,
    follow_raster,
    model_output,
    narrow,
    replace_items,
    tile_spinbox,
)
from .finetune_section import DEFAULT_ENCODERS, BudgetInput, encoders_of, safe_name
from .finetune_section import WARN as ORANGE
from .start_from import StartFrom

# Wall-time budgets offered (minutes; None: give steps or epochs instead).
DURATIONS = (("10 min", 10), ("30 min", 30), ("1 h", 60), ("2 h", 120), ("Overnight (8 h)", 480), ("Steps…", None))
DEFAULT_DURATION = "30 min"
LONG_MINUTES = 60  # from here on the section explains checkpoints and resuming
DEFAULT_CHECKPOINT_MINUTES = 10.0  # the backend's, when its /info does not say
DEFAULT_STEPS_PER_EPOCH = 500
NOT_CONNECTED_GAIN = "Connect the backend to see what pretraining bought in our measurements."


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
        self.duration = QComboBox(self)
        self.duration.setObjectName("geosslPretrainDuration")
        self.duration.setToolTip("How long to pretrain: the backend measures a few steps, then fixes the steps "
                                 "that fit (saved with the encoder). Steps… gives a number of steps instead.")
        for text, minutes in DURATIONS:
            self.duration.addItem(text, minutes)
        self.duration.setCurrentText(DEFAULT_DURATION)
        self.budget = BudgetInput(1000, "steps", self)
        for combo in (self.method, self.encoder, self.start_from, self.duration):
            narrow(combo)
        self.gain_label = QLabel(NOT_CONNECTED_GAIN, self)
        self.gain_label.setObjectName("geosslPretrainGain")
        self.gain_label.setWordWrap(True)
        self.gain_label.setTextFormat(Qt.RichText)
        self.long_label = QLabel(self)
        self.long_label.setObjectName("geosslPretrainLong")
        self.long_label.setWordWrap(True)
        self.long_label.setTextFormat(Qt.RichText)
        self._gains: dict[str, tuple[str, str]] = {}  # request path → (sentence, level), per connection
        self._asked: str | None = None  # the request whose answer the label shows (or waits for)
        self._gain_timer = QTimer(self)  # one request after a burst of changes (typing steps)
        self._gain_timer.setSingleShot(True)
        self._gain_timer.setInterval(150)
        self._gain_timer.timeout.connect(self._ask_gain)
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
        form.addRow("Training", self.duration)
        form.addRow("", self.budget)
        form.addRow("", self.gain_label)
        form.addRow("", self.long_label)
        form.addRow("Tile", self.tile)
        form.addRow("Batch", self.batch)
        form.addRow("Name", self.model_name)
        form.addRow(self.extent)
        form.addRow(self.run_button)
        self.rasters.itemChanged.connect(self._on_rasters_changed)
        self.duration.currentIndexChanged.connect(self._on_budget_changed)
        self.budget.spin.valueChanged.connect(self.show_gain)
        self.budget.unit.currentIndexChanged.connect(self.show_gain)
        self.method.currentIndexChanged.connect(self.show_gain)
        self.view_bands.textChanged.connect(self.show_gain)
        self._on_budget_changed()
        self.setCollapsed(True)  # optional: keep the dock short for the common path

    def set_backend(self, info: Any) -> None:
        self._gains.clear()  # another backend may have measured otherwise
        self._asked = None
        super().set_backend(info)
        if info is None:
            self.show_gain()
            return
        replace_items(self.method, info.methods)
        replace_items(self.encoder, encoders_of(info))
        self.update_state()
        self.show_gain()

    # -- the budget and what it bought ---------------------------------------------------------------

    def minutes(self) -> float | None:
        """The wall-time budget, or None when the budget is given in steps or epochs."""
        value = self.duration.currentData()
        return None if value is None else float(value)

    def budget_params(self) -> dict[str, Any]:
        minutes = self.minutes()
        return {"minutes": minutes} if minutes is not None else self.budget.as_params()

    def _on_budget_changed(self, *_: Any) -> None:
        self.budget.setVisible(self.minutes() is None)
        self.show_gain()

    def _schema_default(self, name: str, fallback: float) -> float:
        """A ``PretrainParams`` default as the connected backend's /info states it."""
        raw = getattr(self.backend, "raw", None) or {}
        try:
            value = raw["job_types"]["pretrain"]["schema"]["properties"][name]["default"]
        except (KeyError, TypeError):
            return fallback
        return float(value) if isinstance(value, int | float) and value > 0 else fallback

    def gain_path(self) -> str:
        """The ``GET /pretraining/gain`` request for the current method, budget and first ticked raster."""
        minutes = self.minutes()
        steps = None
        if minutes is None:
            steps = self.budget.spin.value()
            if self.budget.unit.currentText() == "epochs":
                steps *= int(self._schema_default("steps_per_epoch", DEFAULT_STEPS_PER_EPOCH))
        rasters = [r for r in self.rasters.checked_layers() if isinstance(r, QgsRasterLayer)]
        bands = rasters[0].bandCount() if rasters else None
        return gain_path(self.method.currentText(), minutes, steps, bands, views=bool(self.view_bands.text().split()))

    def show_gain(self, *_: Any) -> None:
        """Say what the chosen budget bought in the backend's measurements (asked for once per choice)."""
        self._show_long_run()
        if self.backend is None:
            self._asked = None
            self.gain_label.setText(f"<span style='color:gray'>{NOT_CONNECTED_GAIN}</span>")
            return
        if not self.method.currentText():
            self.gain_label.setText("<span style='color:gray'>The backend offers no pretraining method.</span>")
            return
        path = self.gain_path()
        if path in self._gains:
            self._gain_timer.stop()
            self._asked = path
            self._set_gain(*self._gains[path])
            return
        # Not the previous choice's sentence meanwhile: it would be read as this one's.
        self.gain_label.setText("<span style='color:gray'>Looking up what was measured…</span>")
        self._asked = path
        self._gain_timer.start()

    def _ask_gain(self) -> None:
        path = self._asked
        if path is None or self.backend is None or path in self._gains:
            return
        device = str(getattr(self.backend, "device", "cpu")).lower()

        def answered(data: Any) -> None:
            if isinstance(data, dict):
                self._gains[path] = gain_sentence(data, device)
            if path == self._asked and path in self._gains:
                self._set_gain(*self._gains[path])

        def failed(error: ApiError) -> None:
            if path != self._asked:
                return
            if error.status == 404:  # an older backend: nothing measured to quote
                self._gains[path] = ("This backend reports no measured gain (update it); in our tests short "
                                     "pretraining did not beat fine-tuning from scratch.", WARN)
                self._set_gain(*self._gains[path])
            else:
                self.gain_label.setText(f"<span style='color:gray'>What was measured is unknown: "
                                        f"{html.escape(error.message)}</span>")

        self.client.get(path, on_ok=answered, on_error=failed)

    def _set_gain(self, sentence: str, level: str) -> None:
        colour = ORANGE if level == WARN else ("black" if level == OK else "gray")
        self.gain_label.setText(f"<span style='color:{colour}'>{html.escape(sentence)}</span>")
        self.gain_label.setToolTip(sentence)

    def _show_long_run(self) -> None:
        minutes = self.minutes()
        if minutes is None or minutes < LONG_MINUTES:
            self.long_label.clear()
            self.long_label.setVisible(False)
            return
        every = self._schema_default("checkpoint_minutes", DEFAULT_CHECKPOINT_MINUTES)
        self.long_label.setText(
            f"<span style='color:gray'>A long run ({budget_text(minutes)}): it saves its state every {every:g} min. "
            "If QGIS or the backend stops, select the job under <b>Jobs</b> and press <b>Resume</b>: it continues "
            f"where it stopped, losing at most {every:g} min. Jobs shows its progress and the time left.</span>")
        self.long_label.setVisible(True)

    def set_map_canvas(self, canvas: QgsMapCanvas | None) -> None:
        super().set_map_canvas(canvas)
        if canvas is not None:
            self.extent.setMapCanvas(canvas)
        self._on_rasters_changed()

    def _on_rasters_changed(self, *_: Any) -> None:
        checked = self.rasters.checked_layers()
        follow_raster(self.extent, checked[0] if checked else None, self.canvas)
        self.show_gain()  # the band count picks the measured imagery closest to these rasters

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
                "tile": self.tile.value(), "batch": self.batch.value(), **self.budget_params(), **extent,
                **({"view_bands": views} if views else {}), **self.start_from.params()}

    def model_basename(self) -> str:
        return safe_name(self.model_name.text() or f"pretrained-{self.method.currentText()}")

    def submit(self) -> None:
        params = self.job_params()
        if params is None:
            return
        params["out"] = model_output(self, self.model_basename(), params["rasters"][0])
        self.post_job("pretrain", params, "Pretraining not started")
