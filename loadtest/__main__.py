"""`python -m loadtest`: headless locust run with SLO checks (see loadtest/runner.py)."""

import sys

from loadtest.runner import main

sys.exit(main())
