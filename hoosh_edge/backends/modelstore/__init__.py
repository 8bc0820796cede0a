"""The model store: a manifest of known models and pull / verify / remove / list / discover.

``manifest`` reads what models exist and where they come from; ``installed`` knows what
``models/`` holds and verifies it; ``download`` and ``pull`` bring bytes in, checked before they
get a final name; ``discovery`` names what is there for the gateway and ``models list``.
"""

from hoosh_edge.backends.modelstore.discovery import (
    LocalModels,
    ModelListing,
    discover_local_models,
    list_models,
)
from hoosh_edge.backends.modelstore.download import Progress
from hoosh_edge.backends.modelstore.installed import (
    PARTIAL_DIR,
    STATE_FILE,
    VerifyResult,
    remove,
    sha256_file,
    verify,
)
from hoosh_edge.backends.modelstore.manifest import (
    DEFAULT_MANIFEST,
    DEFAULT_MODELS_DIR,
    KINDS,
    SOURCE_TYPES,
    ChecksumMismatch,
    Manifest,
    ModelFile,
    ModelSpec,
    ModelStoreError,
    Source,
    load_manifest,
)
from hoosh_edge.backends.modelstore.pull import CONVERTERS, Converter, pull, register_converter

__all__ = [
    "CONVERTERS",
    "DEFAULT_MANIFEST",
    "DEFAULT_MODELS_DIR",
    "KINDS",
    "PARTIAL_DIR",
    "SOURCE_TYPES",
    "STATE_FILE",
    "ChecksumMismatch",
    "Converter",
    "LocalModels",
    "Manifest",
    "ModelFile",
    "ModelListing",
    "ModelSpec",
    "ModelStoreError",
    "Progress",
    "Source",
    "VerifyResult",
    "discover_local_models",
    "list_models",
    "load_manifest",
    "pull",
    "register_converter",
    "remove",
    "sha256_file",
    "verify",
]
