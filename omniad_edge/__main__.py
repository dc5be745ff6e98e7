"""`python -m omniad_edge` = the `omniad-edge` command."""
import sys

from .cli import main

sys.exit(main())
