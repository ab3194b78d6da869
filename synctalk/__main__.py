import sys

from synctalk.cli import main

sys.exit(main())
