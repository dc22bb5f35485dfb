"""The backend's model list (``GET /models``) as combo-box entries: fine-tuned models and pretrained encoders."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..layers import ClassInfo


@dataclass(frozen=True)
class ModelEntry:
    """One model file the backend knows about."""

    path: str
    name: str
    kind: str  # SEGMENTATION or PRETRAINED
    encoder: str = ""
    classes: ClassInfo | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def label(self) -> str:
        extra = [self.encoder] if self.encoder else []
        if self.classes is not None:
            extra.append(f"{len(self.classes.names)} classes")
        return f"{self.name} ({', '.join(extra)})" if extra else self.name


SEGMENTATION = "segmentation"  # a fine-tuned model: predicts classes
PRETRAINED = "pretrained"  # a self-supervised encoder: a starting point for fine-tuning


def _kind(data: Mapping[str, Any]) -> str:
    """The checkpoint kind as the backend's ``/models`` reports it."""
    kind = str(data.get("kind") or "").lower()
    if kind.startswith("pretrain"):
        return PRETRAINED
    return SEGMENTATION if kind == SEGMENTATION or data.get("classes") else kind


def parse_models(data: Any) -> list[ModelEntry]:
    """Entries from ``GET /models`` (a list, or ``{"models": [...]}``); unreadable items are skipped."""
    items = data.get("models", []) if isinstance(data, Mapping) else data
    entries = []
    for item in items or []:
        if not isinstance(item, Mapping):
            continue
        path = str(item.get("path") or item.get("file") or "")
        if not path or item.get("error"):  # unreadable model files are listed with a reason; not usable
            continue
        classes = None
        raw_classes = item.get("classes")
        if isinstance(raw_classes, Mapping) and raw_classes.get("names"):
            try:
                classes = ClassInfo.from_dict(raw_classes)
            except (KeyError, TypeError, ValueError):
                classes = None
        config = item.get("config") if isinstance(item.get("config"), Mapping) else {}
        encoder = str(item.get("encoder") or config.get("encoder") or "")
        name = Path(str(item.get("name") or path)).stem
        entries.append(ModelEntry(path=path, name=name, kind=_kind(item), encoder=encoder, classes=classes,
                                  raw=dict(item)))
    return entries


def fill_model_combo(combo: Any, entries: list[ModelEntry], keep: str | None = None) -> None:
    """Refill a model combo box (label shown; the file as data and tooltip), keeping ``keep`` selected."""
    from qgis.PyQt.QtCore import Qt

    combo.clear()
    for entry in entries:
        combo.addItem(entry.label, entry.path)
        combo.setItemData(combo.count() - 1, entry.path, Qt.ToolTipRole)
    if keep:
        select_model_path(combo, keep)


def select_model_path(combo: Any, path: str) -> bool:
    """Select the entry whose file is ``path``; False when the combo does not list it."""
    index = combo.findData(path)
    if index >= 0:
        combo.setCurrentIndex(index)
    return index >= 0


def current_model(combo: Any, entries: list[ModelEntry]) -> ModelEntry | None:
    """The entry selected in ``combo``, if any."""
    path = combo.currentData()
    return next((m for m in entries if m.path == path), None)
