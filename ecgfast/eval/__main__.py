"""``python -m ecgfast.eval`` runs ``ecgfast-eval``."""

import sys

from .cli import main

sys.exit(main())
