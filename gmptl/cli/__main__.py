"""``python -m gmptl.cli ...``: the command line without the console script (how submitted jobs run it)."""

import sys

from gmptl.cli import main

sys.exit(main())
