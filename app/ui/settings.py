"""What the app remembers between runs, through QSettings, with types and defaults in one place.

QSettings returns strings from some backends (INI files, the registry) and native types from
others; every read here converts, so a value written on one platform reads back on any.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings

from app.overlays import OverlayOptions
from app.pipeline.smoothing import DEFAULT_STRENGTH

ORGANISATION = APPLICATION = "occlufer"
DEFAULT_OUTPUT = Path.home() / "occlufer-sessions"


def default_settings() -> QSettings:
    return QSettings(ORGANISATION, APPLICATION)


class AppSettings:
    def __init__(self, store: QSettings | None = None) -> None:
        self.qsettings = store or default_settings()

    # ---------------------------------------------------------------- typed access
    def _get(self, key: str, default: Any) -> Any:
        value = self.qsettings.value(key, default)
        if value is None:
            return default
        if isinstance(default, bool):
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        if isinstance(default, int):
            try:
                return int(value)
            except (TypeError, ValueError):
                return default
        if isinstance(default, float):
            try:
                return float(value)
            except (TypeError, ValueError):
                return default
        if isinstance(default, list):
            if isinstance(value, str):
                return [value] if value else []
            return [str(v) for v in value]
        return value

    def _set(self, key: str, value: Any) -> None:
        self.qsettings.setValue(key, value)

    # ---------------------------------------------------------------- values
    @property
    def source(self) -> str | None:
        value = self._get("source/spec", "")
        return str(value) if value else None

    @source.setter
    def source(self, spec: str) -> None:
        self._set("source/spec", spec)

    recent_files = property(lambda self: self._get("source/recent", []),
                            lambda self, v: self._set("source/recent", list(v)[:8]))
    resolution = property(lambda self: str(self._get("source/resolution", "640x480")),
                          lambda self, v: self._set("source/resolution", v))
    loop = property(lambda self: self._get("source/loop", True), lambda self, v: self._set("source/loop", bool(v)))
    model = property(lambda self: str(self._get("models/expression", "")) or None,
                     lambda self, v: self._set("models/expression", v or ""))
    device = property(lambda self: str(self._get("models/device", "auto")),
                      lambda self, v: self._set("models/device", v))
    smoothing = property(lambda self: self._get("expression/smoothing", DEFAULT_STRENGTH),
                         lambda self, v: self._set("expression/smoothing", float(v)))
    plot_seconds = property(lambda self: self._get("expression/plot_seconds", 10.0),
                            lambda self, v: self._set("expression/plot_seconds", float(v)))
    output_dir = property(lambda self: Path(str(self._get("recording/output_dir", str(DEFAULT_OUTPUT)))),
                          lambda self, v: self._set("recording/output_dir", str(v)))
    record_video = property(lambda self: self._get("recording/video", False),
                            lambda self, v: self._set("recording/video", bool(v)))
    frame_limit = property(lambda self: self._get("recording/frame_limit", 0),
                           lambda self, v: self._set("recording/frame_limit", int(v)))

    @property
    def overlays(self) -> OverlayOptions:
        defaults = OverlayOptions()
        enabled = self._get("overlays/enabled", sorted(defaults.enabled))
        cam_class = str(self._get("overlays/cam_class", "")) or None
        return OverlayOptions(enabled=frozenset(enabled),
                              opacity=self._get("overlays/opacity", defaults.opacity),
                              cam_class=cam_class)

    @overlays.setter
    def overlays(self, options: OverlayOptions) -> None:
        self._set("overlays/enabled", sorted(options.enabled))
        self._set("overlays/opacity", float(options.opacity))
        self._set("overlays/cam_class", options.cam_class or "")

    @property
    def geometry(self) -> QByteArray | None:
        value = self.qsettings.value("window/geometry")
        return value if isinstance(value, QByteArray) else None

    @geometry.setter
    def geometry(self, value: QByteArray) -> None:
        self._set("window/geometry", value)

    def sync(self) -> None:
        self.qsettings.sync()
