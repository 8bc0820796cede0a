"""The version of hoosh-edge (one place: the package, the CLI, /health and the status page)."""

__version__ = "0.1.0"
