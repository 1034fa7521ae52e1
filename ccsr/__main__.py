import sys

from ccsr.cli import main

sys.exit(main())
