""""Start from": what a training job's encoder starts from, as a combo box that builds the job parameters.

Random weights, ImageNet weights the backend finds in its local caches (it never downloads them; it
answers which file to fetch), encoders pretrained in section 1, or a weight file the user has
(a GeoSSL checkpoint, or a torchvision/timm/torchgeo ResNet state dict such as SSL4EO-S12 weights).
The backend tells those files apart and adapts them to the rasters' bands; the panel only sends the path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QComboBox, QFileDialog, QWidget

RANDOM, IMAGENET, PRETRAINED, FILE, PICK = "random", "imagenet", "pretrained", "file", "pick"
RANDOM_TEXT = "random weights (no pretraining)"
IMAGENET_TEXT = "ImageNet weights (cached)"
PICK_TEXT = "Weight file…"
WEIGHT_FILTER = "Weights (*.pt *.pth *.ckpt *.safetensors);;All files (*)"
_KIND_ROLE = Qt.UserRole + 2
ENCODER_ROLE = Qt.UserRole + 1  # the encoder of a pretrained entry: it fixes the architecture


def ask_weight_file(parent: QWidget | None) -> str:
    path, _ = QFileDialog.getOpenFileName(parent, "Start from a weight file", "", WEIGHT_FILTER)
    return path


class StartFrom(QComboBox):
    """The choices, in order: random, ImageNet, pretrained encoders, weight files picked so far, "Weight file…"."""

    def __init__(self, parent: QWidget | None = None, random_text: str = RANDOM_TEXT) -> None:
        super().__init__(parent)
        self._random_text = random_text
        self._pretrained: list[tuple[str, str, str]] = []  # (label, path, encoder)
        self._files: list[str] = []
        self._previous = 0
        self.pick_file: Callable[[], str] = lambda: ask_weight_file(self)  # replaced in tests
        self.setToolTip("What the encoder starts from. ImageNet weights must already be in the backend's torch "
                        "cache; a weight file may be a GeoSSL encoder or a torchvision/timm/torchgeo ResNet "
                        "state dict (its first layer is adapted to the rasters' bands).")
        self._fill()
        self.currentIndexChanged.connect(self._on_changed)

    # -- entries ----------------------------------------------------------------------------------

    def set_pretrained(self, entries: Iterable[tuple[str, str, str]]) -> None:
        """The pretrained encoders to offer as (label, path, encoder); the current choice is kept."""
        self._pretrained = list(entries)
        self._fill()

    def add_file(self, path: str) -> None:
        """Offer ``path`` (once) and choose it."""
        if path not in self._files:
            self._files.append(path)
            self._fill()
        self.setCurrentIndex(self._find(FILE, path))

    def kind(self) -> str:
        return str(self.itemData(self.currentIndex(), _KIND_ROLE) or RANDOM)

    def encoder(self) -> str | None:
        """The encoder a pretrained entry needs, else None."""
        return self.itemData(self.currentIndex(), ENCODER_ROLE) or None

    def params(self) -> dict[str, Any]:
        """The job parameters of the choice: ``{}``, ``{"encoder_weights": "imagenet"}`` or ``{"init": path}``."""
        kind = self.kind()
        if kind == IMAGENET:
            return {"encoder_weights": "imagenet"}
        if kind in (PRETRAINED, FILE):
            return {"init": str(self.currentData())}
        return {}

    # -- internals --------------------------------------------------------------------------------

    def _add(self, text: str, kind: str, path: str | None = None, encoder: str | None = None) -> None:
        self.addItem(text, path)
        index = self.count() - 1
        self.setItemData(index, kind, _KIND_ROLE)
        if encoder:
            self.setItemData(index, encoder, ENCODER_ROLE)
        if path:
            self.setItemData(index, path, Qt.ToolTipRole)

    def _find(self, kind: str, path: str | None = None) -> int:
        return next((i for i in range(self.count()) if self.itemData(i, _KIND_ROLE) == kind
                     and (path is None or self.itemData(i) == path)), -1)

    def _fill(self) -> None:
        kind, path = self.kind(), self.currentData()
        self.blockSignals(True)
        self.clear()
        self._add(self._random_text, RANDOM)
        self._add(IMAGENET_TEXT, IMAGENET)
        for label, model, encoder in self._pretrained:
            self._add(label, PRETRAINED, model, encoder)
        for file in self._files:
            self._add(f"Weight file: {Path(file).name}", FILE, file)
        self._add(PICK_TEXT, PICK)
        index = self._find(kind, path if kind in (PRETRAINED, FILE) else None)
        self.setCurrentIndex(max(0, index))
        self._previous = self.currentIndex()
        self.blockSignals(False)

    def _on_changed(self, index: int) -> None:
        if self.itemData(index, _KIND_ROLE) != PICK:
            self._previous = index
            return
        path = self.pick_file()
        if path:
            self.add_file(path)
        else:  # cancelled: back to what was chosen before
            self.setCurrentIndex(self._previous)
