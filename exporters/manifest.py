"""Writing entries into the model store manifest (`assets/manifest.json`).

The app's `ModelStore` reads this file; training writes to it when a model is published.
Several people (and background training runs) may touch it, so every update is a locked
read-modify-write that keeps all other entries and lands with an atomic rename: a reader
never sees half a file, and two writers never lose each other's entries.

The manifest path is `$OCCLUFER_MANIFEST` when set (tests point it at a temporary file),
else `assets/manifest.json`, exactly as the store resolves it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from app.runtime.store import default_manifest_path

#: Keys every expression entry must carry (the store and the app read them).
REQUIRED_KEYS = ("task", "file", "sha256", "licence", "description", "sources", "input",
                 "classes", "outputs", "card")


@contextmanager
def _locked(manifest: Path) -> Iterator[None]:
    """An exclusive advisory lock for the read-modify-write. The lock file lives in the temp
    folder (named after the manifest's path), so nothing but the manifest appears in assets/;
    the manifest itself cannot carry the lock because each write replaces its inode."""
    manifest.parent.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(str(manifest.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"occlufer-manifest-{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_manifest(manifest: Path | None = None) -> dict[str, Any]:
    """The manifest as a dict (`{"models": {}}` when the file does not exist yet)."""
    path = Path(manifest) if manifest else default_manifest_path()
    if not path.is_file():
        return {"models": {}}
    data = json.loads(path.read_text())
    data.setdefault("models", {})
    return data


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def register_model_entry(name: str, entry: dict[str, Any], manifest: Path | None = None) -> Path:
    """Add or replace model `name` in the manifest, keeping every other entry; returns the path.

    `source: {...}` is accepted as shorthand for `sources: [{...}]` (the store reads the list).
    """
    entry = dict(entry)
    if "source" in entry and "sources" not in entry:
        entry["sources"] = [entry.pop("source")]
    missing = [key for key in REQUIRED_KEYS if key not in entry]
    if missing:
        raise ValueError(f"manifest entry {name!r} lacks {', '.join(missing)}")
    path = Path(manifest) if manifest else default_manifest_path()
    with _locked(path):
        data = read_manifest(path)
        data["models"][name] = entry
        _write_atomic(path, data)
    return path


def copy_into_assets(name: str, onnx_path: Path, card: Path,
                     manifest: Path | None = None) -> tuple[Path, Path]:
    """Copy a trained model's ONNX and card beside the manifest (`models/<name>.onnx`,
    `cards/<name>.md`), each landing by atomic rename, before its entry is registered."""
    assets = (Path(manifest) if manifest else default_manifest_path()).parent
    targets = (assets / "models" / f"{name}.onnx", assets / "cards" / f"{name}.md")
    for source, target in zip((onnx_path, card), targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    return targets
