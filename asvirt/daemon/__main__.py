"""``python -m asvirt.daemon``: the same as ``asvirtd``."""

import sys

from .main import main

sys.exit(main())
