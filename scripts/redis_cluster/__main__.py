"""`python -m scripts.redis_cluster start|stop|status DIR` (cli.py)."""

import sys

from scripts.redis_cluster.cli import main

sys.exit(main())
