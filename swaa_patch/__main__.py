"""``python -m swaa_patch ...`` is the ``swaa`` command."""

import sys

from .cli import main

sys.exit(main())
