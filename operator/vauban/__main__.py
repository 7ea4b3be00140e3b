import sys

from vauban.cli import main

sys.exit(main())
