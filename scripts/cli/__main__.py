"""`python -m scripts.cli`: the `inventory` command, as the tests and the benchmark run it."""

import sys

from scripts.cli import main

if __name__ == "__main__":  # not again in a spawned child (`inventory worker --processes`)
    sys.exit(main())
