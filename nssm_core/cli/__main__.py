"""``python -m nssm_core.cli`` runs the ``nssm`` command line (the form ``torchrun -m`` launches)."""

import sys

from . import main

sys.exit(main())
