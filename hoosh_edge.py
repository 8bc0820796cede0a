"""Quick start: ``python hoosh_edge.py [--config FILE] [--host H] [--port P]``."""

from hoosh_edge.serve.boot import patch_gevent

patch_gevent()  # before anything else imports socket or ssl; threading stays native (see boot.py)

import sys  # noqa: E402

from hoosh_edge.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
