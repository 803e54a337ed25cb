"""``python -m ddetr``: the same command line as ``ddetr``."""

import sys

from ddetr.cli import main

sys.exit(main())
