"""A coloured dot with a word next to it: the backend's state readable at a glance, and by tests."""

from __future__ import annotations

from enum import Enum

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor, QPainter, QPixmap
from qgis.PyQt.QtWidgets import QHBoxLayout, QLabel, QWidget


class BackendState(Enum):
    """The states the panel distinguishes; the value is the word shown to the user."""

    UNKNOWN = "not checked"
    STARTING = "starting…"
    CONNECTED = "connected"
    UNREACHABLE = "unreachable"


_COLOURS = {
    BackendState.UNKNOWN: "#9e9e9e",
    BackendState.STARTING: "#f0a30a",
    BackendState.CONNECTED: "#2e9d46",
    BackendState.UNREACHABLE: "#d32f2f",
}


def _dot(colour: str, size: int) -> QPixmap:
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.Antialiasing)
    painter.setPen(QColor(colour).darker(130))
    painter.setBrush(QColor(colour))
    painter.drawEllipse(1, 1, size - 2, size - 2)
    painter.end()
    return pixmap


class StatusLight(QWidget):
    """Dot + state word; the tooltip carries the detail (e.g. the error) without cluttering the panel."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._dot = QLabel(self)
        self._text = QLabel(self)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._dot)
        layout.addWidget(self._text, 1)
        self._state = BackendState.UNKNOWN
        self.set_state(BackendState.UNKNOWN)

    def state(self) -> BackendState:
        return self._state

    def text(self) -> str:
        return self._text.text()

    def set_state(self, state: BackendState, detail: str = "") -> None:
        self._state = state
        size = max(10, self.fontMetrics().height() - 4)
        self._dot.setPixmap(_dot(_COLOURS[state], size))
        self._text.setText(state.value)
        self.setToolTip(detail or state.value)
        self.setAccessibleName(f"Backend {state.value}")
