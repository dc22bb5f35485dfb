"""A small live loss curve drawn with QPainter: no plotting library inside QGIS's Python."""

from __future__ import annotations

import math
from collections.abc import Iterable

from qgis.PyQt.QtCore import QPointF, QRectF, QSize, Qt
from qgis.PyQt.QtGui import QColor, QPainter, QPainterPath, QPen
from qgis.PyQt.QtWidgets import QSizePolicy, QWidget

_MARGIN_LEFT = 44
_MARGIN = 8
_LINE = QColor("#1f78b4")


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


class LossPlot(QWidget):
    """Training loss against step; rescales as points arrive, readable in a narrow dock."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("geosslLossPlot")
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        self._points: list[tuple[float, float]] = []
        self.setToolTip("Training loss per step")

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API name)
        return QSize(240, 100)

    def points(self) -> list[tuple[float, float]]:
        return list(self._points)

    def set_points(self, points: Iterable[tuple[float, float]]) -> None:
        self._points = sorted((float(s), float(v)) for s, v in points if v is not None and math.isfinite(v))
        self.update()

    def add_point(self, step: float, loss: float) -> None:
        """Append (or replace the same step): polling may deliver a step twice."""
        if loss is None or not math.isfinite(loss):
            return
        if self._points and self._points[-1][0] == step:
            self._points[-1] = (float(step), float(loss))
        elif not self._points or step > self._points[-1][0]:
            self._points.append((float(step), float(loss)))
        else:
            self.set_points([*self._points, (step, loss)])
            return
        self.update()

    def clear(self) -> None:
        self._points = []
        self.update()

    def paintEvent(self, event: object) -> None:  # noqa: N802 (Qt API name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        palette = self.palette()
        painter.fillRect(self.rect(), palette.base())
        plot = QRectF(_MARGIN_LEFT, _MARGIN, self.width() - _MARGIN_LEFT - _MARGIN,
                      self.height() - 2 * _MARGIN - self.fontMetrics().height())
        text_pen = QPen(palette.text().color())
        painter.setPen(QPen(palette.mid().color()))
        painter.drawRect(plot)
        painter.setPen(text_pen)
        if not self._points:
            painter.drawText(plot, Qt.AlignCenter, "no loss yet")
            painter.end()
            return
        steps = [p[0] for p in self._points]
        losses = [p[1] for p in self._points]
        x0, x1 = min(steps), max(steps)
        y0, y1 = min(losses), max(losses)
        if x1 == x0:
            x1 = x0 + 1
        if y1 == y0:
            y0, y1 = y0 - 0.5, y1 + 0.5

        def to_screen(step: float, loss: float) -> QPointF:
            return QPointF(plot.left() + (step - x0) / (x1 - x0) * plot.width(),
                           plot.bottom() - (loss - y0) / (y1 - y0) * plot.height())

        height = self.fontMetrics().height()
        painter.drawText(QRectF(0, plot.top() - 2, _MARGIN_LEFT - 4, height), Qt.AlignRight, _fmt(y1))
        painter.drawText(QRectF(0, plot.bottom() - height + 2, _MARGIN_LEFT - 4, height), Qt.AlignRight, _fmt(y0))
        painter.drawText(QRectF(plot.left(), plot.bottom() + 1, plot.width(), height), Qt.AlignLeft, f"{x0:g}")
        painter.drawText(QRectF(plot.left(), plot.bottom() + 1, plot.width(), height), Qt.AlignRight,
                         f"step {x1:g}")
        painter.setClipRect(plot.adjusted(-2, -2, 2, 2))
        painter.setPen(QPen(_LINE, 1.6))
        if len(self._points) == 1:
            painter.setBrush(_LINE)
            painter.drawEllipse(to_screen(*self._points[0]), 2.5, 2.5)
        else:
            path = QPainterPath(to_screen(*self._points[0]))
            for point in self._points[1:]:
                path.lineTo(to_screen(*point))
            painter.drawPath(path)
        painter.end()
