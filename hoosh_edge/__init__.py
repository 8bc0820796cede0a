"""hoosh-edge: an OpenAI-compatible inference gateway for one small box."""

from hoosh_edge.version import __version__

__all__ = ["__version__"]
