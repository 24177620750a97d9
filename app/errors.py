"""User-facing errors.

Every failure a user can cause or meet (a missing model, a bad file, a lost camera) is raised
as an `OccluferError` whose message says what happened and what to do next; the CLI prints
the message without a traceback and exits non-zero, the app shows it in the status area.
"""

from __future__ import annotations


class OccluferError(Exception):
    """Base class: the message is written for the user, not the developer."""

    exit_code: int = 2


class ModelMissingError(OccluferError):
    """A model named in the manifest is not in the store; the message names the fetch command."""


class ModelIntegrityError(OccluferError):
    """A model file exists but its bytes are wrong (sha256 mismatch, truncated, not ONNX)."""


class FetchError(OccluferError):
    """Downloading or building a model failed; nothing was left in the store."""


class SourceError(OccluferError):
    """A camera, video, image or folder cannot be opened or stops delivering frames."""


class BadFrameError(OccluferError):
    """A frame cannot be used (empty, wrong dtype, unreadable); the pipeline skips it."""


class DatasetError(OccluferError):
    """A dataset is missing or not in the expected layout; the message shows the layout."""


class RecordingError(OccluferError):
    """A recording cannot be written (disk full, permission); rows already flushed are kept."""


class SessionFileError(OccluferError):
    """A recorded session (folder, frames.csv or `occlufer run` CSV) cannot be read: not
    occlufer's, empty, or damaged beyond its last row; the message says which."""
