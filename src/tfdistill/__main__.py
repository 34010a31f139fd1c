"""``python -m tfdistill`` (and ``torchrun -m tfdistill train ...``)."""

import sys

from .cli import main

sys.exit(main())
