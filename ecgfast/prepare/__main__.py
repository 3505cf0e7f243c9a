"""``python -m ecgfast.prepare`` runs ``ecgfast-prepare``."""

import sys

from .cli import main

sys.exit(main())
