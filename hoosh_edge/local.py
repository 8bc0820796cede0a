"""Wire the on-device engines found in config or ``models/`` into a Gateway."""

from __future__ import annotations

import logging

from .app import Gateway
from .config import Config

log = logging.getLogger("hoosh_edge")


def build_gateway(config: Config) -> Gateway:
    """A Gateway with every configured provider and every local model found."""
    gw = Gateway(config)
    return gw
