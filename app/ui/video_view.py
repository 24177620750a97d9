"""The video widget: shows an already-rendered frame, scaled to fit, plus the REC badge.

It draws what it is given and nothing else; the overlays were painted onto the frame by
`app.overlays.render` from the very result that frame belongs to.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPaintEvent
from PySide6.QtWidgets import QSizePolicy, QWidget


def to_qimage(bgr: np.ndarray) -> QImage:
    """A QImage viewing a contiguous BGR uint8 array (the caller keeps the array alive)."""
    height, width = bgr.shape[:2]
    return QImage(bgr.data, width, height, int(bgr.strides[0]), QImage.Format.Format_BGR888)


class VideoView(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rendered: np.ndarray | None = None  # the frame on screen, overlays included (BGR)
        self.frame_index: int | None = None
        self._image: QImage | None = None
        self._badge: str | None = None
        self._placeholder = "Choose a source and press Start (F5)"
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(320, 240)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)

    def sizeHint(self) -> QSize:
        return QSize(800, 600)

    def show_frame(self, rendered: np.ndarray, frame_index: int) -> None:
        self.rendered = np.ascontiguousarray(rendered)
        self.frame_index = frame_index
        self._image = to_qimage(self.rendered)
        self.update()

    def clear(self, placeholder: str) -> None:
        self.rendered, self.frame_index, self._image = None, None, None
        self._placeholder = placeholder
        self.update()

    def set_badge(self, text: str | None) -> None:
        """The REC badge text (None hides it)."""
        if text != self._badge:
            self._badge = text
            self.update()

    def image_rect(self) -> QRectF:
        if self._image is None:
            return QRectF(self.rect())
        scale = min(self.width() / self._image.width(), self.height() / self._image.height())
        w, h = self._image.width() * scale, self._image.height() * scale
        return QRectF((self.width() - w) / 2, (self.height() - h) / 2, w, h)

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(18, 19, 22))
        if self._image is None:
            painter.setPen(QColor(150, 155, 165))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self._placeholder)
        else:
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
            painter.drawImage(self.image_rect(), self._image)
        if self._badge:
            self._paint_badge(painter)
        painter.end()

    def _paint_badge(self, painter: QPainter) -> None:
        area = self.image_rect()
        font = QFont(self.font())
        font.setBold(True)
        font.setPointSizeF(max(9.0, font.pointSizeF()))
        painter.setFont(font)
        text = self._badge or ""
        width = painter.fontMetrics().horizontalAdvance(text) + 34
        box = QRectF(area.left() + 10, area.top() + 10, width, 26)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(20, 20, 20, 200))
        painter.drawRoundedRect(box, 6, 6)
        painter.setBrush(QColor(230, 40, 40))
        painter.drawEllipse(QRectF(box.left() + 9, box.center().y() - 6, 12, 12))
        painter.setPen(QColor(255, 255, 255))
        painter.drawText(box.adjusted(27, 0, 0, 0), Qt.AlignmentFlag.AlignVCenter, text)
