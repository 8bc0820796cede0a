"""``python -m hoosh_edge`` is the ``hoosh-edge`` command."""

import sys

from .cli import main

sys.exit(main())
