"""`python -m ilct.cli`: the same as `ilct` (`python -m ilct` also records signals from its first line)."""

import sys

from ilct.cli import main

sys.exit(main())
