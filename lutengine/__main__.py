"""``python -m lutengine``: the same as the ``lutengine`` command."""

import sys

from .cli import main

sys.exit(main())
