"""Non-modal messages: a banner above the video that never blocks the app.

A dialog would stop a live session to say the camera was unplugged; a banner says it and the
video, the recording and the buttons keep working. Each notice has a key: a newer notice with
the same key replaces the old one, and the condition's end clears it by key (the "no face"
notice disappears when a face comes back).
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QToolButton, QVBoxLayout, QWidget

LEVEL_COLOURS = {"info": ("#1f3a52", "#8cc8ff"), "warning": ("#4a3b12", "#ffd27a"),
                 "error": ("#4d1f1f", "#ff9c9c")}


@dataclass(frozen=True)
class Notice:
    key: str  # identity: "source", "no_face", "model:resnet18", ...
    text: str
    level: str = "info"  # info, warning, error
    actions: tuple[tuple[str, str], ...] = ()  # (button text, action id), e.g. ("Use demo", "use_demo")


class NoticeRow(QFrame):
    action = Signal(str)
    dismissed = Signal(str)

    def __init__(self, notice: Notice) -> None:
        super().__init__()
        self.notice = notice
        background, foreground = LEVEL_COLOURS.get(notice.level, LEVEL_COLOURS["info"])
        self.setObjectName("notice")
        self.setStyleSheet(f"#notice {{ background: {background}; border-radius: 4px; }}"
                           f"QLabel {{ color: {foreground}; }}")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(10, 4, 4, 4)
        self.label = QLabel(notice.text)
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.label, 1)
        for text, action_id in notice.actions:
            button = QPushButton(text)
            button.clicked.connect(lambda _=False, a=action_id: self.action.emit(a))
            layout.addWidget(button)
        close = QToolButton()
        close.setText("✕")
        close.setAutoRaise(True)
        close.setToolTip("Dismiss")
        close.clicked.connect(lambda: self.dismissed.emit(notice.key))
        layout.addWidget(close)


class NoticeBanner(QWidget):
    """The stack of current notices, newest first; hidden when there is none."""

    action = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 4)
        self._layout.setSpacing(3)
        self._rows: dict[str, NoticeRow] = {}
        self.setVisible(False)

    def show_notice(self, notice: Notice) -> None:
        old = self._rows.get(notice.key)
        if old is not None and old.notice == notice:
            return
        self.clear(notice.key)
        row = NoticeRow(notice)
        row.action.connect(self.action)
        row.dismissed.connect(self.clear)
        self._rows[notice.key] = row
        self._layout.insertWidget(0, row)
        self.setVisible(True)

    def clear(self, key: str) -> None:
        row = self._rows.pop(key, None)
        if row is not None:
            row.setParent(None)
            row.deleteLater()
        self.setVisible(bool(self._rows))

    def texts(self) -> dict[str, str]:
        """Key -> text of every notice shown (what a user reads; tests read it too)."""
        return {key: row.notice.text for key, row in self._rows.items()}
