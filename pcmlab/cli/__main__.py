"""``python -m pcmlab.cli``."""

import sys

from pcmlab.cli import main

sys.exit(main())
