"""`python -m scripts.cli`: the `inventory` command, as the tests and the benchmark run it."""

import sys

from scripts.cli import main

sys.exit(main())
