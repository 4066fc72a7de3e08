import sys

from fedreg.cli import main

sys.exit(main())
