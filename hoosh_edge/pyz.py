"""The entry point of the single file (dist/hoosh-edge.pyz): the ``hoosh-edge`` command."""

from __future__ import annotations

import sys

from hoosh_edge.serve.boot import patch_gevent


def built_for() -> str | None:
    """The platform and Python this single file is for (its ``__main__`` says), else None."""
    return getattr(sys.modules.get("__main__"), "HOOSH_EDGE_BUILT_FOR", None)


def serves(argv: list[str]) -> bool:
    """Whether ``hoosh-edge ARGV`` starts the server (``cli.main``'s rule)."""
    if not argv:
        return True
    return argv[0] == "serve" or (argv[0].startswith("-") and argv[0] not in ("-h", "--help"))


def main() -> int:
    """Patch gevent first when serving (as ``hoosh_edge.py`` does), then run the command."""
    argv = sys.argv[1:]
    if serves(argv):
        patch_gevent()  # before the CLI imports anything that may import socket or ssl
    from hoosh_edge.cli import main as cli_main

    if argv[:1] in (["-h"], ["--help"]):
        from pathlib import Path

        import hoosh_edge
        from hoosh_edge import __version__

        where = Path(hoosh_edge.__file__).resolve().parent.parent
        print(f"hoosh-edge {__version__}, one file for {built_for() or 'this Python'}.")
        print(f"Its packages are unpacked in {where}.\n")
    return cli_main(argv)
