"""Run the app on a source for a while, then save a screenshot and the measured frame rates.

    xvfb-run -s "-screen 0 1600x1000x24" python -m app.ui.screenshot --out assets/screenshots/app.png

Every overlay the running models can draw is switched on. On the demo the window is paused
when the sunglasses sit on the face, so the picture shows an occluder, the CAM and the
per-face plot with several seconds of history. Settings go to a temporary file: the user's
remembered settings are neither read nor changed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from PySide6.QtCore import QSettings
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication

from app.demo import OccludedDemoSource
from app.overlays import OVERLAYS


def _wait(app: QApplication, seconds: float, until=None) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        if until is not None and until():
            return True
        time.sleep(0.005)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="PNG to write (omit to only measure)")
    parser.add_argument("--source", default="demo")
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=6.5, help="run this long before the picture")
    parser.add_argument("--size", default="1440x900")
    parser.add_argument("--resolution", default="640x480")
    args = parser.parse_args(argv)

    from app.ui.app_main import apply_dark_theme
    from app.ui.main_window import MainWindow
    from app.ui.settings import AppSettings

    app = QApplication.instance() or QApplication(sys.argv[:1])
    apply_dark_theme(app)
    with tempfile.TemporaryDirectory(prefix="occlufer-shot-") as tmp:
        settings = AppSettings(QSettings(str(Path(tmp) / "settings.ini"), QSettings.Format.IniFormat))
        settings.output_dir = Path(tmp) / "sessions"
        settings.resolution = args.resolution
        window = MainWindow(settings=settings, model=args.model, device=args.device, threads=args.threads)
        width, height = (int(v) for v in args.size.split("x"))
        window.resize(width, height)
        window.show()
        window.select_source(args.source)
        window.start()
        _wait(app, 60, lambda: window.last_update is not None and window.models_info is not None)
        _wait(app, 1.0)
        for spec in OVERLAYS:  # everything the running models produce, nothing else
            window.overlay_actions[spec.key].setChecked(window.overlay_actions[spec.key].isEnabled())
        window.opacity_slider.setValue(45)
        window.record_action.trigger()  # into the temporary folder: shows the REC badge
        started = time.monotonic()
        shown_before = window.frames_shown
        _wait(app, args.seconds)
        demo = OccludedDemoSource()

        def sunglasses_on() -> bool:
            """The sunglasses sit on the face (not sliding) and the panel shows only the faces
            in view (no stale card of a track lost on a slow machine)."""
            update = window.last_update
            if update is None or not update.result.faces:
                return False
            if args.source != "demo":
                return True
            active = demo.active_pass(update.result.frame.index)
            cards = set(window.face_panel.cards)
            return bool(active and active[0].kind == "sunglasses" and active[1] == 0.0
                        and cards == {a.face.track_id for a in update.result.faces})

        for _attempt in range(4):  # pause on a good frame; the frame in flight may spoil it: retry
            _wait(app, 15, sunglasses_on)
            window.toggle_pause()
            _wait(app, 0.8)
            if sunglasses_on() or _attempt == 3:
                break
            window.toggle_pause()
        elapsed = time.monotonic() - started
        display_fps = (window.frames_shown - shown_before) / elapsed
        update = window.last_update
        report = {"display_fps": round(display_fps, 1),
                  "inference_fps": round(update.inference_fps, 1) if update else None,
                  "frames_shown": window.frames_shown, "dropped": update.dropped if update else None,
                  "frame": update.result.frame.index if update else None,
                  "latency_ms": {k: round(v, 1) for k, v in (update.result.latency_ms if update else {}).items()},
                  "providers": window.models_info.providers if window.models_info else {},
                  "platform": QGuiApplication.platformName()}
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            screen = window.screen()
            picture = screen.grabWindow(window.winId()) if QGuiApplication.platformName() == "xcb" \
                else window.grab()
            picture.save(str(args.out), "PNG", 0)  # quality 0: the strongest PNG compression
            report["screenshot"] = str(args.out)
        print(json.dumps(report, indent=2))
        window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
