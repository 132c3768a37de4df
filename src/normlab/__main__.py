"""``python -m normlab ...`` is the ``normlab`` command, for where the script is not on PATH."""
import sys

from normlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
