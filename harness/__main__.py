"""``python -m harness ...`` (and ``torchrun ... -m harness run CONFIG``): the command line."""

import sys

from harness.cli import main

sys.exit(main())
