"""The desktop app (`occlufer app`): Qt widgets that show what the pipeline produced.

Widgets only read records (`FrameResult`, `LiveUpdate`) and draw them; frames are captured in
one thread, analysed in another (`live_session.py`), and drawn with `app.overlays`.
"""

from app.ui.qt_compat import GUARDED as _NONE_REFCOUNT_GUARDED  # noqa: E402,F401  (before any Qt use)
