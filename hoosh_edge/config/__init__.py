"""Configuration: one TOML file plus the environment, into frozen dataclasses.

``schema`` holds the shape and the value checks, ``server`` and ``providers`` read their tables,
``load`` reads the file and puts a ``Config`` together. Every mistake in a file stops start-up
with a message that names the key and the file.
"""

from hoosh_edge.config.load import load_config, parse_config
from hoosh_edge.config.schema import (
    PUBLIC_PATHS,
    Config,
    ConfigError,
    LocalEngineConfig,
    ProviderConfig,
    RoutingConfig,
    ServerConfig,
    expand_secret,
    is_loopback,
)

__all__ = [
    "PUBLIC_PATHS",
    "Config",
    "ConfigError",
    "LocalEngineConfig",
    "ProviderConfig",
    "RoutingConfig",
    "ServerConfig",
    "expand_secret",
    "is_loopback",
    "load_config",
    "parse_config",
]
