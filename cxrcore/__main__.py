"""Entry point for ``python -m cxrcore``."""

import sys

from .cli import main

sys.exit(main())
