"""``python -m ecgfast.pretrain`` runs ``ecgfast-train`` (the form torchrun uses)."""

import sys

from .cli import main

sys.exit(main())
