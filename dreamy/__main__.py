"""`python -m dreamy` runs the `dream` command."""

import sys

from dreamy.cli import main

sys.exit(main())
