"""``python -m polyprune.grid``: the child process of a grid's process pool (one cell, read from stdin)."""
import sys

from .runners import _child_main

sys.exit(_child_main())
