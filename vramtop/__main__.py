import sys

from vramtop.cli import main

sys.exit(main())
