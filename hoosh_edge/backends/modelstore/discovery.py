"""Discovery: which models ``models/`` holds by kind, and the listing for ``models list``.

Nothing here hashes: discovery names files by the manifest where it knows them, by their stem
where it does not, so start-up costs a directory listing whatever the model sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hoosh_edge.backends.modelstore.installed import InstallState
from hoosh_edge.backends.modelstore.manifest import (
    KINDS,
    Manifest,
    ModelFile,
    ModelStoreError,
    load_manifest,
)
from hoosh_edge.backends.modelstore.tree import tree_stat

# What makes a folder in models/ a sentence-transformers embedding model.
EMBED_FILES = ("model.safetensors", "config.json", "tokenizer.json")


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
    embed: dict[str, Path] = field(default_factory=dict)  # sentence-transformers folders

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
        if p.is_dir() and all((p / f).is_file() for f in EMBED_FILES):
            found.embed.setdefault(model_id(p, p.name), p)
            continue
        if not p.is_file():
            continue
        if p.suffix == ".gguf":
            found.llm.setdefault(model_id(p, p.stem), p)
        elif p.name.startswith("ggml-") and p.suffix == ".bin":
            found.stt.setdefault(model_id(p, p.stem.removeprefix("ggml-")), p)
        elif p.suffix == ".onnx" and p.with_name(p.name + ".json").is_file():
            found.tts.setdefault(model_id(p, p.stem), p)
    return found


def _present(path: Path, f: ModelFile) -> bool:
    return path.is_dir() if f.tree else path.is_file()


def list_models(manifest: Manifest, models_dir: Path) -> list[ModelListing]:
    """Every manifest model with its installed state and size, then unknown local files."""
    models_dir = Path(models_dir)
    state = InstallState(models_dir)
    out = []
    for spec in manifest.models.values():
        present = [models_dir / f.name for f in spec.files if _present(models_dir / f.name, f)]
        status = (
            "absent"
            if not present
            else "installed"
            if len(present) == len(spec.files)
            else "partial"
        )
        stats = [tree_stat(p) if p.is_dir() else p.stat() for p in present]
        checked = status == "installed" and all(
            state.fresh(p.name, st) for p, st in zip(present, stats, strict=True)
        )
        size = sum(st.st_size for st in stats)
        out.append(
            ModelListing(spec.id, spec.kind, status, size, tuple(present), checked, spec.license)
        )
    for mid, (kind, path) in discover_local_models(models_dir, manifest).all().items():
        if manifest.model_for_file(path.name) is None:
            files = (path, path.with_name(path.name + ".json")) if kind == "tts" else (path,)
            size = sum((tree_stat(f) if f.is_dir() else f.stat()).st_size for f in files)
            out.append(ModelListing(mid, kind, "local", size, files))
    return out
