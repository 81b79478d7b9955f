"""``python -m dynrank.report``: the tables (``cli.main``)."""
import sys

from .cli import main

sys.exit(main())
