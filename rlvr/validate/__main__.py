import sys

from rlvr.validate.cli import main

sys.exit(main())
