"""The per-face panel: one card per tracked face with probability bars, a time plot of the
last seconds and what is visible. Drawn with QPainter (no plotting dependency); every value
shown comes from the `FaceAnalysis` and `TrackTrace` the inference thread produced.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPaintEvent, QPen
from PySide6.QtWidgets import QFrame, QLabel, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

from app.class_colours import class_hex
from app.pipeline.records import FaceAnalysis
from app.ui.face_history import TrackTrace

#: Cards of tracks unseen for this many updates are removed (a detector blink keeps its card).
CARD_GRACE_UPDATES = 20


def class_colour(name: str, index: int) -> QColor:
    return QColor(class_hex(name, index))


def _track_hex(track_id: int) -> str:
    from app.overlays import track_colour

    b, g, r = track_colour(track_id)
    return f"#{r:02x}{g:02x}{b:02x}"


class ProbabilityBars(QWidget):
    """One row per class: name, bar of the (smoothed) probability, tick at the raw value."""

    ROW = 17

    def __init__(self) -> None:
        super().__init__()
        self.classes: tuple[str, ...] = ()
        self.shown: np.ndarray | None = None
        self.raw: np.ndarray | None = None
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_values(self, classes: tuple[str, ...], shown: np.ndarray | None, raw: np.ndarray | None) -> None:
        resized = len(classes) != len(self.classes)
        self.classes, self.shown, self.raw = classes, shown, raw
        if resized:
            self.updateGeometry()
            self.setFixedHeight(self.sizeHint().height())
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(260, max(1, len(self.classes)) * self.ROW + 4)

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        if self.shown is None:
            painter.end()
            return
        metrics = painter.fontMetrics()
        name_w = max((metrics.horizontalAdvance(c) for c in self.classes), default=40) + 8
        pct_w = metrics.horizontalAdvance("100%") + 6
        bar_w = max(20, self.width() - name_w - pct_w)
        best = int(np.argmax(self.shown))
        for i, name in enumerate(self.classes):
            y = 2 + i * self.ROW
            painter.setPen(QColor(235, 235, 235) if i == best else QColor(170, 174, 182))
            painter.drawText(QRectF(0, y, name_w - 6, self.ROW), Qt.AlignmentFlag.AlignVCenter
                             | Qt.AlignmentFlag.AlignRight, name)
            track = QRectF(name_w, y + 3, bar_w, self.ROW - 6)
            painter.fillRect(track, QColor(45, 48, 54))
            value = float(self.shown[i])
            colour = class_colour(name, i)
            if i != best:
                colour.setAlpha(170)
            painter.fillRect(QRectF(track.left(), track.top(), bar_w * value, track.height()), colour)
            if self.raw is not None:
                x = track.left() + bar_w * float(self.raw[i])
                painter.setPen(QPen(QColor(255, 255, 255, 200), 1.5))
                painter.drawLine(QPointF(x, track.top() - 2), QPointF(x, track.bottom() + 2))
            painter.setPen(QColor(200, 203, 210))
            painter.drawText(QRectF(name_w + bar_w + 4, y, pct_w, self.ROW),
                             Qt.AlignmentFlag.AlignVCenter, f"{value:.0%}")
        painter.end()


class ProbabilityPlot(QWidget):
    """Each class's probability over the last `seconds`, newest at the right edge."""

    def __init__(self, seconds: float = 10.0) -> None:
        super().__init__()
        self.seconds = seconds
        self.trace: TrackTrace | None = None
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(96)

    def set_trace(self, trace: TrackTrace | None) -> None:
        self.trace = trace
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        area = QRectF(self.rect()).adjusted(28, 4, -4, -14)
        painter.fillRect(area, QColor(30, 32, 37))
        painter.setPen(QPen(QColor(60, 64, 72), 1))
        for frac in (0.0, 0.5, 1.0):
            y = area.bottom() - frac * area.height()
            painter.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
        painter.setPen(QColor(140, 144, 152))
        small = painter.font()
        small.setPointSizeF(max(6.5, small.pointSizeF() * 0.8))
        painter.setFont(small)
        painter.drawText(QRectF(0, area.top() - 6, 26, 12), Qt.AlignmentFlag.AlignRight, "1")
        painter.drawText(QRectF(0, area.bottom() - 6, 26, 12), Qt.AlignmentFlag.AlignRight, "0")
        painter.drawText(QRectF(area.left(), area.bottom() + 1, area.width(), 12),
                         Qt.AlignmentFlag.AlignLeft, f"-{self.seconds:.0f} s")
        painter.drawText(QRectF(area.left(), area.bottom() + 1, area.width(), 12),
                         Qt.AlignmentFlag.AlignRight, "now")
        trace = self.trace
        if trace is not None and len(trace.ages) > 1:
            xs = area.right() - np.clip(trace.ages / self.seconds, 0, 1) * area.width()
            for c, name in enumerate(trace.classes):
                ys = area.bottom() - np.clip(trace.probs[:, c], 0, 1) * area.height()
                path = QPainterPath(QPointF(float(xs[0]), float(ys[0])))
                for x, y in zip(xs[1:], ys[1:]):
                    path.lineTo(float(x), float(y))
                painter.setPen(QPen(class_colour(name, c), 1.6))
                painter.drawPath(path)
        painter.end()


