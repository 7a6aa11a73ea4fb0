"""`python -m inference colorize ...`: the same as the `colorize-fcn` console script."""
import sys

from .cli import main

sys.exit(main())
