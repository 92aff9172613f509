"""`python -m dreamy` runs the `dream` command (which sets its interrupt handlers before anything heavy loads)."""

import sys

from dreamy.cli import main

sys.exit(main())
