"""Quick start: ``python hoosh_edge.py [--config FILE] [--host H] [--port P]``."""

from gevent import monkey

monkey.patch_all()  # before anything else imports socket, ssl or threading

import sys  # noqa: E402

from hoosh_edge.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
