"""hoosh-edge: an OpenAI-compatible inference gateway for one small box."""

__version__ = "0.1.0"
