"""A picture of the session viewer on a recorded session, for the README.

    xvfb-run -s "-screen 0 1600x1000x24" python -m app.ui.viewer_screenshot SESSION \\
        --frame 17 --out assets/screenshots/session_viewer.png

Opens the real viewer window (Qt's xcb platform under Xvfb, or offscreen), seeks to the frame
and grabs the window. Nothing is re-inferred: what it shows is what SESSION recorded.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from PySide6.QtWidgets import QApplication


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("session", type=Path, help="a recorded session folder or CSV")
    parser.add_argument("--frame", type=int, default=0, help="analysed frame to show (0-based)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", default="1440x900")
    args = parser.parse_args(argv)

    from app.ui.app_main import apply_dark_theme
    from app.ui.session_viewer import SessionViewer

    app = QApplication.instance() or QApplication(sys.argv[:1])
    apply_dark_theme(app)
    viewer = SessionViewer.open(args.session)
    width, height = (int(v) for v in args.size.split("x"))
    viewer.resize(width, height)
    viewer.show()
    viewer.seek(args.frame)
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not viewer.grab().save(str(args.out)):
        print(f"could not write {args.out}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