class FaceCard(QFrame):
    def __init__(self, track_id: int, plot_seconds: float) -> None:
        super().__init__()
        self.track_id = track_id
        self.missing = 0
        self.setObjectName("faceCard")
        self.setStyleSheet("#faceCard { background: #24262b; border-radius: 6px; }")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 8)
        layout.setSpacing(4)
        self.header = QLabel()
        self.header.setTextFormat(Qt.TextFormat.RichText)
        self.header.setWordWrap(True)
        self.bars = ProbabilityBars()
        self.plot = ProbabilityPlot(plot_seconds)
        self.regions = QLabel()
        self.regions.setWordWrap(True)
        self.regions.setStyleSheet("color: #b8bcc4;")
        for widget in (self.header, self.bars, self.plot, self.regions):
            layout.addWidget(widget)

    def show_face(self, analysis: FaceAnalysis, trace: TrackTrace | None) -> None:
        face = analysis.face
        colour = _track_hex(face.track_id)
        if analysis.probs is None:
            label = "<span style='color:#9aa0a6'>no expression model</span>"
        else:
            shown = analysis.smoothed_probs if analysis.smoothed_probs is not None else analysis.probs
            best = int(np.argmax(shown))
            label = (f"<b>{analysis.classes[best]}</b> {shown[best]:.0%}"
                     f" <span style='color:#9aa0a6'>(frame: {analysis.label} "
                     f"{float(np.max(analysis.probs)):.0%})</span>")
        self.header.setText(f"<span style='color:{colour}'><b>#{face.track_id}</b></span>"
                            f" &nbsp;{label}&nbsp; <span style='color:#9aa0a6'>· score {face.score:.2f}</span>")
        self.bars.setVisible(analysis.probs is not None)
        self.plot.setVisible(analysis.probs is not None)
        if analysis.probs is not None:
            self.bars.set_values(analysis.classes, analysis.smoothed_probs
                                 if analysis.smoothed_probs is not None else analysis.probs, analysis.probs)
            self.plot.set_trace(trace)
        parts = []
        if analysis.occlusion_ratio is not None:
            parts.append(f"Occluded: {analysis.occlusion_ratio:.0%} of the face")
        else:
            parts.append("Occlusion: not available (no occlusion stage)")
        part_visibility = getattr(analysis, "part_visibility", None)  # set by the occlusion stage
        if part_visibility:
            seen = [n for n, v in part_visibility.items() if v >= 0.5]
            hidden = [f"{n} {v:.0%}" for n, v in part_visibility.items() if v < 0.5]
            parts.append("Visible parts: " + (", ".join(seen) or "none")
                         + (" · Hidden: " + ", ".join(hidden) if hidden else ""))
        if analysis.regions and any(r.visibility is not None for r in analysis.regions):
            visible = [r.name for r in analysis.regions if r.visibility is None or r.visibility >= 0.5]
            hidden = [r.name for r in analysis.regions if r.visibility is not None and r.visibility < 0.5]
            parts.append("Visible: " + (", ".join(visible) or "none")
                         + (" · Hidden: " + ", ".join(hidden) if hidden else ""))
        elif analysis.regions:
            parts.append("Model reads: " + ", ".join(r.name for r in analysis.regions)
                         + " (visibility needs the occlusion stage)")
        elif analysis.probs is not None:
            parts.append("Regions: not available with this model (whole face)")
        self.regions.setText("\n".join(parts))
        self.regions.setVisible(bool(parts))


class FacePanel(QScrollArea):
    """Cards for the faces of the latest update, ordered by track id."""

    def __init__(self, plot_seconds: float = 10.0) -> None:
        super().__init__()
        self.plot_seconds = plot_seconds
        self.cards: dict[int, FaceCard] = {}
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFrameShape(QFrame.Shape.NoFrame)
        body = QWidget()
        self._layout = QVBoxLayout(body)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(6)
        self._empty = QLabel("No face yet")
        self._empty.setStyleSheet("color: #9aa0a6; padding: 8px;")
        self._layout.addWidget(self._empty)
        self._layout.addStretch(1)
        self.setWidget(body)

    def show_faces(self, faces: list[FaceAnalysis], traces: dict) -> None:
        seen = set()
        for analysis in sorted(faces, key=lambda a: a.face.track_id):
            track = analysis.face.track_id
            seen.add(track)
            card = self.cards.get(track)
            if card is None:
                card = FaceCard(track, self.plot_seconds)
                self.cards[track] = card
                order = sorted(self.cards)
                self._layout.insertWidget(order.index(track), card)
            card.missing = 0
            card.show_face(analysis, traces.get(track))
        for track, card in list(self.cards.items()):
            if track in seen:
                continue
            card.missing += 1
            if card.missing > CARD_GRACE_UPDATES:
                card.setParent(None)
                card.deleteLater()
                del self.cards[track]
        self._empty.setVisible(not self.cards)

    def clear(self) -> None:
        for card in self.cards.values():
            card.setParent(None)
            card.deleteLater()
        self.cards.clear()
        self._empty.setVisible(True)
