import sys

from skiptune.cli import main

sys.exit(main())
