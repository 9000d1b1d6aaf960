"""``python -m nexus_audit.simulator``: the simulator without the main CLI."""

import sys

from .cli import main

sys.exit(main())
