"""``python -m hoosh_edge`` is the ``hoosh-edge`` command."""

import sys

from hoosh_edge.cli import main

sys.exit(main())
