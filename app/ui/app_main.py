"""Starting the app: the QApplication, a dark Fusion theme, the main window."""

from __future__ import annotations

import sys

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

from app.runtime.store import ModelStore


def apply_dark_theme(app: QApplication) -> None:
    """A neutral dark palette: faces and heat maps read better on dark grey than on white."""
    app.setStyle("Fusion")
    palette = QPalette()
    colours = {
        QPalette.ColorRole.Window: (37, 39, 44), QPalette.ColorRole.WindowText: (222, 224, 228),
        QPalette.ColorRole.Base: (28, 30, 34), QPalette.ColorRole.AlternateBase: (44, 47, 53),
        QPalette.ColorRole.ToolTipBase: (50, 53, 60), QPalette.ColorRole.ToolTipText: (235, 235, 235),
        QPalette.ColorRole.Text: (222, 224, 228), QPalette.ColorRole.Button: (48, 51, 58),
        QPalette.ColorRole.ButtonText: (222, 224, 228), QPalette.ColorRole.BrightText: (255, 90, 90),
        QPalette.ColorRole.Highlight: (64, 140, 230), QPalette.ColorRole.HighlightedText: (255, 255, 255),
        QPalette.ColorRole.Link: (110, 170, 255), QPalette.ColorRole.PlaceholderText: (130, 134, 142),
    }
    for role, rgb in colours.items():
        palette.setColor(role, QColor(*rgb))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor(110, 113, 120))
    app.setPalette(palette)


def run_app(source: str | None = None, model: str | None = None, device: str = "auto",
            threads: int | None = None, detector: str = "retinaface_mnet025",
            store: ModelStore | None = None, pipeline_options: dict | None = None) -> int:
    """`pipeline_options`: further `build_pipeline` arguments (detector side, detect_every)."""
    from app.ui.main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("occlufer")
    app.setOrganizationName("occlufer")
    apply_dark_theme(app)
    window = MainWindow(store=store, source=source, model=model,
                        device=None if device == "auto" else device, threads=threads, detector=detector,
                        pipeline_options=pipeline_options)
    window.show()
    return int(app.exec())
