import sys

from ilct.cli import main

sys.exit(main())
