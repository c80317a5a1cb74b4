"""``python -m pyquant``: the `pyquant` command."""

import sys

from .cli import main

sys.exit(main())
