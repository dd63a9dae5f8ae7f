"""``python -m nssm_core`` runs the ``nssm`` command line."""

import sys

from .cli import main

sys.exit(main())
